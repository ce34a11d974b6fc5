"""Third-party Mercure clients, unchanged, against the hub on loopback.

- Python: ``mercure-publisher`` (PyPI), its async and its blocking publisher, with
  the token it makes itself from the publisher key; a real streaming subscriber
  checks what arrives, byte for byte.
- JavaScript, in Node (tests/js, pinned by its package-lock.json; ``nox -s tests``
  runs ``npm ci`` there): ``eventsource`` (npm; the WHATWG EventSource for Node that
  Mercure's documentation lists) and ``@microsoft/fetch-event-source`` (npm; what
  Mercure's documentation recommends for subscribers that send a token), driven by
  tests/js/mercure_subscriber.mjs: topic selectors, private updates by token, resume
  from an id, a refused token.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from mercure_publisher import AsyncMercurePublisher, MercureConfig, MercurePublisher
from mercure_publisher.exceptions import MercurePublishError

from .conftest import STEP_SECONDS, Broker, SSEStream, open_sse, start_broker

KEY = "a-mercure-key-long-enough-for-hs256-0123456789"
HUB = "/.well-known/mercure"
BOOKS = "https://example.com/books/{id}"
USER = "https://example.com/users/7"
JS = Path(__file__).parent / "js"
SUBSCRIBER_SCRIPT = JS / "mercure_subscriber.mjs"
JS_LIBRARIES = ("eventsource", "fetch-event-source")


@pytest.fixture
async def hub(nursery: trio.Nursery, fast_lane: bool) -> AsyncIterator[Broker]:
    broker = await start_broker(
        nursery,
        fast_lane=fast_lane,
        publisher_secret=KEY,
        subscriber_secret=KEY,
        mercure_anonymous=True,
    )
    yield broker
    await broker.stop()


def publisher_config(hub: Broker, *topics: str, key: str = KEY) -> MercureConfig:
    """The library's own configuration: it signs its token with ``key``."""
    selectors = list(topics) or [BOOKS, "https://example.com/users/{id}"]
    hub_url = f"{hub.url}{HUB}"
    return MercureConfig(hub_url=hub_url, publisher_jwt_key=key, publish_topics=selectors)


def subscriber_token(*selectors: str) -> str:
    return jwt.encode({"mercure": {"subscribe": list(selectors)}}, KEY, algorithm="HS256")


