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

from . import __version__, endpoints
from .config import Config
from .errors import BadRequest, EsperError, NotAcceptable, NotFound, PayloadTooLarge
from .history import Record
from .hub import Hub
from .rawstream import STATE_KEY, RawConnection
from .sse import SUBSCRIBED_FRAME, Event, encode
from .topics import normalise_topic

log = logging.getLogger("trio_esper")

STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx and some other proxies buffer responses unless told not to.
    "X-Accel-Buffering": "no",
}
CORS_MAX_AGE_SECONDS = 600
NDJSON = "application/x-ndjson"
TSV = "text/tab-separated-values"
HISTORY_LIMIT_DEFAULT = 1000
HISTORY_LIMIT_MAX = 10_000
#: Sent before a replay when the Last-Event-ID is unknown or expired: the
#: client missed events it cannot get back, and everything retained follows.
#: No id field, so the client's last event id is left as it was.
RESET_FRAME = encode(Event('{"reason": "unknown-last-event-id"}', event="reset"))


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


def _json(body: bytes, headers: dict[str, str]) -> Response:
    return Response(body, headers=headers, content_type="application/json")


def create_app(config: Config, hub: Hub) -> QuartTrio:
    """Build the Quart-Trio application serving ``hub`` under ``config``."""
    app = _App("trio_esper")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    retry_frame = None if config.retry_ms is None else f"retry: {config.retry_ms}\n\n".encode()

    def cors_headers() -> dict[str, str]:
        return endpoints.cors_headers(config, request.headers.get("Origin"))

    def authorise(secret: str | None, topic: str | None) -> None:
        endpoints.authorise(
            config,
            secret,
            topic,
            authorization=request.headers.get("Authorization"),
            token=request.args.get("token"),
        )

    @app.errorhandler(EsperError)
    async def esper_error(error: EsperError) -> Response:
        return _text(error.status, error.reason, endpoints.error_headers(error, cors_headers()))

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
        resume, last_id = _resume_point()
        opening = SUBSCRIBED_FRAME + (b"" if retry_frame is None else retry_frame)
        http_version = request.scope.get("http_version")
        raw: RawConnection | None = None
        if http_version in ("1.0", "1.1"):
            raw = request.scope.get("state", {}).get(STATE_KEY)
        raw_chunked = raw is not None and http_version == "1.1"

        async def stream() -> AsyncIterator[bytes]:
            # Subscribing inside the generator: if the client is gone before
            # the body starts, the generator never runs and nothing is
            # registered; once it runs, `async with` unregisters on any exit.
            async with hub.subscribe(topic, chunked=raw_chunked) as subscription:
                yield opening
                if resume:
                    replay = await hub.replay(subscription, last_id)
                    frames = [] if replay.found else [RESET_FRAME]
                    frames += [record.frame for record in replay.records]
                    if frames:
                        yield b"".join(frames)
                if raw is None:
                    async for chunk in subscription:
                        yield chunk
                else:
                    # Hypercorn has written everything yielded so far; one
                    # task in the topic's nursery serves the rest (rawstream.py),
                    # and this request's tasks end.
                    raw.detach()
                    hub.adopt(subscription, raw.serve)

        response = Response(stream(), status=200, headers={**STREAM_HEADERS, **cors_headers()})
        response.timeout = None  # quart's default 60 s would cut every stream
        return response

    @app.route("/publish/<topic>", methods=["POST"])
    async def publish(topic: str) -> Response:
        try:
            body = await request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise PayloadTooLarge(
                f"body is larger than the {config.max_body_bytes}-byte limit"
            ) from None
        assert isinstance(body, bytes)
        published = endpoints.PublishRequest(
            topic,
            body,
            (request.mimetype or "").lower(),
            authorization=request.headers.get("Authorization"),
            token=request.args.get("token"),
            event=request.args.get("event"),
            id=request.args.get("id"),
        )
        return _json(await endpoints.publish(config, hub, published), cors_headers())

    @app.route("/history/<topic>", methods=["GET"])
    async def history(topic: str) -> Response:
        topic = normalise_topic(topic)
        authorise(config.subscriber_secret, topic)
        limit = _int_arg("limit", HISTORY_LIMIT_DEFAULT, 1, HISTORY_LIMIT_MAX)
        after = request.args.get("after")
        mimetype = NDJSON
        if request.headers.get("Accept"):
            mimetype = request.accept_mimetypes.best_match([NDJSON, TSV], default="")
        if not mimetype:
            raise NotAcceptable(f"history is served as {NDJSON} or {TSV}")
        page = await hub.history.after(topic, after, limit)
        if not page.found:
            raise NotFound(f"event id {after!r} is not in this topic's retained history")
        body = (ndjson_lines if mimetype == NDJSON else tsv_lines)(page.records)
        return Response(body, headers=cors_headers(), content_type=mimetype)

    @app.route("/stats", methods=["GET"])
    async def stats() -> Response:
        authorise(config.publisher_secret, None)
        payload = {
            "version": __version__,
            **asdict(hub.statistics()),
            "history": asdict(hub.history.statistics()),
        }
        return _json(endpoints.json_body(payload), cors_headers())

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


def _resume_point() -> tuple[bool, str | None]:
    """Whether and where a subscriber resumes: after the Last-Event-ID header
    (what EventSource sends when it reconnects), else ``?lastEventId=``; from
    the start of history with ``?since=earliest`` (``(True, None)``); or not
    at all, live events only (``(False, None)``)."""
    last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    if last_id:
        return True, last_id
    since = request.args.get("since")
    if since is None:
        return False, None
    if since != "earliest":
        raise BadRequest("since must be 'earliest'")
    return True, None


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def ndjson_lines(records: list[Record]) -> str:
    return "".join(
        json.dumps(
            {"id": r.id, "event": r.event.event, "data": r.event.data, "time": r.time},
            ensure_ascii=False,
        )
        + "\n"
        for r in records
    )


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})


def tsv_lines(records: list[Record]) -> str:
    r"""A header line, then ``id, event, time, data`` per event; backslash,
    tab and newline inside fields are escaped as ``\\``, ``\t``, ``\n``."""
    rows = ["id\tevent\ttime\tdata\n"]
    for r in records:
        fields = (r.id, r.event.event or "", f"{r.time:.6f}", r.event.data)
        rows.append("\t".join(f.translate(_TSV_ESCAPES) for f in fields) + "\n")
    return "".join(rows)
