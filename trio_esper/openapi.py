"""The OpenAPI 3.1 description of every route, served at ``/openapi.json``.

A plain dict, built by the small helpers below from the facts the routes
themselves use (topic rule, limits, media types, the dashboard's files), so
it cannot drift from them on those points; ``tests/test_openapi.py`` checks
that it names every route of the app with the same methods, and runs
schemathesis against a live broker with it.

Conventions of the document:

- Every ``GET`` has its ``HEAD`` (the same checks and status, no body), and
  every path its ``OPTIONS`` (the CORS preflight, always ``204``), because the
  app answers them.
- Errors are ``text/plain``, one line; ``401`` and ``403`` carry an RFC 6750
  ``WWW-Authenticate`` challenge with the reason.
- Security lists say which credentials a route accepts *when that credential
  is configured*; a side with none configured is open (see the schemes).
- An event stream's ``schema`` describes one event as clients parse it
  (``event``, ``data``, ``id``, ``retry``), as OpenAPI 3.2 does with
  ``itemSchema``; NDJSON's describes the body's lines as an array.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import typing
from collections.abc import Iterable
from typing import Any

from . import api, endpoints
from .history import HistoryStatistics
from .hub import HubStatistics
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .sse import MAX_ID_BYTES, MAX_RETRY
from .topics import MAX_TOPIC_CHARS, MIN_TOPIC_CHARS
from .version import __version__

#: A JSON Schema, a parameter, a response...: the document is plain JSON.
Json = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
SSE = "text/event-stream"
TEXT = "text/plain"
JSON = endpoints.JSON
NDJSON = "application/x-ndjson"
TSV = "text/tab-separated-values"
#: What a topic id is (topics.normalise_topic): ASCII letters and digits.
TOPIC_PATTERN = f"^[A-Za-z0-9]{{{MIN_TOPIC_CHARS},{MAX_TOPIC_CHARS}}}$"
#: sse.check_resumable_id, as far as JSON Schema can say it: no control
#: characters, no space at either end. The byte limit is in the description.
EVENT_ID_PATTERN = r"^[^\u0000-\u0020\u007f]([^\u0000-\u001f\u007f]*[^\u0000-\u0020\u007f])?$"
#: sse.Event: CR, LF or NUL in an event type would end its line.
EVENT_TYPE_PATTERN = r"^[^\r\n\u0000]*$"
EXAMPLE_TOPIC = "myTopic123"


def _decimal_at_most(largest: int) -> str:
    """A pattern (unanchored) for the decimal numbers from 0 to ``largest``,
    leading zeros allowed (Go's ``strconv.ParseUint``, which Mercure's
    ``retry`` follows): any with fewer digits, or as many, digit by digit no greater."""
    digits = str(largest)
    shorter = f"[0-9]{{1,{len(digits) - 1}}}" if len(digits) > 1 else ""
    same = [digits]
    for place, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - place - 1
            lower = "0" if digit == "1" else f"[0-{int(digit) - 1}]"
            same.append(digits[:place] + lower + (f"[0-9]{{{rest}}}" if rest else ""))
    return "0*(" + "|".join([p for p in (shorter, *same) if p]) + ")"


#: Tags, in the order the operations come.
TAGS = {
    "esper": "esper's routes: subscribe, publish, history.",
    "topic API": "sser's topic API: create, list, read and delete topics; JSON events.",
    "operators": "Statistics, metrics, health, readiness, this document, the dashboard.",
}

# -- credentials -------------------------------------------------------------

_OPEN_WHEN_UNSET = " When it is not configured, routes that take it are open."
SECURITY_SCHEMES: Json = {
    "mercureSubscriberJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "A Mercure JWT verified with the subscriber secret or key file: its "
            "`mercure.subscribe` selectors admit private updates; `exp` optional. Also taken "
            "from `?authorization=` or the `mercureAuthorization` cookie. Without one: 401, or "
            "public updates only with `--mercure-anonymous`." + _OPEN_WHEN_UNSET
        ),
    },
    "mercurePublisherJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "A Mercure JWT verified with the publisher secret or key file: every topic of the "
            "update must match a `mercure.publish` selector; `exp` optional. Also taken from "
            "`?authorization=`; never from a cookie." + _OPEN_WHEN_UNSET
        ),
    },
    "subscriberJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "A JWT verified with the subscriber secret (`ESPER_SUBSCRIBER_SECRET`) or key file "
            "(`--subscriber-key-file`): an accepted algorithm (`ESPER_JWT_ALGORITHMS`), an "
            "integer `exp` in the future, `sub` naming the topic (compared lower-cased), `aud` "
            "only as `--jwt-audience` says. `POST /api/v1/pubsubs` returns one." + _OPEN_WHEN_UNSET
        ),
    },
    "publisherJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "A JWT verified with the publisher secret (`ESPER_PUBLISHER_SECRET`) or key file "
            "(`--publisher-key-file`), with the same rules. `sub` names the topic to publish "
            'to; with `"admin": true` (any `sub`) it is an API credential; any publisher JWT '
            "reads the monitoring routes." + _OPEN_WHEN_UNSET
        ),
    },
    "apiToken": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "The static token `ESPER_API_TOKEN`: the topic API's management routes and the "
            "monitoring routes. Unset, those take admin publisher JWTs, and are open when no "
            "publisher key is set either."
        ),
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "The static token `ESPER_METRICS_TOKEN`: the monitoring routes only (`/stats`, "
            "`/stats/stream`, `/metrics`), which also take the API token and publisher JWTs, "
            "and are open when none of the three is configured."
        ),
    },
    "accessTokenQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "access_token",
        "description": (
            "Any of the tokens above as `?access_token=` (RFC 6750, section 2.3), for a "
            "browser `EventSource`, which cannot set headers. `Authorization` wins when both "
            "are given."
        ),
    },
    "tokenQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": (
            "The same as `?token=` (esper's name; it wins over `?access_token=`). With "
            "`--auth-cookie NAME` the token may also come in the cookie NAME, after both, "
            "to subscribe only (to publish and manage too with `--cookie-publish`)."
        ),
    },
}
_QUERY_TOKENS: list[Json] = [{"accessTokenQuery": []}, {"tokenQuery": []}]
#: endpoints.authorise with the subscriber side's key.
SUBSCRIBER = [{"subscriberJwt": []}, *_QUERY_TOKENS]
#: endpoints.authorise with the publisher side's key.
PUBLISHER = [{"publisherJwt": []}, *_QUERY_TOKENS]
#: endpoints.authorise_management: the API token, or an admin publisher JWT
#: (or, on routes of one topic, a publisher JWT for that topic).
MANAGEMENT = [{"apiToken": []}, {"publisherJwt": []}, *_QUERY_TOKENS]
#: endpoints.authorise_management(metrics=True).
MONITORING = [{"apiToken": []}, {"metricsToken": []}, {"publisherJwt": []}, *_QUERY_TOKENS]
OPEN: list[Json] = []

# -- schemas -----------------------------------------------------------------


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Json], optional: Iterable[str] = ()) -> Json:
    """A JSON object with exactly ``properties``, all required but ``optional``."""
    skipped = set(optional)
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in skipped],
        "additionalProperties": False,
    }


def _count(description: str) -> Json:
    return {"type": "integer", "minimum": 0, "description": description}


def _topic_id(description: str) -> Json:
    return {
        "type": "string",
        "pattern": TOPIC_PATTERN,
        "description": description,
        "example": EXAMPLE_TOPIC.lower(),
    }


_TIMESTAMP: Json = {"type": "string", "format": "date-time"}
_PUBSUB_FIELDS: dict[str, Json] = {
    "id": _topic_id("The topic id, lower-case."),
    "persist": {
        "type": "boolean",
        "description": "Whether its history is kept in the durable backend.",
    },
    "managed": {
        "type": "boolean",
        "description": "Created through this API (else used ad hoc through /publish, /subscribe).",
    },
    "subscribers": _count("Open subscriptions."),
    "published": _count("Events published since it entered the catalog."),
    "created": _TIMESTAMP | {"description": "When it was created or first used (RFC 3339)."},
}
#: What each statistic means (the fields come from the dataclasses
#: ``/stats`` reports; tests/test_openapi.py checks each has a line here).
STATISTICS = {
    "clients": "Live subscriptions.",
    "topics": "Topics with at least one subscriber.",
    "published": "Events accepted from publishers since start.",
    "delivered": "Events handed to subscriber connections since start.",
    "dropped": "Subscribers disconnected because their queue was full.",
    "queued_bytes": "Bytes waiting for subscribers (queued or being written); a frame "
    "queued to many subscribers counts once.",
    "known_topics": "Topics in the catalog: created, or used lately.",
    "routed_clients": "Live subscriptions on /.well-known/mercure (counted in clients too).",
    "routed_published": "Mercure updates accepted since start (counted in published too).",
}
HISTORY_STATISTICS = {
    "backend": "Where history is kept.",
    "topics": "Topics with at least one retained event.",
    "events": "Retained events, all topics.",
    "bytes": "Memory held (memory) or file size (sqlite), approximately.",
    "problem": "Why the store cannot do its job now (null when it can).",
}
#: JSON Schema of the Python types statistics have.
_JSON_TYPES: dict[object, Json] = {
    int: {"type": "integer", "minimum": 0},
    str: {"type": "string"},
    str | None: {"type": ["string", "null"]},
}


def _statistics(cls: type, descriptions: dict[str, str], **overrides: Json) -> Json:
    """The JSON object ``dataclasses.asdict`` makes of ``cls``."""
    hints = typing.get_type_hints(cls)
    properties = {}
    for field in dataclasses.fields(cls):
        schema = overrides.get(field.name) or _JSON_TYPES.get(hints[field.name], {})
        description = descriptions.get(field.name)
        properties[field.name] = schema | ({"description": description} if description else {})
    return _object(properties)


#: With --acme-domain only: the certificate served (acme/manager.py, Certificates.statistics).
_CERTIFICATE_FIELD: dict[str, Json] = {
    "certificate": {
        "type": "object",
        "description": "With ACME (--acme-domain): the certificate served and its renewal.",
        "properties": {
            "names": {"type": "array", "items": {"type": "string"}},
            "serial": {"type": ["string", "null"], "description": "Hexadecimal."},
            "issuer": {"type": ["string", "null"]},
            "not_before": {"type": ["string", "null"], "format": "date-time"},
            "not_after": {"type": ["string", "null"], "format": "date-time"},
            "expires_in_seconds": {"type": ["integer", "null"]},
            "next_renewal": {"type": ["string", "null"], "format": "date-time"},
            "failures": _count("Orders and renewal checks that failed since start."),
            "last_error": {"type": ["string", "null"]},
        },
        "required": [
            "names",
            "serial",
            "issuer",
            "not_before",
            "not_after",
            "expires_in_seconds",
            "next_renewal",
            "failures",
            "last_error",
        ],
        "additionalProperties": False,
    }
}
_STATS_FIELDS: dict[str, Json] = {
    "version": {"type": "string", "description": "The broker's version."},
    "pid": {
        "type": "integer",
        "description": "The process answering (with --threads, each worker answers for itself).",
    },
    **{
        name: schema
        for name, schema in _statistics(HubStatistics, STATISTICS)["properties"].items()
        if not name.startswith("routed_")
    },
    "mercure": _object(
        {
            "clients": _JSON_TYPES[int] | {"description": STATISTICS["routed_clients"]},
            "published": _JSON_TYPES[int] | {"description": STATISTICS["routed_published"]},
        }
    ),
    "history": _statistics(
        HistoryStatistics,
        HISTORY_STATISTICS,
        backend={"type": "string", "enum": ["memory", "sqlite", "redis"]},
    ),
}
_EVENT_ID: Json = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_BYTES,
    "pattern": EVENT_ID_PATTERN,
    "description": (
        f"1 to {MAX_ID_BYTES} bytes of UTF-8, no control characters (tab included), no space "
        "at either end (a client must be able to send it back in `Last-Event-ID`); unique "
        "among the topic's retained events (409 otherwise). Assigned by the broker if absent."
    ),
}


def _sse_event(description: str, data: Json | None = None, event: Json | None = None) -> Json:
    """One event of a stream, as a client parses it (``event`` defaults to ``message``)."""
    return {
        "type": "object",
        "description": description,
        "properties": {
            "event": event or {"type": "string"},
            "data": data or {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0, "maximum": MAX_RETRY},
        },
        "required": ["event", "data"],
    }


SCHEMAS: Json = {
    "Error": {
        "type": "string",
        "pattern": r"^[^\n]*\n$",
        "description": "One line of text saying what is wrong.",
    },
    "PublishAnswer": _object(
        {
            "id": {"type": "string", "description": "The id of the last event published."},
            "events": {"type": "integer", "minimum": 1, "description": "Events published."},
            "subscribers": _count("Subscribers of the topic when the events were handed to it."),
        }
    ),
    "Pubsub": _object(_PUBSUB_FIELDS),
    "NewPubsub": _object(
        _PUBSUB_FIELDS
        | {
            "access_token": {
                "type": ["string", "null"],
                "description": (
                    "A subscriber JWT for the topic (HMAC, `sub` the topic, lifetime "
                    "`--access-token-ttl`); null when subscribing is open or verified with "
                    "public keys (the broker holds no private key)."
                ),
            },
            "token": {
                "type": ["string", "null"],
                "description": "The same as `access_token` (the name sser's SDK reads).",
            },
            "access_token_expires": {"type": ["string", "null"], "format": "date-time"},
        }
    ),
    "PubsubAnswer": _object({"pubsub": _ref("Pubsub")}),
    "NewPubsubAnswer": _object({"pubsub": _ref("NewPubsub")}),
    "DeletedPubsub": _object({"pubsub": _ref("Pubsub"), "deleted": {"const": True}}),
    "PubsubPage": _object(
        {
            "pubsubs": {"type": "array", "items": _ref("Pubsub")},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `?cursor=` for the next page; null on the last page.",
            },
        }
    ),
    "PubsubSpec": _object(
        {
            "pubsub": _object(
                {
                    "persist": {
                        "type": ["boolean", "null"],
                        "description": (
                            "Keep its history in the durable backend. Default (absent or "
                            "null): durable when the broker has one. `true` on a broker "
                            "keeping history in memory is refused (400)."
                        ),
                    },
                    "id": {
                        "type": ["string", "null"],
                        "pattern": TOPIC_PATTERN,
                        "description": "The topic id to create; absent or null: a random one.",
                    },
                },
                optional=("persist", "id"),
            )
        },
        optional=("pubsub",),
    ),
    "JsonEvent": _object(
        {
            "event": _object(
                {
                    "id": _EVENT_ID | {"type": ["string", "null"]},
                    "type": {
                        "type": ["string", "null"],
                        "pattern": EVENT_TYPE_PATTERN,
                        "description": "The `event:` field; absent, null or empty: `message`.",
                    },
                    "message": {
                        "description": "A string is the event's data as it is (its lines "
                        "become `data:` lines; no CR); any other JSON value is JSON-encoded."
                    },
                },
                optional=("id", "type"),
            )
        }
    ),
    "Stats": _object(_STATS_FIELDS | _CERTIFICATE_FIELD, optional=_CERTIFICATE_FIELD),
    "StatsSnapshot": _object(
        _STATS_FIELDS
        | _CERTIFICATE_FIELD
        | {
            "time": {"type": "number", "description": "When it was taken, Unix seconds."},
            "connections": _count("Open client connections."),
            "busiest": {
                "type": "array",
                "description": "The topics with the most events lately, then subscribers.",
                "items": _object(
                    {
                        "id": _topic_id("The topic id."),
                        "subscribers": _count("Open subscriptions."),
                        "published": _count("Events published since it entered the catalog."),
                        "rate": {
                            "type": "number",
                            "minimum": 0,
                            "description": "Events a second since the last snapshot.",
                        },
                    }
                ),
            },
        },
        optional=_CERTIFICATE_FIELD,
    ),
    "Health": _object({"status": {"const": "ok"}, "version": {"type": "string"}}),
    "Ready": _object({"status": {"const": "ready"}}),
    "NotReady": _object(
        {
            "status": {"const": "not ready"},
            "reason": {
                "type": "string",
                "description": "Shutting down, or what the history store's probe said.",
            },
        }
    ),
    "HistoryRecord": _object(
        {
            "id": {"type": "string"},
            "event": {"type": ["string", "null"], "description": "null: `message`."},
            "data": {"type": "string"},
            "time": {"type": "number", "description": "Publish time, Unix seconds."},
        }
    ),
    "Event": _sse_event(
        "An event published to the topic, or one the broker sends: `reset` (the "
        '`Last-Event-ID` is not retained: `{"reason": "unknown-last-event-id"}`, then '
        'everything retained) or `deleted` (`{"reason": "topic-deleted"}`, then the '
        "stream ends)."
    ),
}


# -- parameters, bodies, responses -------------------------------------------


def _param(name: str, where: str, description: str, schema: Json, **extra: Any) -> Json:
    parameter: Json = {"name": name, "in": where, "description": description, "schema": schema}
    if where == "path":
        parameter["required"] = True
    return parameter | extra


TOPIC = _param(
    "topic",
    "path",
    f"{MIN_TOPIC_CHARS} to {MAX_TOPIC_CHARS} ASCII letters and digits, case-insensitive.",
    {"type": "string", "pattern": TOPIC_PATTERN},
    example=EXAMPLE_TOPIC,
)
RESUME = [
    _param(
        "Last-Event-ID",
        "header",
        "Resume after this event id (what `EventSource` sends when it reconnects); wins "
        "over `lastEventId`. An id not retained: `event: reset`, then everything retained.",
        {"type": "string"},
    ),
    _param(
        "lastEventId",
        "query",
        "Resume after this event id, for a page that passes it itself.",
        {"type": "string"},
    ),
    _param(
        "since",
        "query",
        "`earliest`: start with every retained event (without an id to resume from).",
        {"type": "string", "enum": ["earliest"]},
    ),
]


def _limit(default: int, high: int) -> Json:
    return _param(
        "limit",
        "query",
        f"At most this many items (1 to {high}).",
        {"type": "integer", "minimum": 1, "maximum": high, "default": default},
    )


def _header(description: str, schema: Json, *, required: bool = True) -> Json:
    return {"description": description, "required": required, "schema": schema}


_CHALLENGE = _header(
    'RFC 6750: `Bearer realm="trio_esper", error="invalid_token", error_description="..."`, '
    "the description saying why.",
    {
        "type": "string",
        "pattern": r'^Bearer realm="trio_esper", error="invalid_token", '
        r'error_description="[ !#-\[\]-~]*"$',
    },
)
_RETRY_AFTER: Json = {"type": "integer", "minimum": 1}
#: The headers of an error status.
_ERROR_HEADERS: dict[int, Json] = {
    401: {"WWW-Authenticate": _CHALLENGE},
    403: {"WWW-Authenticate": _CHALLENGE},
    429: {"Retry-After": _header("Seconds until the connection may publish again.", _RETRY_AFTER)},
    503: {
        "Retry-After": _header(
            "Seconds; sent when a limit is reached (not at shutdown or on a store failure).",
            _RETRY_AFTER,
            required=False,
        )
    },
}
AUTH_ERRORS = {
    401: "No token where one is required, or an `Authorization` header that is not `Bearer`.",
    403: (
        "A token that does not verify (signature, algorithm, `kid`, expiry, `nbf`, `iat`, "
        "audience) or that this route does not accept (another topic, another side)."
    ),
}
_QUERY_400 = "a query string whose percent-escapes are not UTF-8"
_STORE_503 = "the history store failed (with its reason); nothing was stored"
#: A publish the Redis backplane never answered (history/redis.py).
_BACKPLANE_504 = (
    "With the Redis backplane: Redis has not answered at all, and may have stored the "
    "publish before it stopped; a retry with the same `id` is refused (409) if it did."
)
_SUBSCRIBE_503 = (
    "The broker is shutting down (the connection is closed), or a limit is reached: "
    "subscribers, topics with subscribers, subscribers of the topic or of the client's "
    "address (with `Retry-After`)."
)


def _errors(reasons: dict[int, str]) -> dict[str, Json]:
    """Error responses: a one-line ``text/plain`` reason, with the headers of
    their status."""
    responses = {}
    for status, reason in reasons.items():
        response: Json = {"description": reason, "content": {TEXT: {"schema": _ref("Error")}}}
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[str(status)] = response
    return responses


def _content(media_type: str, schema: Json, example: Any = None) -> Json:
    entry: Json = {"schema": schema}
    if example is not None:
        entry["example"] = example
    return {media_type: entry}


def _ok(description: str, content: Json, status: int = 200) -> dict[str, Json]:
    return {str(status): {"description": description, "content": content}}


def _json_ok(description: str, schema: str, example: Any, status: int = 200) -> dict[str, Json]:
    return _ok(description, _content(JSON, _ref(schema), example), status)


def _json_body(schema: str, example: Any, description: str, *, required: bool) -> Json:
    return {
        "required": required,
        "description": description,
        "content": _content(JSON, _ref(schema), example),
    }


def _operation(
    endpoint: str,
    tag: str,
    summary: str,
    description: str,
    *,
    security: list[Json],
    responses: dict[str, Json],
    parameters: Iterable[Json] = (),
    body: Json | None = None,
) -> Json:
    """An operation; ``endpoint``, the name of the Quart endpoint serving
    it, is its ``operationId``."""
    operation: Json = {
        "operationId": endpoint,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "parameters": list(parameters),
    }
    if body is not None:
        operation["requestBody"] = body
    return operation | {"security": security, "responses": responses}


def _head(get: Json) -> Json:
    """The ``HEAD`` of a ``GET``: the same checks and status, no body."""
    responses = {
        status: {k: v for k, v in response.items() if k != "content"}
        for status, response in get["responses"].items()
    }
    return get | {
        "operationId": f"{get['operationId']}_head",
        "summary": f"{get['summary']}: the head only",
        "description": "The head a GET would get (the same checks, the same status), no body.",
        "responses": responses,
    }


def _preflight(operations: dict[str, Json]) -> Json:
    """The CORS preflight of a path with ``operations``: 204 whatever its
    parameters hold (a preflight checks none)."""
    first = next(iter(operations.values()))
    names = [p["name"] for p in first["parameters"] if p["in"] == "path"]
    optional = {"required": False, "schema": {"type": "string"}}
    return {
        "operationId": f"{first['operationId']}_preflight",
        "tags": first["tags"],
        "summary": "CORS preflight",
        "description": (
            "204. When the request's `Origin` is allowed (`--cors-origin`): "
            "`Access-Control-Allow-Origin`, `-Allow-Methods` (the path's methods), "
            "`-Allow-Headers`, `-Max-Age`, and `-Allow-Credentials` with `--auth-cookie`."
        ),
        "parameters": [
            _param(name, "path", "Not checked by a preflight.", {"type": "string"})
            for name in names
        ],
        "security": OPEN,
        "responses": {
            "204": {
                "description": "Preflight answered (the CORS headers only for allowed origins).",
                "headers": {
                    "Access-Control-Allow-Origin": optional,
                    "Access-Control-Allow-Methods": optional,
                },
            }
        },
    }


def _path_item(**operations: Json) -> Json:
    """A path's operations by method, with ``HEAD`` for ``GET`` and the preflight."""
    if "get" in operations:
        operations["head"] = _head(operations["get"])
    return operations | {"options": _preflight(operations)}


