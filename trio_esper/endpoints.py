"""What the publish and subscribe routes do, apart from HTTP parsing: shared by
the two front ends, the Quart-Trio routes (:mod:`.app`) and the edge's fast
forms (:mod:`.edge`), so a request is answered with the same bytes whichever
served it.

Every function takes plain values (header values, the raw query string, the
body) and raises an :class:`~trio_esper.errors.EsperError` for a bad request;
:func:`error_answer` turns one into its answer.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import trio

from .auth import bearer_token, verify_token
from .config import Config
from .errors import (
    BadRequest,
    EsperError,
    Forbidden,
    HistoryError,
    InvalidTopic,
    TooManyRequests,
    Unauthorized,
)
from .hub import Hub, Published, Subscription
from .sse import SUBSCRIBED_FRAME, Event, encode, parse_body, parse_plain
from .topics import normalise_topic

#: Header fields are listed as (name, value), names lower-case, in the order
#: they go on the wire.
Headers = list[tuple[str, str]]

STREAM_HEADERS: Headers = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    # nginx and some other proxies buffer responses unless told not to.
    ("x-accel-buffering", "no"),
]
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
#: History is read for a resuming subscriber this many events at a time, each
#: page written before the next is read: a reconnect storm never holds a
#: subscriber's whole backlog in memory.
REPLAY_PAGE_EVENTS = 1000
#: ``GET /history/{topic}``'s ``limit``: its default and its largest value.
HISTORY_LIMIT_DEFAULT = 1000
HISTORY_LIMIT_MAX = 10_000
#: A readiness answer (``/ready``) is reused this long: probing commits to the
#: history store, and ``/ready`` needs no credential.
READY_CACHE_SECONDS = 1.0
#: The dashboard's files, served from the package (no CDN: it works offline),
#: by their suffix.
DASHBOARD_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
#: Sent before a replay when the Last-Event-ID is unknown or expired: the
#: client missed events it cannot get back, and everything retained follows.
#: No id field, so the client's last event id is left as it was.
RESET_FRAME = encode(Event('{"reason": "unknown-last-event-id"}', event="reset"))
#: The last event of a stream whose token expires (the stream then ends): a
#: page refreshes its token and reopens with ``?lastEventId=``.
EXPIRED_FRAME = encode(Event('{"reason": "token-expired"}', event="expired"))


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class Answer:
    """A complete response: status, header fields (``content-length`` is
    added by whoever writes it), body."""

    status: int
    headers: Headers
    body: bytes


def query_args(query: bytes) -> dict[str, str]:
    """The query string's arguments, the first value of each name.

    Raises:
        BadRequest: a percent-escape that does not decode as UTF-8.
    """
    if not query:
        return {}
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("query string is not valid percent-encoded UTF-8") from None
    args: dict[str, str] = {}
    for name, value in pairs:
        args.setdefault(name, value)
    return args


def mimetype(content_type: str | None) -> str:
    """``Content-Type`` without parameters, lower-case; empty if absent."""
    return (content_type or "").partition(";")[0].strip().lower()


def cors_headers(config: Config, origin: str | None) -> Headers:
    """The CORS response headers for a request from ``origin`` (none if the
    origin is not allowed, or the request is not cross-origin)."""
    if origin is None or not config.cors_origins:
        return []
    if "*" in config.cors_origins:
        return [("access-control-allow-origin", "*")]
    if origin in config.cors_origins:
        headers = [("access-control-allow-origin", origin), ("vary", "Origin")]
        if config.auth_cookie is not None:
            # `new EventSource(url, {withCredentials: true})` sends the cookie
            # only to an origin named exactly (never to "*").
            headers.append(("access-control-allow-credentials", "true"))
        return headers
    return []


def cookie(header: str | None, name: str | None) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (RFC 6265,
    section 4.2.1: ``cookie-pair *( ";" SP cookie-pair )``), or ``None``."""
    if header is None or name is None:
        return None
    for pair in header.split(";"):
        key, equals, value = pair.strip().partition("=")
        if equals and key == name:
            return value.strip('"') or None
    return None


