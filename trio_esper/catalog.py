"""The topic catalog: which topics the broker knows, for the topic API.

Pure: no trio, no transport. The hub owns one and tells it what happens
(a topic published to, subscribed to, created, deleted); the API routes read
it. Three kinds of entry, each bounded:

- *created* topics (``POST /api/v1/pubsubs``), until deleted; creating more
  than ``capacity`` is refused.
- *ad hoc* topics, used through ``/publish`` and ``/subscribe`` without being
  created: the ``capacity`` most recently used are listed (a topic that
  falls out is listed again once used again; its published count restarts).
- *deleted* topics (tombstones): publishing or subscribing to one is refused
  until it is created again; the ``capacity`` most recent deletions are kept.

Ids are normalised topic ids; the list is ordered by id, paged by cursor
(the last id of the previous page).

Memory: the catalog counts the heap it holds (:attr:`Catalog.bytes`: each
entry's objects, each tombstone, the containers measured whole) and holds at
most ``max_bytes``: past it, ad hoc entries go first (least recently used),
then the oldest tombstones; creating a topic is refused when created topics
and tombstones alone fill it. An ad hoc topic with subscribers is never
dropped: found in use, it is set aside, out of the eviction order, until the
hub says it has none left (:meth:`Catalog.released`) or it is used again.
Topics with subscribers are bounded by ``--max-topics`` (the hub's limit of
topics with subscribers), so while every ad hoc entry is in use the catalog
may hold up to that many entries past ``max_bytes``; making room stays O(1)
amortised whatever their number. The
broker gives it a share of the memory budget (:data:`BUDGET_SHARE`) and
charges what it holds to the memory history (:meth:`Catalog.count_in`), so
the catalog and the history together stay within ``--history-max-bytes``
whatever the number of topics.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .history.heap import container_bytes, object_bytes

#: The catalog may take up to 1/BUDGET_SHARE of the memory budget, so the
#: history keeps the rest whatever the number of topics.
BUDGET_SHARE = 4


@dataclass(slots=True)
class TopicEntry:
    """What the catalog knows of one topic."""

    id: str
    persist: bool
    """Whether its history is kept in the durable backend."""
    created: float
    """When it was created or first used, seconds since the epoch."""
    managed: bool
    """Created through the API (else used ad hoc)."""
    published: int = 0
    """Events published to it since it entered the catalog."""
    recent: int = 0
    """Events published since the last :meth:`Catalog.busiest` call."""


def _fixed_entry_bytes() -> int:
    """What every entry holds whatever its id, measured on a sample: the
    entry, its time, and its two counts (ints past 256 are objects)."""
    entry = TopicEntry("topic", False, time.time(), managed=False, published=1 << 20)
    parts: tuple[object, ...] = (entry, entry.created, entry.published, 1 << 21)
    return sum(object_bytes(part) for part in parts)


#: Bytes each entry holds besides its id string.
ENTRY_FIXED_BYTES = _fixed_entry_bytes()
#: What :meth:`Catalog.full` allows for the id of a topic yet to be created.
ID_ALLOWANCE_BYTES = 128
#: Bytes each tombstone holds besides its id string: its time.
TOMBSTONE_FIXED_BYTES = object_bytes(time.time())
#: Set-aside topics looked at again per room made, for a caller that does not
#: call :meth:`Catalog.released`: bounded, so room is made in O(1) amortised.
BUSY_RECHECKS = 2


def _no_charge(delta: int) -> None:
    pass


class Catalog:
    """See the module docstring."""

    def __init__(self, capacity: int, *, durable: bool, max_bytes: float = math.inf) -> None:
        self.capacity = capacity
        #: At most this many bytes held (see the module docstring).
        self.max_bytes = max_bytes
        #: Whether topics used ad hoc keep history in a durable backend.
        self.durable = durable
        self._managed: dict[str, TopicEntry] = {}
        #: Least recently used first.
        self._adhoc: OrderedDict[str, TopicEntry] = OrderedDict()
        #: Ad hoc entries found in use when room was made, out of that
        #: order until released or used again; least recently looked at first.
        self._busy: OrderedDict[str, TopicEntry] = OrderedDict()
        #: Oldest deletion first.
        self._deleted: OrderedDict[str, float] = OrderedDict()
        #: Topics published to since the last :meth:`busiest` call.
        self._recent: dict[str, TopicEntry] = {}
        self._sorted: list[str] | None = None
        #: The entries' and tombstones' own bytes; the containers are
        #: measured whole by _remeasure.
        self._entries_bytes = 0
        self._tombstones_bytes = 0
        #: The ad hoc entries' share of _entries_bytes (set aside or not):
        #: what room making can free.
        self._adhoc_bytes = 0
        #: The most ad hoc entries and tombstones since their dicts were last
        #: copied (a dict never shrinks when keys are deleted: see _compact).
        self._adhoc_peak = 0
        self._busy_peak = 0
        self._deleted_peak = 0
        #: Heap bytes held, all told.
        self.bytes = 0
        #: Told each change of :attr:`bytes` (see :meth:`count_in`).
        self._charge: Callable[[int], None] = _no_charge
        self._remeasure()

    def count_in(self, charge: Callable[[int], None]) -> None:
        """From now on, tell ``charge`` each change of :attr:`bytes` (a
        memory history's :meth:`~trio_esper.history.memory.MemoryHistory.charge`),
        starting with what is held now."""
        self._charge = charge
        charge(self.bytes)

    def _remeasure(self) -> None:
        size = (
            self._entries_bytes
            + self._tombstones_bytes
            + container_bytes(self._managed)
            + container_bytes(self._adhoc)
            + container_bytes(self._busy)
            + container_bytes(self._deleted)
            + container_bytes(self._recent)
        )
        if self._sorted is not None:
            size += container_bytes(self._sorted)
        delta, self.bytes = size - self.bytes, size
        if delta:
            self._charge(delta)

    @staticmethod
    def _entry_bytes(entry: TopicEntry) -> int:
        return ENTRY_FIXED_BYTES + object_bytes(entry.id)

    @staticmethod
    def _tombstone_bytes(topic: str) -> int:
        return TOMBSTONE_FIXED_BYTES + object_bytes(topic)

    def __len__(self) -> int:
        return len(self._managed) + len(self._adhoc) + len(self._busy)

    def get(self, topic: str) -> TopicEntry | None:
        return self._managed.get(topic) or self._adhoc.get(topic) or self._busy.get(topic)

    def _pop_adhoc(self, topic: str) -> TopicEntry | None:
        """Take ``topic``'s ad hoc entry out (set aside or not), if listed."""
        entry = self._adhoc.pop(topic, None) or self._busy.pop(topic, None)
        if entry is not None:
            self._adhoc_bytes -= self._entry_bytes(entry)
        return entry

    def is_deleted(self, topic: str) -> bool:
        return topic in self._deleted

    def ephemeral(self, topic: str) -> bool:
        """Whether ``topic`` keeps its history in memory though a durable
        backend is configured (created with ``persist: false``)."""
        entry = self._managed.get(topic)
        return entry is not None and not entry.persist

    def create(
        self, topic: str, *, persist: bool, in_use: Callable[[str], bool] | None = None
    ) -> TopicEntry | None:
        """Enter ``topic`` as created; ``None`` if it is already listed (as
        created, or ad hoc with a different ``persist``: its history stays
        where it is). An ad hoc topic with the same ``persist`` becomes created.
        ``in_use``: as for :meth:`used` (``None``: any ad hoc entry may make room)."""
        if topic in self._managed:
            return None
        adhoc = self._adhoc.get(topic) or self._busy.get(topic)
        if adhoc is not None and adhoc.persist != persist:
            return None
        if adhoc is not None:
            self._pop_adhoc(topic)
            entry = adhoc
            entry.managed = True
        else:
            entry = TopicEntry(topic, persist, time.time(), managed=True)
            self._entries_bytes += self._entry_bytes(entry)
            self._sorted = None
        self._forget_tombstone(topic)
        self._managed[topic] = entry
        self._make_room(in_use)
        return entry

    def full(self) -> bool:
        """Whether creating another topic would exceed the capacity, or the
        bytes, with every ad hoc entry gone: one more entry (its id up to
        :data:`ID_ALLOWANCE_BYTES`), and the created topics' dict perhaps
        doubling its table to take it."""
        if len(self._managed) >= self.capacity:
            return True
        removable = self._adhoc_bytes + container_bytes(self._adhoc) + container_bytes(self._busy)
        another = ENTRY_FIXED_BYTES + ID_ALLOWANCE_BYTES + container_bytes(self._managed)
        return self.bytes - removable + another > self.max_bytes

    def delete(self, topic: str) -> TopicEntry | None:
        """Forget ``topic`` and remember it was deleted; its entry, if listed."""
        entry = self._managed.pop(topic, None)
        if entry is None:
            entry = self._pop_adhoc(topic)
        if entry is not None:
            self._entries_bytes -= self._entry_bytes(entry)
        self._recent.pop(topic, None)
        self._forget_tombstone(topic)
        self._deleted[topic] = time.time()
        self._tombstones_bytes += self._tombstone_bytes(topic)
        self._deleted_peak = max(self._deleted_peak, len(self._deleted))
        while len(self._deleted) > self.capacity:
            self._forget_tombstone(next(iter(self._deleted)))
        self._sorted = None
        self._make_room(None)
        return entry

    def _forget_tombstone(self, topic: str) -> None:
        if self._deleted.pop(topic, None) is not None:
            self._tombstones_bytes -= self._tombstone_bytes(topic)

    def used(self, topic: str, in_use: Callable[[str], bool]) -> TopicEntry:
        """``topic`` was published or subscribed to: its entry, entered ad hoc
        if it was not listed. ``in_use`` tells whether a topic has subscribers
        (those are not dropped to make room)."""
        entry = self._managed.get(topic)
        if entry is not None:
            return entry
        entry = self._adhoc.get(topic)
        if entry is not None:
            self._adhoc.move_to_end(topic)
            return entry
        entry = self._busy.pop(topic, None)
        if entry is not None:  # looked at again if room is needed
            self._back_in_order(entry)
            return entry
        entry = self._adhoc[topic] = TopicEntry(topic, self.durable, time.time(), managed=False)
        self._entries_bytes += self._entry_bytes(entry)
        self._adhoc_bytes += self._entry_bytes(entry)
        self._adhoc_peak = max(self._adhoc_peak, len(self._adhoc))
        self._sorted = None
        self._make_room(in_use, keep=topic)
        return entry

    def released(self, topic: str) -> None:
        """``topic`` has no subscribers left (the hub says so): its entry, if
        ad hoc, is the most recently used (set aside for being in use, it is
        back in the order)."""
        entry = self._busy.pop(topic, None)
        if entry is not None:
            self._back_in_order(entry)
        elif topic in self._adhoc:
            self._adhoc.move_to_end(topic)

    def _back_in_order(self, entry: TopicEntry) -> None:
        """A set-aside entry, taken out, goes back in the order, most recent."""
        self._adhoc[entry.id] = entry
        self._adhoc_peak = max(self._adhoc_peak, len(self._adhoc))
        self._compact()

    def _over(self) -> bool:
        return len(self._adhoc) + len(self._busy) > self.capacity or self.bytes > self.max_bytes

    def _make_room(self, in_use: Callable[[str], bool] | None, keep: str = "") -> None:
        """Within the capacity and the bytes: drop ad hoc entries, least
        recently used first, skipping ``keep``; one ``in_use`` says has
        subscribers is set aside instead (``None``: any may go). Then, still
        past them, up to :data:`BUSY_RECHECKS` set-aside entries are looked at
        again (dropped if no longer in use), and the oldest tombstones go.

        Amortised O(1): an entry is set aside at most once each time it
        enters the order (when first used, used again, or released); past
        that, the work is the entries dropped, each once."""
        self._remeasure()
        rechecks = BUSY_RECHECKS
        while self._over():
            oldest = next(iter(self._adhoc), keep)
            if oldest != keep:
                entry = self._adhoc.pop(oldest)
                if in_use is not None and in_use(oldest):
                    self._busy[oldest] = entry
                    self._busy_peak = max(self._busy_peak, len(self._busy))
                    self._compact()
                else:
                    self._drop(entry)
            elif self._busy and (in_use is None or rechecks):
                oldest = next(iter(self._busy))
                if in_use is not None and in_use(oldest):
                    self._busy.move_to_end(oldest)
                    rechecks -= 1
                else:
                    self._drop(self._busy.pop(oldest))
            else:
                break
        while self.bytes > self.max_bytes and self._deleted:
            self._forget_tombstone(next(iter(self._deleted)))
            self._compact()

    def _drop(self, entry: TopicEntry) -> None:
        """Forget ``entry``, taken out of the ad hoc entries, to make room."""
        dropped = self._entry_bytes(entry)
        self._entries_bytes -= dropped
        self._adhoc_bytes -= dropped
        self._recent.pop(entry.id, None)
        self._compact()

    def _compact(self) -> None:
        """Copy a dict that holds a quarter of its peak or less, so its table
        fits what is left (amortised O(1): 3/4 were deleted); re-measure."""
        if len(self._adhoc) * 4 < self._adhoc_peak:
            self._adhoc = OrderedDict(self._adhoc)
            self._adhoc_peak = len(self._adhoc)
        if len(self._busy) * 4 < self._busy_peak:
            self._busy = OrderedDict(self._busy)
            self._busy_peak = len(self._busy)
        if len(self._deleted) * 4 < self._deleted_peak:
            self._deleted = OrderedDict(self._deleted)
            self._deleted_peak = len(self._deleted)
        self._remeasure()

    def published(self, entry: TopicEntry, events: int) -> None:
        entry.published += events
        entry.recent += events
        self._recent[entry.id] = entry

    def page(self, after: str | None, limit: int) -> tuple[list[TopicEntry], str | None]:
        """Up to ``limit`` entries with ids after ``after`` (from the first if
        ``None``), by id; and the cursor of the next page (``None``: last page)."""
        if self._sorted is None:
            self._sorted = sorted([*self._managed, *self._adhoc, *self._busy])
            self._remeasure()
        ids = self._sorted
        start = 0 if after is None else bisect.bisect_right(ids, after)
        entries: list[TopicEntry] = []
        index = start
        while index < len(ids) and len(entries) < limit:
            entry = self.get(ids[index])
            index += 1
            if entry is not None:
                entries.append(entry)
        more = index < len(ids)
        return entries, (entries[-1].id if more and entries else None)

    def busiest(
        self, count: int, subscribers: Callable[[str], int]
    ) -> list[tuple[TopicEntry, int]]:
        """The ``count`` topics with the most events published since the last
        call, each with that number; then resets the recent counts."""
        recent = self._recent
        self._recent = {}
        self._remeasure()
        chosen = heapq.nlargest(
            count, recent.values(), key=lambda e: (e.recent, subscribers(e.id), e.id)
        )
        result = [(entry, entry.recent) for entry in chosen]
        for entry in recent.values():
            entry.recent = 0
        return result
