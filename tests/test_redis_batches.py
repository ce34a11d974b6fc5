"""The Redis backplane's batches (history/redis.py, "Batches"): publishes
that wait together go to Redis in one script, each decided on its own, with
one notice; a node hands its own publishes to its hub without reading them
back. Through a real redis-server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import coredis
import pytest
import trio

from trio_esper.errors import Conflict, HistoryError
from trio_esper.history import Record
from trio_esper.history.redis import open_redis_history
from trio_esper.history.redis_entries import IDS_PREFIX, KEY_PREFIX, NOTIFY_CHANNEL
from trio_esper.sse import Event

from .conftest import STEP_SECONDS, RedisServer


async def stat_calls(client: Any, command: str) -> int:
    """How many times Redis has run ``command`` (INFO commandstats)."""
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_publishes_waiting_together_are_one_script_each_decided_on_its_own(
    redis_server: RedisServer,
) -> None:
    kept, conflicting, broken = "batchtopic01", "batchtopic02", "batchtopic03"
    outcomes: dict[str, object] = {}

    async def deliver(topic: str, records: Sequence[Record]) -> None:
        await trio.lowlevel.checkpoint()

    client = coredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with client, open_redis_history(redis_server.url) as history:
        await client.delete(
            [KEY_PREFIX + conflicting, IDS_PREFIX + conflicting, KEY_PREFIX + kept]
        )
        # Another program's key where a stream belongs: that publish fails alone.
        await client.set(KEY_PREFIX + broken, "not a stream")

        async def publish(name: str, topic: str, event: Event) -> None:
            try:
                records = await history.append(topic, [event], deliver)
            except (Conflict, HistoryError) as exc:
                outcomes[name] = exc
            else:
                outcomes[name] = [r.event.data for r in records]

        async with client.pubsub(channels=[NOTIFY_CHANNEL]) as notices:
            with trio.fail_after(STEP_SECONDS):
                async for message in notices:
                    if message["type"] == "subscribe":
                        break
            # Started together: all are queued before the writer runs.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish, "first", conflicting, Event("one", id="order-1"))
                nursery.start_soon(publish, "again", conflicting, Event("two", id="order-1"))
                nursery.start_soon(publish, "broken", broken, Event("lost"))
                nursery.start_soon(publish, "kept", kept, Event("three"))
            with trio.fail_after(STEP_SECONDS):
                async for message in notices:
                    if message["type"] == "message":
                        head, *topics = str(message["data"]).split("\n")
                        break
        # The same id twice in one batch: whichever ran first is stored (trio
        # starts tasks in any order), the other refused.
        first, again = (
            ("first", "again") if isinstance(outcomes["again"], Conflict) else ("again", "first")
        )
        assert outcomes[first] == [{"first": "one", "again": "two"}[first]]
        assert isinstance(outcomes[again], Conflict)
        assert isinstance(outcomes["broken"], HistoryError)
        assert outcomes["broken"].status == 503
        assert "not stored" in outcomes["broken"].reason
        assert "WRONGTYPE" in outcomes["broken"].reason
        assert outcomes["kept"] == ["three"]
        # One notice for the batch, naming the topics stored to, once each.
        assert sorted(topics) == sorted([conflicting, kept])
        assert head == history._token
        assert [r.event.data for r in (await history.after(conflicting, None, 10)).records] == (
            outcomes[first]
        )
        assert [r.event.data for r in (await history.after(kept, None, 10)).records] == ["three"]
        await client.delete([KEY_PREFIX + t for t in (kept, conflicting, broken)])
        await client.delete([IDS_PREFIX + conflicting])


@pytest.mark.parametrize("publishes", [1, 8])
async def test_a_node_hands_its_own_publishes_to_its_hub_without_reading_them(
    redis_server: RedisServer, publishes: int
) -> None:
    topic = f"batchtopic1{publishes}"
    got: list[str] = []
    arrived = trio.Event()

    async def deliver(topic: str, records: Sequence[Record]) -> None:
        got.extend(r.event.data for r in records)
        if len(got) == 1 + publishes:
            arrived.set()
        await trio.lowlevel.checkpoint()

    client = coredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with client, open_redis_history(redis_server.url) as history:
        await client.delete([KEY_PREFIX + topic])
        await history.watch(topic, deliver)
        await history.append(topic, [Event("first")], deliver)
        with trio.fail_after(STEP_SECONDS):
            while not got:
                await trio.sleep(0.01)
        await trio.sleep(0.3)  # the read the watch asked for is done
        reads = await stat_calls(client, "xrange")
        stored: list[str] = []

        async def publish(n: int) -> None:
            records = await history.append(topic, [Event(f"e{n}")], deliver)
            stored.extend(r.event.data for r in records)

        async with trio.open_nursery() as nursery:
            for n in range(publishes):
                nursery.start_soon(publish, n)
        with trio.fail_after(STEP_SECONDS):
            await arrived.wait()
        # Delivered once each, in the stream's order, and nothing read back.
        in_stream = [r.event.data for r in (await history.after(topic, None, 100)).records]
        assert got == in_stream
        assert sorted(got[1:]) == sorted(stored)
        assert await stat_calls(client, "xrange") == reads + 1  # the after() just above
        await client.delete([KEY_PREFIX + topic])


async def test_any_text_survives_the_batch_s_json(redis_server: RedisServer) -> None:
    topic = "batchtopic20"
    data = 'héllo 😀 \t\x00 "quoted" \\ back/slash \u2028\nsecond line'

    async def deliver(topic: str, records: Sequence[Record]) -> None:
        await trio.lowlevel.checkpoint()

    client = coredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with client, open_redis_history(redis_server.url) as history:
        await client.delete([KEY_PREFIX + topic, IDS_PREFIX + topic])
        stored = await history.append(
            topic, [Event(data, "kind", "given-é", 5), Event("")], deliver
        )
        replay = (await history.after(topic, None, 10)).records
        assert [r.event for r in replay] == [r.event for r in stored]
        assert (replay[0].event.data, replay[0].event.event) == (data, "kind")
        assert (replay[0].event.id, replay[0].event.retry) == ("given-é", 5)
        assert replay[1].event.data == ""
        await client.delete([KEY_PREFIX + topic, IDS_PREFIX + topic])