# -- the routes --------------------------------------------------------------

_BODY_413 = "The body is over `--max-body` (the connection is closed)."
_JSON_415 = "A `Content-Type` other than `application/json` (or none)."
_RATE_429 = "The connection publishes faster than `--publish-rate`."
_JSON_400 = "the body is not JSON (`NaN`, `Infinity` included) or not the schema's shape"
_UNLISTED = "The catalog does not list the topic (created, or used lately), or it was deleted."
_DELETED = "The topic was deleted and not created again."
#: Management routes accept an API credential; routes of one topic also
#: that topic's publisher JWT.
_MANAGEMENT_ERRORS = AUTH_ERRORS | {
    403: AUTH_ERRORS[403] + ' API credential: `ESPER_API_TOKEN`, or a publisher JWT with "admin".'
}
_OF_TOPIC_ERRORS = _MANAGEMENT_ERRORS | {
    403: _MANAGEMENT_ERRORS[403] + " A publisher JWT for the topic too."
}
_MONITORING_ERRORS = {400: "A query string whose percent-escapes are not UTF-8.", **AUTH_ERRORS}
_PUBSUB_EXAMPLE = {
    "id": "3f2c8e61a4b54c0d9e7a1b2c3d4e5f60",
    "persist": False,
    "managed": True,
    "subscribers": 0,
    "published": 0,
    "created": "2026-01-01T00:00:00.000Z",
}
_STATS_EXAMPLE = {
    "version": __version__,
    "pid": 4242,
    "clients": 1,
    "topics": 1,
    "published": 10,
    "delivered": 10,
    "dropped": 0,
    "queued_bytes": 0,
    "known_topics": 1,
    "mercure": {"clients": 0, "published": 0},
    "history": {"backend": "memory", "topics": 1, "events": 10, "bytes": 7000},
}
_TEXT_SCHEMA: Json = {"type": "string"}


