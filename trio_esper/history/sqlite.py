"""History in one SQLite file: an append-only log, written in grouped commits.

Resource handling
-----------------
:func:`open_sqlite_history` opens the file, checks it, and runs the writer
task in the caller's nursery for the ``async with`` block. Publishers hand
their events to the writer through a memory channel and wait; the writer
drains everything queued, commits it in one transaction in one
``trio.to_thread`` call, then delivers the stored records in seq order and
wakes the publishers. A publish is acknowledged only after its commit
(``sync="full"``, the default: ``synchronous=FULL``, durable across power
loss, not only process death; ``"normal"`` trades the flush per commit for
durability across process death only).

Retention (count per topic, age) is enforced by the writer between commits,
a bounded number of rows at a time, so it never stalls a publish for long.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..errors import Conflict, HistoryError
from ..sse import Event
from . import Deliver, HistoryStatistics, Record, Replay, SeqClock
from .memory import MemoryHistory

#: Appends queued for the writer before publishers wait for room.
WRITER_QUEUE = 4096
#: Most appends one transaction takes; bounds a commit's latency.
MAX_BATCH = 2048
#: Memory for the cache of recent events that serves resuming subscribers.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: Retention runs at most this often, deleting at most PRUNE_ROWS rows a go.
PRUNE_INTERVAL_SECONDS = 1.0
PRUNE_ROWS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY,   -- increases in publish order, broker-wide
    topic TEXT    NOT NULL,
    id    TEXT    NOT NULL,
    event TEXT,
    data  TEXT    NOT NULL,
    retry INTEGER,
    time  REAL    NOT NULL       -- seconds since the epoch
);
CREATE UNIQUE INDEX IF NOT EXISTS events_topic_id ON events (topic, id);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
"""