def error_answer(error: EsperError, cors: Headers) -> Answer:
    """``error``'s status with a one-line ``text/plain`` reason."""
    headers: Headers = [("content-type", TEXT), *cors]
    if error.status in (401, 403):
        headers.append(("www-authenticate", www_authenticate(error.reason)))
    if error.retry_after_seconds is not None:
        headers.append(("retry-after", str(error.retry_after_seconds)))
    if error.close_connection:
        headers.append(("connection", "close"))
    return Answer(error.status, headers, (error.reason + "\n").encode())


def www_authenticate(reason: str) -> str:
    """RFC 6750, section 3: the challenge of a 401 or 403, saying why. The
    description may hold printable ASCII but ``"`` and ``\\``."""
    description = "".join(
        c if " " <= c <= "~" and c not in '"\\' else "'" if c in '"\\' else "?" for c in reason
    )
    return f'Bearer realm="trio_esper", error="invalid_token", error_description="{description}"'


def json_answer(body: bytes, cors: Headers, status: int = 200) -> Answer:
    return Answer(status, [("content-type", JSON), *cors], body)


def authorise(
    config: Config,
    secret: str | None,
    topic: str | None,
    *,
    authorization: str | None,
    token: str | None,
) -> int | None:
    """Check the request's JWT (``Authorization`` header or ``?token=``)
    against ``secret`` (a side's secret or its :class:`~trio_esper.auth.PublicKeys`);
    an open side (``None``) lets everyone in. Returns the token's ``exp``
    (``None`` on an open side).

    Raises:
        Unauthorized: no token, or a malformed ``Authorization`` header.
        Forbidden: the token does not verify, is for another audience, or
            names another topic.
    """
    if secret is None:
        return None
    claims = verify_token(
        bearer_token(authorization, token),
        secret,
        topic=topic,
        algorithms=config.jwt_algorithms,
        audience=config.jwt_audience,
    )
    expires: int = claims["exp"]  # verify_token checked it is an int
    return expires


def _checked(
    config: Config, secret: str | None, request: PublishRequest | SubscribeRequest
) -> tuple[str, dict[str, str], int | None]:
    """The request's topic, normalised, its query arguments and its token's
    ``exp``, once its token (``Authorization``, ``?token=`` or the auth
    cookie) is checked against ``secret``."""
    topic = normalise_topic(request.topic)
    args = query_args(request.query)
    subscribing = isinstance(request, SubscribeRequest)
    token = query_or_cookie_token(config, args, request.cookie, subscribing=subscribing)
    expires = authorise(config, secret, topic, authorization=request.authorization, token=token)
    return topic, args, expires


def query_or_cookie_token(
    config: Config, args: dict[str, str], cookie_header: str | None, *, subscribing: bool
) -> str | None:
    """The token a request gives other than in ``Authorization``: ``?token=``
    or ``?access_token=`` (RFC 6750, section 2.3), else the auth cookie
    (``--auth-cookie``) where a cookie may authorise.

    A cookie authorises ``subscribing`` (reading a topic) only, unless
    ``--cookie-publish``: a browser sends it with any page's form ``POST`` or
    "simple" ``fetch``, which need no CORS preflight, so a cookie that could
    publish or manage would let any site do so as the user (CSRF). Mercure's
    routes keep their own rule (:mod:`.mercure.claims`)."""
    token = args.get("token") or args.get("access_token")
    if token or not (subscribing or config.cookie_publish):
        return token or None
    return cookie(cookie_header, config.auth_cookie)


