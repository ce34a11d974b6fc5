"""The default history: a ring of the last N events per topic, in memory,
under one byte budget for all topics together.

Eviction: a topic's ring drops its oldest event past ``max_events_per_topic``;
past ``max_bytes`` in total, the topic published to least recently loses its
oldest events first, and a topic left with no event is forgotten (its ring
and index entry freed). Topics are kept in publish-recency order in an
``OrderedDict``, whose ``move_to_end`` and first item are O(1): a plain dict
would have to skip the holes its deletions leave at the front, a scan that
grows with the topics evicted (BENCHMARKS.md has the figures).

Accounting: ``max_bytes`` bounds the heap the history holds, not just its
payloads. Each object a record or a topic owns is counted at the size
``sys.getsizeof`` reports, rounded up as the allocator rounds it
(:func:`allocated_bytes`); the containers (each ring's list and id dict, the
topic index) are re-measured with ``sys.getsizeof`` whenever they change, so
their over-allocation and the holes deletions leave in a dict are counted
too. tests/test_memory_budget.py checks the count against ``tracemalloc``
(which sees requested sizes: the count may be up to a fifth above it), and
``benchmarks/memory_ring.py --table`` against process RSS. What is counted:

- per record: the objects it owns whatever it holds (the Record, its Event,
  its seq int and its time float; :data:`RECORD_FIXED_BYTES` measures them
  at import), its id string, its data string and its frame; plus, in its
  ring, a list slot and an id-dict entry (over-allocation, and the holes
  evictions leave until the dict resizes);
- per topic: the ring object, the topic string, the ring's list and id
  dict, and its place in the topic index (an ``OrderedDict``: a node, its
  dict entry, index slots, holes).

The budget is shared: what the broker's topic catalog holds is charged to it
too (:meth:`MemoryHistory.charge`), so many topics cannot grow the process
past the budget through the catalog either.

A topic's own objects weigh as much as a small record, and more: an
estimate that counted records and their payloads alone let a history of
many one-event topics grow the process far past its budget. The sizes, and
what the estimate missed, are in BENCHMARKS.md.

What no count can see: CPython's small-object allocator keeps an arena
while any object in it lives, and malloc keeps freed blocks in the middle of
its heap. So when a history full of small records gives way to large events
(or the reverse), the process keeps more than the budget (the last rows of
the benchmark's table): the budget bounds the steady state of a mix, not the
sum of the allocators' high-water marks.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import trio

from ..errors import Conflict
from ..routing import Route
from ..sse import Event
from . import Deliver, HistoryStatistics, Record, Replay, SeqClock
from .heap import allocated_bytes, container_bytes


def _fixed_record_bytes() -> int:
    """The objects every record owns whatever its content, measured on a
    sample: the Record, its Event, its seq (a 16-digit int) and its time."""
    seq = SeqClock().next()
    event = Event("", None, str(seq))
    record = Record(seq, "topic", event, time.time(), b"")
    parts: tuple[object, ...] = (record, event, record.seq, record.time)
    return sum(allocated_bytes(sys.getsizeof(part)) for part in parts)


#: Bytes each record holds besides its strings and frame.
RECORD_FIXED_BYTES = _fixed_record_bytes()
#: Retry values up to this are CPython's shared small ints, owned by no record.
_SHARED_INT_MAX = 256


def record_bytes(record: Record, topic: str | None = None) -> int:
    """Heap bytes ``record`` holds on its own: :data:`RECORD_FIXED_BYTES`
    plus its id, data, event type, retry and frame, its topic string unless
    it is ``topic`` (the ring's own, shared by the ring's records), and a
    routed record's route (its topics: a Mercure update's IRIs)."""
    event = record.event
    sizeof = sys.getsizeof
    size = (
        RECORD_FIXED_BYTES
        + allocated_bytes(sizeof(event.data))
        + allocated_bytes(sizeof(record.frame))
        + allocated_bytes(sizeof(event.id))
    )
    if event.event is not None:
        size += allocated_bytes(sizeof(event.event))
    if event.retry is not None and event.retry > _SHARED_INT_MAX:
        size += allocated_bytes(sizeof(event.retry))
    if record.topic is not topic:
        size += allocated_bytes(sizeof(record.topic))
    route = record.route
    if route is not None:  # a routed log's record: its route and the route's topics
        size += allocated_bytes(sizeof(route)) + allocated_bytes(sizeof(route.topics))
        size += sum(allocated_bytes(sizeof(t)) for t in route.topics)
    return size


class _Ring:
    """One topic's retained records, oldest first: ``records[head:]``.

    A list with a moving head rather than a deque: a deque allocates a whole
    block of slots even for one record, and a broker with many topics holds
    mostly short rings. Evicted slots are cleared at once (so the record is freed) and the
    list is compacted once half of it is cleared: O(1) amortised.
    """

    __slots__ = ("by_id", "bytes", "fixed_bytes", "head", "records", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.records: list[Record | None] = []
        self.head = 0
        self.by_id: dict[str, Record] = {}
        #: What the ring itself holds, its records apart (see _resize).
        self.bytes = 0
        #: The part of that which never changes: this object and its topic string.
        self.fixed_bytes = allocated_bytes(sys.getsizeof(self)) + allocated_bytes(
            sys.getsizeof(topic)
        )

    def __len__(self) -> int:
        return len(self.records) - self.head

    def append(self, record: Record) -> None:
        self.records.append(record)
        self.by_id[record.id] = record

    def popleft(self) -> Record:
        record = self.records[self.head]
        assert record is not None
        self.records[self.head] = None
        self.head += 1
        if self.head * 2 >= len(self.records):
            del self.records[: self.head]
            self.head = 0
        if self.by_id.get(record.id) is record:  # a repeated id maps to its newest record
            del self.by_id[record.id]
        return record

    def oldest(self, limit: int) -> list[Record]:
        return cast("list[Record]", self.records[self.head : self.head + limit])

    def newer(self, seq: int) -> list[Record]:
        """The records after seq ``seq``, oldest first."""
        newer: list[Record] = []
        for record in reversed(self.records):
            if record is None or record.seq <= seq:
                break
            newer.append(record)
        newer.reverse()
        return newer


class MemoryHistory:
    """Per-topic rings of records. Appends never wait: ``deliver`` is called
    before :meth:`append` first yields, so seq order is delivery order."""

    def __init__(self, *, max_events_per_topic: int = 1000, max_bytes: int = 256 << 20) -> None:
        self.max_events_per_topic = max_events_per_topic
        self.max_bytes = max_bytes
        #: Bytes others hold against the same budget (:meth:`charge`).
        self._charged = 0
        # Order is publish recency: _touch() moves a topic to the end.
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        self._index_bytes = container_bytes(self._rings)
        self._topics_peak = 0
        self._bytes = self._index_bytes
        self._events = 0
        self._seqs = SeqClock()

    async def append(
        self, topic: str, events: Sequence[Event], deliver: Deliver, route: Route | None = None
    ) -> list[Record]:
        ids = [e.id for e in events if e.id is not None]
        # The routed log takes a publisher's id again (as Mercure's hub
        # does): resuming from it resumes after its newest record.
        if ids and route is None:
            ring = self._rings.get(topic)
            if len(set(ids)) != len(ids) or (
                ring is not None and any(i in ring.by_id for i in ids)
            ):
                await trio.lowlevel.checkpoint()
                raise Conflict("event id is already in this topic's history")
        ring = self._touch(topic)
        now = time.time()
        records = []
        for event in events:
            # The ring's topic string, so records share it rather than each keep a copy.
            record = Record.create(self._seqs.next(), ring.topic, event, now, route)
            # A publisher chose an id we would assign (the routed log takes a
            # publisher's id again: that one stays).
            while event.id is None and record.id in ring.by_id:
                record = Record.create(self._seqs.next(), ring.topic, event, now, route)
            records.append(record)
            self._store(ring, record)
        self._evict(ring)
        await deliver(topic, records)
        return records

    def remember(self, topic: str, records: Sequence[Record]) -> None:
        """Keep records stored elsewhere (ids and seqs assigned, in seq order):
        the SQLite backend's cache of recent events."""
        ring = self._touch(topic)
        for record in records:
            stale = ring.by_id.get(record.id) if record.route is None else None
            if stale is not None:
                # The store dropped ``stale`` (its age) and took its id again:
                # drop it and everything older, so what is kept stays a
                # contiguous tail of the store's log.
                while ring.by_id.get(record.id) is stale:
                    self._pop_oldest(ring)
            self._store(ring, record)
        self._evict(ring)

    def _touch(self, topic: str) -> _Ring:
        """The topic's ring, moved to the most-recently-published end."""
        ring = self._rings.get(topic)
        if ring is not None:
            self._rings.move_to_end(topic)
            return ring
        ring = self._rings[topic] = _Ring(topic)
        self._topics_peak = max(self._topics_peak, len(self._rings))
        self._reindex()
        return ring

    def _store(self, ring: _Ring, record: Record) -> None:
        ring.append(record)
        self._bytes += record_bytes(record, ring.topic)
        self._events += 1

    def _evict(self, ring: _Ring) -> None:
        """After records were stored in ``ring``: its count limit, then the
        byte budget (which may take records of other topics)."""
        for _ in range(len(ring) - self.max_events_per_topic):
            self._pop_oldest(ring)
        # Re-measured once, after the pops: a publish to a full ring stores
        # one record and drops one.
        if ring:
            self._resize(ring)
        elif ring.topic in self._rings:  # no events kept (or an append of none)
            self._forget(ring)
        self._fit()

    def charge(self, delta: int) -> None:
        """Count ``delta`` more bytes (fewer, if negative) that something
        else holds against this history's budget: the topic catalog (see
        :meth:`~trio_esper.catalog.Catalog.count_in`). Room is made at once,
        as for a publish: the least recently published topics lose their
        oldest events first."""
        self._charged += delta
        self._fit()

    def _fit(self) -> None:
        while self._bytes + self._charged > self.max_bytes and self._rings:
            self._drop_oldest(next(iter(self._rings.values())))

    def _pop_oldest(self, ring: _Ring) -> None:
        record = ring.popleft()
        self._bytes -= record_bytes(record, ring.topic)
        self._events -= 1

    def _drop_oldest(self, ring: _Ring) -> None:
        self._pop_oldest(ring)
        if ring:
            self._resize(ring)
        else:
            self._forget(ring)

    def _forget(self, ring: _Ring) -> None:
        """Drop an empty ring and its index entry."""
        del self._rings[ring.topic]
        self._bytes -= ring.bytes
        ring.bytes = 0
        if len(self._rings) * 4 < self._topics_peak:
            # A dict never shrinks when keys are deleted, only when it next
            # grows: after a burst of one-off topics, copy the index so its
            # table fits the topics left (amortised O(1): 3/4 were deleted).
            self._rings = OrderedDict(self._rings)
            self._topics_peak = len(self._rings)
        self._reindex()

    def _resize(self, ring: _Ring) -> None:
        """Re-measure what ``ring`` holds besides its records."""
        size = ring.fixed_bytes + container_bytes(ring.records) + container_bytes(ring.by_id)
        self._bytes += size - ring.bytes
        ring.bytes = size

    def _reindex(self) -> None:
        """Re-measure the topic index (its nodes, table and holes)."""
        size = container_bytes(self._rings)
        self._bytes += size - self._index_bytes
        self._index_bytes = size

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        await trio.lowlevel.checkpoint()
        return self.after_nowait(topic, last_id, limit)

    def after_nowait(self, topic: str, last_id: str | None, limit: int) -> Replay:
        ring = self._rings.get(topic)
        if ring is None:
            return Replay([], last_id is None)
        start = None if last_id is None else ring.by_id.get(last_id)
        if start is None:
            return Replay(ring.oldest(limit), last_id is None)
        return Replay(ring.newer(start.seq)[:limit], True)

    async def delete(self, topic: str) -> None:
        await trio.lowlevel.checkpoint()
        self.forget(topic)

    def forget(self, topic: str) -> None:
        """Drop every retained record of ``topic`` now."""
        ring = self._rings.get(topic)
        if ring is None:
            return
        while ring:
            self._pop_oldest(ring)
        self._forget(ring)

    async def watch(self, topic: str, deliver: Deliver) -> None:
        """Nothing to do: :meth:`append` delivers."""

    def unwatch(self, topic: str) -> None:
        """Nothing to do."""

    async def check(self) -> str | None:
        await trio.lowlevel.checkpoint()
        return None

    def statistics(self) -> HistoryStatistics:
        return HistoryStatistics("memory", len(self._rings), self._events, self._bytes)

    @property
    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
