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
only, never publishing; a stream ends at its token's ``exp`` on both front
ends (the draft's rule, which the reference hub does not keep).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import trio
from quart import Response, request
from werkzeug.datastructures import Headers

from .. import endpoints, web
from ..config import Config
from ..errors import Forbidden, NotFound, Unauthorized
from ..hub import Hub
from ..routing import Route, Selection
from ..selectors import SelectorMatcher
from ..sse import Event
from . import publish, subscribe, subscriptions
from .claims import TokenSources, authorize

log = logging.getLogger("trio_esper")

#: The hub's URL path (draft-dunglas-mercure, "Discovery").
PATH = "/.well-known/mercure"
#: How long a closing subscription's announcement may take (it runs shielded).
ANNOUNCE_SECONDS = 2.0
#: Every update of the log (for the subscriptions API's ``lastEventID``).
EVERYTHING = Selection(("*",), ("*",))
JSON_LD = "application/ld+json"
#: What the path of one subscription document, or of a selector's, starts with.
SUBSCRIPTION_PATHS = subscriptions.PREFIX + "/"


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
    return subscribe.cors_headers(config, request.headers.get("Origin"))


def subscribe_request() -> subscribe.Request:
    """The current request as a Mercure subscribe."""
    headers = request.headers
    return subscribe.Request(
        request.query_string,
        authorization=tuple(headers.getlist("Authorization")),
        cookies=tuple(headers.getlist("Cookie")),
        origin=headers.get("Origin"),
        referer=headers.get("Referer"),
        last_event_id=headers.get("Last-Event-ID"),
        client=request.remote_addr or "",
    )


def register(app: Any, config: Config, hub: Hub, route: web.Route, opening: bytes) -> None:
    """Add the Mercure hub's routes to ``app``."""
    registry = subscriptions.Registry()
    matcher = SelectorMatcher()

    async def announce_closed(subscriber: subscriptions.Subscriber) -> None:
        registry.discard(subscriber)
        with trio.CancelScope(shield=True), trio.move_on_after(ANNOUNCE_SECONDS):
            await announce(subscriber, False)

    async def announce(subscriber: subscriptions.Subscriber, active: bool) -> None:
        """Publish ``subscriber``'s documents as private updates on their own topics."""
        for document in subscriber.documents(active):
            event = Event(subscriptions.update_data(document), id=publish.new_id())
            await hub.publish_routed(Route((document["id"],), private=True), [event])

    @route(PATH, "GET")
    async def mercure_subscribe() -> Response:
        plan = await subscribe.plan(config, hub, subscribe_request())
        if request.method == "HEAD":
            return Response(b"", headers=Headers(plan.headers))
        client = request.remote_addr or ""
        held = web.held()
        if config.mercure_subscriptions:
            # Announced before it opens (as Mercure does: its own
            # announcement is not sent to it), and after it closes.
            payload = None if plan.claims is None else plan.claims.payload
            subscriber = subscriptions.Subscriber(f"urn:uuid:{uuid.uuid4()}", plan.topics, payload)
            registry.add(subscriber)
            held.push_async_callback(announce_closed, subscriber)
            await announce(subscriber, True)
        # Admission and subscription are one step (see web.stream_response):
        # subscribed before the head goes out, held by the request.
        subscription = await held.enter_async_context(
            hub.subscribe_routed(plan.selection, client=client)
        )
        body = web.stream_body(
            opening,
            subscribe.replay_pages(hub, subscription, plan),
            subscription,
            endpoints.expiry_deadline(plan.expires_at),
            b"",  # a Mercure stream just ends
            f"Mercure stream to {client}",
        )
        return web.endless(Response(body, status=200, headers=Headers(plan.headers)))

    @route(PATH, "POST")
    async def mercure_publish() -> Response:
        headers = request.headers
        published = publish.Request(
            await web.body(config),
            request.query_string,
            content_type=headers.get("Content-Type"),
            authorization=tuple(headers.getlist("Authorization")),
            origin=headers.get("Origin"),
            referer=headers.get("Referer"),
            budget=request.scope.get("state", {}).get(endpoints.BUDGET_KEY),
        )
        return web.response(await publish.publish(config, hub, published))

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
        last = (
            await hub.newest_selected(EVERYTHING, endpoints.REPLAY_PAGE_EVENTS)
            or subscribe.EARLIEST
        )
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
