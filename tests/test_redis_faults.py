"""The Redis backplane under faults, with real redis-servers (no mocks): a
stalled Redis (SIGSTOP) that answers late, publisher-chosen ids shared by two
nodes, an eviction policy that could drop the broker's keys, and what a
stall writes to the log."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import coredis
import httpx
import pytest
import trio

from trio_esper.errors import OutcomeUnknown
from trio_esper.history import Record
from trio_esper.history import redis as redis_history
from trio_esper.history.redis import RedisHistory, open_redis_history
from trio_esper.sse import Event

from .conftest import (
    STEP_SECONDS,
    BrokerProcess,
    RedisServer,
    running_redis,
    stalled,
)
from .redisclient import nodes, stream_of

pytestmark = pytest.mark.slow

#: Longer than the backplane's publish window (2 s): Redis answers too late.
STALL_SECONDS = 3.5


async def redis_command(server: RedisServer, *args: str) -> Any:
    """One command over RESP2, its reply parsed (integers, bulk strings, arrays)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        await stream.send_all(request.encode())
        buffer = bytearray()

        async def line() -> bytes:
            while b"\r\n" not in buffer:
                chunk = await stream.receive_some()
                assert chunk, "redis closed the connection"
                buffer.extend(chunk)
            end = buffer.index(b"\r\n")
            text = bytes(buffer[:end])
            del buffer[: end + 2]
            return text

        async def reply() -> Any:
            head = await line()
            kind, rest = head[:1], head[1:].decode()
            if kind in (b"+", b"-"):
                return rest
            if kind == b":":
                return int(rest)
            if kind == b"$":
                if int(rest) < 0:
                    return None
                return (await line()).decode()
            assert kind == b"*", head
            return [await reply() for _ in range(int(rest))]

        with trio.fail_after(STEP_SECONDS):
            return await reply()


def fields_of(frame: bytes) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in frame.decode().strip().splitlines())


async def published(client: httpx.AsyncClient, node: BrokerProcess, topic: str, body: str) -> str:
    reply = await client.post(f"{node.url}/publish/{topic}", content=body.encode())
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


# -- 6. a publish answered 503 is never delivered ----------------------------------------


async def test_publishes_redis_answers_too_late_are_refused_and_never_delivered(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "stalledtopic1"
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 1) as (node,),
            stream_of(client, f"{node.url}/subscribe/{topic}") as stream,
        ):
            # Publishes in parallel first, so the broker holds open connections
            # to Redis: the stalled ones are written to Redis, not stuck connecting.
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(published, client, node, topic, f"data: warm-{n}\n")
            for _ in range(4):
                assert fields_of(await stream.next_event())["data"].startswith("warm-")

            answers: dict[str, httpx.Response] = {}

            async def publish_during_stall(data: str) -> None:
                answers[data] = await client.post(
                    f"{node.url}/publish/{topic}", content=f"data: {data}\n".encode()
                )

            async with trio.open_nursery() as nursery:
                with stalled(redis):
                    for n in range(4):
                        nursery.start_soon(publish_during_stall, f"stalled-{n}")
                    await trio.sleep(STALL_SECONDS)
                stall_over = trio.current_time()
            # Each answer says what happened: nothing was stored.
            assert sorted(answers) == [f"stalled-{n}" for n in range(4)]
            for data, answer in answers.items():
                assert answer.status_code == 503, (data, answer.status_code, answer.text)
            # The answers waited for Redis' own (once it ran again), within a step.
            assert trio.current_time() - stall_over < STEP_SECONDS

            after = await published(client, node, topic, "data: after the stall\n")
            frame = fields_of(await stream.next_event())
            assert (frame["data"], frame["id"]) == ("after the stall", after)
            history = await client.get(f"{node.url}/history/{topic}")
            kept = [json.loads(line)["data"] for line in history.text.splitlines()]
            assert sorted(kept[:4]) == [f"warm-{n}" for n in range(4)]
            assert kept[4:] == ["after the stall"]
            for answer in answers.values():
                assert "not stored" in answer.text, answer.text


