"""The broker as an ASGI application, for an ASGI server of your choice::

    hypercorn -k trio trio_esper.asgi:app

or mounted in your own Quart-Trio (or any Trio ASGI) application, for
example beside it under Hypercorn's ``TrioDispatcherMiddleware``; see
``examples/mounted.py``.

Configuration comes from the ``ESPER_*`` environment variables (as for the
``trio-esper`` command; the bind address and port are the ASGI server's).
The history store and the hub open in the ASGI lifespan's startup and close
in its shutdown, so the server must run the lifespan (Hypercorn does).
Every route is served by Quart-Trio: the edge's fast forms, its per-address
connection limit and its request timeouts belong to ``trio-esper``'s own
server, not to this application (set your server's timeouts instead).

At shutdown, open streams last until the ASGI server cancels them (for
Hypercorn, ``--graceful-timeout``); clients then reconnect and resume by
``Last-Event-ID``. ``trio-esper`` ends them cleanly instead.
"""

from __future__ import annotations

import logging
import os

import sniffio
import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)

from . import logs
from .config import Config, ConfigError
from .errors import HistoryError, ServiceUnavailable
from .hub import Hub
from .server import Broker, open_broker

log = logging.getLogger("trio_esper")


class EsperApp:
    """An ASGI 3 application serving a broker configured by ``config``
    (built from the environment at startup if ``None``).

    :attr:`hub` is the running broker's hub, for publishing in-process from
    the application it is mounted in (``await esper.hub.publish(topic,
    [Event(data)])``); it exists between the lifespan's startup and shutdown.
    """

    def __init__(self, config: Config | None = None) -> None:
        self._config = config
        self._broker: Broker | None = None

    @property
    def hub(self) -> Hub:
        """The broker's hub.

        Raises:
            ServiceUnavailable: the lifespan has not started the broker (or
                has stopped it).
        """
        return self._running().hub

    def _running(self) -> Broker:
        if self._broker is None:
            raise ServiceUnavailable(
                "the broker is not running: the ASGI server must run the lifespan "
                "(the broker opens at its startup)"
            )
        return self._broker

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._broker is None:
            await _refuse(scope, send)
            return
        await self._broker.app(scope, receive, send)

    async def _lifespan(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if sniffio.current_async_library() != "trio":
            await send(
                {
                    "type": "lifespan.startup.failed",
                    "message": "trio_esper runs on Trio: start the server with its Trio "
                    "worker (hypercorn -k trio)",
                }
            )
            return
        try:
            config = self._config or Config.from_env(os.environ)
            logs.config_warnings(config, os.environ if self._config is None else {})
            async with open_broker(config) as broker:
                self._broker = broker
                log.info("trio_esper started in the ASGI lifespan")
                await send({"type": "lifespan.startup.complete"})
                try:
                    while (await receive())["type"] != "lifespan.shutdown":
                        pass
                finally:
                    self._broker = None
                    broker.hub.close()  # open streams end; new subscribes get 503
        except (ConfigError, HistoryError) as error:
            log.error("trio_esper cannot start: %s", error)  # noqa: TRY400 (one line)
            await send({"type": "lifespan.startup.failed", "message": str(error)})
            return
        await send({"type": "lifespan.shutdown.complete"})


async def _refuse(scope: Scope, send: ASGISendCallable) -> None:
    """503 for a request that arrives while the broker is not running."""
    if scope["type"] != "http":
        return
    body = b"the broker is not running (starting or stopping)\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
    ]
    await send(HTTPResponseStartEvent(type="http.response.start", status=503, headers=headers))
    await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))
    await trio.lowlevel.checkpoint()


#: ``hypercorn -k trio trio_esper.asgi:app``: configured from the environment.
app = EsperApp()
