"""What other clients of the same Redis may leave under the backplane's keys:
stream entries the broker cannot decode, and a key of another type where a
topic's stream should be. Each is skipped and said in the log, for that
topic only; the reader goes on with every other topic, and the process stays
up (real redis-servers and broker processes, no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from trio_esper.history import redis as redis_history
from trio_esper.history.redis_entries import IDS_PREFIX, KEY_PREFIX, NOTIFY_CHANNEL
from trio_esper.sse import Event

from .conftest import (
    STEP_SECONDS,
    running_redis,
)
from .redisclient import connection_to, deliver, nodes, stream_of

pytestmark = pytest.mark.slow

#: Entries another client wrote to a topic's stream that are no event of
#: the broker's: each field the broker reads, in a shape it cannot take.
FOREIGN_ENTRIES: list[tuple[bytes, ...]] = [
    (b"d", b"\xff\xfe not UTF-8"),
    (b"d", b"retry?", b"r", b"soon"),
    (b"d", b"when?", b"t", b"yesterday"),
    (b"d", b"routed?", b"w", b"\x00 not a route"),
    (b"d", b"routed?", b"w", b"[1, 2]"),
    (b"d", b"typed?", b"e", b"x\ndata: injected"),
    (b"d", b"named?", b"i", b"x\rretry: 1"),
]


async def test_entries_the_broker_cannot_decode_are_skipped_and_said_once(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "foreigntopic1"
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 2) as (a, b),
            stream_of(client, f"{b.url}/subscribe/{topic}") as on_b,
        ):
            async with connection_to(redis.url) as foreign:
                for fields in FOREIGN_ENTRIES:
                    await foreign.call("XADD", KEY_PREFIX + topic, "*", *fields)
            reply = await client.post(f"{a.url}/publish/{topic}", content=b"data: after\n")
            assert reply.status_code == 200, reply.text
            event = await on_b.next_event()
            assert b"data: after\n" in event, event
            # The reader is still there for the next one, and so is the process.
            reply = await client.post(f"{a.url}/publish/{topic}", content=b"data: next\n")
            assert reply.status_code == 200, reply.text
            assert b"data: next\n" in await on_b.next_event()
            assert b.process.returncode is None
            skipped = b.log_lines("cannot decode")
            assert len(skipped) == 1, b.stderr.decode(errors="replace")
            # (One read or two, by when the subscribe's first read ran: one line.)
            assert f"entries of {topic} it cannot decode" in skipped[0], skipped
            # A resume from the start and /history skip them as well, on any node.
            for node in (a, b):
                history = await client.get(f"{node.url}/history/{topic}")
                assert history.status_code == 200, history.text
                events = [json.loads(line) for line in history.text.splitlines()]
                assert [event["data"] for event in events] == ["after", "next"], events


async def test_a_key_of_another_type_stops_only_its_own_topic(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    spoiled, healthy = "foreigntopic2", "foreigntopic3"
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 2) as (a, b),
            stream_of(client, f"{b.url}/subscribe/{spoiled}") as on_spoiled,
            stream_of(client, f"{b.url}/subscribe/{healthy}") as on_healthy,
        ):
            async with connection_to(redis.url) as foreign:
                await foreign.call("DEL", KEY_PREFIX + spoiled)
                await foreign.call("SET", KEY_PREFIX + spoiled, "not a stream")
                # A notice naming both topics: b reads both streams at once.
                await foreign.call("PUBLISH", NOTIFY_CHANNEL, f"another\n{spoiled}\n{healthy}")
            refused = await client.post(f"{a.url}/publish/{spoiled}", content=b"data: x\n")
            assert refused.status_code == 503, refused.text
            assert "WRONGTYPE" in refused.text, refused.text
            for n in range(3):
                reply = await client.post(f"{a.url}/publish/{healthy}", content=f"data: {n}\n")
                assert reply.status_code == 200, reply.text
                assert f"data: {n}\n".encode() in await on_healthy.next_event()
            with trio.fail_after(STEP_SECONDS):
                while not b.log_lines(f"read failed: {spoiled}: WRONGTYPE"):
                    await trio.sleep(0.05)
            assert b.process.returncode is None
            assert a.process.returncode is None
            # A node with no subscriber to the spoiled topic refuses a new one, with the reason.
            async with client.stream("GET", f"{a.url}/subscribe/{spoiled}") as refused:
                body = (await refused.aread()).decode()
                assert refused.status_code == 503, body
                assert "wrong kind of value" in body, body
            # Neither node takes the backplane for down.
            for node in (a, b):
                ready = await client.get(f"{node.url}/ready")
                assert ready.status_code == 200, ready.text
            # Deleting the key gives the topic back, to its open streams too.
            async with connection_to(redis.url) as foreign:
                await foreign.call("DEL", KEY_PREFIX + spoiled)
            reply = await client.post(f"{a.url}/publish/{spoiled}", content=b"data: back\n")
            assert reply.status_code == 200, reply.text
            assert b"data: back\n" in await on_spoiled.next_event()


async def test_a_route_nested_past_the_parsers_depth_is_skipped_too(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    # json.loads raises RecursionError (a RuntimeError) on deep nesting, not
    # ValueError: the reader must skip the entry as any other it cannot take.
    topic = "foreigntopic4"
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 1) as (node,),
            stream_of(client, f"{node.url}/subscribe/{topic}") as on,
        ):
            async with connection_to(redis.url) as foreign:
                await foreign.call(
                    "XADD", KEY_PREFIX + topic, "*", "d", "deep", "w", "[" * 100_000
                )
                await foreign.call("PUBLISH", NOTIFY_CHANNEL, f"another\n{topic}")
            reply = await client.post(f"{node.url}/publish/{topic}", content=b"data: after\n")
            assert reply.status_code == 200, reply.text
            assert b"data: after\n" in await on.next_event()
            assert node.process.returncode is None, node.stderr.decode(errors="replace")
            history = await client.get(f"{node.url}/history/{topic}")
            assert history.status_code == 200, history.text
            assert [json.loads(line)["data"] for line in history.text.splitlines()] == ["after"]


#: The last entry id a stream can hold: Redis adds nothing after it, and
#: refuses to read after it ("invalid start ID").
LAST_ENTRY_ID = f"{(1 << 64) - 1}-{(1 << 64) - 1}"


async def test_an_entry_at_the_last_possible_id_stalls_no_other_topic(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    ended, healthy = "foreigntopic5", "foreigntopic6"
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 1) as (node,),
            stream_of(client, f"{node.url}/subscribe/{ended}") as on_ended,
            stream_of(client, f"{node.url}/subscribe/{healthy}") as on_healthy,
            connection_to(redis.url) as foreign,
        ):
            await foreign.call("XADD", KEY_PREFIX + ended, LAST_ENTRY_ID, "d", "last")
            await foreign.call("PUBLISH", NOTIFY_CHANNEL, f"another\n{ended}")
            assert b"data: last\n" in await on_ended.next_event()
            # Written as another node would (not by this node's writer, which
            # hands its own publishes over unread): the reader must read it.
            for n in range(2):
                await foreign.call("XADD", KEY_PREFIX + healthy, "*", "d", f"n{n}", "t", "0")
                await foreign.call("PUBLISH", NOTIFY_CHANNEL, f"another\n{ended}\n{healthy}")
                assert f"data: n{n}\n".encode() in await on_healthy.next_event()
            ready = await client.get(f"{node.url}/ready")
            assert ready.status_code == 200, ready.text
            assert not node.log_lines("failed"), node.stderr.decode(errors="replace")
            # Resuming after it finds nothing more, and says so in one piece.
            history = await client.get(
                f"{node.url}/history/{ended}", params={"after": LAST_ENTRY_ID}
            )
            assert history.status_code == 200, history.text
            assert history.text == "", history.text


async def test_a_resume_from_an_id_redis_cannot_take_is_that_resume_s_only(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    # What the id hash maps a publisher id to is another client's if it is no
    # entry id (or not UTF-8); a Last-Event-ID shaped like an entry id may be
    # past Redis' bounds. Each is an id not retained (404 on /history; a
    # stream resets), where Redis' refusal marked the backplane down.
    topic = "foreigntopic7"
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1) as (node,):
            reply = await client.post(f"{node.url}/publish/{topic}", content=b"data: kept\n")
            assert reply.status_code == 200, reply.text
            async with connection_to(redis.url) as foreign:
                await foreign.call("HSET", IDS_PREFIX + topic, "garbled", "not an entry id")
                await foreign.call("HSET", IDS_PREFIX + topic, "undecodable", b"\xff")
            for after in ("garbled", "undecodable", f"{1 << 64}-0", f"0-{1 << 64}"):
                page = await client.get(f"{node.url}/history/{topic}", params={"after": after})
                assert page.status_code == 404, page.text
                async with stream_of(
                    client, f"{node.url}/subscribe/{topic}", **{"last-event-id": after}
                ) as resumed:
                    assert b"event: reset\n" in await resumed.next_event()
                    assert b"data: kept\n" in await resumed.next_event()
            ready = await client.get(f"{node.url}/ready")
            assert ready.status_code == 200, ready.text
            assert not node.log_lines("failed"), node.stderr.decode(errors="replace")


async def test_an_id_hash_of_another_type_does_not_make_a_stored_publish_a_refused_one(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    # The script trims a stream past --history-events, and forgets the
    # trimmed entries' publisher ids in the id hash: after its XADD. Another
    # client's key there failed the publish after it was stored, and 503
    # says "not stored" (a publisher retries: a duplicate).
    topic = "foreigntopic8"
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1, "--history-events", "2") as (node,):
            reply = await client.post(f"{node.url}/publish/{topic}", content=b"id: p1\ndata: 1\n")
            assert reply.status_code == 200, reply.text
            async with connection_to(redis.url) as foreign:
                await foreign.call("DEL", IDS_PREFIX + topic)
                await foreign.call("SET", IDS_PREFIX + topic, "not a hash")
            for n in (2, 3, 4):
                reply = await client.post(f"{node.url}/publish/{topic}", content=f"data: {n}\n")
                assert reply.status_code == 200, reply.text
            history = await client.get(f"{node.url}/history/{topic}")
            assert [json.loads(line)["data"] for line in history.text.splitlines()] == ["3", "4"]


async def test_a_routed_publish_refused_for_another_client_s_key_is_not_stored(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    # The routed log (Mercure) takes an id again: the script did not look at
    # the id hash before its XADD, and failed on it after (stored, yet 503).
    routed = "~routed"
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1) as (node,), connection_to(redis.url) as foreign:
            await foreign.call("SET", IDS_PREFIX + routed, "not a hash")
            reply = await client.post(
                f"{node.url}/.well-known/mercure",
                data={"topic": "https://example.com/books/1", "data": "x", "id": "m1"},
            )
            assert reply.status_code == 503, reply.text
            assert "WRONGTYPE" in reply.text, reply.text
            assert await foreign.call("XLEN", KEY_PREFIX + routed) == 0


async def test_a_key_of_another_type_stops_not_the_eviction_check(
    redis_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The statistics' pipeline reads every watched stream's length, then
    # Redis' clock and eviction policy: a watched topic's key of another type
    # failed the pipeline, and the checks after it never ran again.
    monkeypatch.setattr(redis_history, "STATISTICS_INTERVAL_SECONDS", 0.05)
    spoiled = "foreigntopic9"
    with running_redis(redis_dir) as redis:
        async with (
            redis_history.open_redis_history(redis.url) as history,
            connection_to(redis.url) as foreign,
        ):
            await history.watch(spoiled, deliver)
            await foreign.call("SET", KEY_PREFIX + spoiled, "not a stream")
            await trio.sleep(0.2)  # a few rounds of statistics
            await foreign.call("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
            with trio.fail_after(STEP_SECONDS):
                while "can evict" not in caplog.text:
                    await trio.sleep(0.05)


async def test_a_key_of_another_type_leaves_the_statistics_of_the_rest_current(
    redis_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The statistics read every watched stream's length in one pipeline: a
    # key of another type failed it whole, and /stats kept its last figures.
    monkeypatch.setattr(redis_history, "STATISTICS_INTERVAL_SECONDS", 0.05)
    spoiled, healthy, empty = "foreigntopic10", "foreigntopic11", "foreigntopic12"
    with running_redis(redis_dir) as redis:
        async with (
            redis_history.open_redis_history(redis.url) as history,
            connection_to(redis.url) as foreign,
        ):
            for topic in (spoiled, healthy, empty):
                await history.watch(topic, deliver)
            await foreign.call("SET", KEY_PREFIX + spoiled, "not a stream")
            await history.append(healthy, [Event(data="one"), Event(data="two")], deliver)
            with trio.fail_after(STEP_SECONDS):
                while (history.statistics().topics, history.statistics().events) != (1, 2):
                    await trio.sleep(0.05)
            assert history.statistics().bytes > 0


async def test_an_entry_id_ahead_of_the_clock_costs_no_later_event(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    # Another client may give an entry an id of its own choosing; the
    # broker's next entries then follow it, in the same millisecond.
    topic = "foreigntopic10"
    ahead = f"{1 << 41}-{(1 << 24) + 5}"  # ms: in 2039
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 1) as (node,),
            stream_of(client, f"{node.url}/subscribe/{topic}") as on,
        ):
            async with connection_to(redis.url) as foreign:
                await foreign.call("XADD", KEY_PREFIX + topic, ahead, "d", "ahead")
                await foreign.call("PUBLISH", NOTIFY_CHANNEL, f"another\n{topic}")
            assert b"data: ahead\n" in await on.next_event()
            ids = []
            for n in range(3):
                reply = await client.post(f"{node.url}/publish/{topic}", content=f"data: {n}\n")
                assert reply.status_code == 200, reply.text
                ids.append(reply.json()["id"])
                assert f"data: {n}\n".encode() in await on.next_event()
            # A stream that resumes replays what follows, then goes on live.
            async with stream_of(
                client, f"{node.url}/subscribe/{topic}", **{"last-event-id": ids[0]}
            ) as resumed:
                assert b"data: 1\n" in await resumed.next_event()
                assert b"data: 2\n" in await resumed.next_event()
                reply = await client.post(f"{node.url}/publish/{topic}", content=b"data: 3\n")
                assert reply.status_code == 200, reply.text
                assert b"data: 3\n" in await resumed.next_event()
            history = await client.get(f"{node.url}/history/{topic}")
            events = [json.loads(line)["data"] for line in history.text.splitlines()]
            assert events == ["ahead", "0", "1", "2", "3"], events


async def test_garbage_on_the_notices_channel_stops_nothing(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    topic = "foreigntopic11"
    with running_redis(redis_dir) as redis:
        async with (
            nodes(redis, 1) as (node,),
            stream_of(client, f"{node.url}/subscribe/{topic}") as on,
        ):
            async with connection_to(redis.url) as foreign:
                for notice in (b"", b"\xff\xfe\x00", b"\n" * 100_000, b"x" * (8 << 20)):
                    await foreign.call("PUBLISH", NOTIFY_CHANNEL, notice)
                await foreign.call("XADD", KEY_PREFIX + topic, "*", "d", "read", "t", "0")
                await foreign.call("PUBLISH", NOTIFY_CHANNEL, f"\xff\n{topic}\n\n{topic}")
            assert b"data: read\n" in await on.next_event()
            ready = await client.get(f"{node.url}/ready")
            assert ready.status_code == 200, ready.text
            assert not node.log_lines("failed"), node.stderr.decode(errors="replace")


def strict_json(line: str) -> object:
    """``line`` as JSON, as a browser's JSON.parse takes it (no NaN, no Infinity)."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


