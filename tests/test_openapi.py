"""The OpenAPI document (``trio_esper/openapi.py``) against the app's routes and a
live broker: it names every route with its methods, it is valid OpenAPI 3.1,
and schemathesis finds no 5xx and no answer it does not describe.

schemathesis makes blocking requests, so the brokers run in child processes
(``python -m trio_esper``), one with every side open and one with every
credential configured. ``SCHEMATHESIS_EXAMPLES`` sets the examples per
operation (``nox -s schemathesis`` runs 1000).

Endless streams (``GET /subscribe``, ``GET /api/v1/pubsubs/{topic}/events``,
``GET /stats/stream``) are tested too: schemathesis reads an event stream
until its read timeout passes without a byte, or 20 events, and validates the
events it got; those requests get a short read timeout.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from trio_esper import api
from trio_esper.app import create_app
from trio_esper.config import Config
from trio_esper.history import HistoryStatistics
from trio_esper.hub import HubStatistics, open_hub
from trio_esper.openapi import EXAMPLE_TOPIC as TOPIC_EXAMPLE
from trio_esper.openapi import HISTORY_STATISTICS, SSE, STATISTICS, TEXT, document

from .conftest import LISTENING, STEP_SECONDS, make_token

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "10"))
#: schemathesis's phases to run: its coverage phase (boundary values, a few
#: dozen requests an operation whatever the examples) is for ``nox -s
#: schemathesis``; the suite's run stays under a minute without it.
PHASES = os.environ.get("SCHEMATHESIS_PHASES", "examples,fuzzing").split(",")
#: How long a stream is read once it falls silent: long enough for the
#: replayed history and the first snapshot, short enough for many examples.
STREAM_READ_SECONDS = 0.3
SUBSCRIBER_SECRET = "subscriber-secret-for-the-openapi-tests"
PUBLISHER_SECRET = "publisher-secret-for-the-openapi-tests"
API_TOKEN = "api-token-for-the-openapi-tests"
METRICS_TOKEN = "metrics-token-for-the-openapi-tests"
#: The lifetime of the JWTs the tests make: schemathesis's coverage phase
#: sends cases built from one it gave credentials to minutes before.
TOKEN_SECONDS = 3600


def _openapi_path(rule: str) -> str:
    """A werkzeug rule (``/subscribe/<topic>``) as an OpenAPI path."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


async def test_every_route_is_documented_with_its_methods() -> None:
    async with open_hub() as hub:
        app = create_app(Config(), hub)
        rules = list(app.url_map.iter_rules())
    served: dict[str, set[str]] = {}
    endpoints: dict[tuple[str, str], str] = {}
    for rule in rules:
        path = _openapi_path(rule.rule)
        methods = {m.lower() for m in rule.methods or ()}
        served.setdefault(path, set()).update(methods)
        for method in methods - {"head", "options"}:
            endpoints[path, method] = rule.endpoint
    paths = document()["paths"]
    assert {path: set(item) for path, item in paths.items()} == served
    # Each operation is the endpoint serving it, so a route cannot change hands unseen.
    for (path, method), endpoint in endpoints.items():
        assert paths[path][method]["operationId"] == endpoint
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_every_statistic_is_described() -> None:
    for cls, descriptions in (
        (HubStatistics, STATISTICS),
        (HistoryStatistics, HISTORY_STATISTICS),
    ):
        assert {f.name for f in dataclasses.fields(cls)} <= set(descriptions)


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document(), cls=OpenAPIV31SpecValidator)
    schemathesis.openapi.from_dict(document()).validate()


# -- live brokers ------------------------------------------------------------


@contextmanager
def _broker(log: Path, *args: str, clean: bool = True, **variables: str) -> Iterator[str]:
    """``python -m trio_esper --port 0 ARGS`` with ``ESPER_*`` from
    ``variables`` only; yields its URL once it listens. Its log goes to
    ``log`` (a file: nothing has to drain a pipe while tests block); with
    ``clean``, it must hold no traceback when the broker is stopped.

    conftest.broker_process is the async form, always with ``--no-auth``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")} | variables
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "trio_esper", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while (match := re.search(LISTENING, log.read_bytes())) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"broker did not start: {log.read_text()}")
            time.sleep(0.05)
        yield match.group(1).decode()
    finally:
        process.terminate()
        try:
            process.wait(STEP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert not clean or "Traceback" not in log.read_text(), log.read_text()


def _create_example_topic(url: str, **headers: str) -> str:
    """Create the topic the document's examples name (again, if a DELETE
    example removed it), so the examples reach routes of a created topic."""
    topic = TOPIC_EXAMPLE
    created = requests.post(
        f"{url}{api.PREFIX}",
        json={"pubsub": {"id": topic}},
        headers=headers,
        timeout=STEP_SECONDS,
    )
    assert created.status_code in (201, 409), created.text
    return url


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every side open; SQLite history, so ``persist: true`` is accepted."""
    tmp = tmp_path_factory.mktemp("open")
    with _broker(tmp / "broker.log", "--no-auth", "--history", f"sqlite:{tmp / 'h.db'}") as url:
        yield url


