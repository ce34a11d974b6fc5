"""HTTP edge: Quart-Trio routes that parse a request, call the hub, and encode
the answer. Every :class:`~trio_esper.errors.EsperError` becomes its status
code and a one-line ``text/plain`` reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import __version__
from .auth import bearer_token, verify_token
from .config import Config
from .errors import EsperError, PayloadTooLarge
from .hub import Hub, Subscription
from .sse import SUBSCRIBED_FRAME, encode, parse_body
from .topics import normalise_topic

log = logging.getLogger("trio_esper")

STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx and some other proxies buffer responses unless told not to.
    "X-Accel-Buffering": "no",
}
CORS_MAX_AGE_SECONDS = 600


class _ClosingHTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection, with the final response message shielded.

    quart-trio cancels its per-request nursery as soon as it receives
    ``http.disconnect``. Hypercorn sends that message from *inside* our final
    ``send()`` (when it tidies the stream), so the cancellation lands while
    hypercorn is still closing a ``Connection: close`` / HTTP/1.0 socket or
    arming the keep-alive idle timer: the client never sees EOF and idle
    connections are never closed. Shielding that one call lets hypercorn
    finish; its socket writes are shielded anyway, so this adds no new wait.
    """

    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, send: Callable[[Any], Awaitable[None]]
    ) -> None:
        async def send_last_shielded(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await super().handle_request(nursery, request, send_last_shielded)


class _App(QuartTrio):
    asgi_http_class = _ClosingHTTPConnection


def _text(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        reason + "\n", status=status, headers=headers, content_type="text/plain; charset=utf-8"
    )


def create_app(config: Config, hub: Hub) -> QuartTrio:
    """Build the Quart-Trio application serving ``hub`` under ``config``."""
    app = _App("trio_esper")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    def cors_headers() -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or not config.cors_origins:
            return {}
        if "*" in config.cors_origins:
            return {"Access-Control-Allow-Origin": "*"}
        if origin in config.cors_origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    def authorise(secret: str | None, topic: str | None) -> None:
        if secret is None:
            return
        token = bearer_token(request.headers.get("Authorization"), request.args.get("token"))
        verify_token(token, secret, topic=topic, algorithms=config.jwt_algorithms)

    @app.errorhandler(EsperError)
    async def esper_error(error: EsperError) -> Response:
        headers = cors_headers()
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="trio_esper"'
        elif error.status == 413:
            # The rest of the body is never read, so the connection cannot be reused.
            headers["Connection"] = "close"
        return _text(error.status, error.reason, headers)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        response = _text(error.code or 500, f"{error.code} {error.name}", cors_headers())
        for name, value in error.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response

    @app.route("/subscribe/<topic>", methods=["GET"])
    async def subscribe(topic: str) -> Response:
        topic = normalise_topic(topic)
        authorise(config.subscriber_secret, topic)

        async def stream() -> AsyncIterator[bytes]:
            # Subscribing inside the generator: if the client is gone before
            # the body starts, the generator never runs and nothing is
            # registered; once it runs, `async with` unregisters on any exit.
            async with hub.subscribe(topic) as subscription:
                yield SUBSCRIBED_FRAME
                async for chunk in subscription:
                    yield chunk
                _log_end(topic, subscription)

        response = Response(stream(), status=200, headers={**STREAM_HEADERS, **cors_headers()})
        response.timeout = None  # quart's default 60 s would cut every stream
        return response

    @app.route("/publish/<topic>", methods=["POST"])
    async def publish(topic: str) -> Response:
        topic = normalise_topic(topic)
        authorise(config.publisher_secret, topic)
        try:
            body = await request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise PayloadTooLarge(
                f"body is larger than the {config.max_body_bytes}-byte limit"
            ) from None
        assert isinstance(body, bytes)
        events = parse_body(body)
        subscribers = await hub.publish(topic, [encode(event) for event in events])
        payload = {"id": events[-1].id, "events": len(events), "subscribers": subscribers}
        return Response(
            json.dumps(payload) + "\n",
            status=200,
            headers=cors_headers(),
            content_type="application/json",
        )

    @app.route("/stats", methods=["GET"])
    async def stats() -> Response:
        authorise(config.publisher_secret, None)
        payload = {"version": __version__, **asdict(hub.statistics())}
        return Response(
            json.dumps(payload) + "\n", headers=cors_headers(), content_type="application/json"
        )

    @app.route("/subscribe/<topic>", methods=["OPTIONS"])
    @app.route("/publish/<topic>", methods=["OPTIONS"])
    @app.route("/stats", methods=["OPTIONS"])
    async def preflight(topic: str | None = None) -> Response:
        headers = cors_headers()
        if headers:
            headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            headers["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, Last-Event-ID, Cache-Control"
            )
            headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)
        return Response("", status=204, headers=headers)

    return app


def _log_end(topic: str, subscription: Subscription) -> None:
    if subscription.dropped:
        log.info("subscriber to %s dropped: its queue was full", topic)
