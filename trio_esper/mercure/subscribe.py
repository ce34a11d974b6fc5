"""A Mercure subscribe (``GET /.well-known/mercure``) as either front end
reads it: the Quart route (:mod:`.routes`) and the edge's fast form
(:mod:`..edge.fast`) both turn their request into a :class:`Request`, ask
:func:`plan` where its stream starts, and replay with :func:`replay_pages`,
so both answer alike (tests/test_differential.py compares them).

No transport here: the hub's operations, and the answer's headers as data.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from .. import endpoints
from ..config import Config
from ..errors import BadRequest, Unauthorized
from ..hub import Hub, Subscription
from ..routing import Selection
from .claims import MercureClaims, TokenSources, authorize
from .forms import read_query

#: Topic selectors one subscription may hold (Mercure's limit too).
MAX_SELECTORS = 1000
#: The ``Last-Event-ID`` answer when no event is known (the draft's reserved id).
EARLIEST = "earliest"
#: Mercure's answers to a subscriber: never cached, by a proxy either.
STREAM_HEADERS: endpoints.Headers = [
    ("content-type", "text/event-stream"),
    ("cache-control", "private, no-cache, no-store, must-revalidate, max-age=0"),
    ("x-accel-buffering", "no"),
]


# Not frozen: one is built per request (see endpoints.SubscribeRequest).
@dataclass(slots=True)
class Request:
    """A ``GET /.well-known/mercure``, as either front end read it."""

    query: bytes
    """The query string as sent."""
    authorization: tuple[str, ...] = ()
    """Every ``Authorization`` header field value."""
    cookies: tuple[str, ...] = ()
    """Every ``Cookie`` header field value."""
    origin: str | None = None
    referer: str | None = None
    last_event_id: str | None = None
    """The ``Last-Event-ID`` header."""
    client: str = ""
    """Who subscribes (for the per-address limit)."""


@dataclass(slots=True)
class Plan:
    """An authorised Mercure subscription, not yet open."""

    topics: tuple[str, ...]
    """The selectors the subscriber asked for, in order."""
    selection: Selection
    headers: endpoints.Headers
    """The answer's header fields (CORS and ``Last-Event-ID`` included)."""
    resume: bool
    """Whether retained updates are replayed before live ones."""
    after: str | None
    """The id replay starts after (from the oldest if ``None``)."""
    claims: MercureClaims | None
    """The subscriber's claims (``None``: anonymous)."""

    @property
    def expires_at(self) -> int | None:
        """The token's ``exp`` (the draft: the hub MUST close the connection
        then), or ``None`` if it has none."""
        return None if self.claims is None else self.claims.expires_at


def cors_headers(config: Config, origin: str | None) -> endpoints.Headers:
    """The CORS headers, with credentials for an origin named exactly: a
    browser sends the ``mercureAuthorization`` cookie only then."""
    headers = endpoints.cors_headers(config, origin)
    if ("vary", "Origin") in headers and not any(
        name == "access-control-allow-credentials" for name, _ in headers
    ):
        headers.append(("access-control-allow-credentials", "true"))
    return headers


def subscriber_claims(config: Config, sources: TokenSources) -> MercureClaims | None:
    """The subscriber's claims (``None``: anonymous, public updates only).

    Raises:
        Unauthorized: a token that does not verify; no token while a
            subscriber key is set and ``--mercure-anonymous`` is not.
    """
    key = config.subscriber_key
    if key is None:  # the subscriber side is open: no token is read
        return None
    claims = authorize(sources, key, algorithms=config.jwt_algorithms)
    if claims is None and not config.mercure_anonymous:
        raise Unauthorized("a subscriber token is required (or --mercure-anonymous)")
    return claims


async def plan(config: Config, hub: Hub, request: Request) -> Plan:
    """Check a Mercure subscribe and work out where its stream starts: after
    the ``Last-Event-ID`` header, else ``?lastEventID=`` (``earliest``: from
    the oldest retained update); the answer's ``Last-Event-ID`` is that id
    if the log retains it, else the newest the subscriber may know of.

    Raises:
        EsperError: a bad query or token; the hub refusing the subscription
            now (shutting down, a limit); the history failing to read.
    """
    args = read_query(request.query)
    topics = tuple(args.get("topic", ()))
    if not topics:
        raise BadRequest('Missing "topic" parameter.')
    if len(topics) > MAX_SELECTORS:
        raise BadRequest('Too many "topic" parameters.')
    sources = TokenSources(
        authorization=request.authorization,
        query=tuple(args.get("authorization", ())),
        cookies=request.cookies,
        method="GET",
        origin=request.origin,
        referer=request.referer,
    )
    claims = subscriber_claims(config, sources)
    allowed = () if claims is None or claims.subscribe is None else claims.subscribe
    selection = Selection(topics, allowed)
    headers = [*STREAM_HEADERS, *cors_headers(config, request.origin)]
    hub.admit_routed(request.client)
    await endpoints.check_store(hub)
    last_id = endpoints.header_text(request.last_event_id) or args.get("lastEventID", [""])[0]
    # Where the stream resumes: after ``after`` (from the oldest if None), or not at all.
    resume, after = False, None
    if last_id:
        if last_id == EARLIEST:
            resume, position = True, EARLIEST
        elif await hub.routed_position(last_id, selection) is not None:
            resume, after, position = True, last_id, last_id
        else:  # unknown or expired: what the subscriber may know of, as Mercure answers
            newest = await hub.newest_selected(selection, endpoints.REPLAY_PAGE_EVENTS)
            position = EARLIEST if newest is None else newest
        headers.append(("last-event-id", position))
    return Plan(topics, selection, headers, resume, after, claims)


async def replay_pages(
    hub: Hub, subscription: Subscription, plan: Plan
) -> AsyncGenerator[bytes, None]:
    """The retained updates a resuming stream gets before live ones, a page
    at a time. Use inside the subscription's block, with ``contextlib.aclosing``."""
    cursor, more = plan.after, plan.resume
    while more:
        page = await hub.replay(subscription, cursor, endpoints.REPLAY_PAGE_EVENTS)
        if page.records:
            yield b"".join(r.frame for r in page.records)
        cursor, more = page.next_after, page.next_after is not None
