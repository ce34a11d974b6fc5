"""The memory history's byte budget bounds the process's memory, whatever the
mix of topics and event sizes (issue 10, point 7)."""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio

from trio_esper.history import Record
from trio_esper.history.memory import MemoryHistory
from trio_esper.hub import ROUTED_LOG
from trio_esper.routing import Route
from trio_esper.sse import Event

MIB = 1 << 20
#: RSS may exceed the budget by this factor (the issue's bound) ...
RSS_OVER_BUDGET = 1.2
#: ... plus this much that no accounting can remove: pymalloc takes memory
#: from the system in 1 MiB arenas and keeps pools partly filled for each of
#: its 32 size classes (up to 16 KiB each), glibc keeps up to 128 KiB of
#: free memory at the top of its heap before trimming, and the interpreter's
#: free lists and trio's run state are not the history's. Measured here for
#: 100,000 one-event topics and an 8 MiB budget: 8.7 MiB (the old accounting:
#: 21.3 MiB).
RSS_ALLOWANCE_BYTES = 2 * MIB
#: A fresh interpreter importing trio and filling 100,000 topics: generous
#: for a loaded CI machine (about 5 s here).
PROCESS_SECONDS = 60.0

#: Run in a fresh interpreter so RSS growth is the history's alone: publish
#: EVENTS events of SIZE bytes to each of TOPICS topics, round-robin, checking
#: the accounted bytes after each.
FILL_SCRIPT = """
import gc, json, sys, trio
from trio_esper.history.memory import MemoryHistory
from trio_esper.sse import Event

def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

async def nowhere(topic, records):
    pass

async def main(topics, events, size, budget):
    history = MemoryHistory(max_bytes=budget)
    gc.collect()
    before = rss()
    most = 0
    pad = "x" * (size - 11)
    for n in range(events):
        for t in range(topics):
            await history.append(f"topic{t:07d}", [Event(f"{n:10d} {pad}")], nowhere)
            most = max(most, history.statistics().bytes)
    gc.collect()
    stats = history.statistics()
    return {"most": most, "topics": stats.topics, "events": stats.events,
            "bytes": stats.bytes, "rss_growth": rss() - before}

print(json.dumps(trio.run(main, *map(int, sys.argv[1:]))))
"""


async def nowhere(topic: str, records: Sequence[Record]) -> None:
    pass


async def _traced_and_accounted(
    events_per_topic: int, fill: Callable[[MemoryHistory], Awaitable[None]]
) -> tuple[int, int]:
    """What tracemalloc sees a fresh memory history (no byte budget to speak
    of) allocate while ``fill`` fills it, and what the history accounts."""
    gc.collect()
    tracemalloc.start()
    try:
        history = MemoryHistory(max_events_per_topic=events_per_topic, max_bytes=1 << 40)
        await fill(history)
        gc.collect()
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return traced, history.statistics().bytes


@pytest.mark.parametrize(
    ("topics", "events", "size"),
    [
        (100_000, 1, 20),  # the case: most of the cost is per topic
        (200, 50, 2000),  # payloads from malloc rather than pymalloc
    ],
)
async def test_process_memory_stays_within_the_budget(topics: int, events: int, size: int) -> None:
    budget = 8 * MIB
    argv = [sys.executable, "-c", FILL_SCRIPT, *map(str, (topics, events, size, budget))]
    with trio.fail_after(PROCESS_SECONDS):
        done = await trio.run_process(argv, capture_stdout=True)
    result = json.loads(done.stdout)
    assert result["most"] <= budget
    # The budget is used, not left idle by overcounting.
    assert result["bytes"] >= 0.95 * budget
    assert result["events"] < topics * events
    assert result["rss_growth"] <= RSS_OVER_BUDGET * budget + RSS_ALLOWANCE_BYTES, result


@pytest.mark.parametrize(
    ("topics", "events", "size"),
    [
        (3000, 1, 20),  # many topics, one small event each
        (30, 100, 100),  # full rings
        (5, 20, 20_000),  # large events (malloc, not pymalloc)
    ],
)
async def test_accounted_bytes_cover_what_the_history_holds(
    topics: int, events: int, size: int
) -> None:
    """What ``statistics().bytes`` says is at least what tracemalloc sees the
    history allocate (tracemalloc counts requested sizes; the accounting
    also counts the allocator's rounding), and not much more."""

    async def fill(history: MemoryHistory) -> None:
        for n in range(events):
            for t in range(topics):
                data = f"{n:10d} " + "x" * (size - 11)
                await history.append(f"topic{t:07d}", [Event(data, event="note")], nowhere)

    traced, accounted = await _traced_and_accounted(events, fill)
    assert traced <= accounted <= 1.2 * traced


