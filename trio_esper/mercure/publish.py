"""A Mercure publish (``POST /.well-known/mercure``) as either front end
reads it: the Quart route (:mod:`.routes`) and the edge's fast form
(:mod:`..edge.fast`) both turn their request into a :class:`Request` and
answer what :func:`publish` answers (tests/test_differential.py compares them).

No transport here: the hub's operation, and the answer as data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .. import endpoints
from ..config import Config
from ..hub import Hub
from ..routing import Route
from ..sse import Event
from .claims import TokenSources, authorize, authorize_publish
from .forms import read_publish_form, read_query
from .subscribe import cors_headers


# Not frozen: one is built per request (see endpoints.PublishRequest).
@dataclass(slots=True)
class Request:
    """A ``POST /.well-known/mercure``, as either front end read it."""

    body: bytes
    """The whole body, within ``--max-body`` (the front end's to bound)."""
    query: bytes = b""
    content_type: str | None = None
    authorization: tuple[str, ...] = ()
    """Every ``Authorization`` header field value (a cookie never authorises a publish)."""
    origin: str | None = None
    referer: str | None = None
    budget: endpoints.PublishBudget | None = None
    """The connection's publish rate limit, if it has one."""


def new_id() -> str:
    """An id for an update the hub makes: an IRI (the draft: it MUST be one)."""
    return f"urn:uuid:{uuid.uuid4()}"


async def publish(config: Config, hub: Hub, request: Request) -> endpoints.Answer:
    """Read, authorise and publish an update; the answer: 200 ``text/plain``
    with the update's id. A checkpoint.

    Raises:
        EsperError: a bad form (400), no token or one that does not verify
            (401), a topic outside the token's ``publish`` claim or in the
            hub's own namespace (403), the rate limit (429), the store (503).
    """
    form = read_publish_form(request.body, request.content_type, query=request.query)
    key = config.publisher_key
    if key is not None:
        sources = TokenSources(
            authorization=request.authorization,
            query=tuple(read_query(request.query).get("authorization", ())),
            method="POST",
            origin=request.origin,
            referer=request.referer,
        )
        claims = authorize(sources, key, algorithms=config.jwt_algorithms)
        authorize_publish(claims, form.topics)
    if request.budget is not None:
        request.budget.charge()
    update = form.update()
    event = update.event
    if event.id is None:  # a publisher's id, else the hub's
        event = Event(event.data, event.event, new_id(), event.retry)
    published = await hub.publish_routed(Route(update.topics, update.private), [event])
    headers = [("content-type", endpoints.TEXT), *cors_headers(config, request.origin)]
    return endpoints.Answer(200, headers, published.records[-1].id.encode())
