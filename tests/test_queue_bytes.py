"""Subscriber queues are bounded in bytes, per subscription and in total
(issue 22, point 2): a subscriber that stops reading a topic of large events
is dropped at ``--queue-bytes`` long before ``--queue`` events, the bytes all
queues hold together stay under ``--queue-total-bytes`` (the subscriptions
whose dropping frees the most are dropped: a frame many share is freed only
once all of them let go), and ``/stats`` ``queued_bytes`` is back at 0 once
they leave.

First in-process, deterministic (the hub alone), then through a real broker
with raw-socket subscribers that never read, on both lanes.
benchmarks/stalled_queues.py measures the process's memory in the issue's
case (ten stalled subscribers on topics of 60 KiB events).
"""

from __future__ import annotations

import heapq
from typing import Any

import pytest
import trio
import trio.testing

from trio_esper import hub as hub_module
from trio_esper.hub import Subscription, open_hub
from trio_esper.sse import Event, encode

from .conftest import STEP_SECONDS, Broker, hold_subscription, start_broker
from .rawhttp import Raw, exchange, open_subscriber, publish, stats, wait_for_clients

#: An event's data: large enough that bytes, not events, fill a queue.
KIB = 1024
DATA = "x" * (10 * KIB)


def frame_bytes(event: Event) -> int:
    return len(encode(event))


async def test_a_subscription_is_dropped_at_its_byte_bound() -> None:
    bound = 50 * KIB
    async with (
        open_hub(queue_events=1000, queue_bytes=bound, queue_total_bytes=1 << 30) as hub,
        hub.subscribe("topic0001") as slow,
        hub.subscribe("topic0001") as fast,
    ):
        published = 0
        while not slow.dropped:
            event = Event(DATA, id=f"e{published}")
            await hub.publish("topic0001", [event])
            published += 1
            await fast.__anext__()  # the fast one keeps up
            assert hub.statistics().queued_bytes <= bound
            assert published < 1000
        # Dropped by the event that would have taken it past its bound.
        assert published == bound // frame_bytes(Event(DATA, id="e0")) + 1
        stats = hub.statistics()
        assert (stats.clients, stats.dropped) == (1, 1)
        # The dropped subscriber's queue is let go at once, not when it
        # leaves: what is left is the chunk the fast one took last.
        assert stats.queued_bytes == frame_bytes(Event(DATA, id="e0"))


async def test_a_subscription_with_nothing_pending_takes_any_one_publish() -> None:
    """The bounds apply to what is pending: a publish of more events (or
    bytes) than the queue holds reaches a subscriber that is caught up, whole,
    as it did while the queue was opened per record."""
    async with (
        open_hub(queue_events=3, queue_bytes=3 * KIB, queue_total_bytes=1 << 30) as hub,
        hub.subscribe("topic0001") as reader,
    ):
        batch = [Event(f"{n} {'b' * 1000}", id=f"b{n}") for n in range(10)]
        await hub.publish("topic0001", batch)
        assert not reader.dropped
        assert await reader.__anext__() == b"".join(encode(e) for e in batch)
        # Behind by that whole chunk (being written), the next publish is one too many.
        await hub.publish("topic0001", [Event("c" * 1000, id="c0")])
        assert reader.dropped
        assert hub.statistics().dropped == 1


async def test_a_queue_short_of_its_events_takes_a_publish_of_many_whole() -> None:
    """``--queue`` counts what waits: a publish of more events than that
    reaches a subscriber with fewer waiting, whole; once it holds ``--queue``
    events, the next publish drops it, as one event at a time always did."""
    async with (
        open_hub(queue_events=3, queue_bytes=1 << 30, queue_total_bytes=1 << 30) as hub,
        hub.subscribe("topic0001") as slow,
    ):
        await hub.publish("topic0001", [Event("one", id="a0")])
        await hub.publish("topic0001", [Event(f"{n}", id=f"b{n}") for n in range(10)])
        assert not slow.dropped
        await hub.publish("topic0001", [Event("late", id="c0")])
        assert slow.dropped


