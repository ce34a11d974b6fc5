"""What every Quart-Trio route handler needs of the request it serves: its
CORS headers, query arguments, token and body, and a way to answer with an
:class:`~trio_esper.endpoints.Answer`. Used by :mod:`.app`, :mod:`.api` and
:mod:`.ops`, inside a request context."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing
from typing import Any, TypedDict, cast

import trio
from quart import Response, has_request_context, request, websocket
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge

from . import endpoints
from .config import Config
from .errors import (
    BadRequest,
    EsperError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from .hub import Hub, Subscription

log = logging.getLogger("trio_esper")

#: A route handler.
Handler = Callable[..., Awaitable[Response]]
#: Registers a handler for a path and its methods (CORS preflight included).
Route = Callable[..., Callable[[Handler], Handler]]


def response(answer: endpoints.Answer) -> Response:
    # The header list carries content-type, so Quart adds only content-length.
    return Response(answer.body, status=answer.status, headers=Headers(answer.headers))


def json_response(config: Config, payload: dict[str, Any], status: int = 200) -> Response:
    """``payload`` as a JSON answer, with the request's CORS headers."""
    return response(
        endpoints.json_answer(endpoints.json_body(payload), cors_headers(config), status)
    )


def cors_headers(config: Config) -> endpoints.Headers:
    # A WebSocket handshake, which no route takes, is refused in a websocket context.
    headers = (request if has_request_context() else websocket).headers
    return endpoints.cors_headers(config, headers.get("Origin"))


def query() -> dict[str, str]:
    """The query string's arguments (400 if it does not decode)."""
    return endpoints.query_args(request.query_string)


class Credentials(TypedDict):
    """A request's token, as the ``authorise*`` functions of :mod:`.endpoints` take it."""

    authorization: str | None
    token: str | None


def credentials(config: Config, *, subscribing: bool = False) -> Credentials:
    """The request's ``Authorization`` header and its other token (the auth
    cookie's only if ``subscribing``: :func:`.endpoints.query_or_cookie_token`)."""
    cookie = request.headers.get("Cookie")
    return Credentials(
        authorization=request.headers.get("Authorization"),
        token=endpoints.query_or_cookie_token(config, query(), cookie, subscribing=subscribing),
    )


async def body(config: Config) -> bytes:
    """The whole request body, within ``config.max_body_bytes`` (413 past
    it), as the fast forms read one: 408 if it stalls for
    ``config.request_body_timeout_seconds`` or is not whole by the request's
    ``body_timeout`` (set before the request: the slowest rate accepted).

    Raises:
        PayloadTooLarge: the body is over the limit.
        RequestTimeout: the body stalled, or came too slowly.
    """
    too_large = PayloadTooLarge(f"body is larger than the {config.max_body_bytes}-byte limit")
    data = bytearray()
    # Quart's body, each part as it arrives. (Its own limit counts the bytes
    # not yet taken: read this way, the sum is this function's to bound.)
    parts = aiter(request.body)
    with trio.move_on_after(request.body_timeout or math.inf):
        while True:
            with trio.move_on_after(config.request_body_timeout_seconds) as stall:
                try:
                    data += await anext(parts)
                except StopAsyncIteration:
                    return bytes(data)
                except RequestEntityTooLarge:  # a Content-Length past the limit
                    raise too_large from None
                if len(data) > config.max_body_bytes:
                    raise too_large
            if stall.cancelled_caught:
                break
    raise RequestTimeout("request body too slow")


async def json_body(config: Config) -> Any:
    """The request body parsed as JSON (``application/json``, or no
    ``Content-Type``); an empty body is ``{}``.

    Raises:
        UnsupportedMediaType: another ``Content-Type``.
        BadRequest: the body is not JSON (``NaN``, ``Infinity``, numbers out of
            range and lone surrogates included).
        PayloadTooLarge: the body is over the limit.
    """
    kind = endpoints.mimetype(request.headers.get("Content-Type"))
    if kind not in ("", endpoints.JSON):
        raise UnsupportedMediaType(f"the body must be {endpoints.JSON}, not {kind}")
    data = await body(config)
    if not data.strip():
        return {}
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
        # JSON text may escape a lone surrogate ("\\ud800"), which no UTF-8 holds.
        json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    return value


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:32]} is out of range for a number")
    return number