INSERT = (
    "INSERT INTO events (seq, topic, id, event, data, retry, time) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _row(record: Record) -> tuple[object, ...]:
    event = record.event
    return (record.seq, record.topic, record.id, event.event, event.data, event.retry, record.time)


@dataclass
class _Append:
    topic: str
    events: Sequence[Event]
    deliver: Deliver
    done: trio.Event = field(default_factory=trio.Event)
    records: list[Record] | None = None
    error: Exception | None = None


#: ``full``: every commit is flushed to disk (survives power loss).
#: ``normal``: WAL without a flush per commit (survives the broker's crash,
#: ``kill -9`` included, but the last commits may be lost to a power cut).
SYNC_MODES = ("full", "normal")


def _connect(path: str, sync: str = "full") -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {SYNC_MODES}")
    conn.execute(f"PRAGMA synchronous={sync.upper()}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _open_checked(path: str, sync: str) -> tuple[sqlite3.Connection, sqlite3.Connection, int]:
    """Open writer and reader connections; raise HistoryError with a reason."""
    if os.path.isdir(path):
        raise HistoryError(f"history file {path!r} is a directory")
    try:
        writer = _connect(path, sync)
        check = writer.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise HistoryError(f"history file {path!r} is corrupt: {check}")
        writer.executescript(SCHEMA)
        writer.execute("BEGIN IMMEDIATE")  # proves we can write
        writer.execute("COMMIT")
        last = writer.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        reader = _connect(path)
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"cannot use history file {path!r}: {exc}") from None
    return writer, reader, int(last)


class SqliteHistory:
    """See the module docstring. Build with :func:`open_sqlite_history`."""

    def __init__(
        self,
        path: str,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        last_seq: int,
        *,
        max_events_per_topic: int,
        max_age_seconds: float,
        cache_bytes: int,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._seqs = SeqClock(last_seq)
        self.max_events_per_topic = max_events_per_topic
        self.max_age_seconds = max_age_seconds
        self._send, self._receive = trio.open_memory_channel[_Append](WRITER_QUEUE)
        self._read_lock = trio.Lock()
        self._touched: set[str] = set()
        self._last_prune = -math.inf
        #: Recent records, so reconnecting subscribers resume without reading
        #: the file: it holds a contiguous tail of each topic's log.
        self._cache = MemoryHistory(
            max_events_per_topic=max_events_per_topic, max_bytes=cache_bytes
        )
        #: Retained events per topic, kept in step with the file by the writer.
        self._counts: Counter[str] = Counter(
            dict(writer.execute("SELECT topic, count(*) FROM events GROUP BY topic").fetchall())
        )

    async def append(self, topic: str, events: Sequence[Event], deliver: Deliver) -> list[Record]:
        item = _Append(topic, events, deliver)
        try:
            await self._send.send(item)
        except trio.ClosedResourceError:
            raise HistoryError("history is closed") from None
        # Once queued the append will be committed; wait for it even if our
        # client gives up, so a cancelled publish does not race its own commit.
        with trio.CancelScope(shield=True):
            await item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.records is not None
        return item.records

    async def run(self) -> None:
        """The writer task: commit queued appends in batches until closed."""
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    await trio.to_thread.run_sync(self._commit, batch)
                except sqlite3.Error as exc:
                    error = HistoryError(f"history write failed: {exc}")
                    for item in batch:
                        item.error = error
                for item in batch:
                    if item.records is not None:
                        self._cache.remember(item.topic, item.records)
                        await item.deliver(item.topic, item.records)
                    item.done.set()
                if trio.current_time() - self._last_prune >= PRUNE_INTERVAL_SECONDS:
                    self._last_prune = trio.current_time()
                    await trio.to_thread.run_sync(self._prune)

    def _commit(self, batch: list[_Append]) -> None:
        """Thread: store ``batch`` in one transaction.

        Fast path: every row in one ``executemany`` (few GIL round trips, which
        matter while the event loop is busy). If a unique id collides, redo the
        batch append by append, each in a savepoint, so a conflict rejects
        only its own append.
        """
        conn = self._writer
        now = time.time()
        last_seq = self._seqs.last
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows: list[tuple[object, ...]] = []
                for item in batch:
                    item.records = [
                        Record.create(self._seqs.next(), item.topic, e, now) for e in item.events
                    ]
                    rows += map(_row, item.records)
                conn.executemany(INSERT, rows)
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                for item in batch:
                    self._insert_alone(conn, item, now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._seqs.last = last_seq
            for item in batch:
                item.records = None
            raise
        for item in batch:
            if item.records is not None:
                self._touched.add(item.topic)
                self._counts[item.topic] += len(item.records)

    def _insert_alone(self, conn: sqlite3.Connection, item: _Append, now: float) -> None:
        """Insert one append in a savepoint; on a publisher id conflict leave
        nothing and set ``item.error``."""
        conn.execute("SAVEPOINT item")
        item.records = []
        try:
            for event in item.events:
                while True:
                    record = Record.create(self._seqs.next(), item.topic, event, now)
                    try:
                        conn.execute(INSERT, _row(record))
                        break
                    except sqlite3.IntegrityError:
                        if event.id is not None:
                            raise
                        # An id we assigned equals one a publisher chose: next seq.
                item.records.append(record)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO item")
            item.records = None
            item.error = Conflict("event id is already in this topic's history")
        conn.execute("RELEASE item")

    def _prune(self) -> None:
        """Thread: enforce retention on recently written topics, boundedly."""
        budget = PRUNE_ROWS
        if self.max_age_seconds < math.inf:
            # seq is at least the publish time in microseconds (SeqClock).
            cutoff_seq = int((time.time() - self.max_age_seconds) * 1_000_000)
            budget -= self._delete(
                "DELETE FROM events WHERE seq IN"
                " (SELECT seq FROM events WHERE seq < ? ORDER BY seq LIMIT ?) RETURNING topic",
                (cutoff_seq, budget),
            )
        while self._touched and budget > 0:
            topic = self._touched.pop()
            deleted = self._delete(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE topic = ?"
                " ORDER BY seq DESC LIMIT ? OFFSET ?) RETURNING topic",
                (topic, budget, self.max_events_per_topic),
            )
            budget -= deleted
            if budget <= 0:
                self._touched.add(topic)  # maybe more to do next time

    def _delete(self, sql: str, args: tuple[object, ...]) -> int:
        topics = [row[0] for row in self._writer.execute(sql, args).fetchall()]
        self._counts.subtract(topics)
        for topic in set(topics):
            if self._counts[topic] <= 0:
                del self._counts[topic]
        return len(topics)

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        if last_id is not None:
            cached = self._cache.after_nowait(topic, last_id, limit)
            oldest_kept = time.time() - self.max_age_seconds
            if cached.found and all(r.time >= oldest_kept for r in cached.records[:1]):
                await trio.lowlevel.checkpoint()
                return cached
        async with self._read_lock:
            return await trio.to_thread.run_sync(self._after, topic, last_id, limit)

    def _after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        conn = self._reader
        found = last_id is None
        start = 0
        if last_id is not None:
            row = conn.execute(
                "SELECT seq FROM events WHERE topic = ? AND id = ?", (topic, last_id)
            ).fetchone()
            if row is not None:
                found, start = True, row[0]
        rows = conn.execute(
            "SELECT seq, id, event, data, retry, time FROM events"
            " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
            (topic, start, limit),
        ).fetchall()
        records = [
            Record.create(seq, topic, Event(data, event, id_, retry), when)
            for seq, id_, event, data, retry, when in rows
        ]
        return Replay(records, found)

    def statistics(self) -> HistoryStatistics:
        try:
            size = sum(
                os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p)
            )
        except OSError:
            size = 0
        return HistoryStatistics("sqlite", len(self._counts), self._counts.total(), size)

    async def aclose(self) -> None:
        self._send.close()


@asynccontextmanager
async def open_sqlite_history(
    path: str,
    *,
    max_events_per_topic: int = 1000,
    max_age_seconds: float = math.inf,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    sync: str = "full",
) -> AsyncIterator[SqliteHistory]:
    """Open the history file at ``path`` and run its writer for the block.

    On exit, appends already queued are committed before the file is closed.

    Raises:
        HistoryError: the file cannot be opened, created, written, or is corrupt.
    """
    writer, reader, last = await trio.to_thread.run_sync(_open_checked, path, sync)
    history = SqliteHistory(
        path,
        writer,
        reader,
        last,
        max_events_per_topic=max_events_per_topic,
        max_age_seconds=max_age_seconds,
        cache_bytes=cache_bytes,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(history.run)
            try:
                yield history
            finally:
                await history.aclose()
    finally:
        writer.close()
        reader.close()
