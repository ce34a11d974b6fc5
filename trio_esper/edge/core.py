"""The edge's accept loop, each connection's task, and shutdown.

Resource handling
-----------------
:meth:`Edge.serve` accepts connections (:mod:`..accepting`) and runs
:meth:`Edge.handle` for each in the edge's nursery. ``handle`` wraps the
socket in a :class:`.connection.Connection`, which owns it, and closes it
in its own ``finally``, whatever happened; nothing else closes it but the
forced end of shutdown (:meth:`.lifetime.Registry.close_all`), through the
same ``close``. A connection is served by the fast forms (:mod:`.fast`)
while its requests are plain HTTP/1.1 publishes and subscribes, then by
Hypercorn (:mod:`.bridge`) from the first request they decline; over TLS
(:mod:`.tls`), by Hypercorn alone. ``fast_lane=False`` sends every
connection to Hypercorn.

Error handling
--------------
Whatever fails while serving a connection -- our code, h11, h2, Hypercorn,
Quart -- ends that connection only: it is logged once, in one line (the
traceback at debug level), and never reaches the edge's nursery.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import trio
from hypercorn.typing import AppWrapper

from .. import endpoints
from ..accepting import ConnectionSource, accept_connections
from ..config import Config
from ..errors import LimitReached
from ..hub import Hub
from ..metrics import Metrics
from .bridge import Hypercorn, PlainStream
from .connection import LINGER_SECONDS, Connection
from .fast import FastForms
from .lifetime import Deadlines, Registry
from .readiness import Readiness
from .tls import TLS, ChooseContext

log = logging.getLogger("trio_esper")

#: Retry-After for a connection over its address's limit.
CONNECTION_RETRY_AFTER_SECONDS = 1
#: How often shutdown looks whether HTTP/2 connections have written their
#: streams out (see :meth:`Edge._shut_down`).
STREAM_FLUSH_POLL_SECONDS = 0.01


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class Edge:
    """Accepts and serves every connection of :func:`~trio_esper.server.serve`."""

    def __init__(
        self,
        config: Config,
        hub: Hub,
        app: AppWrapper,
        metrics: Metrics | None = None,
        *,
        tls: ssl.SSLContext | ChooseContext | None = None,
    ) -> None:
        """``app``: the application Hypercorn serves (:func:`.bridge.wrap_asgi`).
        ``tls``: every connection is TLS (:func:`.tls.load_tls_context`), with a
        context chosen per connection if a function.
        """
        self._config = config
        self._hub = hub
        self._metrics = metrics
        self._tls = None if tls is None else TLS(config, tls)
        self._hypercorn = Hypercorn(config, app, on_dropped=hub.count_dropped)
        self._fast = FastForms(config, hub, metrics)
        self._deadlines = Deadlines()
        self._readiness = Readiness()
        self._connections: Registry[Connection] = Registry()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def serve(
        self,
        listeners: Sequence[ConnectionSource],
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listeners`` until ``shutdown`` is set, then shut down:
        idle connections close now, busy ones after their current answer,
        every stream ends (the hub ends them), and after the grace period the
        sockets of connections still open (a peer that stopped reading) are
        closed. Returns once every connection is gone."""
        config = self._config
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._readiness.run)
            nursery.start_soon(
                self._deadlines.run,
                config.keep_alive_seconds,
                config.request_head_timeout_seconds,
                config.request_body_timeout_seconds,
            )
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(accept_connections, listener, self.handle, nursery)
                task_status.started()
                await shutdown.wait()
                accepting.cancel_scope.cancel()
            await self._shut_down(config.shutdown_grace_seconds)
            nursery.cancel_scope.cancel()

    def reap_expired(self, now: float) -> None:
        """Wake the connections whose deadline is ``now`` or earlier (the
        reaper does this every second; see :class:`.lifetime.Deadlines`)."""
        self._deadlines.reap_expired(now)

    async def handle(self, sock: trio.socket.SocketType, address: str | None = None) -> None:
        """Serve one connection until it ends, and close it. ``address``:
        its peer's, if ``accept`` told it.

        Never raises but for cancellation: a failure ends this connection
        only, and is logged once.
        """
        config = self._config
        rate = config.publish_rate_per_connection
        connection = Connection(
            sock,
            endpoints.PublishBudget(rate) if rate else None,
            self._deadlines,
            self._readiness,
            address,
        )
        address = connection.address
        try:
            held = self._connections.held(address)
            if held >= config.max_connections_per_address:
                await self._refuse(connection, held)
                return
            self._connections.add(connection, address)
            try:
                await self._serve(connection)
            except* Exception as group:
                self._failed(connection, group)
            finally:
                self._connections.remove(connection, address)
        finally:
            connection.close()  # cancelled too (shutdown): never left to the collector

    async def _serve(self, connection: Connection) -> None:
        if self._tls is not None:
            await self._tls.serve(connection, self._hypercorn)
            return
        if self._config.fast_lane:
            unread = await self._fast.serve(connection)
        else:
            read = await self._fast.read_head(connection, b"")
            unread = None if read is None else read[0]
        if unread is not None:
            await self._hypercorn.serve(PlainStream(connection, unread), connection.budget)
        await connection.linger()

    async def _refuse(self, connection: Connection, held: int) -> None:
        """Turn away a connection whose address holds its limit."""
        # Debug only: a client could otherwise flood the log at will.
        log.debug(
            "refused a connection from %s: its limit of connections is reached",
            connection.address,
            extra={"event": "connection_refused", "client": connection.address},
        )
        if self._metrics is not None:
            self._metrics.connection_error("refused")
        if self._tls is not None:
            return  # an answer would take a handshake first: the CPU the limit saves
        refusal = LimitReached(
            f"this address holds its limit of {held} connections",
            retry_after_seconds=CONNECTION_RETRY_AFTER_SECONDS,
        )
        with trio.move_on_after(LINGER_SECONDS):
            await self._fast.refuse(connection, refusal)
            await connection.linger()

    def _failed(self, connection: Connection, group: BaseExceptionGroup[Exception]) -> None:
        """Log a connection's failure: one line; at debug level with the traceback."""
        error = _first_leaf(group)
        log.warning(
            "connection from %s ended by %s: %s",
            connection.peer,
            type(error).__name__,
            error,
            exc_info=group if log.isEnabledFor(logging.DEBUG) else None,
            extra={
                "event": "connection_failed",
                "client": connection.address,
                "error": type(error).__name__,
            },
        )
        if self._metrics is not None:
            self._metrics.connection_error("failure")

    async def _shut_down(self, grace_seconds: float) -> None:
        connections = self._connections
        log.info(
            "shutting down: %d connections open",
            len(connections),
            extra={"event": "stop", "connections": len(connections)},
        )
        self._hub.close()  # refuses new subscribers and ends every stream
        if self._tls is not None:
            self._tls.shut_down()
        self._deadlines.wake_idle()
        with trio.move_on_after(grace_seconds):
            # Streams served through Hypercorn end before it is told to stop:
            # over HTTP/2 it would close a connection whose last stream ended
            # before that stream's END_STREAM went out.
            await self._hub.wait_closed()
            # Hypercorn's HTTP/2 protocol writes a stream's END_STREAM from
            # its send task after the stream's body ended; told to stop before
            # that, it closes the connection first (a fixed moment's wait was
            # not enough on a busy machine). Hypercorn signals nothing: poll.
            while self._hypercorn.unflushed():  # noqa: ASYNC110
                await trio.sleep(STREAM_FLUSH_POLL_SECONDS)
            await self._hypercorn.terminate()
            await connections.wait_empty()
        if connections:
            log.warning(
                "closing %d connections still open after the grace period",
                len(connections),
                extra={"event": "stop_forced", "connections": len(connections)},
            )
        # Closing the socket wakes a write blocked on a peer that stopped
        # reading (trio.lowlevel.notify_closing), even a shielded one.
        connections.close_all()