def charge_budget() -> None:
    """Charge the connection's publish rate limit, if it has one (429)."""
    budget = request.scope.get("state", {}).get(endpoints.BUDGET_KEY)
    if budget is not None:
        budget.charge()


def subscribe_request(topic: str) -> endpoints.SubscribeRequest:
    """The current request as a subscribe to ``topic`` (as in its path)."""
    return endpoints.SubscribeRequest(
        topic,
        request.query_string,
        authorization=request.headers.get("Authorization"),
        cookie=request.headers.get("Cookie"),
        last_event_id=request.headers.get("Last-Event-ID"),
    )


async def stream_response(
    config: Config, hub: Hub, plan: endpoints.Stream, opening: bytes
) -> Response:
    """The event stream ``plan`` describes: ``opening``, the history it
    resumes from, then live events until it ends. A ``HEAD`` request gets
    the head alone (RFC 9110, section 9.3.2) and subscribes to nothing.

    Raises:
        EsperError: the hub refuses the subscription now (shutting down,
            a limit, a deleted topic).
    """
    headers = [*endpoints.STREAM_HEADERS, *cors_headers(config)]
    client = request.remote_addr or ""
    hub.admit(plan.topic, client)
    await endpoints.check_store(hub)
    if request.method == "HEAD":
        return Response(b"", headers=Headers(headers))

    # Admission and subscription are one step: refused here, with its
    # status, or subscribed before the head goes out (streams admitted
    # together could otherwise pass a limit that each checked alone). The
    # request holds the subscription, so it ends with the request, whether
    # or not the body ever starts.
    subscription = await held().enter_async_context(hub.subscribe(plan.topic, client=client))
    body = stream_body(
        opening,
        endpoints.replay_pages(hub, subscription, plan),
        subscription,
        endpoints.expiry_deadline(plan.expires_at),
        endpoints.EXPIRED_FRAME,
        f"stream to {client} on {plan.topic}",
    )
    return endless(Response(body, status=200, headers=Headers(headers)))


async def stream_body(
    opening: bytes,
    replay: AsyncGenerator[bytes, None],
    subscription: Subscription,
    deadline: float,
    expired: bytes,
    name: str,
) -> AsyncIterator[bytes]:
    """A Quart stream's body: ``opening``, the pages of ``replay``, then
    what ``subscription`` gives until it ends or ``deadline`` (its token's
    expiry) passes, and then ``expired`` (if not empty). A history read that
    fails after the head ends the stream, logged as ``name``: the client
    reconnects and resumes."""
    try:
        yield opening
        async with aclosing(replay) as pages:
            async for page in pages:
                yield page
        async with aclosing(until(deadline, subscription)) as live:
            async for chunk in live:
                yield chunk
        if expired and trio.current_time() >= deadline:
            yield expired
    except EsperError as error:
        log.warning("%s ended: %s", name, error.reason)


async def until(deadline: float, subscription: Subscription) -> AsyncGenerator[bytes, None]:
    """What ``subscription`` gives until it ends or ``deadline`` passes (a
    token's expiry). The cancel scope holds each wait, never a ``yield``.
    Use with ``contextlib.aclosing``."""
    while True:
        with trio.move_on_at(deadline):
            try:
                chunk = await subscription.__anext__()
            except StopAsyncIteration:
                return
        if trio.current_time() >= deadline:
            return
        yield chunk


#: The request scope's key for :func:`held`'s stack.
HELD_KEY = "trio_esper.held"


def held() -> AsyncExitStack:
    """What the request holds until it ends, answered or not: a context
    entered here exits when the request does (its client gone, its answer
    written or failed), even if the answer's body never started. The ASGI
    connection class sets it up (:class:`~trio_esper.edge.bridge.ClosingHTTPConnection`).
    """
    scope = cast(dict[str, Any], request.scope)
    stack: AsyncExitStack = scope[HELD_KEY]
    return stack


def endless(streaming: Response) -> Response:
    """``streaming`` without Quart's response timeout (60 s by default),
    which would cut every stream."""
    streaming.timeout = None
    return streaming


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")
