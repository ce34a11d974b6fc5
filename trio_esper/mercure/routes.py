"""The Mercure hub's routes: ``/.well-known/mercure`` as draft-dunglas-mercure
defines it, served by Quart-Trio on the hub's routed log.

Mercure topics are IRIs, compared as they are written, in a namespace of
their own: the routed log (:mod:`..routing`), apart from esper's topic ids,
so the esper topic ``abc12345`` and the Mercure topic ``abc12345`` are two
topics. Each route translates its request into the hub's operations
(:meth:`~..hub.Hub.subscribe_routed`, :meth:`~..hub.Hub.publish_routed`);
the hub knows nothing of Mercure.

Where this differs from the dunglas/mercure hub (docs/mercure.md has the list):
an update to topics a token may not publish gets 403 (the draft's status;
Mercure answers 401); a ``mercureAuthorization`` cookie authorises subscribing
only, never publishing; with the Redis backplane the hub numbers updates
itself (a publisher's ``id`` is refused, as on ``/publish``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote_plus

import trio
from quart import Response, request
from werkzeug.datastructures import Headers

from .. import endpoints, web
from ..config import Config
from ..errors import BadRequest, EsperError, Forbidden, NotFound, Unauthorized
from ..hub import Hub
from ..routing import Route, Selection
from ..selectors import SelectorMatcher
from ..sse import Event
from . import subscriptions
from .claims import MercureClaims, TokenSources, authorize, authorize_publish
from .forms import read_publish_form

log = logging.getLogger("trio_esper")

#: The hub's URL path (draft-dunglas-mercure, "Discovery").
PATH = "/.well-known/mercure"
#: Topic selectors one subscription may hold (Mercure's limit too).
MAX_SELECTORS = 1000
#: The ``Last-Event-ID`` answer when no event is known (the draft's reserved id).
EARLIEST = "earliest"
#: How long a closing subscription's announcement may take (it runs shielded).
ANNOUNCE_SECONDS = 2.0
#: Every update of the log (for the subscriptions API's ``lastEventID``).
EVERYTHING = Selection(("*",), ("*",))
JSON_LD = "application/ld+json"
#: What the path of one subscription document, or of a selector's, starts with.
SUBSCRIPTION_PATHS = subscriptions.PREFIX + "/"
#: Mercure's answers to a subscriber: never cached, by a proxy either.
STREAM_HEADERS: endpoints.Headers = [
    ("content-type", "text/event-stream"),
    ("cache-control", "private, no-cache, no-store, must-revalidate, max-age=0"),
    ("x-accel-buffering", "no"),
]


def _sources(*, cookies: bool) -> TokenSources:
    """Where the current request carries its token (the cookie only if ``cookies``)."""
    return TokenSources(
        authorization=tuple(request.headers.getlist("Authorization")),
        query=tuple(request.args.getlist("authorization")),
        cookies=tuple(request.headers.getlist("Cookie")) if cookies else (),
        method=request.method,
        origin=request.headers.get("Origin"),
        referer=request.headers.get("Referer"),
    )


def _cors(config: Config) -> endpoints.Headers:
    """The CORS headers, with credentials for an origin named exactly: a
    browser sends the ``mercureAuthorization`` cookie only then."""
    headers = web.cors_headers(config)
    if ("vary", "Origin") in headers and not any(
        name == "access-control-allow-credentials" for name, _ in headers
    ):
        headers.append(("access-control-allow-credentials", "true"))
    return headers


def subscriber_claims(config: Config) -> MercureClaims | None:
    """The subscriber's claims (``None``: anonymous, public updates only).

    Raises:
        Unauthorized: a token that does not verify; no token while a
            subscriber key is set and ``--mercure-anonymous`` is not.
    """
    key = config.subscriber_key
    if key is None:  # the subscriber side is open: no token is read
        return None
    claims = authorize(_sources(cookies=True), key, algorithms=config.jwt_algorithms)
    if claims is None and not config.mercure_anonymous:
        raise Unauthorized("a subscriber token is required (or --mercure-anonymous)")
    return claims


def _new_id(config: Config) -> str | None:
    """An id for an update the hub makes: an IRI (the draft: it MUST be one);
    none with the backplane, which numbers updates itself."""
    return None if config.backplane is not None else f"urn:uuid:{uuid.uuid4()}"


def register(app: Any, config: Config, hub: Hub, route: web.Route, opening: bytes) -> None:
    """Add the Mercure hub's routes to ``app``."""
    registry = subscriptions.Registry()
    matcher = SelectorMatcher()

    async def announce(subscriber: subscriptions.Subscriber, active: bool) -> None:
        """Publish ``subscriber``'s documents as private updates on their own topics."""
        for document in subscriber.documents(active):
            event = Event(subscriptions.update_data(document), id=_new_id(config))
            await hub.publish_routed(Route((document["id"],), private=True), [event])

    @route(PATH, "GET")
    async def mercure_subscribe() -> Response:
        topics = tuple(request.args.getlist("topic"))
        if not topics:
            raise BadRequest('Missing "topic" parameter.')
        if len(topics) > MAX_SELECTORS:
            raise BadRequest('Too many "topic" parameters.')
        claims = subscriber_claims(config)
        allowed = () if claims is None or claims.subscribe is None else claims.subscribe
        selection = Selection(topics, allowed)
        headers = [*STREAM_HEADERS, *_cors(config)]
        client = request.remote_addr or ""
        hub.admit_routed(client)
        last_id = endpoints.header_text(request.headers.get("Last-Event-ID")) or (
            request.args.get("lastEventID")
        )
        # Where the stream resumes: after ``after`` (from the oldest if
        # None), or not at all.
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
        if request.method == "HEAD":
            return Response(b"", headers=Headers(headers))

        subscriber = None
        if config.mercure_subscriptions:
            payload = None if claims is None else claims.payload
            subscriber = subscriptions.Subscriber(f"urn:uuid:{uuid.uuid4()}", topics, payload)

        async def stream() -> AsyncIterator[bytes]:
            # Subscribed before the first byte goes out (a browser publishes
            # once its EventSource opens), and unsubscribed on any exit; a
            # subscription is announced before it opens (as Mercure does:
            # its own announcement is not sent to it) and after it closes.
            try:
                if subscriber is not None:
                    registry.add(subscriber)
                    await announce(subscriber, True)
                try:
                    async with hub.subscribe_routed(selection, client=client) as subscription:
                        yield opening
                        cursor, more = after, resume
                        while more:
                            page = await hub.replay(
                                subscription, cursor, endpoints.REPLAY_PAGE_EVENTS
                            )
                            if page.records:
                                yield b"".join(r.frame for r in page.records)
                            cursor, more = page.next_after, page.next_after is not None
                        async for chunk in subscription:
                            yield chunk
                finally:
                    if subscriber is not None:
                        registry.discard(subscriber)
                        with trio.CancelScope(shield=True), trio.move_on_after(ANNOUNCE_SECONDS):
                            await announce(subscriber, False)
            except EsperError as error:
                log.warning("Mercure stream to %s ended: %s", client, error.reason)

        return web.endless(Response(stream(), status=200, headers=Headers(headers)))

    @route(PATH, "POST")
    async def mercure_publish() -> Response:
        key = config.publisher_key
        form = read_publish_form(await web.body(config), request.headers.get("Content-Type"))
        if key is not None:
            claims = authorize(_sources(cookies=False), key, algorithms=config.jwt_algorithms)
            authorize_publish(claims, form.topics)
        web.charge_budget()
        update = form.update()
        event = update.event
        if event.id is None:  # a publisher's id, else the hub's
            event = Event(event.data, event.event, _new_id(config), event.retry)
        published = await hub.publish_routed(Route(update.topics, update.private), [event])
        headers = [("content-type", endpoints.TEXT), *_cors(config)]
        return Response(published.records[-1].id, status=200, headers=Headers(headers))

    @route(subscriptions.PREFIX, "GET")
    async def mercure_subscriptions() -> Response:
        return await subscriptions_answer(None, None)

    # merge_slashes=False: a selector decodes to anything ("https://...").
    one_route: Callable[[web.Handler], web.Handler] = app.route(
        SUBSCRIPTION_PATHS + "<path:rest>", methods=["GET", "OPTIONS"], merge_slashes=False
    )

    @one_route
    async def mercure_subscription(rest: str) -> Response:
        # The selector is escaped in the path (%2F included): split the raw path.
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        parts = raw[len(subscriptions.PREFIX) + 1 :].split("/")
        if len(parts) > 2 or not all(parts):
            raise NotFound("no such subscription document")
        selector = unquote_plus(parts[0])
        return await subscriptions_answer(
            selector, unquote_plus(parts[1]) if len(parts) == 2 else None
        )

    async def subscriptions_answer(selector: str | None, subscriber: str | None) -> Response:
        """A subscriptions API answer, for a token whose ``mercure.subscribe``
        selects the request's URI (Mercure's rule)."""
        if not config.mercure_subscriptions:
            raise NotFound("the subscriptions API is off (--mercure-subscriptions)")
        uri = request.scope.get("raw_path", b"").decode("latin-1")
        if request.query_string:
            uri += "?" + request.query_string.decode("latin-1")
        key = config.subscriber_key
        if key is not None:
            claims = authorize(_sources(cookies=True), key, algorithms=config.jwt_algorithms)
            if claims is None:
                raise Unauthorized("a subscriber token is required")
            if not matcher.matches_any(claims.subscribe or (), (uri,)):
                raise Forbidden('"mercure.subscribe" does not select this document')
        last = await hub.newest_selected(EVERYTHING, endpoints.REPLAY_PAGE_EVENTS) or EARLIEST
        headers = [("content-type", JSON_LD), ("etag", last), *_cors(config)]
        if request.headers.get("If-None-Match") == last:
            return Response(b"", status=304, headers=Headers(headers))
        if subscriber is None:
            document = registry.collection(uri.partition("?")[0], last, selector)
        else:
            assert selector is not None
            found = registry.one(selector, subscriber, last)
            if found is None:
                raise NotFound("no such subscription")
            document = found
        body = json.dumps(document, ensure_ascii=False, indent=2).encode()
        return Response(body, status=200, headers=Headers(headers))