def _subscribe(endpoint: str, tag: str, summary: str, not_found: str) -> Json:
    """A subscribe route: ``/subscribe`` or the topic API's."""
    stream = ": subscribed\n\nid: 42\nevent: greeting\ndata: hello\ndata: world\n\n"
    return _operation(
        endpoint,
        tag,
        summary,
        "200 and the head at once; the stream opens with `: subscribed` (and `retry:` with "
        "`--retry`), replays history if asked to resume, then carries every event published "
        "to the topic, in order, with a `: heartbeat` comment on idle streams. It ends at "
        'its token\'s `exp` with `event: expired` (data `{"reason": "token-expired"}`); '
        "otherwise never on its own: a subscriber too slow for its queue (`--queue`) is "
        "dropped, a deleted topic's streams get `event: deleted` and end, shutdown ends them "
        "all.",
        security=SUBSCRIBER,
        parameters=[TOPIC, *RESUME],
        responses=_ok("The event stream.", _content(SSE, _ref("Event"), stream))
        | _errors(
            {
                400: f"Invalid topic, `since` other than `earliest`, or {_QUERY_400}.",
                **AUTH_ERRORS,
                404: not_found,
                503: _SUBSCRIBE_503,
            }
        ),
    )


def _mercure_subscribe() -> Json:
    stream = ': subscribed\n\nid: urn:uuid:2b5b...\ndata: {"title": "Dune"}\n\n'
    return _operation(
        "mercure_subscribe",
        "Mercure",
        "Subscribe to Mercure topics",
        "The Mercure protocol's subscription (draft-dunglas-mercure): one stream of the "
        "updates of every topic a `topic` selector (a topic IRI, `*` or an RFC 6570 URI "
        "template) selects, in the order the hub stored them; private updates only where the "
        "token's `mercure.subscribe` claim allows one of their topics. With `Last-Event-ID` "
        "(or `lastEventID`) the answer's `Last-Event-ID` header says where the stream resumes.",
        security=[{"mercureSubscriberJwt": []}],
        parameters=[
            _param(
                "topic",
                "query",
                "A topic selector; repeat it for more (at most 1000).",
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                required=True,
                explode=True,
            ),
            _param(
                "lastEventID",
                "query",
                "Resume after this update id (`earliest`: everything retained).",
                {"type": "string"},
            ),
        ],
        responses=_ok("The event stream.", _content(SSE, _ref("Event"), stream))
        | _errors(
            {
                400: "No `topic`, or more than 1000.",
                401: "A token that does not verify, or none without `--mercure-anonymous`.",
                503: _SUBSCRIBE_503,
            }
        ),
    )


