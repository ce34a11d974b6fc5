"""The default history: a ring of the last N events per topic, in memory,
under one byte budget for all topics together.

Eviction: a topic's ring drops its oldest event past ``max_events_per_topic``;
past ``max_bytes`` in total, the topic published to least recently loses its
oldest events first (topics are kept in publish-recency order, so this is O(1)
per evicted event).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Sequence

import trio

from ..errors import Conflict
from ..sse import Event
from . import Deliver, HistoryStatistics, Record, Replay, SeqClock

#: Rough per-event cost beyond the frame and data strings (objects, dict and
#: deque slots), fitted to process RSS by benchmarks/memory_ring.py on CPython 3.11.
RECORD_OVERHEAD_BYTES = 470


def record_bytes(record: Record) -> int:
    return RECORD_OVERHEAD_BYTES + len(record.frame) + sys.getsizeof(record.event.data)


class _Ring:
    __slots__ = ("by_id", "records")

    def __init__(self) -> None:
        self.records: deque[Record] = deque()
        self.by_id: dict[str, Record] = {}


class MemoryHistory:
    """Per-topic rings of records. Appends never wait: ``deliver`` is called
    before :meth:`append` first yields, so seq order is delivery order."""

    def __init__(self, *, max_events_per_topic: int = 1000, max_bytes: int = 256 << 20) -> None:
        self.max_events_per_topic = max_events_per_topic
        self.max_bytes = max_bytes
        # Insertion order is publish recency: append() moves a topic to the end.
        self._rings: dict[str, _Ring] = {}
        self._bytes = 0
        self._events = 0
        self._seqs = SeqClock()

    async def append(self, topic: str, events: Sequence[Event], deliver: Deliver) -> list[Record]:
        ring = self._rings.get(topic)
        ids = [e.id for e in events if e.id is not None]
        if len(set(ids)) != len(ids) or (ring is not None and any(i in ring.by_id for i in ids)):
            await trio.lowlevel.checkpoint()
            raise Conflict("event id is already in this topic's history")
        ring = self._touch(topic)
        now = time.time()
        records = []
        for event in events:
            record = Record.create(self._seqs.next(), topic, event, now)
            while record.id in ring.by_id:  # a publisher chose an id we would assign
                record = Record.create(self._seqs.next(), topic, event, now)
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
            if record.id in ring.by_id:  # cannot happen while the file enforces uniqueness
                continue
            self._store(ring, record)
        self._evict(ring)

    def _touch(self, topic: str) -> _Ring:
        """The topic's ring, moved to the most-recently-published end."""
        ring = self._rings.pop(topic, None) or _Ring()
        self._rings[topic] = ring
        return ring

    def _store(self, ring: _Ring, record: Record) -> None:
        ring.records.append(record)
        ring.by_id[record.id] = record
        self._bytes += record_bytes(record)
        self._events += 1

    def _evict(self, ring: _Ring) -> None:
        while len(ring.records) > self.max_events_per_topic:
            self._forget(ring.records.popleft())
        while self._bytes > self.max_bytes:
            stalest = self._rings[next(iter(self._rings))]
            self._forget(stalest.records.popleft())

    def _forget(self, record: Record) -> None:
        ring = self._rings[record.topic]
        del ring.by_id[record.id]
        self._bytes -= record_bytes(record)
        self._events -= 1
        if not ring.records:
            del self._rings[record.topic]

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        await trio.lowlevel.checkpoint()
        return self.after_nowait(topic, last_id, limit)

    def after_nowait(self, topic: str, last_id: str | None, limit: int) -> Replay:
        ring = self._rings.get(topic)
        if ring is None:
            return Replay([], last_id is None)
        start = None if last_id is None else ring.by_id.get(last_id)
        if start is None:
            return Replay(list(ring.records)[:limit], last_id is None)
        newer: list[Record] = []
        for record in reversed(ring.records):
            if record.seq <= start.seq:
                break
            newer.append(record)
        newer.reverse()
        return Replay(newer[:limit], True)

    def statistics(self) -> HistoryStatistics:
        return HistoryStatistics("memory", len(self._rings), self._events, self._bytes)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
