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

Error handling
--------------
Opening refuses a file the store could not write (read-only, corrupt, a
directory, ...) with :class:`HistoryError`. Once running, a store failure
never ends the writer: a failed commit (disk full, I/O error) or a history
file that was removed or replaced since it was opened fails the appends of
that batch with :class:`HistoryError` (503) and nothing of them is stored; a
failed retention pass is retried later; a failed read raises
:class:`HistoryError`. Each kind of failure is logged on the ``trio_esper``
logger with its reason, at most once per :data:`LOG_INTERVAL_SECONDS`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
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
from ..routing import Route, decode_route, encode_route
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
#: A failing disk fails every commit: each kind of failure is logged at most
#: once this often, and the next line says how many were left out.
LOG_INTERVAL_SECONDS = 10.0

log = logging.getLogger("trio_esper")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY,   -- increases in publish order, broker-wide
    topic TEXT    NOT NULL,
    id    TEXT    NOT NULL,
    event TEXT,
    data  TEXT    NOT NULL,
    retry INTEGER,
    time  REAL    NOT NULL,      -- seconds since the epoch
    route TEXT                   -- the routed log's: topics and privacy (routing.encode_route)
);
CREATE INDEX IF NOT EXISTS events_topic_id_any ON events (topic, id);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
-- One row, rewritten by each readiness probe: proof that a commit goes through.
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), time REAL NOT NULL);
"""


#: The writer's kinds of work (:class:`_Append`), done in the order queued.
APPEND, PURGE, PROBE = "append", "purge", "probe"

INSERT = (
    "INSERT INTO events (seq, topic, id, event, data, retry, time, route)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(record: Record) -> tuple[object, ...]:
    event, route = record.event, record.route
    return (
        record.seq,
        record.topic,
        record.id,
        event.event,
        event.data,
        event.retry,
        record.time,
        None if route is None else encode_route(route),
    )


@dataclass
class _Append:
    """What the writer is asked to do: store ``events`` (``APPEND``), drop a
    topic's history (``PURGE``), or prove the file takes a commit (``PROBE``)."""

    topic: str
    events: Sequence[Event]
    deliver: Deliver
    route: Route | None = None
    kind: str = "append"
    done: trio.Event = field(default_factory=trio.Event)
    records: list[Record] | None = None
    error: Exception | None = None


#: ``full``: every commit is flushed to disk (survives power loss).
#: ``normal``: WAL without a flush per commit (survives the broker's crash,
#: ``kill -9`` included, but the last commits may be lost to a power cut).
SYNC_MODES = ("full", "normal")


def _connect(path: str, sync: str = "full") -> sqlite3.Connection:
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {SYNC_MODES}")
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        conn.close()
        raise
    return conn


#: A file as the kernel names it, (st_dev, st_ino): a path that names another
#: pair is no longer the file the store has open.
FileId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Opened:
    writer: sqlite3.Connection
    reader: sqlite3.Connection
    last_seq: int
    counts: dict[str, int]
    """Retained events per topic."""
    files: dict[str, FileId]
    """The database file and its WAL, as opened."""


def _open_checked(path: str, sync: str) -> _Opened:
    """Open writer and reader connections; raise HistoryError with a reason."""
    if os.path.isdir(path):
        raise HistoryError(f"history file {path!r} is a directory")
    _check_writable(path)
    try:
        return _open(path, sync)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise HistoryError(f"cannot use history file {path!r}: {exc}") from None