def _mercure_subscriptions(endpoint: str, summary: str, parameters: list[Json]) -> Json:
    return _operation(
        endpoint,
        "Mercure",
        summary,
        "Mercure's subscriptions API, with `--mercure-subscriptions`: the node's open "
        "subscriptions as JSON-LD `Subscription` documents (one per topic selector), for a "
        "token whose `mercure.subscribe` selects the request's URI. `ETag` is the newest "
        "update's id; `If-None-Match` with it: 304.",
        security=[{"mercureSubscriberJwt": []}],
        parameters=parameters,
        responses=_ok(
            "The documents.",
            _content("application/ld+json", {"type": "object"}),
        )
        | {"304": {"description": "Nothing changed since the `If-None-Match` id."}}
        | _errors(
            {
                401: "No token, or one that does not verify.",
                403: "A token whose `mercure.subscribe` does not select the document.",
                404: "The subscriptions API is off, or no such subscription.",
            }
        ),
    )


def _mercure_publish() -> Json:
    return _operation(
        "mercure_publish",
        "Mercure",
        "Publish a Mercure update",
        "A form with `topic` (repeatable: the first canonical, the rest alternates), `data`, "
        "`id`, `type`, `retry` and `private`. Answers the update's id: the publisher's, else a "
        "`urn:uuid:` one the hub makes up.",
        security=[{"mercurePublisherJwt": []}],
        body={
            "required": True,
            "description": "At most `--max-body` bytes, `application/x-www-form-urlencoded`.",
            "content": _content(
                "application/x-www-form-urlencoded",
                {
                    "type": "object",
                    "properties": {
                        "topic": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                        },
                        "data": {"type": "string"},
                        # Empty: none (the hub makes one up).
                        "id": _EVENT_ID
                        | {"minLength": 0, "pattern": f"^({EVENT_ID_PATTERN[1:-1]})?$"},
                        "type": {"type": "string", "pattern": EVENT_TYPE_PATTERN},
                        # Empty: none, as 0 is.
                        "retry": {
                            "type": "string",
                            "pattern": f"^({_decimal_at_most(MAX_RETRY)})?$",
                        },
                        "private": {"type": "string"},
                    },
                    "required": ["topic"],
                },
            ),
        },
        responses=_ok("The update's id.", _content(TEXT, _TEXT_SCHEMA, "urn:uuid:2b5b..."))
        | _errors(
            {
                400: "No `topic`; a bad `retry`; CR, LF or NUL in `type`; an `id` a client "
                "could not send back (control characters, spaces at its ends, too long); a "
                "body or query string Go's `ParseForm` refuses (a `;`, a bad escape).",
                401: "No token, or one that does not verify.",
                403: "A topic outside the token's `mercure.publish` claim, or in "
                "`/.well-known/mercure`.",
                413: "A body over `--max-body`.",
                429: _RATE_429,
                503: f"The broker is shutting down, or {_STORE_503}.",
                504: "With the Redis backplane: Redis has not answered at all, and may have "
                "stored the update; Mercure takes an `id` again, so a retry may deliver it twice.",
            }
        ),
    )


