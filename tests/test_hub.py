"""Hub core, without HTTP: deterministic with trio's mock clock."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress

import pytest
import trio
import trio.testing

from trio_esper.errors import ServiceUnavailable
from trio_esper.history import Deliver, Record
from trio_esper.history.memory import MemoryHistory
from trio_esper.hub import Hub, open_hub
from trio_esper.sse import HEARTBEAT_FRAME, Event


def ev(*data: str) -> list[Event]:
    return [Event(d, id=f"i{d}") for d in data]


def topic_tasks(hub: Hub) -> list[str]:
    return [task.name for task in hub._nursery.child_tasks]


async def test_frames_arrive_in_order_and_coalesce() -> None:
    async with open_hub() as hub, hub.subscribe("topic0001") as sub:
        assert (await hub.publish("topic0001", ev("1", "2"))).subscribers == 1
        assert (await hub.publish("topic0001", ev("3"))).subscribers == 1
        await trio.testing.wait_all_tasks_blocked()
        # Everything queued by the time the subscriber reads is one write.
        assert (
            await sub.__anext__() == b"id: i1\ndata: 1\n\nid: i2\ndata: 2\n\nid: i3\ndata: 3\n\n"
        )
        assert hub.statistics().delivered == 3


async def test_topic_task_lives_while_it_has_subscribers() -> None:
    async with open_hub() as hub:
        assert topic_tasks(hub) == []
        async with hub.subscribe("topic0001"), hub.subscribe("topic0001"):
            assert topic_tasks(hub) == ["topic topic0001"]
            assert hub.statistics().clients == 2
        await trio.testing.wait_all_tasks_blocked()
        assert topic_tasks(hub) == []
        assert hub.statistics().topics == 0
        assert (await hub.publish("topic0001", ev("x"))).subscribers == 0


async def test_cancelled_subscriber_is_removed() -> None:
    async with open_hub() as hub:
        with trio.move_on_after(1):
            async with hub.subscribe("topic0001") as sub:
                await sub.__anext__()  # blocks until the deadline cancels it
        assert hub.statistics().clients == 0
        await trio.testing.wait_all_tasks_blocked()
        assert topic_tasks(hub) == []


async def test_full_queue_drops_only_that_subscriber(autojump_clock: trio.abc.Clock) -> None:
    async with (
        open_hub(queue_events=3) as hub,
        hub.subscribe("topic0001") as slow,
        hub.subscribe("topic0001") as fast,
    ):
        for n in range(5):
            # Publishing never waits for the slow subscriber.
            with trio.fail_after(0.001):
                await hub.publish("topic0001", ev(str(n)))
            assert await fast.__anext__() == f"id: i{n}\ndata: {n}\n\n".encode()
        stats = hub.statistics()
        assert (stats.clients, stats.dropped) == (1, 1)
        assert slow.dropped
        with pytest.raises(StopAsyncIteration):
            await slow.__anext__()


async def test_heartbeat_on_idle_subscribers(autojump_clock: trio.abc.Clock) -> None:
    async with open_hub(heartbeat_seconds=15) as hub, hub.subscribe("topic0001") as sub:
        start = trio.current_time()
        assert await sub.__anext__() == HEARTBEAT_FRAME
        assert trio.current_time() - start == pytest.approx(15)
        assert await sub.__anext__() == HEARTBEAT_FRAME
        assert trio.current_time() - start == pytest.approx(30)
        assert hub.statistics().delivered == 0  # heartbeats are not events


async def test_close_ends_streams_and_refuses_new_subscribers() -> None:
    async with open_hub() as hub:
        async with hub.subscribe("topic0001") as sub:
            await hub.publish("topic0001", ev("last"))
            await trio.testing.wait_all_tasks_blocked()
            hub.close()
            assert await sub.__anext__() == b"id: ilast\ndata: last\n\n"  # queued still goes out
            with pytest.raises(StopAsyncIteration):
                await sub.__anext__()
        with pytest.raises(ServiceUnavailable):
            async with hub.subscribe("topic0002"):
                pass  # pragma: no cover


async def test_replay_then_live_has_no_duplicate_at_the_seam() -> None:
    async with open_hub() as hub:
        first = await hub.publish("topic0001", ev("1", "2"))
        async with hub.subscribe("topic0001") as sub:
            # Published after subscribing but before the replay is read:
            # queued live *and* in history. It must come out once.
            await hub.publish("topic0001", ev("3"))
            replay = await hub.replay(sub, first.records[0].id, 1000)
            assert [r.event.data for r in replay.records] == ["2", "3"]
            await hub.publish("topic0001", ev("4"))
            await trio.testing.wait_all_tasks_blocked()
            assert await sub.__anext__() == b"id: i4\ndata: 4\n\n"


async def test_each_framing_is_applied_once_per_batch() -> None:
    # The transport frames (an HTTP/1.1 chunk, say); the topic applies each
    # distinct framing once per batch, however many subscribers share it.
    framed: list[bytes] = []

    def frame(data: bytes) -> bytes:
        framed.append(data)
        return b"<" + data + b">"

    async with (
        open_hub() as hub,
        hub.subscribe("topic0001", frame=frame) as first,
        hub.subscribe("topic0001", frame=frame) as second,
        hub.subscribe("topic0001") as bare,
    ):
        await hub.publish("topic0001", ev("1"))
        await trio.testing.wait_all_tasks_blocked()
        assert await first.__anext__() == b"<id: i1\ndata: 1\n\n>"
        assert await second.__anext__() == b"<id: i1\ndata: 1\n\n>"
        assert await bare.__anext__() == b"id: i1\ndata: 1\n\n"
    # A batch of one record is framed once: its item's bytes are the batch's.
    assert framed == [b"id: i1\ndata: 1\n\n"]
    framed.clear()
    async with (
        open_hub() as hub,
        hub.subscribe("topic0001", frame=frame) as first,
        hub.subscribe("topic0001", frame=frame) as second,
    ):
        await hub.publish("topic0001", ev("1", "2"))
        await trio.testing.wait_all_tasks_blocked()
        assert await first.__anext__() == b"<id: i1\ndata: 1\n\n><id: i2\ndata: 2\n\n>"
        assert await second.__anext__() == b"<id: i1\ndata: 1\n\n><id: i2\ndata: 2\n\n>"
    # Each record once, and the batch's joined bytes once (for direct writes).
    assert sorted(framed) == sorted(
        [b"id: i1\ndata: 1\n\nid: i2\ndata: 2\n\n", b"id: i1\ndata: 1\n\n", b"id: i2\ndata: 2\n\n"]
    )


async def test_subscribing_while_closing_is_refused_and_wait_closed_returns() -> None:
    async with open_hub() as hub:
        async with hub.subscribe("topic0001") as sub:
            hub.close()
            with pytest.raises(ServiceUnavailable):
                async with hub.subscribe("topic0002"):
                    pass
            with pytest.raises(StopAsyncIteration):
                await sub.__anext__()
        with trio.fail_after(1):
            await hub.wait_closed()


async def test_publish_returns_once_every_subscriber_has_the_events() -> None:
    # The answer to a publish means the event is out: written to a parked
    # subscriber's socket, queued for one whose task is busy.
    written: list[bytes] = []

    def write_nowait(data: bytes) -> int:
        written.append(data)
        return len(data)

    async with (
        open_hub() as hub,
        hub.subscribe("topic0001") as parked,
        hub.subscribe("topic0001") as busy,
    ):
        parked.attach(write_nowait, _no_interrupt)
        assert parked.park(lambda: None)
        published = await hub.publish("topic0001", ev("1"))
        # No checkpoint in between: the topic's task ran before publish returned.
        assert written == [b"id: i1\ndata: 1\n\n"]
        assert published.subscribers == 2
        assert hub.statistics().delivered == 1  # the direct write; the queued one when read
        assert busy.take_nowait() == b"id: i1\ndata: 1\n\n"  # queued for the busy one
        assert hub.statistics().delivered == 2


@pytest.mark.parametrize("subscribed", [False, True], ids=["no-subscriber", "subscriber"])
async def test_publish_is_a_checkpoint(subscribed: bool) -> None:
    # The edge serves publishes back to back on one connection without a
    # checkpoint of its own: Hub.publish must yield, with or without a
    # topic task to wait for, and with records delivered later.
    class Later(MemoryHistory):
        async def append(
            self, topic: str, events: Sequence[Event], deliver: Deliver
        ) -> list[Record]:
            return await super().append(topic, events, _ignore)

    for history in (MemoryHistory(), Later()):
        async with open_hub(history) as hub, AsyncExitStack() as stack:
            if subscribed:
                await stack.enter_async_context(hub.subscribe("topic0001"))
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_checkpoints():
                await hub.publish("topic0001", ev("1"))


async def test_publish_does_not_wait_on_a_topic_task_that_ended() -> None:
    # Records handed to a topic whose task is cancelled (the hub closing)
    # before it fans them out: a publisher waiting on them is let go.
    released = trio.Event()
    async with trio.open_nursery() as outside:  # the waiter is not in the hub's scope
        async with open_hub() as hub, hub.subscribe("topic0001") as sub:
            topic = sub._topic  # the Topic itself: its task is what this tests
            await trio.testing.wait_all_tasks_blocked()  # the topic's task waits on its inbox
            # Two hand-offs without a checkpoint: the first wakes the topic's
            # task, the second waits in its inbox.
            first = await hub.history.append("topic0001", ev("1"), hub._deliver)
            second = await hub.history.append("topic0001", ev("2"), hub._deliver)

            async def publisher() -> None:
                await topic.wait_fanned_out(second[-1].seq)
                released.set()

            outside.start_soon(publisher)
            hub._nursery.cancel_scope.cancel()
        with trio.fail_after(1):
            await released.wait()
    assert topic.fanned_through == first[-1].seq  # the second was never fanned out


async def test_publish_does_not_wait_for_records_delivered_later() -> None:
    # A history that delivers after append returns (the Redis backplane's
    # reader does): the publisher is answered at once.
    class Later(MemoryHistory):
        async def append(
            self, topic: str, events: Sequence[Event], deliver: Deliver
        ) -> list[Record]:
            return await super().append(topic, events, _ignore)

    async with open_hub(Later()) as hub, hub.subscribe("topic0001") as sub:
        with trio.fail_after(1):
            published = await hub.publish("topic0001", ev("1"))
        assert published.subscribers == 1
        with pytest.raises(trio.WouldBlock):  # nothing handed to it yet
            sub.take_nowait()


def _no_interrupt() -> None:
    pass


async def _ignore(topic: str, records: Sequence[Record]) -> None:
    pass


async def test_a_stream_that_never_queued_ends_and_drains_like_any_other() -> None:
    # A subscriber the topic only ever wrote to directly has nothing queued
    # (its queue opens when something must wait); it still reports that,
    # and ends cleanly, by either way of reading.
    written: list[bytes] = []

    def write_nowait(data: bytes) -> int:
        written.append(data)
        return len(data)

    async with (
        open_hub() as hub,
        hub.subscribe("topic0001") as direct,
        hub.subscribe("topic0001") as iterated,
    ):
        direct.attach(write_nowait, _no_interrupt)
        assert direct.park(lambda: None)
        await hub.publish("topic0001", ev("1"))
        assert written == [b"id: i1\ndata: 1\n\n"]
        with pytest.raises(trio.WouldBlock):  # nothing waits in its queue
            direct.take_nowait()
        assert await iterated.__anext__() == b"id: i1\ndata: 1\n\n"
        hub.close()  # ends every stream
        with pytest.raises(trio.EndOfChannel):
            direct.take_nowait()
        with pytest.raises(StopAsyncIteration):
            await iterated.__anext__()
    for read in ("take_nowait", "__anext__"):
        async with open_hub() as hub, hub.subscribe("topic0001") as untouched:
            hub.close()  # ended before anything was offered
            if read == "take_nowait":
                with pytest.raises(trio.EndOfChannel):
                    untouched.take_nowait()
            else:
                with pytest.raises(StopAsyncIteration):
                    await untouched.__anext__()


async def test_a_subscriber_that_leaves_once_it_has_the_event_is_counted() -> None:
    # The count is taken when the events are handed to the topic: one that
    # reads its event and leaves before the publisher's answer still got it.
    async def subscriber(hub: Hub, got: trio.Event, task_status: trio.TaskStatus[None]) -> None:
        async with hub.subscribe("topic0001") as sub:
            task_status.started()
            await sub.__anext__()
        got.set()  # left as soon as it had the event

    async with open_hub() as hub:
        for n in range(40):
            got = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(subscriber, hub, got)
                published = await hub.publish("topic0001", ev(str(n)))
                await got.wait()
            assert published.subscribers == 1, n


async def test_a_direct_writer_that_would_block_queues_the_rest() -> None:
    # The edge's writer is os.write on a non-blocking socket: a full socket
    # raises BlockingIOError. Nothing is lost or reordered: what the socket
    # did not take waits in the queue, in order, and the subscriber stays.
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = "x" * 1000
        async with open_hub() as hub, hub.subscribe("topic0001") as sub:
            sub.attach(functools.partial(os.write, ours.fileno()), _no_interrupt)
            assert sub.park(lambda: None)
            for n in range(64):
                published = await hub.publish("topic0001", [Event(data, id=f"i{n}")])
                assert published.subscribers == 1
            assert not sub.dropped
            queued = sub.take_nowait()  # the socket filled up: the rest waits
            with suppress(trio.WouldBlock):
                while True:
                    queued += sub.take_nowait()
        peer.setblocking(False)
        sent = b""
        with suppress(BlockingIOError):
            while received := peer.recv(1 << 20):
                sent += received
    assert sent  # some was written directly
    expected = b"".join(b"id: i%d\ndata: %s\n\n" % (n, data.encode()) for n in range(64))
    assert sent + queued == expected