async def test_the_total_bound_drops_the_subscription_holding_most() -> None:
    frame = frame_bytes(Event(DATA, id="e0"))
    total = 11 * frame
    async with (
        open_hub(queue_events=1000, queue_bytes=1 << 30, queue_total_bytes=total) as hub,
        hub.subscribe("topic0001") as most,
        hub.subscribe("topic0002") as fewer,
        hub.subscribe("topic0003") as reader,
    ):
        for n in range(6):
            await hub.publish("topic0001", [Event(DATA, id=f"e{n}")])
        for n in range(4):
            await hub.publish("topic0002", [Event(DATA, id=f"e{n}")])
        assert hub.statistics().queued_bytes == 10 * frame
        # The reader takes each event; it gets every one while the
        # subscription holding the most (alone) is dropped to stay within the total.
        for n in range(5):
            await hub.publish("topic0003", [Event(DATA, id=f"e{n}")])
            assert hub.statistics().queued_bytes <= total
            assert (await reader.__anext__()).startswith(f"id: e{n}\n".encode())
        assert most.dropped
        assert not fewer.dropped
        assert not reader.dropped
        # The other one's queue, and the chunk the reader took last.
        assert hub.statistics().queued_bytes == 4 * frame + frame


async def test_frames_queued_to_many_subscribers_are_counted_once() -> None:
    """A topic's frames are one object however many subscribers queue them:
    the total counts memory, so a broadcast to many slow readers does not
    trip it (each subscription's own bound counts what it holds)."""
    frame = frame_bytes(Event(DATA, id="e0"))
    async with open_hub(
        queue_events=1000, queue_bytes=1 << 30, queue_total_bytes=20 * frame
    ) as hub:
        async with trio.open_nursery() as nursery:
            subscriptions: list[Subscription] = []

            async def hold() -> None:
                async with hub.subscribe("topic0001") as subscription:
                    subscriptions.append(subscription)
                    await trio.sleep_forever()

            for _ in range(10):
                nursery.start_soon(hold)
            await trio.testing.wait_all_tasks_blocked()
            events = [Event(DATA, id=f"e{n}") for n in range(15)]
            for event in events:
                await hub.publish("topic0001", [event])
            stats = hub.statistics()
            assert (stats.clients, stats.dropped) == (10, 0)
            queued = sum(map(frame_bytes, events))
            assert stats.queued_bytes == queued
            # What one subscription has taken to write is counted until it
            # asks for more: joined, its chunk is a copy the others do not share.
            chunk = await subscriptions[0].__anext__()
            assert len(chunk) == queued
            assert hub.statistics().queued_bytes == 2 * queued
            await subscriptions[1].__anext__()
            assert hub.statistics().queued_bytes == 3 * queued
            with pytest.raises(trio.WouldBlock):  # asks for more: lets go of its chunk
                subscriptions[0].take_nowait()
            assert hub.statistics().queued_bytes == 2 * queued
            nursery.cancel_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert hub.statistics().queued_bytes == 0


#: Stalled subscribers sharing one frame in the tests below: enough that
#: dropping them one by one, each choice a pass over them, shows.
SHARING = 2000


