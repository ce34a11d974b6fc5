"""The JWT in a cookie (``--auth-cookie``), for pages whose EventSource
cannot set headers and should not put tokens in URLs, through both front
ends (the real-Chromium test with ``withCredentials`` is in test_browser)."""

from __future__ import annotations

import httpx
import pytest
import trio

from .conftest import STEP_SECONDS, Broker, make_token, start_broker

SECRET = "subscriber-secret-for-the-cookie-test"
PUB_SECRET = "publisher-secret-for-the-cookie-test"
ORIGIN = "https://app.example"
COOKIE = "esperToken"
TOPIC = "cookietopic1"
API_TOKEN = "api-token-for-the-cookie-tests-0123"
METRICS_TOKEN = "metrics-token-for-the-cookie-tests"
#: A page on another site: what a browser sends with its form POST or "simple"
#: fetch, which needs no CORS preflight (text/plain body, no custom header).
CROSS_SITE = {"Origin": "https://attacker.example", "Content-Type": "text/plain"}


@pytest.mark.parametrize("fast_lane", [True, False], ids=["edge", "quart"])
async def test_token_in_the_configured_cookie(nursery: trio.Nursery, fast_lane: bool) -> None:
    broker = await start_broker(
        nursery,
        fast_lane=fast_lane,
        subscriber_secret=SECRET,
        publisher_secret=PUB_SECRET,
        auth_cookie=COOKIE,
        cors_origins=(ORIGIN,),
    )
    url = f"{broker.url}/subscribe/{TOPIC}"
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:

        async def status(cookie: str | None) -> httpx.Response:
            headers = {"Origin": ORIGIN}
            if cookie is not None:
                headers["Cookie"] = cookie
            async with client.stream("GET", url, headers=headers) as response:
                return response

        good = make_token(SECRET, TOPIC)
        answer = await status(f"other=1; {COOKIE}={good}; last=2")
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert answer.headers["access-control-allow-credentials"] == "true"
        assert (await status(None)).status_code == 401
        assert (await status(f"other={good}")).status_code == 401  # another cookie's name
        assert (await status(f"{COOKIE}={make_token(SECRET, 'othertopic1')}")).status_code == 403
        # The same cookie reads the topic's history (subscriber access).
        reply = await client.get(
            f"{broker.url}/history/{TOPIC}", headers={"Cookie": f"{COOKIE}={good}"}
        )
        assert reply.status_code == 200
    await broker.stop()