def _publish() -> Json:
    sse_body = "event: greeting\nid: 42\ndata: hello\ndata: world\n"
    return _operation(
        "publish",
        "esper",
        "Publish events to a topic",
        "The body is SSE fields (`data:`, `event:`, `id:`, `retry:`; several events separated "
        "by blank lines), parsed by the WHATWG rules and re-encoded; with `Content-Type: "
        "text/plain` it is the data of one event, and `?event=` and `?id=` set its other "
        "fields. Any other content type is read as SSE fields, where `?event=` and `?id=` are "
        "refused. Stored in history, then delivered; a refused publish delivers nothing.",
        security=PUBLISHER,
        parameters=[
            TOPIC,
            _param(
                "event",
                "query",
                "The event type of a `text/plain` body (empty: `message`).",
                {"type": "string", "pattern": EVENT_TYPE_PATTERN},
            ),
            _param(
                "id",
                "query",
                "The id of a `text/plain` body (empty: none, as if absent).",
                _EVENT_ID | {"minLength": 0, "pattern": f"^({EVENT_ID_PATTERN[1:-1]})?$"},
            ),
        ],
        body={
            "required": True,
            "description": "At most `--max-body` bytes (64 KiB by default), UTF-8.",
            "content": _content(SSE, {"type": "string"}, sse_body)
            | _content(TEXT, {"type": "string"}, "first line\nsecond line"),
        },
        responses=_json_ok(
            "Published.", "PublishAnswer", {"id": "42", "events": 1, "subscribers": 1}
        )
        | _errors(
            {
                400: "Invalid topic; a body that is not UTF-8, holds no event, an event "
                "without `data`, an unknown field, `retry` not digits, NUL in `id`; an id a "
                f"client could not send back; `?event=` or `?id=` with SSE fields; {_QUERY_400}.",
                **AUTH_ERRORS,
                404: _DELETED,
                409: "An event's `id` is already in the topic's retained history (or twice "
                "in the body); nothing is stored.",
                413: _BODY_413,
                429: _RATE_429,
                503: f"The broker is shutting down, or {_STORE_503}.",
                504: _BACKPLANE_504,
            }
        ),
    )