@pytest.fixture(scope="module")
def probe_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """For KNOWN_DEVIATIONS: their 500s leave tracebacks in its log."""
    tmp = tmp_path_factory.mktemp("probe")
    with _broker(tmp / "broker.log", "--no-auth", clean=False) as url:
        yield _create_example_topic(url)


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every credential configured."""
    tmp = tmp_path_factory.mktemp("auth")
    with _broker(
        tmp / "broker.log",
        "--history",
        f"sqlite:{tmp / 'h.db'}",
        ESPER_SUBSCRIBER_SECRET=SUBSCRIBER_SECRET,
        ESPER_PUBLISHER_SECRET=PUBLISHER_SECRET,
        ESPER_API_TOKEN=API_TOKEN,
        ESPER_METRICS_TOKEN=METRICS_TOKEN,
    ) as url:
        yield url


def test_the_broker_serves_this_document(open_broker: str) -> None:
    served = requests.get(f"{open_broker}/openapi.json", timeout=STEP_SECONDS)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(document()))


@pytest.fixture
def open_url(open_broker: str) -> str:
    return _create_example_topic(open_broker)


@pytest.fixture
def auth_url(auth_broker: str) -> str:
    return _create_example_topic(auth_broker, Authorization=f"Bearer {API_TOKEN}")


def _head_then_health(url: str, path: str) -> int:
    """``HEAD path``, then ``GET /health`` on the same connection."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    try:
        connection.request("HEAD", path)
        connection.getresponse().read()
        connection.request("GET", "/health")
        return connection.getresponse().status
    finally:
        connection.close()


_HUGE = "9" * 5000
#: Requests schemathesis does not generate, and the status the document
#: promises for each (each once answered otherwise: a hang, a 200, a 500).
UNGENERATED = [
    pytest.param(
        lambda url: _head_then_health(url, "/stats/stream"),
        200,
        id="HEAD /stats/stream answers its head alone",
    ),
    pytest.param(
        lambda url: (
            requests.head(
                f"{url}/subscribe/{TOPIC_EXAMPLE}?lastEventId=5&since=bogus", timeout=STEP_SECONDS
            ).status_code
        ),
        400,
        id="since is checked when resuming too",
    ),
    pytest.param(
        lambda url: (
            requests.get(
                f"{url}/history/{TOPIC_EXAMPLE}?limit={_HUGE}", timeout=STEP_SECONDS
            ).status_code
        ),
        400,
        id="limit of 5000 digits",
    ),
    pytest.param(
        lambda url: (
            requests.post(
                f"{url}{api.PREFIX}/{TOPIC_EXAMPLE}/events",
                data=b'{"event": {"message": 1e400}}',
                timeout=STEP_SECONDS,
            ).status_code
        ),
        400,
        id="JSON event with a number out of float range",
    ),
    pytest.param(
        lambda url: (
            requests.post(
                f"{url}{api.PREFIX}/{TOPIC_EXAMPLE}/events",
                data=b'{"event": {"message": "\\ud800"}}',
                timeout=STEP_SECONDS,
            ).status_code
        ),
        400,
        id="JSON event with a lone surrogate",
    ),
]


@pytest.mark.parametrize(("send", "documented"), UNGENERATED)
def test_documented_answers_schemathesis_does_not_send(
    send: Callable[[str], int], documented: int, probe_broker: str
) -> None:
    assert send(probe_broker) == documented


# Bodies schemathesis has no reader for: validated against their schemas too.
@schemathesis.deserializer(TEXT, "text/tab-separated-values")
def _text(ctx: Any, response: Any) -> str:
    return str(response.content.decode())


@schemathesis.deserializer("application/x-ndjson")
def _ndjson(ctx: Any, response: Any) -> list[Any]:
    return [json.loads(line) for line in response.content.splitlines()]


def _configured(doc: dict[str, Any]) -> Any:
    """``doc`` for schemathesis, with the phases ``SCHEMATHESIS_PHASES`` names."""
    phases = {name: {"enabled": name in PHASES} for name in ("examples", "coverage", "fuzzing")}
    return schemathesis.openapi.from_dict(
        doc, config=schemathesis.Config.from_dict({"phases": phases})
    )


