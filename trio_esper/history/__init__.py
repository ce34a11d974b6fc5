"""Where past events live, so a subscriber can resume by Last-Event-ID.

One small :class:`History` protocol, two backends:

- :class:`~trio_esper.history.memory.MemoryHistory` (default): a ring of the
  last N events per topic, under a total byte budget.
- :class:`~trio_esper.history.sqlite.SqliteHistory`: an append-only log in one
  SQLite file (WAL); a publish is acknowledged only once committed.

Ordering contract: every stored event gets a ``seq``, an integer that
increases in publish order across the whole broker (and across restarts:
it starts from the wall clock in microseconds). The backend hands stored
records to the ``deliver`` callback in ``seq`` order, so live fan-out and
replay agree on one order, and a subscriber that replayed up to ``seq`` R
skips live records with ``seq <= R`` (no duplicate at the seam).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..routing import Route
from ..sse import Event, encode
from .spec import parse_history_spec as parse_history_spec


@dataclass(frozen=True, slots=True)
class Record:
    """A stored event: the event with its id set, where it sits, and its frame."""

    seq: int
    topic: str
    event: Event
    time: float
    """Publish time, seconds since the epoch."""
    frame: bytes = field(repr=False, compare=False, default=b"")
    route: Route | None = None
    """Where it goes, for a record of the routed log (:mod:`..routing`)."""

    @classmethod
    def create(
        cls, seq: int, topic: str, event: Event, when: float, route: Route | None = None
    ) -> Record:
        if event.id is None:
            event = Event(event.data, event.event, str(seq), event.retry)
        return cls(seq, topic, event, when, encode(event), route)

    @property
    def id(self) -> str:
        assert self.event.id is not None
        return self.event.id


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs more than the rest of building it.
@dataclass(slots=True)
class Replay:
    """What a resuming subscriber gets from history."""

    records: list[Record]
    found: bool
    """False if the requested id is unknown or expired (the replay then holds
    everything retained)."""


@dataclass(frozen=True, slots=True)
class HistoryStatistics:
    backend: str
    """``memory`` or ``sqlite``."""
    topics: int
    """Topics with at least one retained event."""
    events: int
    """Retained events, all topics."""
    bytes: int
    """Memory held (memory) or file size (sqlite), approximately."""
    problem: str | None = None
    """Why the store cannot do its job now (the backplane is down), if it cannot."""


Deliver = Callable[[str, Sequence[Record]], Awaitable[None]]


class History(Protocol):
    async def append(
        self, topic: str, events: Sequence[Event], deliver: Deliver, route: Route | None = None
    ) -> list[Record]:
        """Store ``events`` (in order) for ``topic``; assign ids to those
        without one; call ``deliver`` with the stored records in seq order
        across all appends; return them once stored (durably, where the
        backend is durable). ``route``: the records' route (the routed log's
        records carry one), stored with them and read back with them.

        Raises:
            Conflict: an event's id is already retained for ``topic``; none
                of ``events`` is stored.
            HistoryError: the store failed; none of ``events`` is stored.
        """
        ...

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        """Up to ``limit`` retained records of ``topic`` after ``last_id``
        (from the oldest if ``None``), oldest first.

        Raises:
            HistoryError: the store failed to read.
        """
        ...

    async def delete(self, topic: str) -> None:
        """Drop every retained record of ``topic``.

        Raises:
            HistoryError: the store failed; nothing is dropped.
        """
        ...

    async def watch(self, topic: str, deliver: Deliver) -> None:
        """The node has a subscriber to ``topic`` now: a backend that delivers
        what other processes store (the Redis backplane) starts reading it
        and calls ``deliver``; others need do nothing (they deliver in
        :meth:`append`).

        Raises:
            HistoryError: the store cannot be reached (the subscribe is refused).
        """
        ...

    def unwatch(self, topic: str) -> None:
        """The node's last subscriber to ``topic`` left."""
        ...

    async def check(self) -> str | None:
        """Whether the store takes writes now: ``None`` if it does, else why
        not (one line). For readiness probes: cheap, never raises."""
        ...

    def statistics(self) -> HistoryStatistics: ...

    @property
    def problem(self) -> str | None:
        """Why the store cannot do its job now, as last seen (no I/O: read
        once per subscribe); ``None`` while it can. :attr:`HistoryStatistics.problem`."""
        ...

    async def aclose(self) -> None: ...


class SeqClock:
    """Issues seqs: increasing, and not below the wall clock in microseconds,
    so ids a memory-backed broker hands out after a restart do not repeat."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1000)
        return self.last