def authorise_management(
    config: Config,
    *,
    authorization: str | None,
    token: str | None,
    topic: str | None = None,
    metrics: bool = False,
) -> None:
    """Check the credential of a management route (the topic API), or with
    ``metrics`` of a monitoring one (``/metrics``, ``/stats``, the dashboard).

    Accepted: ``ESPER_API_TOKEN``; a publisher JWT with ``"admin": true``
    (any ``sub``); with ``topic``, a publisher JWT for that topic too; with
    ``metrics``, ``ESPER_METRICS_TOKEN`` or any publisher JWT. Open when none
    of these credentials is configured.

    Raises:
        Unauthorized: no token, or a malformed ``Authorization`` header.
        Forbidden: the token is none of the accepted ones.
    """
    offered = {"API token": config.api_token, "metrics token": config.metrics_token}
    if not metrics:
        del offered["metrics token"]
    statics = {name: t for name, t in offered.items() if t}
    key = config.publisher_key
    if not statics and key is None:
        return
    presented = bearer_token(authorization, token)
    if presented is None:
        raise Unauthorized("a token is required (Authorization: Bearer or ?access_token=)")
    if any(hmac.compare_digest(presented.encode(), t.encode()) for t in statics.values()):
        return
    if key is None:
        raise Forbidden(f"token is not the {' or the '.join(statics)}")
    claims = verify_token(
        presented, key, topic=None, algorithms=config.jwt_algorithms, audience=config.jwt_audience
    )
    if metrics or claims.get("admin") is True:
        return
    if topic is not None and _names(claims.get("sub"), topic):
        return
    raise Forbidden('token is not an API credential (ESPER_API_TOKEN or "admin": true)')


def _names(sub: object, topic: str) -> bool:
    """Whether a token's ``sub`` names ``topic``."""
    try:
        return isinstance(sub, str) and normalise_topic(sub) == topic
    except InvalidTopic:
        return False


class PublishBudget:
    """One connection's publish rate limit: a token bucket of ``rate``
    requests a second, holding at most one second's worth (0: no limit).
    Whichever front end serves the connection charges the same bucket."""

    __slots__ = ("_at", "_rate", "_tokens")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._at = time.monotonic()

    def charge(self) -> None:
        """Take one request from the bucket.

        Raises:
            TooManyRequests: the bucket is empty (with when to retry).
        """
        if not self._rate:
            return
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            wait = (1 - self._tokens) / self._rate
            raise TooManyRequests(
                f"this connection publishes faster than {self._rate:g} requests a second",
                retry_after_seconds=max(1, math.ceil(wait)),
            )
        self._tokens -= 1


#: Key of a connection's :class:`PublishBudget` in the ASGI scope's ``state``.
BUDGET_KEY = "trio_esper.publish_budget"


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class PublishRequest:
    """A ``POST /publish/{topic}``, as either front end read it."""

    topic: str
    """As it appeared in the path (not yet validated)."""
    body: bytes
    query: bytes = b""
    content_type: str | None = None
    authorization: str | None = None
    cookie: str | None = None
    """The ``Cookie`` header."""
    budget: PublishBudget | None = None
    """The connection's publish rate limit, if it has one."""


async def publish(config: Config, hub: Hub, request: PublishRequest) -> bytes:
    """Authorise, parse and publish; return the JSON response body.

    The body is SSE fields, or with ``Content-Type: text/plain`` one data line
    per body line with ``?event=`` and ``?id=`` (eventsource-hub's style).

    Raises:
        EsperError: a bad topic, token, query or body; a duplicate id (409);
            the connection's publish rate exceeded (429); the history store
            failed (503).
    """
    topic, args, _ = _checked(config, config.publisher_key, request)
    if request.budget is not None:
        request.budget.charge()
    event, id = args.get("event"), args.get("id")
    if mimetype(request.content_type) == "text/plain":
        events = [parse_plain(request.body, event=event, id=id)]
    elif event is not None or id is not None:
        raise BadRequest(
            "?event= and ?id= apply to Content-Type: text/plain bodies; "
            "in an SSE body use event: and id: fields"
        )
    else:
        events = parse_body(request.body)
    return publish_answer(await hub.publish(topic, events))


def publish_answer(published: Published) -> bytes:
    """The JSON body answering a publish."""
    # json.dumps of the whole dict costs more than the rest of this answer,
    # and of the id alone as much: an id of ASCII letters and digits (every
    # id the broker assigns) needs no escaping.
    id = published.records[-1].id
    quoted = b'"%b"' % id.encode() if id.isascii() and id.isalnum() else json.dumps(id).encode()
    return b'{"id": %b, "events": %d, "subscribers": %d}\n' % (
        quoted,
        len(published.records),
        published.subscribers,
    )


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class SubscribeRequest:
    """A ``GET /subscribe/{topic}``, as either front end read it."""

    topic: str
    """As it appeared in the path (not yet validated)."""
    query: bytes = b""
    authorization: str | None = None
    cookie: str | None = None
    """The ``Cookie`` header."""
    last_event_id: str | None = None
    """The ``Last-Event-ID`` header."""


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class Stream:
    """An authorised subscription, not yet open: where it starts."""

    topic: str
    """Normalised."""
    resume: bool
    """Whether history is replayed before live events."""
    after: str | None
    """The id history is replayed after (from the oldest if ``None``)."""
    expires_at: int | None = None
    """The token's ``exp`` (seconds since the epoch): the stream ends then,
    with :data:`EXPIRED_FRAME`; ``None`` without a token."""