async def test_a_time_that_is_no_finite_number_is_skipped(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    # float() takes "nan" and "inf": /history then wrote NaN into its JSON
    # lines, which no strict parser takes.
    topic = "foreigntopic12"
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1) as (node,):
            async with connection_to(redis.url) as foreign:
                for when in ("nan", "inf", "-1e999"):
                    await foreign.call("XADD", KEY_PREFIX + topic, "*", "d", when, "t", when)
            reply = await client.post(f"{node.url}/publish/{topic}", content=b"data: kept\n")
            assert reply.status_code == 200, reply.text
            history = await client.get(f"{node.url}/history/{topic}")
            assert history.status_code == 200, history.text
            events = [strict_json(line) for line in history.text.splitlines()]
            assert [event["data"] for event in events] == ["kept"], events  # type: ignore[index]


async def test_a_key_of_another_type_fails_no_other_publish_of_its_batch(
    redis_dir: Path, client: httpx.AsyncClient
) -> None:
    spoiled, healthy = "foreigntopic13", "foreigntopic14"
    with running_redis(redis_dir) as redis:
        async with nodes(redis, 1) as (node,):
            async with connection_to(redis.url) as foreign:
                await foreign.call("SET", KEY_PREFIX + spoiled, "not a stream")
            answers: dict[str, list[int]] = {spoiled: [], healthy: []}

            async def publish(topic: str, n: int) -> None:
                reply = await client.post(f"{node.url}/publish/{topic}", content=f"data: {n}\n")
                answers[topic].append(reply.status_code)

            # Sent together: the writer takes those waiting in one script.
            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(publish, spoiled if n % 2 else healthy, n)
            assert answers == {spoiled: [503] * 10, healthy: [200] * 10}, answers
            history = await client.get(f"{node.url}/history/{healthy}")
            assert len(history.text.splitlines()) == 10, history.text