async def mercure_stream(
    client: httpx.AsyncClient, hub: Broker, *topics: str, token: str | None = None
) -> tuple[SSEStream, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = [("topic", t) for t in topics]
    stream, ctx = await open_sse(client, f"{hub.url}{HUB}", params=params, headers=headers)
    assert stream.response.status_code == 200, await stream.response.aread()
    return stream, ctx


async def test_mercure_publisher_reaches_a_streaming_subscriber(
    hub: Broker, client: httpx.AsyncClient
) -> None:
    stream, ctx = await mercure_stream(client, hub, BOOKS, USER)
    try:
        async with AsyncMercurePublisher(publisher_config(hub)) as publisher:
            first = await publisher.publish("https://example.com/books/1", {"title": "Dune"})
            assert first.startswith("urn:uuid:")
            dune = f'id: {first}\ndata: {{"title": "Dune"}}\n\n'.encode()
            assert await stream.next_event() == dune
            # Alternate topics, both selected: one delivery; the library's id, type and retry.
            both = ["https://example.com/books/2", USER]
            given = await publisher.publish(both, "two", id="book-2", type="book", retry=2000)
            assert given == "book-2"
            # Private: never to this anonymous subscriber; the next update shows it was skipped.
            await publisher.publish("https://example.com/books/3", "secret", private=True)
            last = await publisher.publish(USER, "last")
            two = b"id: book-2\nevent: book\nretry: 2000\ndata: two\n\n"
            assert await stream.next_event() == two
            assert await stream.next_event() == f"id: {last}\ndata: last\n\n".encode()
    finally:
        await stream.aclose()
        await ctx.__aexit__(None, None, None)


async def test_mercure_publisher_errors_carry_the_hubs_status(hub: Broker) -> None:
    outside = publisher_config(hub, "https://example.com/users/{id}")
    async with AsyncMercurePublisher(outside) as publisher:
        with pytest.raises(MercurePublishError) as refused:
            await publisher.publish("https://example.com/books/1", "not mine")
    assert refused.value.status_code == 403
    wrong_key = publisher_config(hub, key="not-the-hubs-key-but-long-enough-for-hs256")
    async with AsyncMercurePublisher(wrong_key) as publisher:
        with pytest.raises(MercurePublishError) as unknown:
            await publisher.publish("https://example.com/books/1", "who?")
    assert unknown.value.status_code == 401


async def test_blocking_publisher_sends_a_private_update_to_its_claimant(
    hub: Broker, client: httpx.AsyncClient
) -> None:
    stream, ctx = await mercure_stream(client, hub, BOOKS, token=subscriber_token(BOOKS))
    try:

        def publish_private() -> str:
            with MercurePublisher(publisher_config(hub)) as publisher:
                return publisher.publish("https://example.com/books/9", "for you", private=True)

        with trio.fail_after(STEP_SECONDS):
            update_id = await trio.to_thread.run_sync(publish_private)
        assert await stream.next_event() == f"id: {update_id}\ndata: for you\n\n".encode()
    finally:
        await stream.aclose()
        await ctx.__aexit__(None, None, None)


class NodeSubscriber:
    """tests/js/mercure_subscriber.mjs in Node, read line by line (one JSON object each)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        with trio.fail_after(STEP_SECONDS * 2):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some()
                assert chunk, f"the subscriber ended; so far: {self._buffer!r}"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        found: dict[str, Any] = json.loads(line)
        return found

    async def updates(self, count: int) -> list[tuple[str, str, str]]:
        found = []
        for _ in range(count):
            line = await self.line()
            assert "data" in line, line
            found.append((line["id"], line["type"], line["data"]))
        return found

    async def exit_status(self) -> int:
        with trio.fail_after(STEP_SECONDS * 2):
            return await self.process.wait()


def node() -> str:
    found = shutil.which("node")
    if found is None or not (JS / "node_modules" / "eventsource").is_dir():
        pytest.fail(
            "needs Node.js 20 or later and tests/js/node_modules: "
            "npm ci --prefix tests/js (python3 noxfile.py -s tests does it)",
            pytrace=False,
        )
    return found


@pytest.fixture
async def node_processes() -> AsyncIterator[list[trio.Process]]:
    """Node subscribers the test started, ended when it ends, however it ends."""
    started: list[trio.Process] = []
    yield started
    with trio.CancelScope(shield=True):
        for process in started:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def open_node_subscriber(
    started: list[trio.Process], hub: Broker, library: str, **options: Any
) -> NodeSubscriber:
    arguments = {"library": library, "hub": f"{hub.url}{HUB}", "seconds": 4 * STEP_SECONDS}
    command = [node(), str(SUBSCRIBER_SCRIPT), json.dumps({**arguments, **options})]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    started.append(process)
    return NodeSubscriber(process)


@pytest.mark.parametrize("library", JS_LIBRARIES)
async def test_js_subscriber_gets_its_selected_public_updates_once(
    hub: Broker, node_processes: list[trio.Process], library: str
) -> None:
    subscriber = await open_node_subscriber(
        node_processes, hub, library, topics=[BOOKS, USER], types=["book"], count=2
    )
    assert await subscriber.line() == {"open": 200}
    async with AsyncMercurePublisher(publisher_config(hub, "*")) as publisher:
        first = await publisher.publish("https://example.com/books/1", "one")
        await publisher.publish("https://example.com/books/2", "secret", private=True)
        await publisher.publish("https://example.com/authors/1", "not selected")
        both = await publisher.publish(["https://example.com/books/3", USER], "both", type="book")
    assert await subscriber.updates(2) == [(first, "message", "one"), (both, "book", "both")]
    assert await subscriber.exit_status() == 0


@pytest.mark.parametrize("library", JS_LIBRARIES)
async def test_js_subscriber_with_a_token_resumes_with_private_updates(
    hub: Broker, node_processes: list[trio.Process], library: str
) -> None:
    async with AsyncMercurePublisher(publisher_config(hub)) as publisher:
        seen = await publisher.publish("https://example.com/books/1", "seen before")
        missed = await publisher.publish("https://example.com/books/2", "missed", private=True)
        subscriber = await open_node_subscriber(
            node_processes,
            hub,
            library,
            topics=[BOOKS],
            token=subscriber_token(BOOKS),
            lastEventId=seen,
            count=2,
        )
        assert await subscriber.line() == {"open": 200}
        live = await publisher.publish("https://example.com/books/3", "live", private=True)
    expected = [(missed, "message", "missed"), (live, "message", "live")]
    assert await subscriber.updates(2) == expected
    assert await subscriber.exit_status() == 0


@pytest.mark.parametrize("library", JS_LIBRARIES)
async def test_js_subscriber_sees_a_bad_token_refused(
    hub: Broker, node_processes: list[trio.Process], library: str
) -> None:
    forged = jwt.encode({"mercure": {"subscribe": ["*"]}}, "x" * 32, algorithm="HS256")
    subscriber = await open_node_subscriber(
        node_processes, hub, library, topics=[BOOKS], token=forged, count=1
    )
    line = await subscriber.line()
    if library == "fetch-event-source":  # it shows the answer before refusing it
        assert line == {"open": 401}
        line = await subscriber.line()
    assert "401" in line["error"]
    assert await subscriber.exit_status() == 1
