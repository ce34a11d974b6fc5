"""The Redis backplane with a real redis-server (no mocks): broker processes
that share it deliver every event everywhere in one order, resume on any
node, and survive Redis going away and coming back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from .conftest import (
    STEP_SECONDS,
    BrokerProcess,
    RedisServer,
    SSEStream,
    broker_process,
    free_port,
    open_sse,
)
from .redisclient import nodes

pytestmark = pytest.mark.slow


class Streams:
    """Open event streams, closed when the test ends."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._contexts: list[Any] = []

    async def open(self, url: str, **headers: str) -> SSEStream:
        stream, ctx = await open_sse(self.client, url, headers=headers)
        self._contexts.append(ctx)
        assert stream.response.status_code == 200, stream.response.status_code
        assert await stream.next_frame() == b": subscribed\n\n"
        return stream

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for ctx in reversed(self._contexts):
                await ctx.__aexit__(None, None, None)


@pytest.fixture
async def streams(client: httpx.AsyncClient) -> AsyncIterator[Streams]:
    opened = Streams(client)
    yield opened
    await opened.aclose()


def _data_and_id(frame: bytes) -> tuple[str, str]:
    fields = dict(line.split(": ", 1) for line in frame.decode().strip().splitlines())
    return fields["data"], fields["id"]


async def publish(client: httpx.AsyncClient, node: BrokerProcess, topic: str, data: str) -> str:
    reply = await client.post(f"{node.url}/publish/{topic}", content=f"data: {data}\n".encode())
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