def _add_route_column(conn: sqlite3.Connection) -> None:
    """A file written before the routed log had no ``route`` column: add it
    (every row it holds is a topic's, with none). A topic's event ids are
    unique; the routed log's may repeat (as Mercure's hub takes them)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    if "route" not in columns:
        conn.execute("ALTER TABLE events ADD COLUMN route TEXT")
        conn.execute("DROP INDEX IF EXISTS events_topic_id")
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS events_topic_id_unique ON events (topic, id)"
        " WHERE route IS NULL"
    )


def _open(path: str, sync: str) -> _Opened:
    writer = _connect(path, sync)
    reader = None
    try:
        _quick_check(writer, path)
        writer.executescript(SCHEMA)
        _add_route_column(writer)
        _check_takes_a_write(writer)
        last = writer.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        counts = writer.execute("SELECT topic, count(*) FROM events GROUP BY topic").fetchall()
        reader = _connect(path)
        files = {path: _file_id(os.stat(path))}
        # The WAL exists once a connection has read the file, and stays while one is open.
        with contextlib.suppress(FileNotFoundError):
            files[path + "-wal"] = _file_id(os.stat(path + "-wal"))
    except BaseException:
        writer.close()
        if reader is not None:
            reader.close()
        raise
    return _Opened(writer, reader, int(last), dict(counts), files)


def _quick_check(conn: sqlite3.Connection, path: str) -> None:
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise HistoryError(f"history file {path!r} is corrupt: {check}")


def _check_writable(path: str) -> None:
    """Raise HistoryError if the file or its WAL or shared-memory file exists
    and cannot be opened for writing.

    SQLite falls back to read-only for such a file: the broker would start,
    refuse every publish, and leave its -wal and -shm files behind with the
    database's read-only mode, which break the next start.
    """
    for name in (path, path + "-wal", path + "-shm"):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise HistoryError(f"history file {name!r} is not writable: {exc.strerror}") from None
        os.close(fd)  # before SQLite opens the file: closing it drops no lock of SQLite's


def _check_takes_a_write(conn: sqlite3.Connection) -> None:
    """Raise sqlite3.Error unless ``conn`` can write: a row inserted in a
    transaction that is rolled back (``BEGIN IMMEDIATE`` alone succeeds on a
    read-only file)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # seq 0 is never used (seqs start from the clock) and topic "" is invalid.
        conn.execute(INSERT, (0, "", "", None, "", None, 0.0, None))
    finally:
        conn.execute("ROLLBACK")


def _file_id(stat: os.stat_result) -> FileId:
    return stat.st_dev, stat.st_ino