async def test_no_credentials_for_any_origin(nursery: trio.Nursery) -> None:
    # '*' cannot carry credentials (Fetch): the broker never pairs them.
    broker = await start_broker(
        nursery, subscriber_secret=SECRET, auth_cookie=COOKIE, cors_origins=("*",)
    )
    async with (
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
        client.stream(
            "GET",
            f"{broker.url}/subscribe/{TOPIC}",
            headers={"Origin": ORIGIN, "Cookie": f"{COOKIE}={make_token(SECRET, TOPIC)}"},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
    await broker.stop()


async def _cookie_broker(nursery: trio.Nursery, fast_lane: bool, **overrides: object) -> Broker:
    return await start_broker(
        nursery,
        fast_lane=fast_lane,
        subscriber_secret=SECRET,
        publisher_secret=PUB_SECRET,
        api_token=API_TOKEN,
        metrics_token=METRICS_TOKEN,
        auth_cookie=COOKIE,
        cors_origins=(ORIGIN,),
        **overrides,
    )


def _writes(broker: Broker) -> list[tuple[str, str, bytes, str]]:
    """Every publishing or management request, and a cookie credential that
    would authorise it if a cookie could: (method, url, body, cookie token)."""
    publisher = make_token(PUB_SECRET, TOPIC)
    admin = make_token(PUB_SECRET, "operations", admin=True)
    api = f"{broker.url}/api/v1/pubsubs"
    return [
        ("POST", f"{broker.url}/publish/{TOPIC}", b"data: forged\n", publisher),
        ("POST", f"{broker.url}/publish/{TOPIC}?event=x", b"forged", publisher),
        ("POST", f"{api}/{TOPIC}/events", b'{"event": {"message": "forged"}}', publisher),
        ("POST", api, b'{"pubsub": {"id": "forgedtopic1"}}', API_TOKEN),
        ("POST", api, b'{"pubsub": {"id": "forgedtopic2"}}', admin),
        ("GET", api, b"", API_TOKEN),
        ("GET", f"{api}/{TOPIC}", b"", admin),
        ("DELETE", f"{api}/{TOPIC}", b"", API_TOKEN),
        ("GET", f"{broker.url}/stats", b"", METRICS_TOKEN),
        ("GET", f"{broker.url}/metrics", b"", publisher),
    ]


async def _history(client: httpx.AsyncClient, broker: Broker) -> list[str]:
    reply = await client.get(
        f"{broker.url}/history/{TOPIC}",
        headers={"Authorization": f"Bearer {make_token(SECRET, TOPIC)}"},
    )
    assert reply.status_code == 200, reply.text
    return reply.text.splitlines()


@pytest.mark.parametrize("fast_lane", [True, False], ids=["edge", "quart"])
async def test_a_cookie_never_publishes_or_manages(nursery: trio.Nursery, fast_lane: bool) -> None:
    # Issue 22, point 15: a cross-site page's form POST carries the user's
    # cookie without a preflight (CSRF), so by default the cookie authorises
    # subscribing only, whatever token it holds.
    broker = await _cookie_broker(nursery, fast_lane)
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        created = await client.post(
            f"{broker.url}/api/v1/pubsubs",
            json={"pubsub": {"id": TOPIC}},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        assert created.status_code == 201, created.text
        for method, url, body, token in _writes(broker):
            headers = {**CROSS_SITE, "Cookie": f"{COOKIE}={token}"}
            reply = await client.request(method, url, content=body, headers=headers)
            assert reply.status_code == 401, (method, url, reply.status_code, reply.text)
            # The same token in the header is accepted: only the cookie is refused.
            if method == "GET":
                header = {"Authorization": f"Bearer {token}"}
                assert (await client.get(url, headers=header)).status_code == 200, url
        assert await _history(client, broker) == []
        listed = await client.get(
            f"{broker.url}/api/v1/pubsubs", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        assert [t["id"] for t in listed.json()["pubsubs"]] == [TOPIC]
        # Subscribing through the topic API still takes the cookie.
        async with client.stream(
            "GET",
            f"{broker.url}/api/v1/pubsubs/{TOPIC}/events",
            headers={"Cookie": f"{COOKIE}={make_token(SECRET, TOPIC)}"},
        ) as stream:
            assert stream.status_code == 200
    await broker.stop()


@pytest.mark.parametrize("fast_lane", [True, False], ids=["edge", "quart"])
async def test_cookie_publish_lets_the_cookie_publish(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    # --cookie-publish restores the cookie as a credential of every route, for
    # deployments whose cookie cannot reach a cross-site page's requests.
    broker = await _cookie_broker(nursery, fast_lane, cookie_publish=True)
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        created = await client.post(
            f"{broker.url}/api/v1/pubsubs",
            json={"pubsub": {"id": TOPIC}},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        assert created.status_code == 201, created.text
        expected = {"POST": (200, 201), "GET": (200,), "DELETE": (200,)}
        for method, url, body, token in _writes(broker):
            if method == "DELETE":
                assert len(await _history(client, broker)) == 3  # the three publishes
            kind = "application/json" if "/api/" in url else "text/plain"
            headers = {"Content-Type": kind, "Cookie": f"{COOKIE}={token}"}
            reply = await client.request(method, url, content=body, headers=headers)
            assert reply.status_code in expected[method], (method, url, reply.text)
    await broker.stop()