async def test_a_publish_redis_never_answers_is_504_and_redis_refuses_it_when_it_runs(
    redis_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait after the window, shortened so that the stall can outlast it.
    monkeypatch.setattr(redis_history, "OUTCOME_SECONDS", 0.5)
    topic = "stalledtopic3"

    async def deliver(topic: str, records: Sequence[Record]) -> None:
        await trio.lowlevel.checkpoint()

    with running_redis(redis_dir) as redis:
        async with open_redis_history(redis.url) as history:
            await history.append(topic, [Event("before")], deliver)
            with stalled(redis), pytest.raises(OutcomeUnknown) as unknown:
                await history.append(topic, [Event("unknown")], deliver)
            assert unknown.value.status == 504
            assert "may have been stored" in unknown.value.reason
            # Redis runs it now, past its deadline: refused, not stored.
            await trio.sleep(0.5)
            await history.append(topic, [Event("after")], deliver)
            replay = await history.after(topic, None, 10)
            assert [r.event.data for r in replay.records] == ["before", "after"]


async def test_the_deadline_is_set_on_redis_clock_to_the_millisecond(redis_dir: Path) -> None:
    with running_redis(redis_dir) as redis:
        client = coredis.Redis.from_url(redis.url, decode_responses=True)
        async with client:
            history = RedisHistory(client, redis.url, max_events_per_topic=10)
            await history.measure_clock()
            # Redis runs on this machine: its clock is ours (coredis' own TIME
            # would be up to a second off: it drops the fraction).
            estimate_ms = trio.current_time() * 1000 + history.clock_offset_ms
            assert abs(estimate_ms - time.time() * 1000) < 100


async def test_a_publish_that_never_reached_redis_is_503_at_once(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1) as (node,):
            await published(client, node, "stalledtopic4", "data: before\n")
            redis.kill()
            with trio.fail_after(STEP_SECONDS):
                while (await client.get(f"{node.url}/ready")).status_code != 503:
                    await trio.sleep(0.05)
                reply = await client.post(
                    f"{node.url}/publish/stalledtopic4", content=b"data: refused\n"
                )
            # The connection held was found closed before sending, and a new one
            # was refused (history/resp.py): Redis never had it, so the answer is sure.
            assert reply.status_code == 503, reply.text
            assert "not stored" in reply.text


# -- 9. a stall is logged in one line per failure kind ---------------------------------------


async def test_a_stall_logs_one_line_per_failure_kind(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "stalledtopic2"
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1) as (node,):
            async with stream_of(client, f"{node.url}/subscribe/{topic}") as stream:
                # Publishes, a subscribe to a new topic and /ready during the stall:
                # the reader, the pub/sub listener and new connections all fail.
                async with trio.open_nursery() as nursery:
                    with stalled(redis):
                        for n in range(3):
                            nursery.start_soon(
                                partial(
                                    client.post,
                                    f"{node.url}/publish/{topic}",
                                    content=f"data: {n}\n".encode(),
                                )
                            )
                        nursery.start_soon(client.get, f"{node.url}/subscribe/othertopic12")
                        nursery.start_soon(client.get, f"{node.url}/ready")
                        await trio.sleep(STALL_SECONDS * 2)
                after = await published(client, node, topic, "data: after\n")
                with trio.fail_after(STEP_SECONDS):
                    while fields_of(await stream.next_event())["id"] != after:
                        pass
            await node.stop()
        log = node.stderr.decode(errors="replace").splitlines()
        assert not [line for line in log if "Traceback" in line], "\n".join(log)
        backplane = [line for line in log if "backplane" in line or "coredis" in line]
        # Every line is one of ours, each failure kind once per interval: a handful.
        assert len(backplane) <= 12, "\n".join(log)
        assert len(log) <= len(backplane) + 6, "\n".join(log)
        assert [line for line in backplane if "coredis" in line or "failed" in line]


def test_coredis_logs_through_the_one_logger_the_backplane_filters() -> None:
    # CoredisLines sits on the "coredis" logger: a logger of another name (a
    # child's records do not pass its parent's filters) would get past it.
    names: set[str] = set()
    for path in Path(coredis.__file__).parent.rglob("*.py"):
        names.update(re.findall(r"getLogger\(([^)]*)\)", path.read_text()))
    assert names == {'"coredis"'}


# -- 7. publisher-chosen ids, as on one node -------------------------------------------


async def test_publisher_ids_are_stored_once_refused_again_and_resumable_on_any_node(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "ordertopic1"
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 2) as (a, b),
            stream_of(client, f"{b.url}/subscribe/{topic}") as on_b,
        ):
            assert await published(client, a, topic, "id: order-42\ndata: first\n") == "order-42"
            frame = fields_of(await on_b.next_event())
            assert (frame["id"], frame["data"]) == ("order-42", "first")
            for node in (a, b):  # the repeat is refused on every node
                again = await client.post(
                    f"{node.url}/publish/{topic}", content=b"id: order-42\ndata: again\n"
                )
                assert again.status_code == 409, again.text
            # A body with a repeated id stores none of its events.
            mixed = await client.post(
                f"{b.url}/publish/{topic}",
                content=b"id: order-43\ndata: x\n\nid: order-42\ndata: y\n",
            )
            assert mixed.status_code == 409
            numbered = await published(client, b, topic, "data: numbered\n")
            chosen = await published(client, b, topic, "id: order-43\ndata: second\n")
            assert chosen == "order-43"
            # Resumable by the publisher's id on either node.
            for node in (a, b):
                async with stream_of(
                    client, f"{node.url}/subscribe/{topic}", **{"Last-Event-ID": "order-42"}
                ) as resumed:
                    got = [fields_of(await resumed.next_event()) for _ in range(2)]
                    assert [(f["id"], f["data"]) for f in got] == [
                        (numbered, "numbered"),
                        ("order-43", "second"),
                    ]
            for frame in [fields_of(await on_b.next_event()) for _ in range(2)]:
                assert frame["id"] in (numbered, "order-43")
            history = await client.get(f"{a.url}/history/{topic}")
            ids = [json.loads(line)["id"] for line in history.text.splitlines()]
            assert ids == ["order-42", numbered, "order-43"]
            # An id shaped like the stream's own is the broker's: refused with the reason.
            shaped = await client.post(f"{a.url}/publish/{topic}", content=b"id: 12-0\ndata: x\n")
            assert shaped.status_code == 400
            assert "the broker's" in shaped.text