def _history(default: int, high: int) -> Json:
    record = {"id": "42", "event": "greeting", "data": "hello", "time": 1767225600.0}
    tsv = "id\tevent\ttime\tdata\n42\tgreeting\t1767225600.000000\thello\n"
    return _operation(
        "history",
        "esper",
        "Read a topic's retained events",
        "Oldest first: NDJSON (the default, or `Accept: application/x-ndjson`), one record a "
        "line (the schema describes the lines as an array), or TSV (`Accept: "
        "text/tab-separated-values`): a header line, then `id`, `event`, `time`, `data`, "
        "with backslash, tab and newline escaped as `\\\\`, `\\t`, `\\n`.",
        security=SUBSCRIBER,
        parameters=[
            TOPIC,
            _param(
                "after",
                "query",
                "Only events after this id (404 if it is not retained).",
                {"type": "string"},
            ),
            _limit(default, high),
        ],
        responses=_ok(
            "The retained events.",
            _content(NDJSON, {"type": "array", "items": _ref("HistoryRecord")}, [record])
            | _content(TSV, {"type": "string"}, tsv),
        )
        | _errors(
            {
                400: f"Invalid topic, `limit` out of range, or {_QUERY_400}.",
                **AUTH_ERRORS,
                404: "`after` names an event that is not retained.",
                406: "`Accept` names neither NDJSON nor TSV.",
                503: f"The {_STORE_503.removeprefix('the ')}.",
            }
        ),
    )