def _open(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as the broker configured open serves it: no route takes a credential."""
    paths = {
        path: {method: op | {"security": []} for method, op in item.items()}
        for path, item in doc["paths"].items()
    }
    return doc | {"paths": paths}


#: The document the brokers serve (test_the_broker_serves_this_document),
#: loaded without one: schemathesis 4.32's lazy ``pytest.from_fixture``
#: schema fails on pytest 9.2 (it sets ``Node._nodeid``, which pytest renamed).
OPEN_SCHEMA = _configured(_open(document()))
AUTH_SCHEMA = _configured(document())
#: Operations whose answer is an endless event stream.
STREAMS = {
    (method.upper(), path)
    for path, item in document()["paths"].items()
    for method, operation in item.items()
    if SSE in operation["responses"].get("200", {}).get("content", {})
}
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # open_url and auth_url create the example topic once an operation, not
    # once an example, on purpose (a DELETE example removes it).
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)


def _resumes_with_since(case: Any) -> bool:
    """A subscribe that resumes (``Last-Event-ID`` or ``?lastEventId=``) and
    has ``?since=``: plan_subscribe never checks ``since`` then (see
    test_documented_answers_schemathesis_does_not_send)."""
    query, headers = case.query or {}, case.headers or {}
    return "since" in query and bool(headers.get("Last-Event-ID") or query.get("lastEventId"))


def _call_and_validate(case: Any, base_url: str, *extra_checks: Any) -> None:
    streams = (case.method.upper(), case.operation.path) in STREAMS
    timeout = (STEP_SECONDS, STREAM_READ_SECONDS) if streams else STEP_SECONDS
    excluded = []
    # An SSE body is a grammar JSON Schema cannot state: a string in the
    # schema is mostly not a valid body (test_sse.py tests the grammar).
    if case.operation.path == "/publish/{topic}" and case.media_type != TEXT:
        excluded.append(positive_data_acceptance)
    if ("GET", case.operation.path) in STREAMS and _resumes_with_since(case):
        excluded.append(negative_data_rejection)
    case.call_and_validate(
        base_url=base_url,
        timeout=timeout,
        excluded_checks=excluded,
        additional_checks=list(extra_checks),
    )


@OPEN_SCHEMA.parametrize()
@HYPOTHESIS
def test_the_open_broker_answers_as_documented(case: Any, open_url: str) -> None:
    _call_and_validate(case, open_url)


# -- with every credential configured ----------------------------------------

SCHEMES = document()["components"]["securitySchemes"]
#: Which alternative of an operation's security list the next case uses.
_TURNS: dict[str, int] = {}
#: The credential each case was given, by case id.
_GIVEN: dict[str, tuple[str, str]] = {}


@AUTH_SCHEMA.auth(refresh_interval=None)
class _Credentials:
    """For each case, one of the credentials the operation's security list
    names (in turn), made for the case's topic: the document is right only
    if every one is accepted."""

    def get(self, case: Any, ctx: Any) -> tuple[str, str, str] | None:
        alternatives = [
            name
            for requirement in case.operation.definition.raw["security"]
            for name in requirement
        ]
        if not alternatives:
            return None
        turn = _TURNS.get(case.operation.label, 0)
        _TURNS[case.operation.label] = turn + 1
        scheme = alternatives[turn % len(alternatives)]
        topic = (case.path_parameters or {}).get("topic")
        if SCHEMES[scheme]["type"] == "apiKey":  # the first credential, in the query
            return "query", SCHEMES[scheme]["name"], _token(alternatives[0], topic)
        return "header", "Authorization", f"Bearer {_token(scheme, topic)}"

    def set(self, case: Any, data: tuple[str, str, str], ctx: Any) -> None:
        where, name, value = data
        _GIVEN[case.id] = (name, value)
        if where == "query":
            case.query = {**(case.query or {}), name: value}
        else:
            case.headers = {**(case.headers or {}), name: value}


def _token(scheme: str, topic: str | None) -> str:
    """A credential of ``scheme``: a JWT for ``topic`` (a publisher JWT is
    also an admin one), or a static token."""
    subject = topic if isinstance(topic, str) else "anytopic1"
    if scheme == "subscriberJwt":
        return make_token(SUBSCRIBER_SECRET, subject, exp_in=TOKEN_SECONDS)
    if scheme == "publisherJwt":
        return make_token(PUBLISHER_SECRET, subject, exp_in=TOKEN_SECONDS, admin=True)
    if scheme == "mercureSubscriberJwt":
        return jwt.encode({"mercure": {"subscribe": ["*"]}}, SUBSCRIBER_SECRET, "HS256")
    if scheme == "mercurePublisherJwt":
        return jwt.encode({"mercure": {"publish": ["*"]}}, PUBLISHER_SECRET, "HS256")
    return {"apiToken": API_TOKEN, "metricsToken": METRICS_TOKEN}[scheme]


def _credential_accepted(ctx: Any, response: Any, case: Any) -> None:
    """Every credential the document lists for the operation gets in (when
    it is the request's only one: a negative case may add a bad one)."""
    sent = response.request
    query = parse_qs(urlsplit(sent.url).query)
    given = [(name, value) for name, values in query.items() for value in values]
    given += [(name, value) for name, value in sent.headers.items() if name == "Authorization"]
    credentials = [(n, v) for n, v in given if n in ("Authorization", "token", "access_token")]
    if credentials != [_GIVEN.get(case.id)]:
        return
    assert response.status_code not in (401, 403), (
        f"{case.operation.label} refused a credential its security list names "
        f"({credentials[0][0]}): {response.status_code} {response.text.strip()}"
    )


@AUTH_SCHEMA.parametrize()
@HYPOTHESIS
def test_the_broker_with_credentials_answers_as_documented(case: Any, auth_url: str) -> None:
    # ignored_auth (on by default) checks that each credential is needed:
    # without it, or with a made-up one, the answer is 401 or 403.
    _call_and_validate(case, auth_url, _credential_accepted)
