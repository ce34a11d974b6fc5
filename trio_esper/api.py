"""The topic API (sser's, beside esper's routes): create, list, read and
delete topics, publish JSON events, subscribe. Quart-Trio routes under
``/api/v1``.

One topic namespace: the API lists topics used through ``/publish`` and
``/subscribe`` too, and a topic it creates is a topic of those routes. One
auth model: subscribing takes the subscriber JWT as ``/subscribe`` does;
managing takes an API credential (:func:`.endpoints.authorise_management`).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from typing import Any

from quart import Response

from . import endpoints, tokens, web
from .auth import HMAC_ALGORITHMS, PublicKeys
from .config import Config
from .errors import BadRequest, InvalidTopic
from .hub import Hub, TopicInfo
from .sse import Event
from .topics import normalise_topic

PREFIX = "/api/v1/pubsubs"
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 1000


def register(app: Any, config: Config, hub: Hub, route: web.Route, opening: bytes) -> None:
    """Add the topic API's routes to ``app``."""

    def authorise_management(topic: str | None = None) -> None:
        endpoints.authorise_management(config, topic=topic, **web.credentials(config))

    @route(PREFIX, "POST")
    async def pubsub_create() -> Response:
        authorise_management()
        spec = _object(await web.json_body(config), "body", {"pubsub"})
        pubsub = _object(spec.get("pubsub", {}), "pubsub", {"persist", "id"})
        persist = pubsub.get("persist")
        if persist is not None and not isinstance(persist, bool):
            raise BadRequest("pubsub.persist must be true or false")
        topic = pubsub.get("id")
        if topic is not None and not isinstance(topic, str):
            raise BadRequest("pubsub.id must be a string")
        info = hub.create_topic(None if topic is None else normalise_topic(topic), persist=persist)
        token, expires = _subscriber_token(config, info.id)
        # sser's SDK reads "token"; RFC 6749 names it "access_token": both.
        body = _topic_json(info) | {
            "access_token": token,
            "token": token,
            "access_token_expires": expires,
        }
        return web.json_response(config, {"pubsub": body}, 201)

    @route(PREFIX, "GET")
    async def pubsub_list() -> Response:
        authorise_management()
        args = web.query()
        limit = endpoints.int_arg(args, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
        cursor = args.get("cursor") or None
        if cursor is not None:
            try:
                cursor = normalise_topic(cursor)
            except InvalidTopic:
                raise BadRequest("cursor must be a next_cursor this route returned") from None
        topics, next_cursor = hub.topics(cursor, limit)
        return web.json_response(
            config, {"pubsubs": [_topic_json(t) for t in topics], "next_cursor": next_cursor}
        )

    @route(f"{PREFIX}/<topic>", "GET")
    async def pubsub_read(topic: str) -> Response:
        topic = normalise_topic(topic)
        authorise_management(topic)
        return web.json_response(config, {"pubsub": _topic_json(hub.topic(topic))})

    @route(f"{PREFIX}/<topic>", "DELETE")
    async def pubsub_delete(topic: str) -> Response:
        topic = normalise_topic(topic)
        authorise_management()
        info = await hub.delete_topic(topic)
        return web.json_response(config, {"pubsub": _topic_json(info), "deleted": True})

    @route(f"{PREFIX}/<topic>/events", "POST")
    async def pubsub_publish(topic: str) -> Response:
        topic = normalise_topic(topic)
        # A management credential, or the topic's own publisher token.
        authorise_management(topic)
        web.charge_budget()
        spec = _object(await web.json_body(config), "body", {"event"})
        if "event" not in spec:
            raise BadRequest('body must be {"event": {"message": ...}}')
        event = _object(spec["event"], "event", {"id", "type", "message"})
        if "message" not in event:
            raise BadRequest("event.message is required (any JSON value)")
        fields = {name: event.get(name) for name in ("id", "type")}
        for name, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"event.{name} must be a string")
        hub.topic(topic)  # 404 for a topic the catalog does not list
        message = event["message"]
        # A string is the event's data as it is (as sser delivers it); any
        # other value is JSON-encoded.
        if isinstance(message, str):
            data = message
        else:
            data = json.dumps(message, ensure_ascii=False, allow_nan=False)
        published = Event(data, fields["type"] or None, fields["id"])
        answer_body = endpoints.publish_answer(await hub.publish(topic, [published]))
        return web.response(endpoints.json_answer(answer_body, web.cors_headers(config)))

    @route(f"{PREFIX}/<topic>/events", "GET")
    async def pubsub_subscribe(topic: str) -> Response:
        plan = endpoints.plan_subscribe(config, web.subscribe_request(topic))
        hub.topic(plan.topic)  # 404 for a topic the catalog does not list
        return await web.stream_response(config, hub, plan, opening)


def _object(value: object, what: str, fields: set[str]) -> dict[str, Any]:
    """``value`` as a JSON object with no fields but ``fields``."""
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise BadRequest(f"{what} has unknown field {unknown[0][:64]!r}")
    return value


def _topic_json(info: TopicInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "persist": info.persist,
        "managed": info.managed,
        "subscribers": info.subscribers,
        "published": info.published,
        "created": _rfc3339(info.created),
    }


def _rfc3339(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _subscriber_token(config: Config, topic: str) -> tuple[str | None, str | None]:
    """A subscriber JWT for ``topic`` and when it expires (RFC 3339), if the
    broker can mint one: ``None`` when subscribing is open (no token is
    needed) or verified with public keys (the broker holds no private key)."""
    secret = config.subscriber_key
    if secret is None or isinstance(secret, PublicKeys):
        return None, None
    algorithm = next(a for a in config.jwt_algorithms if a in HMAC_ALGORITHMS)
    now = int(time.time())
    # Whole seconds, at least one: a fraction of one would mint a token already expired.
    ttl = math.ceil(config.access_token_ttl_seconds)
    token = tokens.mint(
        secret, topic, ttl, audience=config.jwt_audience, algorithm=algorithm, now=now
    )
    return token, _rfc3339(now + ttl)
