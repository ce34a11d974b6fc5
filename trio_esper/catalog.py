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
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


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


class Catalog:
    """See the module docstring."""

    def __init__(self, capacity: int, *, durable: bool) -> None:
        self.capacity = capacity
        #: Whether topics used ad hoc keep history in a durable backend.
        self.durable = durable
        self._managed: dict[str, TopicEntry] = {}
        #: Least recently used first.
        self._adhoc: OrderedDict[str, TopicEntry] = OrderedDict()
        #: Oldest deletion first.
        self._deleted: OrderedDict[str, float] = OrderedDict()
        #: Topics published to since the last :meth:`busiest` call.
        self._recent: dict[str, TopicEntry] = {}
        self._sorted: list[str] | None = None

    def __len__(self) -> int:
        return len(self._managed) + len(self._adhoc)

    def get(self, topic: str) -> TopicEntry | None:
        return self._managed.get(topic) or self._adhoc.get(topic)

    def is_deleted(self, topic: str) -> bool:
        return topic in self._deleted

    def ephemeral(self, topic: str) -> bool:
        """Whether ``topic`` keeps its history in memory though a durable
        backend is configured (created with ``persist: false``)."""
        entry = self._managed.get(topic)
        return entry is not None and not entry.persist

    def create(self, topic: str, *, persist: bool) -> TopicEntry | None:
        """Enter ``topic`` as created; ``None`` if it is already listed (as
        created, or ad hoc with a different ``persist``: its history stays
        where it is). An ad hoc topic with the same ``persist`` becomes created."""
        if topic in self._managed:
            return None
        adhoc = self._adhoc.get(topic)
        if adhoc is not None and adhoc.persist != persist:
            return None
        if adhoc is not None:
            del self._adhoc[topic]
            entry = adhoc
            entry.managed = True
        else:
            entry = TopicEntry(topic, persist, time.time(), managed=True)
            self._sorted = None
        self._deleted.pop(topic, None)
        self._managed[topic] = entry
        return entry

    def full(self) -> bool:
        """Whether creating another topic would exceed the capacity."""
        return len(self._managed) >= self.capacity

    def delete(self, topic: str) -> TopicEntry | None:
        """Forget ``topic`` and remember it was deleted; its entry, if listed."""
        entry = self._managed.pop(topic, None) or self._adhoc.pop(topic, None)
        self._recent.pop(topic, None)
        self._deleted[topic] = time.time()
        self._deleted.move_to_end(topic)
        while len(self._deleted) > self.capacity:
            self._deleted.popitem(last=False)
        self._sorted = None
        return entry

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
        entry = self._adhoc[topic] = TopicEntry(topic, self.durable, time.time(), managed=False)
        self._sorted = None
        # Make room: the least recently used first, skipping topics with
        # subscribers (each is looked at once per call).
        for _ in range(len(self._adhoc)):
            if len(self._adhoc) <= self.capacity:
                break
            oldest = next(iter(self._adhoc))
            if oldest != topic and in_use(oldest):
                self._adhoc.move_to_end(oldest)
                continue
            del self._adhoc[oldest]
            self._recent.pop(oldest, None)
        return entry

    def published(self, entry: TopicEntry, events: int) -> None:
        entry.published += events
        entry.recent += events
        self._recent[entry.id] = entry

    def page(self, after: str | None, limit: int) -> tuple[list[TopicEntry], str | None]:
        """Up to ``limit`` entries with ids after ``after`` (from the first if
        ``None``), by id; and the cursor of the next page (``None``: last page)."""
        if self._sorted is None:
            self._sorted = sorted([*self._managed, *self._adhoc])
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
        chosen = heapq.nlargest(
            count, recent.values(), key=lambda e: (e.recent, subscribers(e.id), e.id)
        )
        result = [(entry, entry.recent) for entry in chosen]
        for entry in recent.values():
            entry.recent = 0
        return result
