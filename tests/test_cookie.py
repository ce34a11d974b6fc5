"""The JWT in a cookie (``--auth-cookie``), for pages whose EventSource
cannot set headers and should not put tokens in URLs, through both front
ends (the real-Chromium test with ``withCredentials`` is in test_browser)."""

from __future__ import annotations

import httpx
import pytest
import trio

from .conftest import STEP_SECONDS, make_token, start_broker

SECRET = "subscriber-secret-for-the-cookie-test"
PUB_SECRET = "publisher-secret-for-the-cookie-test"
ORIGIN = "https://app.example"
COOKIE = "esperToken"
TOPIC = "cookietopic1"


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
        # A publisher token in the cookie publishes (same rules as the header).
        reply = await client.post(
            f"{broker.url}/publish/{TOPIC}",
            content=b"data: x\n",
            headers={"Cookie": f"{COOKIE}={make_token(PUB_SECRET, TOPIC)}"},
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
