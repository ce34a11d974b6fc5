"""A client of the guarded routes, for the auth tests: the secrets they share,
and one attempt at subscribing, publishing or reading ``/stats`` with a token
carried in the ``Authorization: Bearer`` header or the ``?token=`` query."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import trio

from .conftest import STEP_SECONDS, TOPIC, Broker

# 64 bytes each: PyJWT warns (an error under filterwarnings) on HMAC keys
# shorter than the hash, and HS512 needs 64.
SUB_SECRET = "s" * 32 + "subscriber-secret-subscriber-sec"
PUB_SECRET = "p" * 32 + "publisher-secret-publisher-secre"


def assert_one_line_reason(response: httpx.Response, body: bytes, status: int) -> None:
    assert response.status_code == status, body
    assert response.headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    assert text.strip()


@dataclass(frozen=True)
class Attempt:
    """What the client saw: status, headers, and the body (or, for a live
    stream, the first frame)."""

    response: httpx.Response
    body: bytes

    @property
    def status(self) -> int:
        return self.response.status_code


def carry_token(token: str | None, via: str) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, params) carrying ``token`` ``via`` the header or the query."""
    if token is None:
        return {}, {}
    if via == "header":
        return {"Authorization": f"Bearer {token}"}, {}
    return {}, {"token": token}


async def attempt_subscribe(
    client: httpx.AsyncClient,
    broker: Broker,
    token: str | None = None,
    via: str = "query",
    *,
    topic: str = TOPIC,
    headers: dict[str, str] | None = None,
) -> Attempt:
    """Subscribe; on 200 read the ``: subscribed`` frame and hang up, else read the reason."""
    extra_headers, params = carry_token(token, via)
    with trio.fail_after(STEP_SECONDS):
        async with client.stream(
            "GET",
            f"{broker.url}/subscribe/{topic}",
            headers={**extra_headers, **(headers or {})},
            params=params,
        ) as response:
            if response.status_code == 200:
                chunks = response.aiter_raw()
                first = await chunks.__anext__()
                await chunks.aclose()  # type: ignore[attr-defined]
                return Attempt(response, first)
            return Attempt(response, await response.aread())


async def attempt_publish(
    client: httpx.AsyncClient,
    broker: Broker,
    token: str | None = None,
    via: str = "query",
    *,
    topic: str = TOPIC,
    body: bytes = b"data: hello\n",
    headers: dict[str, str] | None = None,
) -> Attempt:
    extra_headers, params = carry_token(token, via)
    with trio.fail_after(STEP_SECONDS):
        response = await client.post(
            f"{broker.url}/publish/{topic}",
            content=body,
            headers={**extra_headers, **(headers or {})},
            params=params,
        )
    return Attempt(response, response.content)


async def attempt_stats(
    client: httpx.AsyncClient, broker: Broker, token: str | None = None, via: str = "query"
) -> Attempt:
    extra_headers, params = carry_token(token, via)
    with trio.fail_after(STEP_SECONDS):
        response = await client.get(f"{broker.url}/stats", headers=extra_headers, params=params)
    return Attempt(response, response.content)