def _reason(exc: Exception) -> str:
    """``exc`` as the reason a write failed: the store's own message, or, for
    a fault the store does not expect, its type too."""
    if isinstance(exc, (sqlite3.Error, OSError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class _FileMoved(Exception):
    """The history file or its WAL at the store's path is not the one it has
    open: removed, or replaced by another file."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class _FailureLog:
    """Logs store failures on the ``trio_esper`` logger: at most one line per
    kind of failure per :data:`LOG_INTERVAL_SECONDS` (a failing disk fails
    every publish), each with its reason and the count of lines left out
    since the last; and one line when a kind works again."""

    def __init__(self) -> None:
        self._quiet_until: dict[str, float] = {}
        self._left_out: Counter[str] = Counter()

    def failed(self, kind: str, message: str) -> None:
        now = trio.current_time()
        if now < self._quiet_until.get(kind, -math.inf):
            self._left_out[kind] += 1
            return
        self._quiet_until[kind] = now + LOG_INTERVAL_SECONDS
        log.error(
            "history store: %s%s",
            message,
            self._left_out_note(kind),
            extra={"event": "store_error", "kind": kind},
        )

    def succeeded(self, kind: str, message: str) -> None:
        """``kind`` worked: if it had failed, say so once its quiet time is over."""
        quiet_until = self._quiet_until.get(kind)
        if quiet_until is None or trio.current_time() < quiet_until:
            return
        del self._quiet_until[kind]
        log.info(
            "history store: %s%s",
            message,
            self._left_out_note(kind),
            extra={"event": "store_recovered", "kind": kind},
        )

    def flush(self) -> None:
        """Log the counts of lines left out (on closing)."""
        for kind, count in sorted(self._left_out.items()):
            log.error(
                "history store: %d more %s failures not logged",
                count,
                kind,
                extra={"event": "store_error", "kind": kind, "left_out": count},
            )
        self._left_out.clear()

    def _left_out_note(self, kind: str) -> str:
        count = self._left_out.pop(kind, 0)
        return f" ({count} more like this not logged)" if count else ""


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
        counts: dict[str, int] | None = None,
        files: dict[str, FileId] | None = None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._seqs = SeqClock(last_seq)
        #: The files (database, WAL) as opened: checked at every commit.
        self._files = {} if files is None else files
        self._failures = _FailureLog()
        self.max_events_per_topic = max_events_per_topic
        self.max_age_seconds = max_age_seconds
        self._send, self._receive = trio.open_memory_channel[_Append](WRITER_QUEUE)
        self._read_lock = trio.Lock()
        #: Topics retention is to look at: written since its last pass, and,
        #: at start, those holding more than the count kept.
        self._touched: set[str] = set()
        #: Topics of rows the commit in progress deleted (:meth:`_drop_unretained`).
        self._unretained_dropped: list[str] = []
        self._last_prune = -math.inf
        #: Recent records, so reconnecting subscribers resume without reading
        #: the file: it holds a contiguous tail of each topic's log.
        self._cache = MemoryHistory(
            max_events_per_topic=max_events_per_topic, max_bytes=cache_bytes
        )
        #: Retained events per topic, kept in step with the file by the writer.
        self._counts: Counter[str] = Counter(
            dict(writer.execute("SELECT topic, count(*) FROM events GROUP BY topic").fetchall())
            if counts is None
            else counts
        )
        self._touched.update(t for t, n in self._counts.items() if n > max_events_per_topic)

    async def append(
        self, topic: str, events: Sequence[Event], deliver: Deliver, route: Route | None = None
    ) -> list[Record]:
        item = await self._queue(_Append(topic, events, deliver, route))
        assert item.records is not None
        return item.records

    async def delete(self, topic: str) -> None:
        await self._queue(_Append(topic, (), _no_delivery, kind=PURGE))

    async def watch(self, topic: str, deliver: Deliver) -> None:
        """Nothing to do: :meth:`append` delivers."""

    def unwatch(self, topic: str) -> None:
        """Nothing to do."""

    async def check(self) -> str | None:
        """Commit one row (the writer's own work queue, so it waits behind
        queued publishes): the store takes writes if that commit succeeds."""
        try:
            # Not shielded: a probe given up on is harmless.
            await self._queue(_Append("", (), _no_delivery, kind=PROBE), shield=False)
        except HistoryError as exc:
            return exc.reason
        return None

    async def _queue(self, item: _Append, *, shield: bool = True) -> _Append:
        """Hand ``item`` to the writer and wait until it is done."""
        try:
            await self._send.send(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise HistoryError("history is closed") from None
        # Once queued the append will be committed; wait for it even if our
        # client gives up, so a cancelled publish does not race its own commit.
        with trio.CancelScope(shield=shield):
            await item.done.wait()
        if item.error is not None:
            raise item.error
        return item

    async def run(self) -> None:
        """The writer task: commit queued appends in batches until closed.

        A store failure fails the appends it affects and the writer goes on;
        whatever ends it, every append it took or that is queued is answered.
        """
        with self._receive:
            try:
                while True:
                    try:
                        first = await self._next()
                    except trio.EndOfChannel:
                        return
                    if first is not None:
                        await self._run_batch(first)
                    if trio.current_time() - self._last_prune >= PRUNE_INTERVAL_SECONDS:
                        self._last_prune = trio.current_time()
                        await self._enforce_retention()
            finally:
                queued: list[_Append] = []
                with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                    while True:
                        queued.append(self._receive.receive_nowait())
                _answer(queued, HistoryError("history is closed"))

    async def _run_batch(self, first: _Append) -> None:
        """Do ``first`` and what is queued behind it, up to MAX_BATCH, and answer them."""
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        try:
            # Appends in a row commit together; a purge or a
            # probe waits for what was queued before it.
            for kind, run in itertools.groupby(batch, key=lambda item: item.kind):
                if kind == APPEND:
                    await self._store(list(run))
                else:
                    for item in run:
                        await self._maintain(item)
        finally:
            _answer(batch, HistoryError("history writer stopped"))

    async def _next(self) -> _Append | None:
        """The next queued item; ``None`` if retention falls due first (idle,
        the writer still wakes for it: events age out of the file whether or
        not anything is published).

        Raises:
            trio.EndOfChannel: the history is closed and nothing is queued.
        """
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            pass
        with trio.move_on_after(self._retention_wait()):
            return await self._receive.receive()
        return None

    def _retention_wait(self) -> float:
        """Seconds until retention is due, if it has work (a topic written
        since its last pass, or events that age out); else forever."""
        if not self._touched and not (self.max_age_seconds < math.inf and self._counts):
            return math.inf
        return max(0.0, self._last_prune + PRUNE_INTERVAL_SECONDS - trio.current_time())

    async def _store(self, batch: list[_Append]) -> None:
        """Commit ``batch``, then deliver what was stored in seq order."""
        try:
            await trio.to_thread.run_sync(self._commit, batch)
        except _FileMoved as exc:
            self._failures.failed(
                "file",
                f"history file {exc.path!r} was removed or replaced since the broker opened it:"
                " publishes are refused (503) until that same file is back at its path;"
                " restart the broker to start a new file",
            )
            error = HistoryError(
                "history file was removed or replaced while the broker runs; events are not"
                " stored until the broker is restarted"
            )
            for item in batch:
                item.error = error
        except Exception as exc:
            # Whatever a batch raises fails that batch only: the writer goes on.
            reason = _reason(exc)
            self._failures.failed("commit", f"commit failed, publishes refused (503): {reason}")
            error = HistoryError(f"history write failed: {reason}")
            for item in batch:
                item.error = error
        else:
            self._failures.succeeded(
                "file", f"history file {self.path!r} is back: publishes are stored again"
            )
            self._failures.succeeded("commit", "commits succeed again")
        for item in batch:
            if item.records is not None:
                self._cache.remember(item.topic, item.records)
                await item.deliver(item.topic, item.records)

    async def _maintain(self, item: _Append) -> None:
        """Purge ``item.topic``'s history, or probe the file (``item.kind``)."""
        try:
            await trio.to_thread.run_sync(self._maintain_sync, item)
        except _FileMoved:
            item.error = HistoryError("history file was removed or replaced while the broker runs")
        except Exception as exc:
            reason = _reason(exc)
            if item.kind == PURGE:  # a failed probe is the check's answer, not a log line
                self._failures.failed(
                    "purge", f"purge failed, topic {item.topic!r}'s history kept: {reason}"
                )
            item.error = HistoryError(f"history write failed: {reason}")
        else:
            item.records = []
            if item.kind == PURGE:
                self._counts.pop(item.topic, None)
                self._touched.discard(item.topic)
                self._cache.forget(item.topic)

    def _maintain_sync(self, item: _Append) -> None:
        """Thread: the one transaction of a purge or a probe."""
        conn = self._writer
        try:
            _begin(conn)
            if item.kind == PURGE:
                conn.execute("DELETE FROM events WHERE topic = ?", (item.topic,))
            else:
                conn.execute("INSERT OR REPLACE INTO probe VALUES (1, ?)", (time.time(),))
            self._check_files()
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    async def _enforce_retention(self) -> None:
        try:
            await trio.to_thread.run_sync(self._prune)
        except Exception as exc:
            self._failures.failed(
                "retention",
                f"retention failed, old events kept until it succeeds"
                f" (retried every {PRUNE_INTERVAL_SECONDS:g} s): {_reason(exc)}",
            )
        else:
            self._failures.succeeded("retention", "retention succeeds again")

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
        self._unretained_dropped = []
        try:
            _begin(conn)
            try:
                rows: list[tuple[object, ...]] = []
                for item in batch:
                    item.records = [
                        Record.create(self._seqs.next(), item.topic, e, now, item.route)
                        for e in item.events
                    ]
                    rows += map(_row, item.records)
                conn.executemany(INSERT, rows)
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                for item in batch:
                    self._insert_alone(conn, item, now, last_seq)
            # Last before COMMIT, so nothing is acknowledged that went into a
            # file a restart will not open; one stat per file per batch.
            self._check_files()
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            self._seqs.last = last_seq
            for item in batch:
                item.records = None
            raise
        for item in batch:
            if item.records is not None:
                self._touched.add(item.topic)
                self._counts[item.topic] += len(item.records)
        self._counts.subtract(self._unretained_dropped)

    def _check_files(self) -> None:
        """Thread: raise _FileMoved if a path no longer names the file we have open."""
        for name, file_id in self._files.items():
            try:
                stat = os.stat(name)
            except FileNotFoundError:
                raise _FileMoved(name) from None
            if _file_id(stat) != file_id:
                raise _FileMoved(name)

    def _insert_alone(
        self, conn: sqlite3.Connection, item: _Append, now: float, committed: int
    ) -> None:
        """Insert one append in a savepoint; on a publisher id conflict leave
        nothing and set ``item.error``. ``committed``: the last seq committed
        before this transaction."""
        conn.execute("SAVEPOINT item")
        item.records = []
        dropped = len(self._unretained_dropped)
        try:
            for event in item.events:
                while True:
                    record = Record.create(self._seqs.next(), item.topic, event, now, item.route)
                    try:
                        conn.execute(INSERT, _row(record))
                        break
                    except sqlite3.IntegrityError:
                        if event.id is not None and not self._drop_unretained(
                            conn, item.topic, event.id, committed
                        ):
                            raise
                        # An id we assigned equals one a publisher chose, or a
                        # publisher's id was held by a row retention no longer
                        # keeps (now deleted): next seq.
                item.records.append(record)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO item")
            del self._unretained_dropped[dropped:]
            item.records = None
            item.error = Conflict("event id is already in this topic's history")
        conn.execute("RELEASE item")

    def _drop_unretained(
        self, conn: sqlite3.Connection, topic: str, event_id: str, committed: int
    ) -> bool:
        """Thread, in the writer's transaction: delete ``topic``'s row with id
        ``event_id`` if retention no longer keeps it (not yet pruned: see
        :meth:`_retained_from`), so its id is free as it is in what is
        served; never a row of this transaction (seq past ``committed``: an
        id twice in one body stays a conflict). Whether one was deleted."""
        deleted = conn.execute(
            "DELETE FROM events WHERE topic = ? AND id = ? AND route IS NULL AND seq < ?"
            " AND seq <= ? RETURNING topic",
            (topic, event_id, self._retained_from(conn, topic), committed),
        ).fetchall()
        self._unretained_dropped += [row[0] for row in deleted]
        return bool(deleted)

    def _prune(self) -> None:
        """Thread: enforce retention on recently written topics, boundedly, in
        one transaction; on failure nothing is deleted and it is all to do again."""
        conn = self._writer
        deleted: list[str] = []
        popped: list[str] = []
        try:
            _begin(conn)
            if self.max_age_seconds < math.inf:
                cutoff_seq = self._oldest_seq_kept()
                deleted += self._delete(
                    "DELETE FROM events WHERE seq IN"
                    " (SELECT seq FROM events WHERE seq < ? ORDER BY seq LIMIT ?) RETURNING topic",
                    (cutoff_seq, PRUNE_ROWS),
                )
            while self._touched and len(deleted) < PRUNE_ROWS:
                popped.append(topic := self._touched.pop())
                deleted += self._delete(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE topic = ?"
                    " ORDER BY seq DESC LIMIT ? OFFSET ?) RETURNING topic",
                    (topic, PRUNE_ROWS - len(deleted), self.max_events_per_topic),
                )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            self._touched.update(popped)
            raise
        if popped and len(deleted) >= PRUNE_ROWS:
            self._touched.add(popped[-1])  # maybe more to do next time
        self._counts.subtract(deleted)
        for topic in set(deleted):
            if self._counts[topic] <= 0:
                del self._counts[topic]

    def _delete(self, sql: str, args: tuple[object, ...]) -> list[str]:
        """The topic of each deleted row."""
        return [row[0] for row in self._writer.execute(sql, args).fetchall()]

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        if last_id is not None:
            cached = self._cache.after_nowait(topic, last_id, limit)
            oldest_kept = time.time() - self.max_age_seconds
            if cached.found and all(r.time >= oldest_kept for r in cached.records[:1]):
                await trio.lowlevel.checkpoint()
                return cached
        async with self._read_lock:
            try:
                replay = await trio.to_thread.run_sync(self._after, topic, last_id, limit)
            except sqlite3.Error as exc:
                self._failures.failed("read", f"read failed: {exc}")
                raise HistoryError(f"history read failed: {exc}") from None
        self._failures.succeeded("read", "reads succeed again")
        return replay

    def _retained_from(self, conn: sqlite3.Connection, topic: str) -> int:
        """Thread: the lowest seq of ``topic`` that retention keeps. Rows
        below it are past ``max_events_per_topic`` or ``max_age_seconds``
        but not yet pruned (the writer prunes after a commit): they are not
        served, so what is read does not depend on when the broker was busy."""
        newest_kept = conn.execute(
            "SELECT seq FROM events WHERE topic = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (topic, self.max_events_per_topic - 1),
        ).fetchone()
        floor = 0 if newest_kept is None else newest_kept[0]
        if self.max_age_seconds < math.inf:
            floor = max(floor, self._oldest_seq_kept())
        return int(floor)

    def _oldest_seq_kept(self) -> int:
        """The lowest seq ``max_age_seconds`` keeps now: seq is at least the
        publish time in microseconds (SeqClock)."""
        return int((time.time() - self.max_age_seconds) * 1_000_000)

    def _after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        conn = self._reader
        found = last_id is None
        start = self._retained_from(conn, topic) - 1
        if last_id is not None:
            row = conn.execute(
                "SELECT max(seq) FROM events WHERE topic = ? AND id = ?", (topic, last_id)
            ).fetchone()
            if row[0] is not None and row[0] > start:
                found, start = True, row[0]
        rows = conn.execute(
            "SELECT seq, id, event, data, retry, time, route FROM events"
            " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
            (topic, start, limit),
        ).fetchall()
        records = [
            Record.create(
                seq,
                topic,
                Event(data, event, id_, retry),
                when,
                None if route is None else decode_route(route),
            )
            for seq, id_, event, data, retry, when, route in rows
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

    @property
    def problem(self) -> str | None:
        return None  # a failing file is an error of the publish or read that meets it

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
    opened = await trio.to_thread.run_sync(_open_checked, path, sync)
    writer, reader = opened.writer, opened.reader
    history = SqliteHistory(
        path,
        writer,
        reader,
        opened.last_seq,
        max_events_per_topic=max_events_per_topic,
        max_age_seconds=max_age_seconds,
        cache_bytes=cache_bytes,
        counts=opened.counts,
        files=opened.files,
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
        history._failures.flush()


async def _no_delivery(topic: str, records: Sequence[Record]) -> None:
    """A purge or probe delivers nothing."""


def _begin(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # a failed ROLLBACK left one open; it holds nothing of ours
        _rollback(conn)
    conn.execute("BEGIN IMMEDIATE")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; a failure here is not the one to report."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _answer(items: Sequence[_Append], error: HistoryError) -> None:
    """Wake the publishers of ``items``; those neither stored nor failed get ``error``."""
    for item in items:
        if item.records is None and item.error is None:
            item.error = error
        item.done.set()
