"""The structured-concurrency core: :class:`Hub` owns one :class:`Topic` per
topic id that has subscribers; each subscriber owns a :class:`Subscription`.

Resource handling
-----------------
:func:`open_hub` opens the hub's nursery; every topic task lives in it, so
leaving the ``async with`` block waits for (or cancels) all of them. A topic's
task starts with its first subscriber and ends when the last one leaves: the
topic then closes its own send channel, and its task finishes once the
publishers holding clones of that channel have let go.

A subscriber gets a memory channel (opened the first time something must
wait in it: see :class:`Subscription`), bounded in events (``queue_events``)
and in bytes (``queue_bytes``), and all subscribers' queues together in bytes
(``queue_total_bytes``). :meth:`Hub.subscribe` is an async
context manager, so whatever ends the subscriber's task -- a normal return,
a client disconnect arriving as cancellation, an error -- removes it from its
topic in ``__aexit__``.

Publishers never wait for a subscriber: the topic task delivers with
``send_nowait``, and a subscriber whose queue is full is dropped (its stream
ends; the client reconnects and, with history, resumes by Last-Event-ID),
as Mercure's localsubscriber does. A queue is full when it holds its events
already, or when one more hand-out would take it past its bytes (a
subscriber holding nothing takes any one hand-out); past the total,
subscriptions are dropped until the total fits, the one whose dropping frees
the most first (the bytes of frames it alone holds: a frame queued to many
subscribers is freed only once all of them let go). See :meth:`Hub._shed`.

A publisher does wait for the topic task to have handed its records to
every subscriber (written or queued): that takes no longer than one pass
over the subscribers, and it keeps a publisher from running ahead of its
topic (its answer means the event is out).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .catalog import Catalog, TopicEntry
from .config import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_EVENTS, DEFAULT_QUEUE_TOTAL_BYTES
from .errors import (
    BadRequest,
    Conflict,
    InvalidEvent,
    LimitReached,
    NotFound,
    ServiceUnavailable,
)
from .history import History, Record
from .history.memory import MemoryHistory
from .routing import Route, Router, Selection, selects
from .selectors import SelectorMatcher
from .sse import HEARTBEAT_FRAME, Event, check_resumable_id, encode
from .topics import normalise_topic

log = logging.getLogger("trio_esper")

#: Frames buffered between publishers and a topic's task before publishers wait.
TOPIC_INBOX_BATCHES = 256
#: At most this many queued frames are joined into one write.
MAX_FRAMES_PER_CHUNK = 256
#: Random bytes in a topic id the hub makes up (hex: twice as many characters).
TOPIC_ID_BYTES = 16
#: The routed log's name among the hub's topics: no topic id can take it
#: (ids are letters and digits), so the log is a namespace of its own.
ROUTED_LOG = "~routed"
#: The last event a deleted topic's subscribers get before their stream ends.
DELETED_FRAME = encode(Event('{"reason": "topic-deleted"}', event="deleted"))


@dataclass(frozen=True, slots=True)
class Limits:
    """What the hub holds at most (see :class:`~trio_esper.config.Config`)."""

    topics: int = 100_000
    """Topics with subscribers."""
    subscribers: int = 100_000
    """Subscriptions, all topics."""
    subscribers_per_topic: int = 100_000
    subscriptions_per_client: int = 100_000
    """Subscriptions with one ``client`` key (the front ends: its address)."""


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
    queued_bytes: int
    """Bytes waiting for subscribers (queued, or taken and being written),
    all subscriptions; a frame queued to many subscribers counts once."""
    known_topics: int
    """Topics in the catalog: created, or used lately (see :mod:`.catalog`)."""
    routed_clients: int = 0
    """Live subscriptions to the routed log (counted in ``clients`` too)."""
    routed_published: int = 0
    """Events accepted into the routed log since start (counted in ``published`` too)."""


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """One topic as the topic API shows it."""

    id: str
    persist: bool
    created: float
    managed: bool
    """Created through the API (else used ad hoc)."""
    published: int
    subscribers: int


#: A queued item: the seq of the record it carries (None for a heartbeat or
#: the unwritten rest of a direct write, never skipped), and its bytes as
#: they go on the wire.
Item = tuple[int | None, bytes]
#: A transport's direct write (see :meth:`Subscription.attach`): writes what
#: it can of the bytes now and returns how many that was; raises
#: ``BlockingIOError`` (or returns 0) if none can go now, as ``os.write`` on a
#: non-blocking descriptor does, and another ``OSError`` once broken.
DirectWrite = Callable[[bytes], int]
#: A transport's framing of SSE bytes (e.g. one HTTP/1.1 chunk). The topic
#: applies each distinct framing once per batch, whatever the number of
#: subscribers using it; ``None`` leaves the bytes bare.
Frame = Callable[[bytes], bytes]


def _bare(data: bytes) -> bytes:
    return data


def _held_bytes(subscription: Subscription) -> int:
    return subscription._queued_bytes


#: The "seq" of items that are not records (a heartbeat, a last frame): it
#: compares above every record's, so replay never holds them back.
_NOT_A_RECORD = sys.maxsize


def _framed(frame: Frame, bare: list[Item], wire: bytes) -> tuple[list[Item], bytes]:
    """A batch's items and their joined bytes, each framed with ``frame``
    (a batch of one record: one framing serves both)."""
    framed_wire = frame(wire)
    if len(bare) == 1:
        return [(bare[0][0], framed_wire)], framed_wire
    return [(seq, frame(data)) for seq, data in bare], framed_wire


class Subscription:
    """One subscriber's end of its topic.

    Its front end reads it one of two ways:

    * As an async iterator of byte chunks (the Quart routes, in-process use).
    * Through the **transport interface**, for a front end that writes the
      subscriber's socket itself (the edge's fast forms): :meth:`attach` a
      direct write, :meth:`park` while waiting on the socket,
      :meth:`take_nowait` what was queued, :meth:`detach` before the socket
      closes. While the task is parked, the topic's task writes each batch
      to the socket itself instead of waking that task; what the socket does
      not take at once is queued as usual, which keeps the queue's order and
      bound and saves two task switches per delivery.

    Each chunk is one or more queued items joined, so a subscriber that fell
    behind catches up in few writes. Records at or below the last one
    replayed from history (:meth:`Hub.replay`) are skipped. Everything else
    is the hub's own.
    """

    # Slots: every open stream holds one, and a dict of its attributes would
    # cost more memory per subscriber than the rest of it.
    __slots__ = (
        "__weakref__",
        "_alone_bytes",
        "_attached",
        "_client",
        "_closed",
        "_direct",
        "_dropped",
        "_frame",
        "_held",
        "_hub",
        "_interrupt",
        "_queued",
        "_queued_bytes",
        "_receive",
        "_replayed_through",
        "_selection",
        "_send",
        "_topic",
        "_wake",
    )

    def __init__(
        self,
        hub: Hub,
        topic: Topic,
        *,
        frame: Frame,
        client: str,
        selection: Selection | None = None,
    ) -> None:
        self._hub = hub
        self._topic = topic
        #: What it receives of a routed log (``None``: every event of its topic).
        self._selection = selection
        #: Who subscribed (see :meth:`Hub.subscribe`).
        self._client = client
        #: How the transport frames what it is handed (see :data:`Frame`).
        self._frame = frame
        # The bounded queue (the hub's ``queue_events``), opened the first
        # time an item must wait in it (:meth:`_open`): a subscriber the topic
        # writes to directly may never need one, and opening one is a large
        # share of what a subscribe costs (BENCHMARKS.md, "Latency, admission
        # and memory once more").
        self._send: trio.MemorySendChannel[Item] | None = None
        self._receive: trio.MemoryReceiveChannel[Item] | None = None
        #: Items in the channel (its statistics() builds an object per call).
        self._queued = 0
        #: Bytes of those items, plus the chunk :attr:`_held`.
        self._queued_bytes = 0
        #: Bytes of the frames it holds that no other subscription holds:
        #: what dropping it frees (kept by :meth:`Hub._hold` and
        #: :meth:`Hub._let_go`; exact while it is backlogged).
        self._alone_bytes = 0
        #: The last chunk taken, counted until the task asks for more (then
        #: the transport has written it).
        self._held: bytes | None = None
        #: Set when the topic disconnected this subscriber for falling behind.
        self._dropped = False
        #: Highest seq already sent from history; live records up to it are skipped.
        self._replayed_through = -1
        #: The transport's direct write and its interrupt, while attached.
        self._attached: DirectWrite | None = None
        self._interrupt: Callable[[], object] | None = None
        #: The attached write while the subscriber is parked (a direct write
        #: may go out now), else ``None``: the one attribute the topic's loop reads.
        self._direct: DirectWrite | None = None
        #: Called when an item is queued while the subscriber's task waits
        #: elsewhere than on its queue (see :meth:`park`).
        self._wake: Callable[[], object] | None = None
        self._closed = False

    @property
    def topic(self) -> str:
        """The topic id subscribed to."""
        return self._topic.name

    @property
    def dropped(self) -> bool:
        """Whether the topic disconnected this subscriber for falling behind
        (its queue was full): its stream ends without its last frame."""
        return self._dropped

    # --- the transport interface ------------------------------------------

    def attach(self, write: DirectWrite, interrupt: Callable[[], object]) -> None:
        """Let the topic write to the subscriber with ``write`` while it is
        parked, until :meth:`detach`; ``interrupt`` is called if the
        subscriber is dropped (to abandon a write the transport is stuck in).

        The transport owns ``write``'s target: it must :meth:`detach` before
        that target closes (the edge's connection does so in its ``close``).
        """
        self._attached = write
        self._interrupt = interrupt

    def detach(self) -> None:
        """Stop direct writes (and interrupts) now; safe to call twice."""
        self._attached = self._direct = None
        self._interrupt = self._wake = None

    def park(self, wake: Callable[[], object]) -> bool:
        """For a task that waits on something else (its socket) instead of
        the queue: if nothing is queued and the stream has not ended, mark
        the subscriber parked, so the topic writes to it directly, and return
        True; ``wake`` is called once when an item is queued or the stream
        ends. Returns False (and parks nothing) otherwise: call
        :meth:`take_nowait`."""
        self._let_go_held()
        if self._queued or self._dropped or self._closed:
            return False
        self._direct = self._attached
        self._wake = wake
        return True

    def unpark(self) -> None:
        """Stop being parked: the topic queues instead of writing."""
        self._direct = None
        self._wake = None

    def take_nowait(self) -> bytes:
        """The queued items joined into one chunk.

        Raises:
            trio.WouldBlock: nothing is queued.
            trio.EndOfChannel: the stream has ended and its queue is drained
                (at once if dropped).
        """
        self._let_go_held()
        if self._receive is None:  # nothing was ever queued
            if self._dropped or self._closed:
                raise trio.EndOfChannel
            raise trio.WouldBlock
        frames: list[bytes] = []
        while len(frames) < MAX_FRAMES_PER_CHUNK:
            if self._dropped:
                raise trio.EndOfChannel
            try:
                seq, data = self._receive.receive_nowait()
            except trio.WouldBlock:
                if frames:
                    break
                raise
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if frames:
                    break
                raise trio.EndOfChannel from None
            self._take(seq, data, frames)
        return self._hold(b"".join(frames))

    # --- the iterator -------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        self._let_go_held()
        receive = self._open()[1]
        frames: list[bytes] = []
        while not frames:
            if self._queued == 0:
                self._direct = self._attached
            try:
                seq, data = await receive.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            finally:
                self._direct = None
            if self._dropped:
                raise StopAsyncIteration
            self._take(seq, data, frames)
            while len(frames) < MAX_FRAMES_PER_CHUNK:
                try:
                    seq, data = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._take(seq, data, frames)
        return self._hold(frames[0] if len(frames) == 1 else b"".join(frames))

    # --- the hub's side -----------------------------------------------------

    def _open(self) -> tuple[trio.MemorySendChannel[Item], trio.MemoryReceiveChannel[Item]]:
        """The subscriber's queue, opened now if it is not yet (closed at
        once if the stream has ended)."""
        if self._send is None or self._receive is None:
            # Not open_memory_channel[Item](...): subscripting builds a typing
            # alias on every call. Unbounded: _queue applies the bounds, to
            # whole hand-outs, in events and in bytes.
            self._send, self._receive = trio.open_memory_channel(math.inf)
            if self._closed:
                self._send.close()
        return self._send, self._receive

    def _wrote(self, written: int | None, items: Sequence[Item], wire: bytes, events: int) -> bool:
        """The rest of a hand-out (:meth:`Topic._hand_out`) whose direct write
        took ``written`` bytes of ``wire`` (``None``: the transport is broken;
        0: it took nothing now). False if the subscriber is gone or dropped."""
        if written is None:
            self._close()  # the peer is gone; its task sees the end of the queue
            return False
        if written:
            self._hub._delivered += events
            if written == len(wire):
                return True
            return self._offer((None, wire[written:]))
        return self._queue(items)

    def _queue(self, items: Sequence[Item]) -> bool:
        """Queue ``items`` (one hand-out, whole); False if the subscriber is
        gone, or is dropped: its queue holds ``queue_events`` already, or
        the items would take what it holds past ``queue_bytes`` (a subscriber
        holding nothing takes any one hand-out), or the hub's total past its
        own and dropping others does not bring it back (:meth:`Hub._shed`).
        So a publish of many events reaches a subscriber that is not that
        far behind, whole."""
        self._direct = None  # the task will wake to this: no direct write may overtake it
        if self._closed:
            return False  # gone or ended already: not a slow subscriber
        hub = self._hub
        size = 0
        for _, data in items:
            size += len(data)
        if self._queued >= hub._queue_events or (
            self._queued_bytes and self._queued_bytes + size > hub._queue_bytes
        ):
            self._drop()
            return False
        send = self._open()[0]
        if not self._queued_bytes:  # before _hold, which looks holders up there
            hub._backlogged[id(self)] = self
        before = hub._queued_bytes
        for item in items:
            send.send_nowait(item)  # unbounded: never raises WouldBlock
            hub._hold(item[1], self)
        self._queued += len(items)
        self._queued_bytes += size
        if hub._queued_bytes > hub._queue_total_bytes:
            hub._shed(self, hub._queued_bytes - before)
            if self._dropped:
                return False
        self._wake_task()
        return True

    def _offer(self, item: Item) -> bool:
        return self._queue((item,))

    def _wake_task(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake()

    def _drop(self) -> None:
        if not self._dropped:
            log.info(
                "subscriber %s to %s dropped: its queue was full",
                self._client or "in-process",
                self._topic.name,
                extra={
                    "event": "subscriber_dropped",
                    "client": self._client or None,
                    "topic": self._topic.name,
                },
            )
            self._dropped = True
            self._hub._dropped += 1
            self._close()
            # Nothing queued will be written now: let it go at once (the
            # chunk being written stays counted until the task lets go).
            self._hub._backlogged.pop(id(self), None)
            self._hub._rising.discard(self)
            self._empty_queue()
            if self._interrupt is not None:
                self._interrupt()

    def _close(self) -> None:
        """End the stream: the iterator stops once what is queued is read
        (at once if dropped)."""
        self._direct = None
        self._closed = True
        if self._send is not None:
            self._send.close()
        self._wake_task()

    def _take(self, seq: int | None, data: bytes, frames: list[bytes]) -> None:
        self._queued -= 1
        self._hub._let_go(data, self)
        if seq is None:
            frames.append(data)
        elif seq > self._replayed_through:
            frames.append(data)
            self._hub._delivered += 1
        else:  # already replayed: skipped, so no longer pending
            self._queued_bytes -= len(data)

    def _hold(self, chunk: bytes) -> bytes:
        """Count ``chunk``, taken to be written, until the task asks for more."""
        self._held = chunk
        self._hub._hold(chunk, self)
        return chunk

    def _let_go_held(self) -> None:
        """The task asks for more: the chunk it took is written."""
        held, self._held = self._held, None
        if held is not None:
            self._hub._let_go(held, self)
            self._queued_bytes -= len(held)
            if not self._queued_bytes:
                self._hub._backlogged.pop(id(self), None)

    def _empty_queue(self) -> None:
        """Let go of every queued item (the stream has ended)."""
        if self._send is None or self._receive is None:
            return
        self._send.close()
        while True:
            try:
                data = self._receive.receive_nowait()[1]
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._hub._let_go(data, self)
            self._queued_bytes -= len(data)
        self._queued = 0

    def _aclose(self) -> None:
        self.detach()
        self._closed = True
        self._let_go_held()
        self._empty_queue()
        if self._receive is not None:
            self._receive.close()
        self._hub._backlogged.pop(id(self), None)
        self._hub._rising.discard(self)


class Topic:
    """The subscribers of one topic id and the task that fans out to them;
    for the routed log, with the router that picks each update's recipients."""

    def __init__(self, hub: Hub, name: str, router: Router[Subscription] | None = None) -> None:
        self.hub = hub
        self.name = name
        self.subscribers: set[Subscription] = set()
        self.router = router
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[Sequence[Record]](
            TOPIC_INBOX_BATCHES
        )
        #: Set once the history watches the topic for this node (see
        #: :meth:`Hub._watched`); ``None`` until the first subscriber asks.
        self.watched: trio.Event | None = None
        self.watching = False
        self.watch_error: Exception | None = None
        #: The last seq handed to the inbox (by :meth:`Hub._deliver`), and
        #: the last one fanned out: what publishers wait on.
        self.handed_through = -1
        self.fanned_through = -1
        self._ended = False
        #: Publishers waiting for a fan-out (:meth:`wait_fanned_out`), woken
        #: all together after each: a list rather than a ParkingLot, whose
        #: ordered dict and statistics cost more than the rest of a wait.
        self._fanned: list[trio.lowlevel.Task] = []

    def open_publisher(self) -> trio.MemorySendChannel[Sequence[Record]]:
        """A clone of the topic's inbox for one publisher; close it when done."""
        return self._inbox_send.clone()

    async def run(self, heartbeat_seconds: float) -> None:
        """The topic's task: fan out published records; heartbeat idle streams."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, heartbeat_seconds)
                receive = self._inbox_receive.receive
                async with self._inbox_receive:
                    while True:
                        try:
                            records = await receive()
                        except trio.EndOfChannel:
                            break
                        self._fan_out(records)
                        self.fanned_through = records[-1].seq
                        if self._fanned:
                            self._wake_publishers()
                # The inbox ends once the last subscriber has left.
                nursery.cancel_scope.cancel()
        finally:
            self._ended = True  # cancelled too (the hub closing): nobody waits on
            self._wake_publishers()

    def _wake_publishers(self) -> None:
        waiting, self._fanned = self._fanned, []
        for task in waiting:
            trio.lowlevel.reschedule(task)

    async def wait_fanned_out(self, seq: int) -> None:
        """Wait until the records through ``seq`` are fanned out, if they
        were handed to this task (records a history delivers later, as the
        Redis backplane's reader does, are not waited for), or the task ended.
        A checkpoint, whether it waits or not."""
        if seq > self.handed_through or self.fanned_through >= seq or self._ended:
            await trio.lowlevel.checkpoint()
            return
        task = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            # A cancelled publisher (rare: its client left) leaves the list.
            self._fanned.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while self.fanned_through < seq and not self._ended:
            self._fanned.append(task)
            await trio.lowlevel.wait_task_rescheduled(abort)

    def _fan_out(self, records: Sequence[Record]) -> None:
        router = self.router
        if router is None:
            bare: list[Item] = [(r.seq, r.frame) for r in records]
            wire = b"".join([frame for _, frame in bare])  # one frame: that object itself
            self._hand_out(self.subscribers, bare, wire, records[0].seq, len(records))
            return
        for record in records:  # each update to its own recipients, in order
            if record.route is not None:
                recipients = router.recipients(record.route)
                self._hand_out(
                    recipients, [(record.seq, record.frame)], record.frame, record.seq, 1
                )

    def _hand_out(
        self,
        subscribers: Iterable[Subscription],
        bare: list[Item],
        wire: bytes,
        first_seq: int,
        events: int,
    ) -> None:
        """Hand ``bare`` (whose bytes joined are ``wire``; ``events`` of them
        records, the first ``first_seq``) to each of ``subscribers``: written
        directly to a parked one, else queued. Those gone or dropped leave
        the topic's set. The one place items reach a subscriber.

        Framed once per batch for each framing in use, whatever the number
        of subscribers. The direct write is inline, not a method: the whole
        write is the common case, and a call per subscriber is a large share
        of this loop's cost (BENCHMARKS.md, "Batch accept and a leaner fan-out").
        """
        framed: dict[Frame, tuple[list[Item], bytes]] = {_bare: (bare, wire)}
        delivered = 0
        gone: list[Subscription] = []
        for subscription in subscribers:  # nothing it calls adds or removes one
            frame = subscription._frame
            items, data = framed.get(frame) or framed.setdefault(frame, _framed(frame, bare, wire))
            write = subscription._direct
            if write is not None and first_seq > subscription._replayed_through:
                try:
                    written: int | None = write(data)
                except BlockingIOError:
                    written = 0
                except OSError:
                    written = None
                if written == len(data):
                    delivered += events
                    continue
                if not subscription._wrote(written, items, data, events):
                    gone.append(subscription)
            elif not subscription._queue(items):
                gone.append(subscription)
        self.hub._delivered += delivered
        if gone:
            self.subscribers.difference_update(gone)
            if self.router is not None:
                for subscription in gone:
                    self.router.discard(subscription)

    async def _heartbeat(self, heartbeat_seconds: float) -> None:
        beat: list[Item] = [(None, HEARTBEAT_FRAME)]
        while True:
            await trio.sleep(heartbeat_seconds)
            # A subscriber with frames queued needs no heartbeat, and one
            # whose queue is full must not be dropped for a comment.
            idle = [s for s in self.subscribers if s._queued == 0]
            self._hand_out(idle, beat, HEARTBEAT_FRAME, _NOT_A_RECORD, 0)

    def close(self) -> None:
        """No more subscribers: let the task finish once publishers let go."""
        self._inbox_send.close()

    def end_streams(self, last: bytes) -> None:
        """Send ``last`` to every subscriber (after what each has queued),
        then end their streams."""
        ending = list(self.subscribers)
        self._hand_out(ending, [(None, last)], last, _NOT_A_RECORD, 0)
        for subscription in ending:
            subscription._close()


class Subscribing:
    """What :meth:`Hub.subscribe` returns: ``async with`` it for the
    subscription. A class rather than a generator-based context manager:
    every open stream keeps one, and this one is a few dozen bytes."""

    __slots__ = ("_client", "_frame", "_hub", "_selection", "_subscription", "_topic")

    def __init__(
        self,
        hub: Hub,
        topic: str,
        frame: Frame,
        client: str,
        selection: Selection | None = None,
    ) -> None:
        self._hub = hub
        self._topic = topic
        self._frame = frame
        self._client = client
        self._selection = selection
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> Subscription:
        subscription = self._hub._subscribe(
            self._topic, self._frame, self._client, self._selection
        )
        try:
            await self._hub._watched(subscription._topic)
        except BaseException:
            self._hub._unsubscribe(subscription)
            raise
        self._subscription = subscription
        return subscription

    async def __aexit__(self, *exc_info: object) -> None:
        if self._subscription is not None:
            self._hub._unsubscribe(self._subscription)
            self._subscription = None


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class ReplayPage:
    """A page of history for a resuming subscriber (:meth:`Hub.replay`)."""

    records: list[Record]
    """Records not replayed to this subscriber before, oldest first."""
    found: bool
    """False if the id paged from is unknown or expired (the page then
    starts at the oldest retained record)."""
    next_after: str | None
    """The id to read the next page after; ``None`` once history is read."""


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class Published:
    """What :meth:`Hub.publish` did."""

    records: list[Record]
    """The stored events, ids assigned, in order."""
    subscribers: int
    """Subscribers of the topic when the events were handed to its task."""


class Hub:
    """Topics by id, their history, and the counters behind ``/stats``.
    Build with :func:`open_hub`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        history: History,
        *,
        heartbeat_seconds: float,
        queue_events: int,
        limits: Limits,
        catalog: Catalog | None = None,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        queue_total_bytes: int = DEFAULT_QUEUE_TOTAL_BYTES,
    ) -> None:
        self._nursery = nursery
        self.catalog = Catalog(limits.topics, durable=False) if catalog is None else catalog
        self._limits = limits
        self._subscriptions = 0
        self._per_client: dict[str, int] = {}
        self.history = history
        self._heartbeat_seconds = heartbeat_seconds
        self._queue_events = queue_events
        self._queue_bytes = queue_bytes
        self._queue_total_bytes = queue_total_bytes
        #: Bytes of the distinct frames subscribers hold (queued or being
        #: written), and for each, by id, how many holds it has and the sum
        #: of its holders' ids (with one hold left, that sum names the
        #: holder): the frames of a batch are one object whatever the number
        #: of subscribers.
        self._queued_bytes = 0
        self._holds: dict[int, list[int]] = {}
        #: Subscriptions holding bytes, by id: where the total bound looks
        #: for its victims (see _shed).
        self._backlogged: dict[int, Subscription] = {}
        #: Backlogged subscriptions whose bytes held alone grew since _shed
        #: last looked, and the heap of (-bytes alone, order, subscription)
        #: it picks from; entries there may be stale (checked when popped).
        self._rising: set[Subscription] = set()
        self._victims: list[tuple[int, int, Subscription]] = []
        self._victim_order = itertools.count()
        self._topics: dict[str, Topic] = {}
        #: (selector, topic) matches, shared by the routed log's fan-out and replay.
        self._matcher = SelectorMatcher()
        self._closing = False
        self._closing_started = trio.Event()
        self._closed = trio.Event()
        self._published = 0
        self._routed_published = 0
        self._delivered = 0
        self._dropped = 0
        #: Told of each publish: how long it took (seconds) and the
        #: subscribers it reached (e.g. :class:`~trio_esper.metrics.Metrics`).
        self.observe_publish: Callable[[float, int], object] | None = None

    def subscribe(
        self, topic: str, *, frame: Frame | None = None, client: str = ""
    ) -> Subscribing:
        """Subscribe to ``topic`` (normalised here) for an ``async with``
        block, which gives the :class:`Subscription`.

        ``frame``: how the transport frames what it is handed (see
        :data:`Frame`); bare SSE bytes if ``None``. ``client``: who
        subscribes, for :attr:`Limits.subscriptions_per_client`.

        Live records start queueing on entry; call :meth:`replay` inside the
        block to send history first without a gap or a duplicate at the seam.
        Whatever ends the block -- a return, a disconnect arriving as
        cancellation, an error -- unsubscribes.

        Raises (on entry):
            NotFound: the topic was deleted and not created again.
            ServiceUnavailable: the hub is shutting down.
            LimitReached: one of the hub's :class:`Limits` is reached.
        """
        return Subscribing(self, normalise_topic(topic), _bare if frame is None else frame, client)

    def subscribe_routed(
        self, selection: Selection, *, frame: Frame | None = None, client: str = ""
    ) -> Subscribing:
        """Subscribe to the routed log's updates that ``selection`` selects,
        for an ``async with`` block, as :meth:`subscribe` does for a topic:
        updates of every selected topic on one stream, in the order the log
        has them, with one resume point (:meth:`replay`).

        Raises (on entry): as :meth:`subscribe`.
        """
        if not selection.selectors:
            raise BadRequest("a subscription selects at least one topic")
        return Subscribing(self, ROUTED_LOG, _bare if frame is None else frame, client, selection)

    def admit_routed(self, client: str = "") -> None:
        """:meth:`admit` for a subscription to the routed log.

        Raises: as :meth:`admit`.
        """
        self.admit(ROUTED_LOG, client)

    def admit(self, topic: str, client: str = "") -> None:
        """Check that a subscription to ``topic`` by ``client`` would be
        taken now, without taking it: for a front end that must answer
        before the subscription opens (:meth:`subscribe` checks again).

        Raises:
            NotFound: the topic was deleted and not created again.
            ServiceUnavailable: the hub is shutting down.
            LimitReached: one of the hub's :class:`Limits` is reached.
        """
        if self._closing:
            raise ServiceUnavailable("the broker is shutting down")
        self._check_not_deleted(topic)
        limits = self._limits
        entry = self._topics.get(topic)
        if self._subscriptions >= limits.subscribers:
            raise LimitReached(f"the broker holds its limit of {limits.subscribers} subscribers")
        if entry is None and len(self._topics) >= limits.topics:
            raise LimitReached(f"the broker holds its limit of {limits.topics} topics")
        if (
            entry is not None
            and entry.router is None  # the routed log's subscribers select many topics
            and len(entry.subscribers) >= limits.subscribers_per_topic
        ):
            raise LimitReached(
                f"the topic has its limit of {limits.subscribers_per_topic} subscribers"
            )
        if self._per_client.get(client, 0) >= limits.subscriptions_per_client:
            raise LimitReached(
                f"this address holds its limit of {limits.subscriptions_per_client} subscriptions"
            )

    def _subscribe(
        self, topic: str, frame: Frame, client: str, selection: Selection | None = None
    ) -> Subscription:
        self.admit(topic, client)
        entry = self._topics.get(topic)
        if entry is None:
            router = None if selection is None else Router[Subscription](self._matcher)
            entry = self._topics[topic] = Topic(self, topic, router)
            self._nursery.start_soon(entry.run, self._heartbeat_seconds, name=f"topic {topic}")
        if selection is None:
            self.catalog.used(topic, self._in_use)
        subscription = Subscription(self, entry, frame=frame, client=client, selection=selection)
        entry.subscribers.add(subscription)
        if entry.router is not None and selection is not None:
            entry.router.add(subscription, selection)
        self._subscriptions += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1
        return subscription

    async def _watched(self, entry: Topic) -> None:
        """Wait until the history watches ``entry``'s topic for this node
        (the first subscriber asks it to): from then on, nothing published
        to it is missed (for the Redis backplane, the stream's position is
        read before the subscriber is told it is subscribed).

        Raises:
            HistoryError: the history cannot watch it now.
        """
        while not entry.watching:
            if entry.watched is not None:
                await entry.watched.wait()
                if entry.watch_error is not None:
                    raise entry.watch_error
                continue  # done, or interrupted (then this subscriber asks again)
            entry.watched = done = trio.Event()
            try:
                await self.history.watch(entry.name, self._deliver)
            except Exception as error:
                entry.watch_error = error
                raise
            except BaseException:
                entry.watched = None  # cancelled: whoever waits asks again
                raise
            else:
                entry.watching = True
            finally:
                done.set()

    def _hold(self, data: bytes, holder: Subscription) -> None:
        """``holder`` holds ``data`` (queued, or being written)."""
        key = id(data)
        held = self._holds.get(key)
        if held is None:
            self._holds[key] = [1, id(holder)]
            self._queued_bytes += len(data)
            holder._alone_bytes += len(data)
            self._rising.add(holder)
            return
        if held[0] == 1:  # no longer held alone by the one holding it
            alone = self._backlogged.get(held[1])
            if alone is not None:
                alone._alone_bytes -= len(data)
        held[0] += 1
        held[1] += id(holder)

    def _let_go(self, data: bytes, holder: Subscription) -> None:
        """``holder`` no longer holds ``data`` (called while it still
        references it, so its id is not reused in between)."""
        key = id(data)
        held = self._holds[key]
        if held[0] == 1:
            del self._holds[key]
            self._queued_bytes -= len(data)
            holder._alone_bytes -= len(data)
            return
        held[0] -= 1
        held[1] -= id(holder)
        if held[0] == 1:  # now held alone: dropping that one frees it
            alone = self._backlogged.get(held[1])
            if alone is not None:
                alone._alone_bytes += len(data)
                self._rising.add(alone)

    def _shed(self, current: Subscription, fresh: int) -> None:
        """Past the total bound, after ``current`` was handed ``fresh`` new
        bytes: drop subscriptions until the total fits.

        First those whose dropping frees the most (the bytes of frames each
        holds alone), not counting in ``current``'s the frames just handed
        to it: those are being handed to its topic's other subscribers too,
        so dropping it alone would not free them, and older backlog held
        alone goes first. Then ``current`` itself. Then, if every frame left
        is shared (a broadcast past the total on its own), the subscriptions
        holding the most bytes, until enough frames lose their last holder.

        Cost: bytes held alone are kept as frames are held and let go, and
        picked from a heap, so each drop and each rise costs O(log n) of the
        n backlogged subscriptions; the last step sorts them once."""
        by_most: list[Subscription] | None = None
        while self._queued_bytes > self._queue_total_bytes and self._backlogged:
            victim = self._most_alone(current, fresh)
            if victim is None and not current._dropped:
                victim = current
            elif victim is None:
                if by_most is None:
                    by_most = sorted(self._backlogged.values(), key=_held_bytes)
                if not by_most:
                    break
                victim = by_most.pop()
            victim._drop()
        if not current._dropped:
            self._rising.add(current)  # its entry counted without ``fresh``
        if len(self._victims) > 2 * len(self._backlogged) + 64:  # stale entries
            self._rising.clear()
            self._victims = [
                (-s._alone_bytes, next(self._victim_order), s)
                for s in self._backlogged.values()
                if s._alone_bytes > 0
            ]
            heapq.heapify(self._victims)

    def _most_alone(self, current: Subscription, fresh: int) -> Subscription | None:
        """The backlogged subscription holding the most bytes alone (for
        ``current``, less ``fresh``), if any holds some."""
        victims, backlogged, order = self._victims, self._backlogged, self._victim_order
        for rising in self._rising:
            alone = rising._alone_bytes - (fresh if rising is current else 0)
            if alone > 0 and backlogged.get(id(rising)) is rising:
                heapq.heappush(victims, (-alone, next(order), rising))
        self._rising.clear()
        while victims:
            recorded, _, candidate = victims[0]
            if backlogged.get(id(candidate)) is not candidate:
                heapq.heappop(victims)
                continue
            alone = candidate._alone_bytes - (fresh if candidate is current else 0)
            if alone != -recorded:  # it let go of some since
                heapq.heappop(victims)
                if alone > 0:
                    heapq.heappush(victims, (-alone, next(order), candidate))
                continue
            return candidate
        return None

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscription._aclose()
        self._subscriptions -= 1
        client = subscription._client
        if self._per_client[client] == 1:
            del self._per_client[client]
        else:
            self._per_client[client] -= 1
        entry = subscription._topic
        entry.subscribers.discard(subscription)
        if entry.router is not None:
            entry.router.discard(subscription)
        if not entry.subscribers and self._topics.get(entry.name) is entry:
            del self._topics[entry.name]
            self.catalog.released(entry.name)
            entry.close()
            if entry.watching:
                self.history.unwatch(entry.name)
            if self._closing and not self._topics:
                self._closed.set()

    async def replay(
        self, subscription: Subscription, after: str | None, limit: int
    ) -> ReplayPage:
        """One page of ``subscription``'s topic history: up to ``limit``
        records after id ``after`` (from the oldest if ``None``), marked so
        live delivery skips them. Records already replayed are left out, so
        paging on is safe even if ``after`` was pruned in between. A routed
        subscription's page holds the updates it selects (perhaps none: page
        on while ``next_after`` is not ``None``)."""
        page = await self.history.after(subscription.topic, after, limit)
        records = [r for r in page.records if r.seq > subscription._replayed_through]
        if records:
            # Every record up to here was considered, selected or not.
            subscription._replayed_through = records[-1].seq
        selection, router = subscription._selection, subscription._topic.router
        if selection is not None and router is not None:
            records = [r for r in records if r.route and router.selects(selection, r.route)]
        self._delivered += len(records)
        more = len(page.records) == limit
        return ReplayPage(records, page.found, page.records[-1].id if more else None)

    async def publish(self, topic: str, events: Sequence[Event]) -> Published:
        """Store ``events`` (in order) in history and broadcast them to ``topic``.

        Waits for the history to store them (a durable backend: to commit) and
        for the topic's task to have handed them to every subscriber (written
        to its socket or queued; see :meth:`Topic.wait_fanned_out`), never
        for a subscriber. Always a checkpoint (it yields to other tasks at
        least once), so a front end serving publishes back to back needs no
        checkpoint of its own between them.

        ``topic`` is validated and normalised as the HTTP routes do it
        (``MyTopic123`` is ``mytopic123``), and each event's ``id`` must be
        one a client can resume from (:func:`~trio_esper.sse.check_resumable_id`).

        Raises:
            InvalidTopic: ``topic`` is not a topic id.
            InvalidEvent: no events, or an id a client could not send back.
            NotFound: the topic was deleted and not created again.
            Conflict: an event id is already in the topic's history.
            HistoryError: the history store failed.
        """
        topic = normalise_topic(topic)
        if not events:
            raise InvalidEvent("nothing to publish: no events")
        for event in events:
            if event.id is not None:
                check_resumable_id(event.id)
        self._check_not_deleted(topic)
        started = time.perf_counter()
        records = await self.history.append(topic, events, self._deliver)
        self._published += len(records)
        self.catalog.published(self.catalog.used(topic, self._in_use), len(records))
        return await self._fanned(topic, records, started)

    async def _fanned(self, topic: str, records: list[Record], started: float) -> Published:
        """Wait until ``records``, stored, are fanned out to ``topic``'s subscribers."""
        entry = self._topics.get(topic)
        subscribers = 0
        if entry is not None:
            # Counted at hand-off: a subscriber that leaves once it has the
            # events (while this publisher waits) still got them.
            subscribers = len(entry.subscribers)
            await entry.wait_fanned_out(records[-1].seq)
        else:
            await trio.lowlevel.checkpoint()
        if self.observe_publish is not None:
            self.observe_publish(time.perf_counter() - started, subscribers)
        return Published(records, subscribers)

    async def publish_routed(self, route: Route, events: Sequence[Event]) -> Published:
        """Store ``events`` in the routed log with ``route`` and hand them to
        the subscriptions that select it (:meth:`subscribe_routed`), as
        :meth:`publish` does for a topic. ``Published.subscribers`` counts the
        log's subscriptions, not the recipients.

        Raises:
            InvalidEvent: no events, or an id a client could not send back.
            Conflict: an event id is already in the log.
            HistoryError: the history store failed.
        """
        if not events:
            raise InvalidEvent("nothing to publish: no events")
        for event in events:
            if event.id is not None:
                check_resumable_id(event.id)
        started = time.perf_counter()
        records = await self.history.append(ROUTED_LOG, events, self._deliver, route=route)
        self._published += len(records)
        self._routed_published += len(records)
        return await self._fanned(ROUTED_LOG, records, started)

    async def routed_position(self, last_id: str, selection: Selection) -> str | None:
        """Where a routed subscription resuming after ``last_id`` stands:
        ``last_id`` itself if the log retains it (resume after it), else
        ``None`` (an unknown or expired id).

        Raises:
            HistoryError: the store failed to read.
        """
        page = await self.history.after(ROUTED_LOG, last_id, 1)
        return last_id if page.found else None

    async def newest_selected(self, selection: Selection, page_events: int) -> str | None:
        """The id of the newest retained update of the routed log that
        ``selection`` receives, or ``None``: read a page at a time.

        Raises:
            HistoryError: the store failed to read.
        """
        newest, after = None, None
        while True:
            page = await self.history.after(ROUTED_LOG, after, page_events)
            for record in page.records:
                if record.route is not None and selects(self._matcher, selection, record.route):
                    newest = record.id
            if len(page.records) < page_events:
                return newest
            after = page.records[-1].id

    def _check_not_deleted(self, topic: str) -> None:
        if self.catalog.is_deleted(topic):
            raise NotFound("topic was deleted; create it again with POST /api/v1/pubsubs")

    def check_readable(self, topic: str) -> None:
        """Refuse to read ``topic``'s history (normalised) as subscribing is refused.

        Raises:
            NotFound: the topic was deleted and not created again.
        """
        self._check_not_deleted(topic)

    def _in_use(self, topic: str) -> bool:
        return topic in self._topics

    def create_topic(self, topic: str | None, *, persist: bool | None) -> TopicInfo:
        """Enter a topic in the catalog as created: ``topic`` (normalised),
        or a new random id if ``None``. ``persist`` ``None``: the default
        (the durable backend, when there is one).

        Raises:
            BadRequest: ``persist`` is true and no durable history is configured.
            Conflict: the topic exists already.
            LimitReached: the catalog holds as many created topics as allowed.
            ServiceUnavailable: the hub is shutting down.
        """
        if self._closing:
            raise ServiceUnavailable("the broker is shutting down")
        catalog = self.catalog
        if persist and not catalog.durable:
            raise BadRequest(
                "persist: true needs a durable history (--history sqlite:PATH); "
                "this broker keeps history in memory"
            )
        if catalog.full():
            raise LimitReached(
                f"the broker holds its limit of {catalog.capacity} created topics "
                "(or as many as the catalog's share of the memory budget holds)"
            )
        if topic is None:
            topic = secrets.token_hex(TOPIC_ID_BYTES)
        created = catalog.create(
            topic, persist=catalog.durable if persist is None else persist, in_use=self._in_use
        )
        if created is None:
            raise Conflict(f"topic {topic} exists already")
        return self._info(created)

    def topic(self, topic: str) -> TopicInfo:
        """The catalog's entry for ``topic`` (normalised).

        Raises:
            NotFound: the catalog does not list it.
        """
        return self._info(self._entry(topic))

    def _entry(self, topic: str) -> TopicEntry:
        self._check_not_deleted(topic)
        entry = self.catalog.get(topic)
        if entry is None:
            raise NotFound(f"topic {topic} is not known (created, or used lately)")
        return entry

    def topics(self, after: str | None, limit: int) -> tuple[list[TopicInfo], str | None]:
        """A page of the catalog, by id (see :meth:`Catalog.page`)."""
        entries, cursor = self.catalog.page(after, limit)
        return [self._info(e) for e in entries], cursor

    def busiest(self, count: int) -> list[tuple[TopicInfo, int]]:
        """The topics with the most events published since the last call
        (each with that number), topped up with those with the most
        subscribers; resets the counts (one caller: the statistics stream)."""
        ranked = self.catalog.busiest(count, self._subscriber_count)
        chosen = {info.id for info, _ in ranked}
        if len(ranked) < count:
            by_subscribers = heapq.nlargest(
                count, self._topics.values(), key=lambda t: len(t.subscribers)
            )
            for entry in by_subscribers:
                known = self.catalog.get(entry.name)
                if known is not None and entry.name not in chosen and len(ranked) < count:
                    ranked.append((known, 0))
        return [(self._info(entry), recent) for entry, recent in ranked]

    def _subscriber_count(self, topic: str) -> int:
        entry = self._topics.get(topic)
        return 0 if entry is None else len(entry.subscribers)

    def _info(self, entry: TopicEntry) -> TopicInfo:
        return TopicInfo(
            entry.id,
            entry.persist,
            entry.created,
            entry.managed,
            entry.published,
            self._subscriber_count(entry.id),
        )

    async def delete_topic(self, topic: str) -> TopicInfo:
        """Delete ``topic`` (normalised): its subscribers get an ``event:
        deleted`` and their streams end, its history goes, and publishing or
        subscribing to it is refused (404) until it is created again.

        Raises:
            NotFound: the catalog does not list it.
            HistoryError: its history could not be deleted (it is deleted
                from the catalog all the same: try again to delete the history).
        """
        info = self._info(self._entry(topic))
        self.catalog.delete(topic)
        live = self._topics.get(topic)
        if live is not None:
            live.end_streams(DELETED_FRAME)
        await self.history.delete(topic)
        return info

    async def _deliver(self, topic: str, records: Sequence[Record]) -> None:
        """Hand stored records to the topic's task (called in seq order)."""
        entry = self._topics.get(topic)
        if entry is None:
            return
        with entry.open_publisher() as inbox:
            try:
                inbox.send_nowait(records)
            except trio.WouldBlock:
                # Shielded: the records are stored; a cancelled publisher must
                # not leave a hole in the live stream. The topic task never
                # blocks, so this wait is short.
                with trio.CancelScope(shield=True):
                    await inbox.send(records)
        entry.handed_through = records[-1].seq

    def close(self) -> None:
        """Start shutting down: refuse new subscribers, end every open stream."""
        self._closing = True
        self._closing_started.set()
        for entry in self._topics.values():
            for subscription in entry.subscribers:
                subscription._close()
        if not self._topics:
            self._closed.set()

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (the broker is shutting down)."""
        return self._closing

    async def wait_closing(self) -> None:
        """Wait until :meth:`close` is called: for streams the hub does not
        feed (the statistics stream), to end with the others."""
        await self._closing_started.wait()

    async def wait_closed(self) -> None:
        """After :meth:`close`, wait until every subscription has left."""
        await self._closed.wait()

    def count_dropped(self) -> None:
        """Count a subscriber its transport dropped for falling behind where
        its queue could not see it (an HTTP/2 stream that cannot be written:
        see :class:`~trio_esper.edge.bridge.BoundedApp`)."""
        self._dropped += 1

    def statistics(self) -> HubStatistics:
        routed = self._topics.get(ROUTED_LOG)
        return HubStatistics(
            clients=sum(len(t.subscribers) for t in self._topics.values()),
            topics=len(self._topics) - (routed is not None),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            queued_bytes=self._queued_bytes,
            known_topics=len(self.catalog),
            routed_clients=0 if routed is None else len(routed.subscribers),
            routed_published=self._routed_published,
        )


@asynccontextmanager
async def open_hub(
    history: History | None = None,
    *,
    heartbeat_seconds: float = math.inf,
    queue_events: int = DEFAULT_QUEUE_EVENTS,
    limits: Limits = Limits(),  # frozen: one shared default is safe
    catalog: Catalog | None = None,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
    queue_total_bytes: int = DEFAULT_QUEUE_TOTAL_BYTES,
) -> AsyncIterator[Hub]:
    """Open a :class:`Hub` whose topic tasks live for the ``async with`` block.

    A subscriber is dropped when its queue holds ``queue_events`` events
    already, or a hand-out would take it past ``queue_bytes`` bytes; past
    ``queue_total_bytes`` for all subscribers, the subscriptions whose
    dropping frees the most are dropped (see :meth:`Hub._shed` and
    :class:`~trio_esper.config.Config`).

    ``history`` defaults to a :class:`MemoryHistory`; the caller owns it.
    On exit the hub is closed (streams end) and the topic tasks are cancelled.
    """
    async with trio.open_nursery() as nursery:
        hub = Hub(
            nursery,
            MemoryHistory() if history is None else history,
            heartbeat_seconds=heartbeat_seconds,
            queue_events=queue_events,
            limits=limits,
            catalog=catalog,
            queue_bytes=queue_bytes,
            queue_total_bytes=queue_total_bytes,
        )
        try:
            yield hub
        finally:
            hub.close()
            nursery.cancel_scope.cancel()