async def test_publisher_ids_are_forgotten_with_the_events_redis_trims(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "ordertopic2"
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1, "--history-events", "3") as (node,):
            for n in range(40):
                await published(client, node, topic, f"id: order-{n}\ndata: {n}\n")
            # As on one node: an id gone from the history may be used again...
            assert await published(client, node, topic, "id: order-0\ndata: again\n") == "order-0"
            # ...and the map of ids stays as short as the stream.
            length = await redis_command(redis, "XLEN", f"trio_esper:topic:{topic}")
            mapped = await redis_command(redis, "HLEN", f"trio_esper:ids:{topic}")
            assert length < 10
            assert mapped <= length


# -- 8. an eviction policy that can drop the broker's keys -----------------------------------


async def test_an_evicting_policy_is_warned_about_at_start_and_on_reconnect(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    with running_redis(redis_dir, "--maxmemory-policy", "allkeys-lru") as redis:
        async with nodes(redis, 1) as (node,):
            warned = node.log_lines("maxmemory-policy")
            assert len(warned) == 1, node.stderr.decode()
            assert "allkeys-lru" in warned[0]
            assert "WARNING" in warned[0]
            # Made safe, then Redis restarts with it again: warned again on reconnect.
            assert (
                await redis_command(redis, "CONFIG", "SET", "maxmemory-policy", "noeviction")
                == "OK"
            )
            redis.kill()
            with trio.fail_after(STEP_SECONDS):
                while (await client.get(f"{node.url}/ready")).status_code != 503:
                    await trio.sleep(0.1)
            redis.start()
            with trio.move_on_after(STEP_SECONDS * 2):
                while len(node.log_lines("maxmemory-policy")) < 2:
                    await trio.sleep(0.1)
            assert len(node.log_lines("maxmemory-policy")) == 2, node.stderr.decode()
            assert (await client.get(f"{node.url}/ready")).status_code == 200
            await published(client, node, "evicttopic1", "data: still published\n")


async def test_a_full_redis_that_does_not_evict_refuses_publishes_with_503(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "fulltopic12"
    with running_redis(
        redis_dir, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction"
    ) as redis:
        async with nodes(redis, 1, "--history-events", "100000") as (node,):
            assert not node.log_lines("maxmemory-policy")
            body = "data: " + "x" * 60_000 + "\n"
            stored: list[str] = []
            with trio.fail_after(STEP_SECONDS * 3):
                while (
                    reply := await client.post(f"{node.url}/publish/{topic}", content=body)
                ).status_code == 200:
                    stored.append(reply.json()["id"])
            assert reply.status_code == 503, reply.text
            assert "OOM" in reply.text
            assert "not stored" in reply.text
            history = await client.get(f"{node.url}/history/{topic}")
            assert [json.loads(line)["id"] for line in history.text.splitlines()] == stored


async def test_refuse_an_evicting_policy_when_told_to(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    with running_redis(redis_dir, "--maxmemory-policy", "allkeys-lfu") as redis:
        process = await trio.run_process(
            [
                sys.executable,
                *("-m", "trio_esper"),
                *("--port", "0", "--no-auth", "--backplane", redis.url),
                *("--backplane-eviction", "refuse"),
            ],
            capture_stderr=True,
            check=False,
        )
        assert process.returncode == 3, process.stderr.decode()
        assert b"maxmemory-policy allkeys-lfu" in process.stderr
        assert b"Traceback" not in process.stderr
    with running_redis(redis_dir, "--maxmemory-policy", "volatile-lru") as redis:
        async with nodes(redis, 1, "--backplane-eviction", "refuse") as (node,):
            # volatile-* evicts keys with a TTL only: the broker's have none.
            assert not node.log_lines("maxmemory-policy")
            await published(client, node, "evicttopic2", "data: kept\n")
            # Made evicting while the broker runs: publishes are refused until it is undone.
            await redis_command(redis, "CONFIG", "SET", "maxmemory-policy", "allkeys-random")
            with trio.fail_after(STEP_SECONDS * 2):
                while (await client.get(f"{node.url}/ready")).status_code != 503:
                    await trio.sleep(0.2)
            refused = await client.post(f"{node.url}/publish/evicttopic2", content=b"data: no\n")
            assert refused.status_code == 503
            assert "allkeys-random" in refused.text
            assert "not stored" in refused.text
            await redis_command(redis, "CONFIG", "SET", "maxmemory-policy", "noeviction")
            with trio.fail_after(STEP_SECONDS * 2):
                while (await client.get(f"{node.url}/ready")).status_code != 200:
                    await trio.sleep(0.2)
            await published(client, node, "evicttopic2", "data: kept again\n")
            history = await client.get(f"{node.url}/history/evicttopic2")
            kept = [json.loads(line)["data"] for line in history.text.splitlines()]
            assert kept == ["kept", "kept again"]


async def test_a_policy_that_cannot_be_read_is_said_once(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    with running_redis(redis_dir, "--rename-command", "CONFIG", "") as redis:
        async with nodes(redis, 1) as (node,):
            await published(client, node, "evicttopic3", "data: published\n")
            lines = node.log_lines("maxmemory-policy")
            assert len(lines) == 1, node.stderr.decode()
            assert "cannot check" in lines[0]