def header_text(value: str | None) -> str | None:
    """A header value as its sender meant it. ASGI servers (and the edge,
    to answer alike) decode header bytes as ISO-8859-1; the WHATWG
    EventSource sends ``Last-Event-ID`` as UTF-8, so an id such as
    ``événement-1`` is read back as UTF-8 when its bytes are UTF-8."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def plan_subscribe(config: Config, request: SubscribeRequest) -> Stream:
    """Check a subscribe request and work out where its stream starts: after
    the ``Last-Event-ID`` header (what EventSource sends when it reconnects),
    else ``?lastEventId=``; from the oldest retained event with
    ``?since=earliest``; otherwise live events only.

    Raises:
        EsperError: a bad topic, token or query.
    """
    topic, args, expires = _checked(config, config.subscriber_key, request)
    since = args.get("since")
    if since is not None and since != "earliest":
        raise BadRequest("since must be 'earliest'")
    last_id = header_text(request.last_event_id) or args.get("lastEventId")
    if last_id:
        return Stream(topic, True, last_id, expires)
    return Stream(topic, since is not None, None, expires)


def expiry_deadline(expires_at: float | None) -> float:
    """The trio deadline of a token's ``exp`` (seconds since the epoch), at
    which its stream ends; ``math.inf`` for a stream without one."""
    if expires_at is None:
        return math.inf
    try:
        return trio.current_time() + (expires_at - time.time())
    except OverflowError:  # an integer exp past any float (10**400): never in this run
        return math.inf


async def check_store(hub: Hub) -> None:
    """Refuse a subscription while the store fails: a store that reported a
    problem is asked again, so that a subscriber gets 503 before its head
    rather than 200 and a stream that ends. A checkpoint only then.

    Raises:
        HistoryError: the store still fails.
    """
    if hub.history.problem is not None:
        problem = await hub.history.check()
        if problem is not None:
            raise HistoryError(problem)


def opening_frame(config: Config) -> bytes:
    """What every stream opens with: ``: subscribed``, and ``retry:`` if set."""
    if config.retry_ms is None:
        return SUBSCRIBED_FRAME
    return SUBSCRIBED_FRAME + f"retry: {config.retry_ms}\n\n".encode()


async def replay_pages(
    hub: Hub, subscription: Subscription, stream: Stream
) -> AsyncGenerator[bytes, None]:
    """The history a resuming stream gets before live events, a page at a
    time (``event: reset`` first if its id is not retained). Use inside the
    subscription's block, with ``contextlib.aclosing``."""
    if not stream.resume:
        return
    after = stream.after
    first = True
    while True:
        page = await hub.replay(subscription, after, REPLAY_PAGE_EVENTS)
        frames = [RESET_FRAME] if first and not page.found else []
        first = False
        frames += [record.frame for record in page.records]
        if frames:
            yield b"".join(frames)
        if page.next_after is None:
            return
        after = page.next_after


#: Only ASCII digits: ``str.isdigit`` also takes "²", which ``int`` refuses.
DIGITS = re.compile(r"[0-9]+")


def int_arg(args: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """Query argument ``name`` as an integer from ``low`` to ``high``.

    Raises:
        BadRequest: it is not one.
    """
    raw = args.get(name)
    if raw is None:
        return default
    # The length first: int() refuses more than 4300 digits (ValueError).
    if len(raw) > len(str(high)) or DIGITS.fullmatch(raw) is None or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def json_body(payload: dict[str, object]) -> bytes:
    return (json.dumps(payload) + "\n").encode()