@pytest.mark.parametrize("topic_size", [40, 60_000])
async def test_routed_records_count_their_routes(topic_size: int) -> None:
    """A Mercure update's topics (IRIs, as long as a body allows) are held by
    its record's route: counted as tracemalloc sees them allocated."""

    async def fill(history: MemoryHistory) -> None:
        for n in range(50):
            topics = tuple(f"https://example.com/{n}/{k}/" + "t" * topic_size for k in range(2))
            route = Route(topics, private=bool(n % 2))
            await history.append(ROUTED_LOG, [Event(f"update {n}")], nowhere, route=route)
            del topics, route

    traced, accounted = await _traced_and_accounted(50, fill)
    assert traced <= accounted <= 1.2 * traced


async def test_least_recently_published_topics_lose_their_oldest_events_first() -> None:
    history = MemoryHistory(max_events_per_topic=100, max_bytes=1 << 40)
    for name in ("oldest001", "middle001", "newest001"):
        for n in range(3):
            await history.append(name, [Event(f"{name} {n}")], nowhere)
    # Publishing to "oldest001" again makes "middle001" the least recent.
    await history.append("oldest001", [Event("oldest001 3")], nowhere)
    full = history.statistics()
    assert (full.topics, full.events) == (3, 10)

    # Hold the budget where it is: the next event costs middle001 its oldest
    # (the events are all the same size).
    history.max_bytes = full.bytes
    await history.append("newest001", [Event("newest001 3")], nowhere)
    kept = {
        name: [r.event.data for r in (await history.after(name, None, 100)).records]
        for name in ("oldest001", "middle001", "newest001")
    }
    assert kept["middle001"] == ["middle001 1", "middle001 2"]
    assert kept["oldest001"] == [f"oldest001 {n}" for n in range(4)]
    assert kept["newest001"] == [f"newest001 {n}" for n in range(4)]


async def test_a_topic_left_with_no_events_is_forgotten() -> None:
    history = MemoryHistory(max_events_per_topic=100, max_bytes=1 << 40)
    empty = history.statistics().bytes
    await history.append("lonely001", [Event("a"), Event("b")], nowhere)
    one_topic = history.statistics()
    assert (one_topic.topics, one_topic.events) == (1, 2)

    # A budget just below one topic's cost: publishing elsewhere evicts all of
    # lonely001, and with its last event the topic itself (ring, id dict, index
    # entry) is freed: the accounted size is exactly one topic's again.
    history.max_bytes = one_topic.bytes
    await history.append("other0001", [Event("c"), Event("d")], nowhere)
    stats = history.statistics()
    assert (stats.topics, stats.events) == (1, 2)
    assert stats.bytes == one_topic.bytes  # same shape: 2 events of 1 byte, same-length names
    assert "lonely001" not in history._rings
    replay = await history.after("lonely001", None, 10)
    assert (replay.records, replay.found) == ([], True)

    # A budget below one event: nothing is retained, every topic is forgotten.
    history.max_bytes = 1
    await history.append("other0001", [Event("e")], nowhere)
    assert history.statistics().topics == history.statistics().events == 0
    assert history.statistics().bytes == empty


async def test_index_shrinks_after_a_burst_of_one_off_topics() -> None:
    steady = [Event("kept 1"), Event("kept 2"), Event("kept 3")]
    fresh = MemoryHistory(max_events_per_topic=10, max_bytes=1 << 40)
    await fresh.append("steady001", steady, nowhere)

    history = MemoryHistory(max_events_per_topic=10, max_bytes=1 << 40)
    await history.append("steady001", steady[:2], nowhere)
    for t in range(5000):
        await history.append(f"burst{t:05d}", [Event("x")], nowhere)
    # Room for steady001 and less than one more topic: the burst is evicted.
    history.max_bytes = fresh.statistics().bytes + 500
    await history.append("steady001", steady[2:], nowhere)
    stats = history.statistics()
    assert (stats.topics, stats.events) == (1, 3)
    # The index was rebuilt to fit one topic, not left sized for 5001 (which
    # would have cost about 500 kB, and steady001's events with it).
    assert stats.bytes <= fresh.statistics().bytes + 500


async def test_bytes_charged_by_others_make_room_at_once() -> None:
    """What the topic catalog holds is charged to the history's budget
    (``charge``): room is made at once, least recently published first, and
    bytes given back leave room for later publishes."""
    history = MemoryHistory(max_events_per_topic=100, max_bytes=1 << 40)
    for t in range(10):
        await history.append(f"topic{t:04d}", [Event("x" * 100)], nowhere)
    full = history.statistics()
    history.max_bytes = full.bytes
    history.charge(full.bytes // 2)  # no publish: the eviction happens now
    halved = history.statistics()
    assert halved.bytes <= full.bytes // 2
    assert 0 < halved.topics < 10
    assert (await history.after("topic0000", None, 10)).records == []  # the oldest went
    assert (await history.after("topic0009", None, 10)).records != []  # the newest stayed
    history.charge(-(full.bytes // 2))
    for t in range(10, 14):
        await history.append(f"topic{t:04d}", [Event("x" * 100)], nowhere)
    assert history.statistics().topics == halved.topics + 4  # room again, nothing evicted