class _Counting:
    """``heapq`` as the hub uses it, counting pushes and pops, and the
    subscriptions whose bytes held it looks at: the work its total bound does
    to pick whom to drop, whatever the machine's speed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps = 0
        held_bytes = hub_module._held_bytes

        def counted(subscription: Subscription) -> int:
            self.steps += 1
            return held_bytes(subscription)

        monkeypatch.setattr(hub_module, "heapq", self)
        monkeypatch.setattr(hub_module, "_held_bytes", counted)

    def heappush(self, heap: list[Any], item: Any) -> None:
        self.steps += 1
        heapq.heappush(heap, item)

    def heappop(self, heap: list[Any]) -> Any:
        self.steps += 1
        return heapq.heappop(heap)

    def heapify(self, heap: list[Any]) -> None:
        self.steps += len(heap)
        heapq.heapify(heap)

    def nlargest(self, *args: Any, **kwargs: Any) -> Any:
        return heapq.nlargest(*args, **kwargs)


@pytest.mark.parametrize("shared_first", [True, False], ids=["shared-first", "alone-first"])
async def test_the_total_bound_drops_whom_it_frees_bytes_by_dropping(
    shared_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many stalled subscribers share one frame (counted once) and one holds
    a frame alone: past the total, that one goes, whichever came first;
    dropping a sharer frees nothing while the others hold the frame."""
    counting = _Counting(monkeypatch)
    shared, alone = Event("a" * 60 * KIB, id="s0"), Event("b" * 50 * KIB, id="b0")
    assert frame_bytes(shared) + frame_bytes(alone) > 100 * KIB > frame_bytes(shared)
    async with (
        open_hub(queue_events=100, queue_bytes=1 << 20, queue_total_bytes=100 * KIB) as hub,
        trio.open_nursery() as nursery,
    ):
        sharers: list[Subscription] = []
        lone: list[Subscription] = []
        for _ in range(SHARING):
            await nursery.start(hold_subscription, hub, "sharedtopic", sharers)
        await nursery.start(hold_subscription, hub, "alonetopic", lone)
        publishes = [("sharedtopic", shared), ("alonetopic", alone)]
        for topic, event in publishes if shared_first else publishes[::-1]:
            await hub.publish(topic, [event])
        stats = hub.statistics()
        assert stats.dropped == 1
        assert lone[0].dropped
        assert not any(s.dropped for s in sharers)
        assert stats.queued_bytes == frame_bytes(shared)
        # The work to pick it does not grow with the sharers.
        assert counting.steps <= 8
        nursery.cancel_scope.cancel()


