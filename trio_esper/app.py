"""HTTP edge: Quart-Trio routes that parse a request, call the hub, and encode
the answer. Every :class:`~trio_esper.errors.EsperError` becomes its status
code and a one-line ``text/plain`` reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import asdict
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import __version__, endpoints
from .config import Config
from .errors import (
    AmbiguousFraming,
    BadRequest,
    EsperError,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
)
from .history import Record
from .hub import Hub
from .topics import normalise_topic

log = logging.getLogger("trio_esper")

CORS_MAX_AGE_SECONDS = 600
NDJSON = "application/x-ndjson"
TSV = "text/tab-separated-values"
HISTORY_LIMIT_DEFAULT = 1000
HISTORY_LIMIT_MAX = 10_000


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


def _response(answer: endpoints.Answer) -> Response:
    # The header list carries content-type, so Quart adds only content-length.
    return Response(answer.body, status=answer.status, headers=Headers(answer.headers))


def create_app(config: Config, hub: Hub) -> QuartTrio:
    """Build the Quart-Trio application serving ``hub`` under ``config``."""
    app = _App("trio_esper")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    opening = endpoints.opening_frame(config)

    def cors_headers() -> endpoints.Headers:
        return endpoints.cors_headers(config, request.headers.get("Origin"))

    def args() -> dict[str, str]:
        return endpoints.query_args(request.query_string)

    def authorise(secret: str | None, topic: str | None) -> None:
        endpoints.authorise(
            config,
            secret,
            topic,
            authorization=request.headers.get("Authorization"),
            token=endpoints.query_or_cookie_token(config, args(), request.headers.get("Cookie")),
        )

    @app.before_request
    async def check_request() -> None:
        # werkzeug matches //subscribe/x as /subscribe/x (and, merging
        # slashes, would redirect to a Location built from the Host header).
        if "//" in request.scope["path"]:
            raise NotFound("unknown route")
        # RFC 9112, section 6.1: answer, then close (the edge declines these
        # to this route, so both front ends answer alike).
        length = request.headers.get("Content-Length")
        if length is not None and "Transfer-Encoding" in request.headers:
            raise AmbiguousFraming("Content-Length and Transfer-Encoding together")
        # The edge's body deadline: the stall timeout plus the length at the
        # slowest rate accepted (a chunked body: the largest length).
        expected = int(length) if length and _DIGITS.fullmatch(length) else 0
        request.body_timeout = math.ceil(
            config.request_body_timeout_seconds
            + (expected or config.max_body_bytes) / config.request_body_min_rate_bytes
        )

    @app.errorhandler(EsperError)
    async def esper_error(error: EsperError) -> Response:
        return _response(endpoints.error_answer(error, cors_headers()))

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        headers = [("content-type", endpoints.TEXT), *cors_headers()]
        headers += [(k, v) for k, v in error.get_headers() if k.lower() == "allow"]
        if error.code == 408:
            headers.append(("connection", "close"))
        body = f"{error.code} {error.name}\n".encode()
        return _response(endpoints.Answer(error.code or 500, headers, body))

    @app.route("/subscribe/<topic>", methods=["GET"])
    async def subscribe(topic: str) -> Response:
        plan = endpoints.plan_subscribe(
            config,
            endpoints.SubscribeRequest(
                topic,
                request.query_string,
                authorization=request.headers.get("Authorization"),
                cookie=request.headers.get("Cookie"),
                last_event_id=request.headers.get("Last-Event-ID"),
            ),
        )
        headers = [*endpoints.STREAM_HEADERS, *cors_headers()]
        client = request.remote_addr or ""
        # Refused now, with its status; the stream subscribes when it starts
        # (a client gone before then leaves nothing registered).
        hub.admit(plan.topic, client)
        if request.method == "HEAD":
            # RFC 9110, section 9.3.2: the head a GET would get, and no body.
            return Response(b"", headers=Headers(headers))

        async def stream() -> AsyncIterator[bytes]:
            # Subscribing inside the generator: if the client is gone before
            # the body starts, the generator never runs and nothing is
            # registered; once it runs, `async with` unregisters on any exit.
            async with hub.subscribe(plan.topic, client=client) as subscription:
                yield opening
                async with aclosing(endpoints.replay_pages(hub, subscription, plan)) as pages:
                    async for page in pages:
                        yield page
                async for chunk in subscription:
                    yield chunk

        response = Response(stream(), status=200, headers=Headers(headers))
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
            request.query_string,
            content_type=request.headers.get("Content-Type"),
            authorization=request.headers.get("Authorization"),
            cookie=request.headers.get("Cookie"),
            budget=request.scope.get("state", {}).get(endpoints.BUDGET_KEY),
        )
        payload = await endpoints.publish(config, hub, published)
        return _response(endpoints.json_answer(payload, cors_headers()))

    @app.route("/history/<topic>", methods=["GET"])
    async def history(topic: str) -> Response:
        topic = normalise_topic(topic)
        authorise(config.subscriber_key, topic)
        query = args()
        limit = _int_arg(query, "limit", HISTORY_LIMIT_DEFAULT, 1, HISTORY_LIMIT_MAX)
        after = query.get("after")
        mimetype = NDJSON
        if request.headers.get("Accept"):
            mimetype = request.accept_mimetypes.best_match([NDJSON, TSV], default="")
        if not mimetype:
            raise NotAcceptable(f"history is served as {NDJSON} or {TSV}")
        page = await hub.history.after(topic, after, limit)
        if not page.found:
            raise NotFound(f"event id {after!r} is not in this topic's retained history")
        body = (ndjson_lines if mimetype == NDJSON else tsv_lines)(page.records)
        return _response(
            endpoints.Answer(200, [("content-type", mimetype), *cors_headers()], body.encode())
        )

    @app.route("/stats", methods=["GET"])
    async def stats() -> Response:
        authorise(config.publisher_key, None)
        payload = {
            "version": __version__,
            **asdict(hub.statistics()),
            "history": asdict(hub.history.statistics()),
        }
        return _response(endpoints.json_answer(endpoints.json_body(payload), cors_headers()))

    @app.route("/subscribe/<topic>", methods=["OPTIONS"])
    @app.route("/publish/<topic>", methods=["OPTIONS"])
    @app.route("/history/<topic>", methods=["OPTIONS"])
    @app.route("/stats", methods=["OPTIONS"])
    async def preflight(topic: str | None = None) -> Response:
        headers = cors_headers()
        if headers:
            headers.append(("access-control-allow-methods", "GET, POST, OPTIONS"))
            headers.append(
                (
                    "access-control-allow-headers",
                    "Authorization, Content-Type, Last-Event-ID, Cache-Control",
                )
            )
            headers.append(("access-control-max-age", str(CORS_MAX_AGE_SECONDS)))
        return Response("", status=204, headers=Headers(headers))

    return app


#: Only ASCII digits: ``str.isdigit`` also takes "²", which ``int`` refuses.
_DIGITS = re.compile(r"[0-9]+")


def _int_arg(args: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    if _DIGITS.fullmatch(raw) is None or not low <= int(raw) <= high:
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