def _pubsub_create() -> Json:
    created = _PUBSUB_EXAMPLE | {
        "access_token": "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl",
        "token": "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl",
        "access_token_expires": "2026-01-02T00:00:00.000Z",
    }
    return _operation(
        "pubsub_create",
        "topic API",
        "Create a topic",
        "With a random id (a valid topic id) unless `pubsub.id` names one; the answer "
        "carries a subscriber JWT for it. An empty body is `{}`.",
        security=MANAGEMENT,
        body=_json_body(
            "PubsubSpec", {"pubsub": {"persist": False}}, "`{}`: the defaults.", required=False
        ),
        responses=_json_ok("Created.", "NewPubsubAnswer", {"pubsub": created}, 201)
        | _errors(
            {
                400: f"{_JSON_400[0].upper()}{_JSON_400[1:]}; `persist: true` on a broker "
                f"keeping history in memory; {_QUERY_400}.",
                **_MANAGEMENT_ERRORS,
                409: "A topic with that id exists already.",
                413: _BODY_413,
                415: _JSON_415,
                503: "The broker is shutting down, or holds its limit of created topics "
                "(`--max-topics`; with `Retry-After`).",
            }
        ),
    )


def _pubsub_list(default: int, high: int) -> Json:
    return _operation(
        "pubsub_list",
        "topic API",
        "List topics",
        "Created topics and those used lately through /publish and /subscribe, by id, a "
        "page at a time.",
        security=MANAGEMENT,
        parameters=[
            _limit(default, high),
            _param(
                "cursor",
                "query",
                "The `next_cursor` of the previous page (empty: the first page).",
                {"type": "string", "pattern": f"^({TOPIC_PATTERN[1:-1]})?$"},
            ),
        ],
        responses=_json_ok(
            "A page of topics.",
            "PubsubPage",
            {"pubsubs": [_PUBSUB_EXAMPLE], "next_cursor": None},
        )
        | _errors(
            {
                400: f"`limit` out of range, a `cursor` that is not a topic id, or {_QUERY_400}.",
                **_MANAGEMENT_ERRORS,
            }
        ),
    )


def _pubsub_read() -> Json:
    return _operation(
        "pubsub_read",
        "topic API",
        "Read a topic",
        "What the catalog knows of it.",
        security=MANAGEMENT,
        parameters=[TOPIC],
        responses=_json_ok("The topic.", "PubsubAnswer", {"pubsub": _PUBSUB_EXAMPLE})
        | _errors({400: f"Invalid topic, or {_QUERY_400}.", **_OF_TOPIC_ERRORS, 404: _UNLISTED}),
    )


def _pubsub_delete() -> Json:
    return _operation(
        "pubsub_delete",
        "topic API",
        "Delete a topic",
        "Its subscribers get `event: deleted` and their streams end, its history goes, and "
        "publishing or subscribing to it answers 404 until it is created again.",
        security=MANAGEMENT,
        parameters=[TOPIC],
        responses=_json_ok(
            "Deleted.", "DeletedPubsub", {"pubsub": _PUBSUB_EXAMPLE, "deleted": True}
        )
        | _errors(
            {
                400: f"Invalid topic, or {_QUERY_400}.",
                **_MANAGEMENT_ERRORS,
                404: _UNLISTED,
                503: f"Deleted from the catalog, but {_STORE_503}: delete it again.",
            }
        ),
    )


def _pubsub_publish() -> Json:
    return _operation(
        "pubsub_publish",
        "topic API",
        "Publish a JSON event",
        "`message` is JSON-encoded into the event's data, `type` becomes `event:`, `id` "
        "becomes `id:` (checked as /publish checks them). The answer is /publish's.",
        security=MANAGEMENT,
        parameters=[TOPIC],
        body=_json_body(
            "JsonEvent",
            {"event": {"type": "greeting", "message": {"text": "hello"}}},
            "One event.",
            required=True,
        ),
        responses=_json_ok(
            "Published.",
            "PublishAnswer",
            {"id": "1767225600000000", "events": 1, "subscribers": 0},
        )
        | _errors(
            {
                400: f"Invalid topic; {_JSON_400}; an id a client could not send back; CR, "
                f"LF or NUL in `type`; {_QUERY_400}.",
                **_OF_TOPIC_ERRORS,
                404: _UNLISTED,
                409: "The event's `id` is already in the topic's retained history.",
                413: _BODY_413,
                415: _JSON_415,
                429: _RATE_429,
                503: f"The broker is shutting down, or {_STORE_503}.",
                504: _BACKPLANE_504,
            }
        ),
    )


def _operator(
    endpoint: str, summary: str, description: str, responses: dict[str, Json], **extra: Any
) -> Json:
    """An operators' route: monitoring (``security=MONITORING``) or open."""
    extra.setdefault("security", OPEN)
    return _operation(endpoint, "operators", summary, description, responses=responses, **extra)


def _stats_stream() -> Json:
    snapshot = _sse_event(
        "A snapshot.",
        data={"type": "string", "contentMediaType": JSON, "contentSchema": _ref("StatsSnapshot")},
        event={"const": "stats"},
    )
    example = ': subscribed\n\nevent: stats\ndata: {"version": "...", "clients": 1}\n\n'
    return _operator(
        "stats_stream",
        "Live statistics",
        "An endless stream of `event: stats`, one a second (the dashboard reads it): what "
        "`/stats` says, the time, open connections and the busiest topics.",
        _ok("The statistics stream.", _content(SSE, snapshot, example))
        | _errors(_MONITORING_ERRORS),
        security=MONITORING,
    )


def _dashboard_asset(types: dict[str, str]) -> Json:
    """``types``: the media type of each file suffix the dashboard serves."""
    files = sorted(
        entry.name
        for entry in importlib.resources.files(__package__).joinpath("dashboard").iterdir()
        if entry.is_file() and entry.name.endswith(tuple(types))
    )
    return _operator(
        "dashboard_asset",
        "A file of the dashboard",
        "Its page, script or style sheet.",
        _ok("The file.", {kind: {"schema": _TEXT_SCHEMA} for kind in types.values()})
        | _errors({404: "The dashboard has no such file."}),
        parameters=[_param("name", "path", "A file name.", {"type": "string", "enum": files})],
    )