async def test_a_broadcast_past_the_total_on_its_own_reaches_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every frame shared and still past the total: a frame larger than the
    whole bound reaches none of its subscribers (each is dropped as it is
    handed it: it would hold that frame alone), and ones sharing a smaller
    frame first are dropped only as they are handed the large one."""
    counting = _Counting(monkeypatch)
    small, large = Event("s" * KIB), Event("l" * 120 * KIB)
    async with (
        open_hub(queue_events=100, queue_bytes=1 << 20, queue_total_bytes=100 * KIB) as hub,
        trio.open_nursery() as nursery,
    ):
        sharers: list[Subscription] = []
        for _ in range(SHARING):
            await nursery.start(hold_subscription, hub, "sharedtopic", sharers)
        await hub.publish("sharedtopic", [small])
        assert hub.statistics().dropped == 0
        await hub.publish("sharedtopic", [large])
        stats = hub.statistics()
        assert stats.dropped == SHARING
        assert all(s.dropped for s in sharers)
        assert stats.queued_bytes == 0
        # Each drop is picked in a bounded number of steps, not a pass over the rest.
        assert counting.steps <= 2 * SHARING
        nursery.cancel_scope.cancel()


# --- through a real broker -------------------------------------------------

#: Big events (the issue's case): 60 KiB of data each.
BIG = b"data: " + b"y" * (60 * KIB) + b"\n"
#: A receive buffer this small fills after a fraction of one event.
STALLED_RCVBUF = 2048


async def _stalled(broker: Broker, topic: str) -> Raw:
    """A subscriber that reads the head and the first frame, then never again."""
    return await open_subscriber(broker, topic, receive_buffer=STALLED_RCVBUF)


def _events(frames: list[bytes]) -> int:
    return sum(1 for frame in frames if frame.endswith(BIG + b"\n"))


async def _read_all(raw: Raw, into: list[bytes]) -> None:
    while True:
        into.append(await raw.read_until(b"\n\n"))


async def _publish_until_dropped(
    broker: Broker, topics: list[str], dropped: int, most_rounds: int
) -> tuple[int, int]:
    """Publish a big event to each topic in turn until /stats counts
    ``dropped`` drops; the rounds it took and the most ``queued_bytes`` seen."""
    most = 0
    for rounds in range(1, most_rounds + 1):
        for topic in topics:
            await publish(broker, topic, BIG)
            queued = (await stats(broker))["queued_bytes"]
            assert isinstance(queued, int)
            most = max(most, queued)
        if (await stats(broker))["dropped"] == dropped:
            return rounds, most
    raise AssertionError(f"fewer than {dropped} dropped after {most_rounds} rounds")


async def test_stalled_subscribers_are_dropped_at_the_byte_bound(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    bound = 512 * KIB
    broker = await start_broker(
        nursery, fast_lane=fast_lane, queue_events=1000, queue_bytes=bound, history_events=10
    )
    topics = [f"bigtopic{n:02d}" for n in range(4)]
    stalled = [await _stalled(broker, topic) for topic in topics]
    reader = await open_subscriber(broker, topics[0])
    got: list[bytes] = []
    async with trio.open_nursery() as reading:
        reading.start_soon(_read_all, reader, got)
        rounds, most = await _publish_until_dropped(broker, topics, len(stalled), 60)
        reading.cancel_scope.cancel()
    # Dropped by bytes: far fewer events than --queue (1000) went out, and
    # what the broker held for them stayed within the byte bound each (the
    # reader's frames are the same objects as the first stalled one's).
    assert rounds < 60
    assert most <= len(stalled) * (bound + len(BIG) + 100)
    with trio.fail_after(STEP_SECONDS):  # the reader gets every event
        while _events(got) < rounds:
            got.append(await reader.read_until(b"\n\n"))
    # (Not waited for while they are open: on the Quart lane a dropped
    # stream's task may sit in a write to its stalled socket until it closes.)
    for raw in stalled:
        await raw.aclose()
    await wait_for_clients(broker, 1)  # the reader is still subscribed
    await reader.aclose()
    await wait_for_clients(broker, 0)
    assert (await stats(broker))["queued_bytes"] == 0
    metrics = await exchange(broker, "GET", "/metrics")
    assert b"\ntrio_esper_queued_bytes 0.0\n" in metrics.body
    await broker.stop()


async def test_stalled_subscribers_are_dropped_at_the_total_bound(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    total = 1024 * KIB
    broker = await start_broker(
        nursery,
        fast_lane=fast_lane,
        queue_events=1000,
        queue_bytes=16 * 1024 * KIB,
        queue_total_bytes=total,
        history_events=10,
    )
    topics = [f"totaltopic{n:02d}" for n in range(4)]
    stalled = [await _stalled(broker, topic) for topic in topics]
    readers = [await open_subscriber(broker, topic) for topic in topics]
    got: list[list[bytes]] = [[] for _ in readers]
    async with trio.open_nursery() as reading:
        for raw, into in zip(readers, got, strict=True):
            reading.start_soon(_read_all, raw, into)
        rounds, most = await _publish_until_dropped(broker, topics, len(stalled), 60)
        reading.cancel_scope.cancel()
    # The total held: within it, give or take the event that tipped it.
    assert most <= total + 2 * len(BIG)
    # Every reader kept up and was not dropped for the stalled ones.
    for raw, into in zip(readers, got, strict=True):
        with trio.fail_after(STEP_SECONDS):
            while _events(into) < rounds:
                into.append(await raw.read_until(b"\n\n"))
    for raw in stalled:  # (see the test above)
        await raw.aclose()
    await wait_for_clients(broker, len(readers))  # the readers are still subscribed
    for raw in readers:
        await raw.aclose()
    await wait_for_clients(broker, 0)
    assert (await stats(broker))["queued_bytes"] == 0
    await broker.stop()
