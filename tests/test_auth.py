"""JWT auth as a client sees it, through a real broker on loopback on both lanes
(the edge's fast forms, and Quart-Trio with ``--no-fast-lane``) and httpx.

Subscribing and publishing (+ ``/stats``) are guarded independently by their
own HS256 secret; each case below is run on both sides, with the token in the
``Authorization: Bearer`` header and in the ``?token=`` query.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import trio

from trio_esper.config import Config

from .authclient import (
    PUB_SECRET,
    SUB_SECRET,
    Attempt,
    assert_one_line_reason,
    attempt_publish,
    attempt_stats,
    attempt_subscribe,
    carry_token,
)
from .conftest import STEP_SECONDS, TOPIC, Broker, make_token, start_broker, start_from_config

OTHER_SECRET = "o" * 64
OTHER_TOPIC = "othertopic02"


# -- helpers ----------------------------------------------------------------------------------


def _b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def alg_none_token(sub: str = TOPIC, exp_in: int = 60) -> str:
    """An unsigned token (``alg: none``), built by hand as an attacker would."""
    header = _b64url({"alg": "none", "typ": "JWT"})
    payload = _b64url({"sub": sub, "exp": int(time.time()) + exp_in})
    return f"{header}.{payload}."


@dataclass(frozen=True)
class Side:
    name: str
    secret: str
    other_secret: str

    async def attempt(
        self, client: httpx.AsyncClient, broker: Broker, token: str | None, via: str, **kw: Any
    ) -> Attempt:
        if self.name == "subscribe":
            return await attempt_subscribe(client, broker, token, via, **kw)
        return await attempt_publish(client, broker, token, via, **kw)


SIDES = [
    pytest.param(Side("subscribe", SUB_SECRET, PUB_SECRET), id="subscribe"),
    pytest.param(Side("publish", PUB_SECRET, SUB_SECRET), id="publish"),
]
VIAS = ["header", "query"]


@pytest.fixture
async def closed_broker(nursery: trio.Nursery, fast_lane: bool) -> AsyncIterator[Broker]:
    """Both sides closed, each with its own secret."""
    broker = await start_broker(
        nursery, fast_lane=fast_lane, subscriber_secret=SUB_SECRET, publisher_secret=PUB_SECRET
    )
    yield broker
    await broker.stop()


async def _next_event(chunks: AsyncIterator[bytes], buffer: bytearray) -> bytes:
    """The next non-comment frame from a raw SSE byte iterator."""
    with trio.fail_after(STEP_SECONDS):
        while True:
            while b"\n\n" not in buffer:
                buffer.extend(await chunks.__anext__())
            end = buffer.index(b"\n\n") + 2
            frame = bytes(buffer[:end])
            del buffer[:end]
            if not frame.startswith(b":"):
                return frame


# -- missing token: 401 -----------------------------------------------------------------------

MISSING = [
    pytest.param({}, {}, id="no-token"),
    pytest.param({}, {"token": ""}, id="empty-query-token"),
    pytest.param({"Authorization": "Bearer"}, {}, id="bearer-without-token"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, {}, id="basic-scheme"),
]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("headers", "params"), MISSING)
async def test_missing_token_is_401_with_www_authenticate(
    closed_broker: Broker,
    client: httpx.AsyncClient,
    side: Side,
    headers: dict[str, str],
    params: dict[str, str],
) -> None:
    url = f"{closed_broker.url}/{side.name}/{TOPIC}"
    with trio.fail_after(STEP_SECONDS):
        if side.name == "subscribe":
            response = await client.get(url, headers=headers, params=params)
        else:
            response = await client.post(url, headers=headers, params=params, content=b"data: x\n")
    assert_one_line_reason(response, response.content, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


# -- bad token: 403 ---------------------------------------------------------------------------


def _claims(secret: str, alg: str = "HS256", **claims: Any) -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def _tampered(secret: str) -> str:
    """A valid token whose payload was swapped after signing."""
    header, _, signature = make_token(secret).split(".")
    payload = _b64url({"sub": TOPIC, "exp": int(time.time()) + 60, "admin": True})
    return f"{header}.{payload}.{signature}"


#: case -> token maker(secret of this side, secret of the other side)
BAD_TOKENS: dict[str, Callable[[str, str], str]] = {
    "expired": lambda key, _: make_token(key, exp_in=-30),
    "wrong-sub": lambda key, _: make_token(key, sub=OTHER_TOPIC),
    "wrong-key": lambda key, _: make_token(OTHER_SECRET),
    "other-sides-key": lambda _, other: make_token(other),
    "missing-exp": lambda key, _: _claims(key, sub=TOPIC),
    "missing-sub": lambda key, _: make_token(key, sub=None),
    "exp-is-a-string": lambda key, _: _claims(key, sub=TOPIC, exp=str(int(time.time()) + 60)),
    "exp-is-null": lambda key, _: _claims(key, sub=TOPIC, exp=None),
    "sub-not-a-string": lambda key, _: _claims(key, sub=12345678, exp=int(time.time()) + 60),
    "alg-none": lambda _, __: alg_none_token(),
    "alg-hs512": lambda key, _: make_token(key, alg="HS512"),
    "alg-hs384": lambda key, _: make_token(key, alg="HS384"),
    "garbage": lambda _, __: "not-a-jwt",
    "three-garbage-parts": lambda _, __: "aaa.bbb.ccc",
    "tampered-payload": lambda key, _: _tampered(key),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_is_403(
    closed_broker: Broker, client: httpx.AsyncClient, side: Side, via: str, case: str
) -> None:
    token = BAD_TOKENS[case](side.secret, side.other_secret)
    attempt = await side.attempt(client, closed_broker, token, via)
    assert_one_line_reason(attempt.response, attempt.body, 403)
    assert token not in attempt.body.decode()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("via", VIAS)
async def test_valid_token_is_accepted(
    closed_broker: Broker, client: httpx.AsyncClient, side: Side, via: str
) -> None:
    attempt = await side.attempt(client, closed_broker, make_token(side.secret), via)
    assert attempt.status == 200, attempt.body


@pytest.mark.parametrize("side", SIDES)
async def test_sub_matches_the_normalised_topic(
    closed_broker: Broker, client: httpx.AsyncClient, side: Side
) -> None:
    # The URL's topic is case-insensitive; the token names its lower-case form.
    attempt = await side.attempt(
        client, closed_broker, make_token(side.secret, sub=TOPIC), "query", topic=TOPIC.upper()
    )
    assert attempt.status == 200, attempt.body


@pytest.mark.parametrize("side", SIDES)
async def test_configured_algorithms_decide_not_the_token(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient, side: Side
) -> None:
    broker = await start_broker(
        nursery,
        fast_lane=fast_lane,
        subscriber_secret=SUB_SECRET,
        publisher_secret=PUB_SECRET,
        jwt_algorithms=("HS512",),
    )
    accepted = await side.attempt(client, broker, make_token(side.secret, alg="HS512"), "header")
    assert accepted.status == 200, accepted.body
    refused = await side.attempt(client, broker, make_token(side.secret), "header")
    assert_one_line_reason(refused.response, refused.body, 403)
    unsigned = await side.attempt(client, broker, alg_none_token(), "header")
    assert_one_line_reason(unsigned.response, unsigned.body, 403)
    await broker.stop()


# -- events flow end to end with valid tokens -------------------------------------------------


@pytest.mark.parametrize(("sub_via", "pub_via"), [("query", "header"), ("header", "query")])
async def test_valid_tokens_let_events_flow(
    closed_broker: Broker, client: httpx.AsyncClient, sub_via: str, pub_via: str
) -> None:
    headers, params = carry_token(make_token(SUB_SECRET), sub_via)
    with trio.fail_after(STEP_SECONDS):
        async with client.stream(
            "GET", f"{closed_broker.url}/subscribe/{TOPIC}", headers=headers, params=params
        ) as response:
            assert response.status_code == 200
            chunks = response.aiter_raw()
            buffer = bytearray()
            while b": subscribed\n\n" not in buffer:
                buffer.extend(await chunks.__anext__())
            del buffer[: buffer.index(b": subscribed\n\n") + len(b": subscribed\n\n")]
            published = await attempt_publish(
                client,
                closed_broker,
                make_token(PUB_SECRET),
                pub_via,
                body=b"id: 7\nevent: note\ndata: through the gate\n",
            )
            assert published.status == 200, published.body
            assert json.loads(published.body)["subscribers"] == 1
            assert await _next_event(chunks, buffer) == (
                b"id: 7\nevent: note\ndata: through the gate\n\n"
            )
            await chunks.aclose()  # type: ignore[attr-defined]


# -- the two sides are independent ------------------------------------------------------------


async def test_subscriber_closed_publisher_open(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, subscriber_secret=SUB_SECRET)
    refused = await attempt_subscribe(client, broker)
    assert_one_line_reason(refused.response, refused.body, 401)
    assert (await attempt_publish(client, broker)).status == 200
    assert (await attempt_stats(client, broker)).status == 200
    # ... and a subscriber with a token receives what an anonymous publisher sends.
    params = {"token": make_token(SUB_SECRET)}
    with trio.fail_after(STEP_SECONDS):
        async with client.stream(
            "GET", f"{broker.url}/subscribe/{TOPIC}", params=params
        ) as response:
            assert response.status_code == 200
            chunks, buffer = response.aiter_raw(), bytearray()
            buffer.extend(await chunks.__anext__())
            assert buffer.startswith(b": subscribed\n\n")
            del buffer[: len(b": subscribed\n\n")]
            published = await attempt_publish(client, broker, body=b"data: open\n")
            assert published.status == 200, published.body
            event_id = published.response.json()["id"]
            assert await _next_event(chunks, buffer) == f"id: {event_id}\ndata: open\n\n".encode()
            await chunks.aclose()  # type: ignore[attr-defined]
    await broker.stop()


async def test_publisher_closed_subscriber_open(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, publisher_secret=PUB_SECRET)
    refused = await attempt_publish(client, broker)
    assert_one_line_reason(refused.response, refused.body, 401)
    stats = await attempt_stats(client, broker)
    assert_one_line_reason(stats.response, stats.body, 401)
    with trio.fail_after(STEP_SECONDS):
        async with client.stream("GET", f"{broker.url}/subscribe/{TOPIC}") as response:
            assert response.status_code == 200
            chunks, buffer = response.aiter_raw(), bytearray()
            buffer.extend(await chunks.__anext__())
            assert buffer.startswith(b": subscribed\n\n")
            del buffer[: len(b": subscribed\n\n")]
            published = await attempt_publish(
                client, broker, make_token(PUB_SECRET), "header", body=b"data: gated\n"
            )
            assert published.status == 200, published.body
            event_id = published.response.json()["id"]
            assert await _next_event(chunks, buffer) == f"id: {event_id}\ndata: gated\n\n".encode()
            await chunks.aclose()  # type: ignore[attr-defined]
    await broker.stop()


@pytest.mark.parametrize("via", VIAS)
async def test_subscriber_token_opens_neither_publish_nor_stats(
    closed_broker: Broker, client: httpx.AsyncClient, via: str
) -> None:
    token = make_token(SUB_SECRET)
    published = await attempt_publish(client, closed_broker, token, via)
    assert_one_line_reason(published.response, published.body, 403)
    stats = await attempt_stats(client, closed_broker, token, via)
    assert_one_line_reason(stats.response, stats.body, 403)


@pytest.mark.parametrize("via", VIAS)
async def test_publisher_token_does_not_open_subscribe(
    closed_broker: Broker, client: httpx.AsyncClient, via: str
) -> None:
    attempt = await attempt_subscribe(client, closed_broker, make_token(PUB_SECRET), via)
    assert_one_line_reason(attempt.response, attempt.body, 403)


# -- /stats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("sub", [TOPIC, OTHER_TOPIC, "dashboard"])
async def test_stats_takes_a_publisher_token_for_any_sub(
    closed_broker: Broker, client: httpx.AsyncClient, via: str, sub: str
) -> None:
    attempt = await attempt_stats(client, closed_broker, make_token(PUB_SECRET, sub=sub), via)
    assert attempt.status == 200, attempt.body
    assert attempt.response.json()["clients"] == 0


async def test_stats_without_token_is_401(
    closed_broker: Broker, client: httpx.AsyncClient
) -> None:
    attempt = await attempt_stats(client, closed_broker)
    assert_one_line_reason(attempt.response, attempt.body, 401)
    assert attempt.response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: make_token(PUB_SECRET, exp_in=-30), id="expired"),
        pytest.param(lambda: _claims(PUB_SECRET, sub=TOPIC), id="missing-exp"),
        pytest.param(lambda: make_token(OTHER_SECRET), id="wrong-key"),
        pytest.param(lambda: make_token(PUB_SECRET, alg="HS512"), id="alg-hs512"),
        pytest.param(alg_none_token, id="alg-none"),
    ],
)
async def test_stats_bad_publisher_token_is_403(
    closed_broker: Broker, client: httpx.AsyncClient, token: Callable[[], str]
) -> None:
    attempt = await attempt_stats(client, closed_broker, token(), "header")
    assert_one_line_reason(attempt.response, attempt.body, 403)


# -- configuration from the environment -------------------------------------------------------

SECRETS_ENV = {"ESPER_SUBSCRIBER_SECRET": SUB_SECRET, "ESPER_PUBLISHER_SECRET": PUB_SECRET}


async def test_env_secrets_close_both_sides(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient
) -> None:
    broker = await start_from_config(nursery, Config.from_env(SECRETS_ENV), fast_lane=fast_lane)
    assert (await attempt_subscribe(client, broker)).status == 401
    assert (await attempt_publish(client, broker)).status == 401
    assert (await attempt_stats(client, broker)).status == 401
    assert (await attempt_subscribe(client, broker, make_token(SUB_SECRET))).status == 200
    assert (await attempt_publish(client, broker, make_token(PUB_SECRET))).status == 200
    await broker.stop()


@pytest.mark.parametrize(
    ("environ", "overrides"),
    [
        pytest.param(SECRETS_ENV, {"no_auth": True}, id="no_auth=True"),
        pytest.param({**SECRETS_ENV, "ESPER_NO_AUTH": "1"}, {}, id="ESPER_NO_AUTH=1"),
        pytest.param(
            {"ESPER_SUBSCRIBER_SECRET": "", "ESPER_PUBLISHER_SECRET": ""}, {}, id="empty-secrets"
        ),
    ],
)
async def test_env_without_auth_leaves_both_open(
    nursery: trio.Nursery,
    fast_lane: bool,
    client: httpx.AsyncClient,
    environ: dict[str, str],
    overrides: dict[str, Any],
) -> None:
    config = Config.from_env(environ, **overrides)
    broker = await start_from_config(nursery, config, fast_lane=fast_lane)
    assert (await attempt_subscribe(client, broker)).status == 200
    assert (await attempt_publish(client, broker)).status == 200
    assert (await attempt_stats(client, broker)).status == 200
    await broker.stop()


@pytest.mark.parametrize(
    ("env_name", "closed", "open_"),
    [
        ("ESPER_SUBSCRIBER_SECRET", "subscribe", "publish"),
        ("ESPER_PUBLISHER_SECRET", "publish", "subscribe"),
    ],
)
async def test_env_one_secret_closes_only_its_side(
    nursery: trio.Nursery,
    fast_lane: bool,
    client: httpx.AsyncClient,
    env_name: str,
    closed: str,
    open_: str,
) -> None:
    config = Config.from_env({env_name: OTHER_SECRET})
    broker = await start_from_config(nursery, config, fast_lane=fast_lane)
    attempts = {"subscribe": attempt_subscribe, "publish": attempt_publish}
    assert (await attempts[closed](client, broker)).status == 401
    assert (await attempts[open_](client, broker)).status == 200
    assert (await attempts[closed](client, broker, make_token(OTHER_SECRET))).status == 200
    await broker.stop()


# -- tokens never reach the logs --------------------------------------------------------------


async def test_tokens_never_appear_in_logs(
    nursery: trio.Nursery,
    fast_lane: bool,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="trio_esper")
    broker = await start_broker(
        nursery, fast_lane=fast_lane, subscriber_secret=SUB_SECRET, publisher_secret=PUB_SECRET
    )
    # Hypercorn logs through trio_esper.hypercorn (set up by the edge).
    for name in ("hypercorn", "hypercorn.access", "quart.app", "quart"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.clear()

    valid_sub, valid_pub = make_token(SUB_SECRET), make_token(PUB_SECRET)
    invalid = [
        make_token(OTHER_SECRET),
        make_token(SUB_SECRET, exp_in=-30),
        make_token(SUB_SECRET, sub=OTHER_TOPIC),
        alg_none_token(),
        "not-a-jwt-but-a-secret-looking-string",
    ]
    assert (await attempt_subscribe(client, broker, valid_sub)).status == 200
    assert (await attempt_publish(client, broker, valid_pub)).status == 200
    assert (await attempt_stats(client, broker, valid_pub)).status == 200
    for token in invalid:
        assert (await attempt_subscribe(client, broker, token)).status == 403
        assert (await attempt_publish(client, broker, token)).status == 403
        assert (await attempt_stats(client, broker, token)).status == 403
    # An unknown route and a wrong method with a token in the query, too.
    for method, path in [("GET", "/nope"), ("GET", f"/publish/{TOPIC}")]:
        with trio.fail_after(STEP_SECONDS):
            response = await client.request(
                method, f"{broker.url}{path}", params={"token": valid_pub}
            )
        assert response.status_code in (404, 405)
    await broker.stop()

    # httpx and httpcore log the client's own request line; that is the test's
    # client, not the broker. Everything else in the process is the broker.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any("shutting down" in r.getMessage() for r in records), "caplog saw nothing"
    for token in [valid_sub, valid_pub, *invalid]:
        signature = token.rsplit(".", 1)[-1] or token
        for record in records:
            text = f"{record.getMessage()} {record.exc_text or ''} {record.args!r}"
            assert token not in text, record
            assert signature not in text, record
