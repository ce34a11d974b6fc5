"""The structured-concurrency core: :class:`Hub` owns one :class:`Topic` per
topic id that has subscribers; each subscriber owns a :class:`Subscription`.

Resource handling
-----------------
:func:`open_hub` opens the hub's nursery; every topic task lives in it, so
leaving the ``async with`` block waits for (or cancels) all of them. A topic's
task starts with its first subscriber and ends when the last one leaves: the
topic then closes its own send channel, and its task finishes once the
publishers holding clones of that channel have let go.

A subscriber gets a bounded memory channel. :meth:`Hub.subscribe` is an async
context manager, so whatever ends the subscriber's task -- a normal return,
a client disconnect arriving as cancellation, an error -- removes it from its
topic in ``__aexit__``.

Publishers never wait for a subscriber: the topic task delivers with
``send_nowait``, and a subscriber whose queue is full is dropped (its stream
ends; the client reconnects and, with history, resumes by Last-Event-ID),
as Mercure's localsubscriber does.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .errors import ServiceUnavailable
from .sse import HEARTBEAT_FRAME

#: Frames buffered between publishers and a topic's task before publishers wait.
TOPIC_INBOX_BATCHES = 256
#: At most this many queued frames are joined into one write.
MAX_FRAMES_PER_CHUNK = 256


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """A snapshot of the hub, as ``/stats`` reports it."""

    clients: int
    """Live subscriptions."""
    topics: int
    """Topics that currently have at least one subscriber."""
    published: int
    """Events accepted from publishers since start."""
    delivered: int
    """Events handed to subscriber connections since start."""
    dropped: int
    """Subscribers disconnected because their queue was full."""


class Subscription:
    """One subscriber's end of its topic: an async iterator of byte chunks.

    Each chunk is one or more encoded frames (events or heartbeats) joined, so
    a subscriber that fell behind catches up in few writes.
    """

    def __init__(self, hub: Hub, topic: Topic, queue_events: int) -> None:
        self._hub = hub
        self.topic = topic
        self._send, self._receive = trio.open_memory_channel[bytes](queue_events)
        #: Set when the topic disconnected this subscriber for falling behind.
        self.dropped = False

    def offer_nowait(self, frame: bytes) -> bool:
        """Queue ``frame`` without blocking; return False (and drop the
        subscriber) if the queue is full or closed."""
        try:
            self._send.send_nowait(frame)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.drop()
            return False
        return True

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            self._hub._dropped += 1
            self.close()

    def close(self) -> None:
        """End the stream: the iterator stops once what is queued is read
        (at once if dropped)."""
        self._send.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        try:
            first = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if self.dropped:
            raise StopAsyncIteration
        frames = [first]
        delivered = int(first is not HEARTBEAT_FRAME)
        while len(frames) < MAX_FRAMES_PER_CHUNK:
            try:
                frame = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            frames.append(frame)
            delivered += frame is not HEARTBEAT_FRAME
        self._hub._delivered += delivered
        return first if len(frames) == 1 else b"".join(frames)

    def _aclose(self) -> None:
        self._send.close()
        self._receive.close()


class Topic:
    """The subscribers of one topic id and the task that fans out to them."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.subscribers: set[Subscription] = set()
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[Sequence[bytes]](
            TOPIC_INBOX_BATCHES
        )

    def open_publisher(self) -> trio.MemorySendChannel[Sequence[bytes]]:
        """A clone of the topic's inbox for one publisher; close it when done."""
        return self._inbox_send.clone()

    async def run(self, heartbeat_seconds: float) -> None:
        """The topic's task: fan out published frames; heartbeat idle streams."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, heartbeat_seconds)
            async with self._inbox_receive:
                async for frames in self._inbox_receive:
                    self._fan_out(frames)
            nursery.cancel_scope.cancel()

    def _fan_out(self, frames: Sequence[bytes]) -> None:
        for subscription in list(self.subscribers):
            for frame in frames:
                if not subscription.offer_nowait(frame):
                    self.subscribers.discard(subscription)
                    break

    async def _heartbeat(self, heartbeat_seconds: float) -> None:
        while True:
            await trio.sleep(heartbeat_seconds)
            for subscription in self.subscribers:
                # A subscriber with frames queued needs no heartbeat, and one
                # whose queue is full must not be dropped for a comment.
                if subscription._receive.statistics().current_buffer_used == 0:
                    subscription.offer_nowait(HEARTBEAT_FRAME)

    def close(self) -> None:
        """No more subscribers: let the task finish once publishers let go."""
        self._inbox_send.close()


class Hub:
    """Topics by id, and the counters behind ``/stats``. Build with :func:`open_hub`."""

    def __init__(
        self, nursery: trio.Nursery, *, heartbeat_seconds: float, queue_events: int
    ) -> None:
        self._nursery = nursery
        self._heartbeat_seconds = heartbeat_seconds
        self._queue_events = queue_events
        self._topics: dict[str, Topic] = {}
        self._closing = False
        self._published = 0
        self._delivered = 0
        self._dropped = 0

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """Subscribe to ``topic`` (already normalised) for the ``async with`` block.

        Raises:
            ServiceUnavailable: the hub is shutting down.
        """
        if self._closing:
            raise ServiceUnavailable("the broker is shutting down")
        entry = self._topics.get(topic)
        if entry is None:
            entry = self._topics[topic] = Topic(self, topic)
            self._nursery.start_soon(entry.run, self._heartbeat_seconds, name=f"topic {topic}")
        subscription = Subscription(self, entry, self._queue_events)
        entry.subscribers.add(subscription)
        try:
            yield subscription
        finally:
            subscription._aclose()
            entry.subscribers.discard(subscription)
            if not entry.subscribers and self._topics.get(topic) is entry:
                del self._topics[topic]
                entry.close()

    async def publish(self, topic: str, frames: Sequence[bytes]) -> int:
        """Broadcast encoded ``frames`` (one per event, in order) to ``topic``.

        Returns the number of subscribers the frames go to. Waits only for the
        topic's task to have room in its inbox, never for a subscriber.
        """
        self._published += len(frames)
        entry = self._topics.get(topic)
        if entry is None:
            await trio.lowlevel.checkpoint()
            return 0
        with entry.open_publisher() as inbox:
            await inbox.send(frames)
        return len(entry.subscribers)

    def close(self) -> None:
        """Start shutting down: refuse new subscribers, end every open stream."""
        self._closing = True
        for entry in self._topics.values():
            for subscription in entry.subscribers:
                subscription.close()

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            clients=sum(len(t.subscribers) for t in self._topics.values()),
            topics=len(self._topics),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
        )


@asynccontextmanager
async def open_hub(
    *, heartbeat_seconds: float = math.inf, queue_events: int = 1000
) -> AsyncIterator[Hub]:
    """Open a :class:`Hub` whose topic tasks live for the ``async with`` block.

    On exit the hub is closed (streams end) and the topic tasks are cancelled.
    """
    async with trio.open_nursery() as nursery:
        hub = Hub(nursery, heartbeat_seconds=heartbeat_seconds, queue_events=queue_events)
        try:
            yield hub
        finally:
            hub.close()
            nursery.cancel_scope.cancel()