def _paths() -> dict[str, Json]:
    dashboard = {
        suffix: kind.partition(";")[0] for suffix, kind in endpoints.DASHBOARD_TYPES.items()
    }
    metrics = "# TYPE trio_esper_subscriptions gauge\ntrio_esper_subscriptions 1.0\n"
    return {
        "/subscribe/{topic}": _path_item(
            get=_subscribe("subscribe", "esper", "Subscribe to a topic", _DELETED)
        ),
        "/publish/{topic}": _path_item(post=_publish()),
        "/.well-known/mercure": _path_item(get=_mercure_subscribe(), post=_mercure_publish()),
        "/.well-known/mercure/subscriptions": _path_item(
            get=_mercure_subscriptions("mercure_subscriptions", "Active subscriptions", [])
        ),
        "/.well-known/mercure/subscriptions/{rest}": _path_item(
            get=_mercure_subscriptions(
                "mercure_subscription",
                "Active subscriptions to a selector, or one subscription",
                [
                    _param(
                        "rest",
                        "path",
                        "`{selector}` or `{selector}/{subscriber}`, each escaped as a query "
                        "value is (`url.QueryEscape`).",
                        {"type": "string"},
                    )
                ],
            )
        ),
        "/history/{topic}": _path_item(
            get=_history(endpoints.HISTORY_LIMIT_DEFAULT, endpoints.HISTORY_LIMIT_MAX)
        ),
        api.PREFIX: _path_item(
            post=_pubsub_create(), get=_pubsub_list(api.LIST_LIMIT_DEFAULT, api.LIST_LIMIT_MAX)
        ),
        f"{api.PREFIX}/{{topic}}": _path_item(get=_pubsub_read(), delete=_pubsub_delete()),
        f"{api.PREFIX}/{{topic}}/events": _path_item(
            post=_pubsub_publish(),
            get=_subscribe("pubsub_subscribe", "topic API", "Subscribe to a topic", _UNLISTED),
        ),
        "/stats": _path_item(
            get=_operator(
                "stats",
                "Broker statistics",
                "Counters since start and what the broker holds now.",
                _json_ok("The statistics.", "Stats", _STATS_EXAMPLE) | _errors(_MONITORING_ERRORS),
                security=MONITORING,
            )
        ),
        "/stats/stream": _path_item(get=_stats_stream()),
        "/metrics": _path_item(
            get=_operator(
                "prometheus",
                "Prometheus metrics",
                "Prometheus' text format, from prometheus-client. No label depends on what "
                "clients send (no topic or address label).",
                _ok("The metrics.", _content(METRICS_CONTENT_TYPE, _TEXT_SCHEMA, metrics))
                | _errors(_MONITORING_ERRORS),
                security=MONITORING,
            )
        ),
        "/health": _path_item(
            get=_operator(
                "health",
                "Liveness",
                "200 whenever the event loop answers.",
                _json_ok("Alive.", "Health", {"status": "ok", "version": __version__}),
            )
        ),
        "/ready": _path_item(
            get=_operator(
                "ready",
                "Readiness",
                "Whether the broker accepts subscriptions and its history store takes a write "
                f"(probed at most every {endpoints.READY_CACHE_SECONDS:g} s).",
                _json_ok("Ready.", "Ready", {"status": "ready"})
                | _json_ok(
                    "Not ready, and why.",
                    "NotReady",
                    {"status": "not ready", "reason": "the broker is shutting down"},
                    503,
                ),
            )
        ),
        "/openapi.json": _path_item(
            get=_operator(
                "openapi_document",
                "This document",
                "OpenAPI 3.1.",
                _ok("The document.", _content(JSON, {"type": "object"})),
            )
        ),
        "/dashboard": _path_item(
            get=_operator(
                "dashboard",
                "The dashboard",
                "Live totals, rates and the busiest topics, read from /stats/stream; its files "
                "ship in the package (no CDN).",
                _ok("The page.", _content(dashboard[".html"], _TEXT_SCHEMA)),
            )
        ),
        "/dashboard/{name}": _path_item(get=_dashboard_asset(dashboard)),
    }


DESCRIPTION = """\
A Server-Sent Events pub/sub broker: web pages subscribe with a plain `EventSource`,
backends publish with one HTTP POST, and every event goes to every subscriber of its topic.
esper's routes (`/subscribe`, `/publish`) beside sser's topic API (`/api/v1/pubsubs`), one
topic namespace and one auth model.

**Credentials.** Each side is open unless configured: subscribing takes a subscriber JWT,
publishing a publisher JWT (each verified with a secret or public keys), the topic API an API
credential (`ESPER_API_TOKEN`, or a publisher JWT with `"admin": true`), and `/stats`,
`/stats/stream` and `/metrics` the API token, `ESPER_METRICS_TOKEN` or any publisher JWT. A
token comes as `Authorization: Bearer`, `?token=`, `?access_token=`, or in the
`--auth-cookie` cookie, in that order of precedence; the cookie authorises subscribing only
(a cross-site form sends it too), unless `--cookie-publish`.

**Errors** are a status and one line of `text/plain`; 401 and 403 carry
`WWW-Authenticate: Bearer realm="trio_esper", error="invalid_token", error_description="..."`.
Besides what each operation lists, any request can get: 400 for a malformed request or
`Content-Length` with `Transfer-Encoding` (the connection is then closed), 404 for an unknown
route (`//` included: never redirected), 405 with `Allow` for a method the path does not take,
408 for a request head or body too slow (`--request-head-timeout`, `--request-body-timeout`,
`--request-body-min-rate`), and 503 past `--max-connections-per-address` (at once, closed).

**CORS**: every path answers `OPTIONS` (the preflight, 204), and every answer carries
`Access-Control-Allow-Origin` for origins `--cors-origin` allows.
"""


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route the app serves (a new dict
    each call: the caller may change it)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "trio_esper",
            "version": __version__,
            "summary": "A Server-Sent Events pub/sub broker on Trio.",
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": _paths(),
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }
