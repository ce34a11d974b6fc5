"""HTTP edge: Quart-Trio routes that parse a request, call the hub, and encode
the answer. Every :class:`~trio_esper.errors.EsperError` becomes its status
code and a one-line ``text/plain`` reason.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from . import api, endpoints, logs, ops, web
from .config import Config
from .edge.bridge import ClosingHTTPConnection
from .errors import (
    AmbiguousFraming,
    EsperError,
    NotAcceptable,
    NotFound,
)
from .history import Record
from .hub import Hub
from .mercure import routes as mercure_routes
from .metrics import Metrics
from .topics import normalise_topic

log = logging.getLogger("trio_esper")

CORS_MAX_AGE_SECONDS = 600
NDJSON = "application/x-ndjson"
TSV = "text/tab-separated-values"
#: About how much of the events' data one piece of a /history answer holds.
HISTORY_PIECE_BYTES = 64 * 1024


class _App(QuartTrio):
    asgi_http_class = ClosingHTTPConnection


def create_app(config: Config, hub: Hub, metrics: Metrics | None = None) -> QuartTrio:
    """Build the Quart-Trio application serving ``hub`` under ``config``;
    ``metrics`` counts its error answers and serves ``/metrics``."""
    app = _App("trio_esper", static_folder=None)  # no /static route: every route is ours
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    opening = endpoints.opening_frame(config)
    if metrics is None:
        metrics = Metrics(hub)

    def route(path: str, *methods: str) -> Callable[[web.Handler], web.Handler]:
        """``app.route``, with ``OPTIONS`` (CORS preflight) on every path."""
        return app.route(path, methods=[*methods, "OPTIONS"])

    def authorise(secret: str | None, topic: str | None) -> None:
        # /history: reading a topic, as subscribing (the cookie is a credential).
        endpoints.authorise(config, secret, topic, **web.credentials(config, subscribing=True))

    @app.before_request
    async def check_request() -> Response | None:
        # werkzeug matches //subscribe/x as /subscribe/x (and, merging
        # slashes, would redirect to a Location built from the Host header).
        path = request.scope["path"]
        # (The subscriptions API's selectors are escaped in the path, and
        # decode to anything: that route reads its raw path itself.)
        if "//" in path and not path.startswith(mercure_routes.SUBSCRIPTION_PATHS):
            raise NotFound("unknown route")
        if request.method == "OPTIONS":
            return preflight()
        # RFC 9112, section 6.1: answer, then close (the edge declines these
        # to this route, so both front ends answer alike).
        length = request.headers.get("Content-Length")
        if length is not None and "Transfer-Encoding" in request.headers:
            raise AmbiguousFraming("Content-Length and Transfer-Encoding together")
        # The edge's body deadline: the stall timeout plus the length at the
        # slowest rate accepted (a chunked body: the largest length).
        expected = int(length) if length and endpoints.DIGITS.fullmatch(length) else 0
        request.body_timeout = math.ceil(
            config.request_body_timeout_seconds
            + (expected or config.max_body_bytes) / config.request_body_min_rate_bytes
        )
        return None

    def preflight() -> Response:
        """CORS preflight (204) for any route: the methods it takes."""
        headers = web.cors_headers(config)
        if headers:
            # Every rule of the path: each route registers its own.
            adapter = app.create_url_adapter(request)
            assert adapter is not None  # inside a request
            methods = sorted(set(adapter.allowed_methods()) - {"HEAD"})
            headers.append(("access-control-allow-methods", ", ".join(methods)))
            headers.append(
                (
                    "access-control-allow-headers",
                    "Authorization, Content-Type, Last-Event-ID, Cache-Control",
                )
            )
            headers.append(("access-control-max-age", str(CORS_MAX_AGE_SECONDS)))
        return Response("", status=204, headers=Headers(headers))

    @app.after_request
    async def count_errors(response: Response) -> Response:
        if response.status_code >= 400:
            metrics.error_answered(response.status_code)
        return response

    @app.errorhandler(EsperError)
    async def esper_error(error: EsperError) -> Response:
        topic = (request.view_args or {}).get("topic")
        logs.auth_failed(error, client=request.remote_addr, topic=topic)
        return web.response(endpoints.error_answer(error, web.cors_headers(config)))

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        headers = [("content-type", endpoints.TEXT), *web.cors_headers(config)]
        headers += [(k, v) for k, v in error.get_headers() if k.lower() == "allow"]
        if error.code == 408:
            headers.append(("connection", "close"))
        body = f"{error.code} {error.name}\n".encode()
        return web.response(endpoints.Answer(error.code or 500, headers, body))

    @route("/subscribe/<topic>", "GET")
    async def subscribe(topic: str) -> Response:
        plan = endpoints.plan_subscribe(config, web.subscribe_request(topic))
        return await web.stream_response(config, hub, plan, opening)

    @route("/publish/<topic>", "POST")
    async def publish(topic: str) -> Response:
        published = endpoints.PublishRequest(
            topic,
            await web.body(config),
            request.query_string,
            content_type=request.headers.get("Content-Type"),
            authorization=request.headers.get("Authorization"),
            cookie=request.headers.get("Cookie"),
            budget=request.scope.get("state", {}).get(endpoints.BUDGET_KEY),
        )
        payload = await endpoints.publish(config, hub, published)
        return web.response(endpoints.json_answer(payload, web.cors_headers(config)))

    @route("/history/<topic>", "GET")
    async def history(topic: str) -> Response:
        topic = normalise_topic(topic)
        authorise(config.subscriber_key, topic)
        hub.check_readable(topic)
        query = web.query()
        limit = endpoints.int_arg(
            query, "limit", endpoints.HISTORY_LIMIT_DEFAULT, 1, endpoints.HISTORY_LIMIT_MAX
        )
        after = query.get("after")
        mimetype = NDJSON
        if request.headers.get("Accept"):
            mimetype = request.accept_mimetypes.best_match([NDJSON, TSV], default="")
        if not mimetype:
            raise NotAcceptable(f"history is served as {NDJSON} or {TSV}")
        page = await hub.history.after(topic, after, limit)
        if not page.found:
            raise NotFound(f"event id {after!r} is not in this topic's retained history")
        lines = ndjson_lines if mimetype == NDJSON else tsv_lines
        headers = Headers([("content-type", mimetype), *web.cors_headers(config)])
        return Response(_in_pieces(lines, page.records), status=200, headers=headers)

    api.register(app, config, hub, route, opening)
    mercure_routes.register(app, config, hub, route, opening)
    ops.register(app, config, hub, route, metrics)
    return app


async def _in_pieces(
    lines: Callable[[Sequence[Record]], str], records: Sequence[Record]
) -> AsyncIterator[bytes]:
    """``lines(records)`` a piece of about :data:`HISTORY_PIECE_BYTES` at a
    time: the answer is never whole in memory (JSON writes a control
    character in six bytes, so a topic's history can grow six times over)."""
    start = 0
    while start < len(records):
        size, end = 0, start
        while end < len(records) and size < HISTORY_PIECE_BYTES:
            size += len(records[end].event.data)
            end += 1
        yield lines(records[start:end]).encode()
        start = end


def ndjson_lines(records: Sequence[Record]) -> str:
    return "".join(
        json.dumps(
            {"id": r.id, "event": r.event.event, "data": r.event.data, "time": r.time},
            ensure_ascii=False,
        )
        + "\n"
        for r in records
    )


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})


def tsv_lines(records: Sequence[Record]) -> str:
    r"""A header line, then ``id, event, time, data`` per event; backslash,
    tab and newline inside fields are escaped as ``\\``, ``\t``, ``\n``."""
    rows = ["id\tevent\ttime\tdata\n"]
    for r in records:
        fields = (r.id, r.event.event or "", f"{r.time:.6f}", r.event.data)
        rows.append("\t".join(f.translate(_TSV_ESCAPES) for f in fields) + "\n")
    return "".join(rows)
