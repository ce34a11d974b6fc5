"""What the endpoints do, apart from HTTP parsing: shared by the two front
ends, the Quart-Trio routes (:mod:`.app`) and the publish fast lane
(:mod:`.fastlane`), so a publish answers the same bytes whichever served it.

Every function takes plain values (header and query strings, the body) and
raises an :class:`~trio_esper.errors.EsperError` for a bad request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .auth import bearer_token, verify_token
from .config import Config
from .errors import BadRequest, EsperError
from .hub import Hub
from .sse import parse_body, parse_plain
from .topics import normalise_topic


def cors_headers(config: Config, origin: str | None) -> dict[str, str]:
    """The CORS response headers for a request from ``origin`` (none if the
    origin is not allowed, or the request is not cross-origin)."""
    if origin is None or not config.cors_origins:
        return {}
    if "*" in config.cors_origins:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in config.cors_origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


def error_headers(error: EsperError, cors: dict[str, str]) -> dict[str, str]:
    """Response headers for ``error``: ``cors`` plus what its status needs."""
    headers = dict(cors)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="trio_esper"'
    elif error.status == 413:
        # The rest of the body is never read, so the connection cannot be reused.
        headers["Connection"] = "close"
    return headers


def error_body(error: EsperError) -> bytes:
    """The one-line ``text/plain`` reason sent with ``error``'s status."""
    return (error.reason + "\n").encode()


def authorise(
    config: Config,
    secret: str | None,
    topic: str | None,
    *,
    authorization: str | None,
    token: str | None,
) -> None:
    """Check the request's JWT (``Authorization`` header or ``?token=``)
    against ``secret``; an open side (``None``) lets everyone in.

    Raises:
        Unauthorized: no token, or a malformed ``Authorization`` header.
        Forbidden: the token does not verify or names another topic.
    """
    if secret is None:
        return
    verify_token(
        bearer_token(authorization, token), secret, topic=topic, algorithms=config.jwt_algorithms
    )


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A ``POST /publish/{topic}``, as either front end parsed it."""

    topic: str
    """As it appeared in the path (not yet validated)."""
    body: bytes
    mimetype: str
    """``Content-Type`` without parameters, lowercase; empty if absent."""
    authorization: str | None = None
    token: str | None = None
    """``?token=``."""
    event: str | None = None
    """``?event=`` (plain-text bodies only)."""
    id: str | None = None
    """``?id=`` (plain-text bodies only)."""


async def publish(config: Config, hub: Hub, request: PublishRequest) -> bytes:
    """Authorise, parse and publish; return the JSON response body.

    The body is SSE fields, or with ``Content-Type: text/plain`` one data line
    per body line with ``?event=`` and ``?id=`` (eventsource-hub's style).

    Raises:
        EsperError: a bad topic, token or body; a duplicate id (409); the
            history store failed (503).
    """
    topic = normalise_topic(request.topic)
    authorise(
        config,
        config.publisher_secret,
        topic,
        authorization=request.authorization,
        token=request.token,
    )
    if request.mimetype == "text/plain":
        events = [parse_plain(request.body, event=request.event, id=request.id)]
    elif request.event is not None or request.id is not None:
        raise BadRequest(
            "?event= and ?id= apply to Content-Type: text/plain bodies; "
            "in an SSE body use event: and id: fields"
        )
    else:
        events = parse_body(request.body)
    published = await hub.publish(topic, events)
    # json.dumps of the whole dict costs more than the rest of this answer.
    return b'{"id": %b, "events": %d, "subscribers": %d}\n' % (
        json.dumps(published.records[-1].id).encode(),
        len(published.records),
        published.subscribers,
    )


def json_body(payload: dict[str, object]) -> bytes:
    return (json.dumps(payload) + "\n").encode()