async def test_every_subscriber_on_every_node_gets_every_event_in_one_order(
    redis_server: RedisServer, client: httpx.AsyncClient, streams: Streams
) -> None:
    topic = "sharedtopic1"
    async with nodes(redis_server, 2) as (a, b):
        subscribers = [await streams.open(f"{n.url}/subscribe/{topic}") for n in (a, b, a, b)]
        sent: list[str] = []

        async def publisher(node: BrokerProcess, name: str) -> None:
            for n in range(25):
                await publish(client, node, topic, f"{name}-{n}")
                sent.append(f"{name}-{n}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher, a, "a")
            nursery.start_soon(publisher, b, "b")
        seen = []
        for stream in subscribers:
            seen.append([_data_and_id(await stream.next_event()) for _ in range(50)])
        assert sorted(data for data, _ in seen[0]) == sorted(sent)
        assert all(order == seen[0] for order in seen)  # one order everywhere
        ids = [entry_id for _, entry_id in seen[0]]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


async def test_resume_on_another_node_and_after_a_node_dies(
    redis_server: RedisServer, client: httpx.AsyncClient, streams: Streams
) -> None:
    topic = "resumetopic1"
    async with nodes(redis_server, 2) as (a, b):
        first = await streams.open(f"{a.url}/subscribe/{topic}")
        await publish(client, a, topic, "one")
        _, last_id = _data_and_id(await first.next_event())
        missed = [await publish(client, b, topic, f"missed-{n}") for n in range(3)]
        # Back on node A with Last-Event-ID: what was published on B meanwhile.
        again = await streams.open(f"{a.url}/subscribe/{topic}", **{"Last-Event-ID": last_id})
        got = [_data_and_id(await again.next_event()) for _ in range(3)]
        assert got == [(f"missed-{n}", missed[n]) for n in range(3)]
        # Node A dies (SIGKILL): its subscriber resumes on B.
        a.process.kill()
        more = await publish(client, b, topic, "after the crash")
        on_b = await streams.open(f"{b.url}/subscribe/{topic}", **{"Last-Event-ID": missed[-1]})
        assert _data_and_id(await on_b.next_event()) == ("after the crash", more)
        assert await on_b.next_frame(timeout=2) == b": heartbeat\n\n"  # nothing twice


async def test_publisher_ids_shaped_like_the_streams_are_refused_with_the_reason(
    redis_server: RedisServer, client: httpx.AsyncClient
) -> None:
    async with nodes(redis_server, 1) as (node,):
        # Publisher ids work (tests/test_redis_faults.py), but not the stream's own form.
        reply = await client.post(f"{node.url}/publish/idtopic12", content=b"id: 7-1\ndata: x\n")
        assert reply.status_code == 400
        assert "the backplane's own ids" in reply.text
        assert (
            await client.post(f"{node.url}/publish/idtopic12", content=b"id: 7\ndata: x\n")
        ).json()["id"] == "7"
        # The topic API creates topics there, persist or not.
        created = await client.post(f"{node.url}/api/v1/pubsubs", json={"pubsub": {}})
        assert created.status_code == 201
        assert created.json()["pubsub"]["persist"] is True


async def test_redis_goes_away_and_comes_back(
    redis_server: RedisServer, client: httpx.AsyncClient, streams: Streams
) -> None:
    topic = "outagetopic1"
    async with nodes(redis_server, 2) as (a, b):
        stream = await streams.open(f"{a.url}/subscribe/{topic}")
        acknowledged = [await publish(client, b, topic, "before")]
        assert _data_and_id(await stream.next_event())[1] == acknowledged[0]

        redis_server.kill()
        with trio.fail_after(STEP_SECONDS):
            reply = await client.post(f"{b.url}/publish/{topic}", content=b"data: lost\n")
        assert reply.status_code == 503
        assert "backplane is unavailable" in reply.text
        ready = await client.get(f"{a.url}/ready")
        assert ready.status_code == 503
        assert "backplane" in ready.json()["reason"]
        problem = (await client.get(f"{b.url}/stats")).json()["history"]["problem"]
        assert "is unavailable" in problem
        # Through Quart (the connection went there for /stats) and the fast lane.
        for fresh in (False, True):
            async with httpx.AsyncClient(timeout=STEP_SECONDS) as other:
                refused = await (other if fresh else client).get(f"{b.url}/subscribe/newtopic123")
            assert refused.status_code == 503

        assert refused.status_code == 503
        # The open stream stays open: heartbeats go on.
        assert await stream.next_frame() == b": heartbeat\n\n"

        redis_server.start()
        with trio.fail_after(STEP_SECONDS * 2):
            while (await client.get(f"{a.url}/ready")).status_code != 200:
                await trio.sleep(0.2)
        acknowledged.append(await publish(client, b, topic, "after"))
        frames = [await stream.next_event()]
        assert [_data_and_id(f) for f in frames] == [("after", acknowledged[1])]
        stats = (await client.get(f"{a.url}/stats")).json()
        assert stats["history"]["backend"] == "redis"
        assert stats["history"]["problem"] is None
        history = await client.get(f"{a.url}/history/{topic}")
        assert [json.loads(line)["id"] for line in history.text.splitlines()] == acknowledged
    assert a.log_lines("backplane: .* failed")
    assert not a.log_lines("Traceback")


async def test_a_password_in_the_url_is_used_and_never_logged(
    redis_server: RedisServer, tmp_path: Any, client: httpx.AsyncClient, streams: Streams
) -> None:
    # (redis_server: for its check that redis-server is installed; this test
    # runs one of its own, which asks for a password.)
    password = "backplane-password-for-the-test"
    guarded = RedisServer(free_port(), str(tmp_path), password=password)
    guarded.start()
    try:
        async with broker_process("--backplane", guarded.url, "--log-level", "debug") as node:
            stream = await streams.open(f"{node.url}/subscribe/guardedtopic1")
            entry_id = await publish(client, node, "guardedtopic1", "behind a password")
            assert _data_and_id(await stream.next_event()) == ("behind a password", entry_id)
            guarded.kill()  # the failure lines name the URL: without its password
            reply = await client.post(f"{node.url}/publish/guardedtopic1", content=b"data: x\n")
            assert reply.status_code == 503
            assert (await client.get(f"{node.url}/ready")).status_code == 503
        assert node.log_lines("backplane")
        assert password not in node.stderr.decode()
    finally:
        guarded.kill()
