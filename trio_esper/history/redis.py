"""The Redis backplane: the history of every topic in Redis Streams, shared by
every broker process and node that names the same Redis.

Design
------
One Redis Stream per topic is the topic's ordered log (``XADD``, trimmed to
``N`` entries once it holds :func:`~.redis_entries.trim_batch` more). The
stream entry id (``1795947651928-0``) is the event's SSE id, so a subscriber resumes with
``Last-Event-ID`` on any node. A publish is acknowledged once Redis has
accepted its ``XADD`` (the events of one body, in one script, with a notice
naming the topic on :data:`NOTIFY_CHANNEL`), and is *not* delivered
by the node that took it the way one process delivers: every node follows the
notices and reads (``XRANGE``, pipelined) the streams they name that it has
local subscribers for, and hands what it reads to the hub, so every
subscriber everywhere sees one order, the stream's. A node pays nothing for
topics it has no subscribers for but a notice each. Notices are lost while a
node is unsubscribed: each (re)subscription reads every watched stream, and
every stream is read every :data:`SWEEP_SECONDS` besides.

Batches, as the SQLite writer commits: publishes go to one writer task
(:meth:`RedisHistory._write`), which sends all those waiting in one script
(one round trip; what comes meanwhile forms the next batch), and Redis sends
one notice per batch naming its topics. Redis answers each publish with the
entry id its stream had before it: when that is where this node's reader
stands, the writer hands the publish's records to the hub at once, without
reading them (the position moves on at once, so a read in flight is read
again; a hand-over that waits keeps its place in the topic's inbox), and the
publish's answer waits for their fan-out as on one process; the node skips
its own notices (its token heads them). Otherwise the stream is read.
Each publish in a batch is decided on its own, as if it were sent alone.

A subscription to a topic new to the node first *watches* the stream
(:meth:`RedisHistory.watch`): it reads the stream's last id before the
subscriber is told ``: subscribed``, and the reader starts after that id, so
an event published after the subscribe is never missed.

A publish is one Lua call (:data:`~.redis_entries.PUBLISH_SCRIPT`, with
how an event is kept in Redis, in :mod:`.redis_entries`; one per batch), so
Redis decides it atomically: it refuses a repeated publisher id (409), and it refuses a
publish it runs later than :data:`PUBLISH_WINDOW_SECONDS` after the broker
sent it, by its own clock (``TIME``; the broker learns the offset to its own
clock at start and every few seconds). The answer waits for that decision, so
it says what happened: 200 stored; 503 not stored (Redis refused it, or it
never reached Redis); 504 unknown, only when Redis never answers: nothing
within :data:`OUTCOME_SECONDS` after the window, or the connection lost once
the publish was sent (it may have stored it; a retry with the same ``id:``
is then refused if it did). A
publish Redis runs late (a stall: the process stopped, a long command) is
thus never stored after it was answered 503.

Redis goes away: publishes fail fast with :class:`HistoryError` (503) and
nothing acknowledged is lost; subscriptions to new topics get 503; open
streams stay open (their heartbeats come from the hub), and the reader
retries with backoff, then goes on from the last id it read per stream.

Ids: the broker numbers events with the stream's entry ids. A publisher's
own ``id:`` works as on one node: the script keeps a hash per topic
(``trio_esper:ids:<topic>``, publisher id -> entry id) beside the stream,
written with the ``XADD`` and trimmed with it, so the id is stored once,
refused again on every node, and resumable on every node. An id shaped like
an entry id (``<ms>-<n>``) is the broker's and is refused (400). The routed
log (Mercure) takes an id again, and resumes after its newest entry.

Eviction: the broker's keys have no TTL, so only an ``allkeys-*``
``maxmemory-policy`` can evict them; it is checked at start and on every
reconnect (``CONFIG GET``), and warned about, or refused with
``--backplane-eviction refuse``.

Clients (docs/scaling.md, "Clients"): what every event takes, the writer's
script, the listener's notices and the reader's pipeline, goes over a lean
connection each (:mod:`.resp`), which tells a publish Redis never got
(503) from one it may have run (504) by where it failed. The rest (resume,
watch, statistics, checks) uses ``coredis``: it runs on anyio, so natively
under Trio; its own log lines (a lost connection comes with a traceback
group) become one line per kind, rate-limited (:class:`CoredisLines`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import coredis
import coredis.exceptions
import coredis.retry
import trio

from ..errors import BadRequest, Conflict, HistoryError, OutcomeUnknown
from ..routing import Route
from ..sse import Event
from . import Deliver, HistoryStatistics, Record, Replay
from .redis_entries import (
    CLOCK_SCRIPT,
    IDS_PREFIX,
    KEY_PREFIX,
    LAST_ENTRY_ID,
    NOTIFY_CHANNEL,
    PUBLISH_SCRIPT,
    entry_fields,
    pairs_of,
    publish_entry,
    records_of,
    seq_of,
    stream_id,
    trim_batch,
    valid_entry_id,
)
from .resp import ConnectionLostError, NotSentError, RespConnection, RespError, describe

log = logging.getLogger("trio_esper")

#: What ``EVALSHA`` names :data:`PUBLISH_SCRIPT` by.
PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: Most entries one XRANGE reads of a stream (more: read again).
READ_COUNT = 1000
#: Every watched stream is read this often even without a notice (a notice
#: lost with a connection is caught up at once on reconnecting; this is the
#: belt to those braces).
SWEEP_SECONDS = 30.0
#: A command Redis has not answered in this long fails (reads: 503).
COMMAND_TIMEOUT_SECONDS = 2.0
#: The notices' connection, silent this long, is sent a ``PING``: a firewall
#: or NAT drops an idle connection without a word (and traffic keeps it), so
#: no answer within :data:`COMMAND_TIMEOUT_SECONDS` means subscribe again.
NOTICES_IDLE_SECONDS = 15.0
#: Redis stores a publish only if it runs it within this long of its sending
#: (by Redis' clock); later, it refuses it, and the publisher gets 503.
PUBLISH_WINDOW_SECONDS = COMMAND_TIMEOUT_SECONDS
#: A reading of Redis' clock that took longer is not taken (its error is half that).
CLOCK_RTT_SECONDS = 0.5
#: After the window, how long a publish still waits for Redis' answer (it
#: says what happened) before the answer is 504, outcome unknown: long
#: enough for a stall, short enough for a publisher's own timeout.
OUTCOME_SECONDS = 10.0
#: ``maxmemory-policy`` values that can evict keys without a TTL, the broker's.
EVICTING_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
#: The reader's retry delays after a failure: from the first to the cap.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
#: Each kind of failure is logged at most once this often.
LOG_INTERVAL_SECONDS = 10.0
#: How often the reader refreshes the statistics /stats shows.
STATISTICS_INTERVAL_SECONDS = 5.0
#: Most publishes the writer sends in one script (more wait for the next),
#: and about most bytes (a batch of large events is cut short).
MAX_BATCH_PUBLISHES = 256
MAX_BATCH_BYTES = 1 << 20
#: What an entry adds to its data in a batch, about (fields, ids, JSON).
ENTRY_OVERHEAD_BYTES = 64
#: How an error reply about a key of another type starts: another client's
#: key under the broker's prefix, that key's failure only.
WRONG_TYPE = "WRONGTYPE"
#: Errors that mean Redis (or the way to it) failed, not our request.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,  # the lean connection's failures (resp.py) too
    RespError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


@dataclasses.dataclass(eq=False, slots=True)
class _Publish:
    """One publish waiting for the writer (:meth:`RedisHistory._write`), then
    for its answer."""

    topic: str
    events: Sequence[Event]
    route: Route | None
    #: Its publish time (the entries' ``t``), and the trio time after which
    #: Redis refuses it.
    now: float
    deadline: float
    #: Its element of :data:`PUBLISH_SCRIPT`'s JSON array, and about its size.
    entry: list[object]
    size: int
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    records: list[Record] | None = None
    #: What to raise instead of returning ``records``.
    failure: Callable[[], Exception] | None = None


async def _length(reply: Awaitable[int]) -> int:
    """A stream's length from a pipeline's ``XLEN``; 0 for a key of another type."""
    try:
        return await reply
    except coredis.exceptions.WrongTypeError:
        return 0


class RedisHistory:
    """See the module docstring. Build with :func:`open_redis_history`."""

    def __init__(
        self,
        client: Any,
        url: str,
        *,
        max_events_per_topic: int,
        eviction: str = "warn",
    ) -> None:
        self._client = client
        #: The writer's and the reader's own connections (resp.py), each
        #: opened on its first command and closed by its task: one script per
        #: batch, its failures told apart by whether Redis can have run it;
        #: one pipeline of reads.
        self._publisher = RespConnection.like(client, connect_timeout=COMMAND_TIMEOUT_SECONDS)
        self._reader = RespConnection.like(client, connect_timeout=COMMAND_TIMEOUT_SECONDS)
        self.url = url
        self.max_events_per_topic = max_events_per_topic
        #: Watched topics: the id the reader reads after, per stream key.
        self._positions: dict[str, str] = {}
        self._deliver: dict[str, Deliver] = {}
        #: Watched streams with entries to read (a notice came, or a catch-up).
        self._dirty: set[str] = set()
        self._changed = trio.Event()
        self._quiet_until: dict[str, float] = {}
        self.down_reason: str | None = None
        self._statistics = HistoryStatistics("redis", 0, 0, 0)
        #: Publishes waiting for the writer, in the order taken.
        self._queue: collections.deque[_Publish] = collections.deque()
        self._queued = trio.Event()
        #: Names this node in its notices (it skips its own: the writer hands
        #: them over, or marks what it does not).
        self._token = secrets.token_hex(8)
        self._clock = client.register_script(CLOCK_SCRIPT)
        #: Redis' clock minus trio's, in milliseconds (:meth:`measure_clock`).
        self.clock_offset_ms = time.time() * 1000 - trio.current_time() * 1000
        #: ``--backplane-eviction``; why publishes are refused for it, if they are.
        self.eviction = eviction
        self.eviction_refusal: str | None = None
        self._policy_unknown_said = False
        #: The Redis server (``run_id``) and policy last warned about.
        self._policy_warned: tuple[str, str] | None = None

    # -- the History protocol ----------------------------------------------------

    async def append(
        self, topic: str, events: Sequence[Event], deliver: Deliver, route: Route | None = None
    ) -> list[Record]:
        """Store ``events`` by :data:`PUBLISH_SCRIPT`, in the writer's next
        batch; waits for Redis to say what it did (the module docstring: "A
        publish is one Lua script").

        Raises:
            BadRequest: a publisher id is shaped like an entry id.
            Conflict: a publisher id is retained for ``topic`` already (or
                repeated in ``events``), outside the routed log; nothing stored.
            HistoryError: Redis refused it (too late) or it never reached
                Redis; nothing stored.
            OutcomeUnknown: Redis has not answered (it may have stored it).
        """
        for event in events:
            if event.id is not None and valid_entry_id(event.id):
                raise BadRequest(
                    f"id {event.id!r} has the form of the backplane's own ids (<ms>-<n>), "
                    "which are the broker's: choose another"
                )
        if self.eviction_refusal is not None:
            await trio.lowlevel.checkpoint()
            raise HistoryError(f"{self.eviction_refusal}: not stored")
        now = time.time()
        sent_at = trio.current_time()
        deadline = sent_at + PUBLISH_WINDOW_SECONDS
        entry = publish_entry(
            int(deadline * 1000 + self.clock_offset_ms),
            route is None,
            topic,
            events,
            (entry_fields(event, now, route) for event in events),
        )
        size = sum(len(event.data) for event in events) + ENTRY_OVERHEAD_BYTES * len(events)
        item = _Publish(topic, events, route, now, deadline, entry, size)
        self._queue.append(item)
        self._queued.set()
        # The writer answers it, by its deadline + OUTCOME_SECONDS at the
        # latest (it alone sends it, so a publisher that leaves cancels
        # nothing but its own wait: no cancel scope per publish).
        await item.done.wait()
        if item.failure is not None:
            raise item.failure()
        assert item.records is not None
        return item.records

    async def _write(self) -> None:
        """The writer: send the publishes waiting, all of them (up to
        :data:`MAX_BATCH_PUBLISHES` or :data:`MAX_BATCH_BYTES`), in one
        :data:`PUBLISH_SCRIPT`, and answer each by what Redis did with it, as
        the SQLite writer commits the appends waiting together: one round
        trip per batch, and publishes that come meanwhile form the next."""
        batch: list[_Publish] = []
        try:
            async with self._publisher:
                while True:
                    await self._queued.wait()
                    self._queued = trio.Event()
                    while self._queue:
                        batch = [self._queue.popleft()]
                        size = batch[0].size
                        while (
                            self._queue
                            and len(batch) < MAX_BATCH_PUBLISHES
                            and size + self._queue[0].size <= MAX_BATCH_BYTES
                        ):
                            batch.append(self._queue.popleft())
                            size += batch[-1].size
                        now = trio.current_time()
                        if batch[0].deadline <= now:  # queued behind a batch Redis did not answer
                            expired = [item for item in batch if item.deadline <= now]
                            self._answer(expired, _waited)
                            batch = [item for item in batch if item.deadline > now]
                        if batch:
                            await self._send(batch)
                        batch = []
        finally:
            if not self._publisher.unsent:
                # The batch in flight: its script was sent, Redis may run it.
                self._answer(
                    [item for item in batch if not item.done.is_set()],
                    lambda: _unknown("the backplane closed before Redis answered"),
                )
            self._answer(
                [item for item in (*batch, *self._queue) if not item.done.is_set()],
                lambda: HistoryError("the backplane is closing: not stored"),
            )
            self._queue.clear()

    async def _send(self, batch: list[_Publish]) -> None:
        """Run ``batch`` in one script and answer each publish in it."""
        keys: list[str] = []
        for item in batch:
            keys += (KEY_PREFIX + item.topic, IDS_PREFIX + item.topic)
        args = [
            str(self.max_events_per_topic),
            str(trim_batch(self.max_events_per_topic)),
            NOTIFY_CHANNEL,
            self._token,
            json.dumps([item.entry for item in batch], ensure_ascii=False),
        ]
        answer: Any = None
        # Each publish is answered by its own deadline + OUTCOME_SECONDS.
        with trio.move_on_at(batch[0].deadline + OUTCOME_SECONDS):
            try:
                answer = await self._run_publish_script(keys, args)
            except RespError as exc:
                # Redis answered with an error before running it (a busy
                # script; out of memory; still loading): nothing was stored.
                reason = exc.message.splitlines()[0][:200]
                self._complain("publish", reason)
                self._answer(batch, lambda: _refused(reason))
                return
            except REDIS_ERRORS as exc:
                self._down("publish", exc)
                reason = _reason(exc)
                if isinstance(exc, NotSentError):
                    self._answer(batch, lambda: _not_sent(reason))
                else:
                    self._answer(batch, lambda: _unknown(reason))
                    self._mark(keys[::2])  # stored or not, the reader looks
                return
        if answer is None:
            reason = f"no answer within {PUBLISH_WINDOW_SECONDS + OUTCOME_SECONDS:g} s"
            self.down_reason = f"backplane {self.url_for_logs} is unavailable: {reason}"
            self._complain("publish", reason)
            if self._publisher.unsent:
                # Its sending waited (Redis took no more) and was cut short:
                # Redis never had it whole, so it never runs it.
                self._answer(batch, lambda: _not_sent(reason))
                return
            self._answer(batch, lambda: _unknown(reason))
            self._mark(keys[::2])
            return
        self._up()
        for item, outcome in zip(batch, json.loads(answer), strict=True):
            deliver = self._answer_one(item, outcome)
            if deliver is not None and item.records:
                # Before the next is decided: a watch or unwatch meanwhile
                # (only if this waits) applies to the next.
                await deliver(item.topic, item.records)

    async def _run_publish_script(self, keys: list[str], args: list[str]) -> Any:
        """:data:`PUBLISH_SCRIPT` by its digest; by its text if Redis does
        not know it (a restarted Redis: ``NOSCRIPT`` runs nothing)."""
        try:
            return await self._publisher.call("EVALSHA", PUBLISH_SHA, str(len(keys)), *keys, *args)
        except RespError as exc:
            if not exc.message.startswith("NOSCRIPT"):
                raise
        return await self._publisher.call("EVAL", PUBLISH_SCRIPT, str(len(keys)), *keys, *args)

    def _answer_one(self, item: _Publish, outcome: list[str]) -> Deliver | None:
        """Answer ``item`` by Redis' ``outcome``; return where to hand its
        records now if this node reads its topic up to just before them.
        (Set done first: its task runs only once the writer waits.)"""
        item.done.set()
        kind = outcome[0]
        if kind == "ok":
            entry_ids = outcome[2:]
            topic = item.topic
            item.records = [
                Record.create(
                    seq_of(entry_id),
                    topic,
                    Event(e.data, e.event, e.id or entry_id, e.retry),
                    item.now,
                    item.route,
                )
                for entry_id, e in zip(entry_ids, item.events, strict=True)
            ]
            key = KEY_PREFIX + topic
            position = self._positions.get(key)
            if position == outcome[1]:
                # This node reads the stream up to just before this publish:
                # the writer hands these records over, no read needed (a read
                # in flight sees the position moved and reads again).
                self._positions[key] = entry_ids[-1]
                return self._deliver.get(key)
            if position is not None:
                self._mark([key])
        elif kind == "late":
            reason = (
                f"Redis took the publish {int(outcome[1]) / 1000 + PUBLISH_WINDOW_SECONDS:.1f} s "
                f"after it was sent, more than {PUBLISH_WINDOW_SECONDS:g} s"
            )
            self._complain("publish", reason)
            item.failure = lambda: HistoryError(
                f"the backplane is unavailable ({reason}): not stored; try again"
            )
        elif kind == "conflict":
            item.failure = lambda: Conflict("event id is already in this topic's history")
        else:  # the publish's own commands failed (one publish: nothing stored)
            reason = outcome[1].splitlines()[0][:200] if len(outcome) > 1 else "error"
            self._complain("publish", reason)
            item.failure = lambda: _refused(reason)
        return None

    @staticmethod
    def _answer(batch: list[_Publish], failure: Callable[[], Exception]) -> None:
        for item in batch:
            item.failure = failure
            item.done.set()

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        key = KEY_PREFIX + topic
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                found = last_id is None
                after: str | None = None
                if last_id is not None and valid_entry_id(last_id):
                    # One out of Redis' bounds is no entry's (Redis refuses it).
                    found = stream_id(last_id) is not None and bool(
                        await self._client.xrange(key, last_id, last_id, count=1)
                    )
                    after = last_id if found else None
                elif last_id is not None:  # a publisher's id: where it was stored
                    with self._client.decoding(False):
                        stored = await self._client.hget(IDS_PREFIX + topic, last_id)
                    # A value that is no entry id is another client's: not found.
                    after = None if stored is None else stored.decode(errors="replace")
                    found = after is not None and stream_id(after) is not None
                    after = after if found else None
                entries = []
                if after is None or stream_id(after) != stream_id(LAST_ENTRY_ID):
                    start = "-" if after is None else "(" + after
                    with self._client.decoding(False):  # undecodable entries are skipped
                        entries = await self._client.xrange(key, start, "+", count=limit)
        except coredis.exceptions.WrongTypeError as exc:
            raise self._not_a_stream(topic, str(exc)) from None
        except REDIS_ERRORS as exc:
            raise self._unavailable("read", exc) from None
        self._up()
        records, skipped = records_of(
            topic, [(e.identifier, e.field_values.items()) for e in entries]
        )
        if skipped:
            self._skipped(topic, skipped)
        return Replay(records, found)

    async def delete(self, topic: str) -> None:
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                await self._client.delete([KEY_PREFIX + topic, IDS_PREFIX + topic])
        except REDIS_ERRORS as exc:
            raise self._unavailable("delete", exc) from None

    async def check(self) -> str | None:
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                await self._client.ping()
        except REDIS_ERRORS as exc:
            return f"backplane {self.url_for_logs} is unavailable: {_reason(exc)}"
        return self.down_reason or self.eviction_refusal

    async def measure_clock(self) -> None:
        """Learn Redis' clock (``TIME``, by :data:`CLOCK_SCRIPT`) against
        trio's, for the publish deadlines. Its error is at most half the round
        trip, and a reading whose round trip exceeds :data:`CLOCK_RTT_SECONDS`
        (a stall that ended meanwhile) is not taken. An error only moves where
        a slow publish is refused, never what its answer says.

        Raises:
            REDIS_ERRORS: Redis did not answer.
        """
        with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
            sent = trio.current_time()
            server_ms = int(await self._clock())
            received = trio.current_time()
        if received - sent <= CLOCK_RTT_SECONDS:
            self.clock_offset_ms = server_ms - (sent + received) * 500

    async def check_eviction(self) -> None:
        """Read Redis' ``maxmemory-policy`` and warn (``--backplane-eviction
        warn``) or refuse publishes (``refuse``) if it can evict the broker's
        keys, which have no TTL: the ``allkeys-*`` policies. Warned once per
        Redis server (its ``run_id``: a restart is another) and policy. A
        Redis that refuses ``CONFIG`` is said once.

        Raises:
            REDIS_ERRORS: Redis did not answer (a refused ``CONFIG`` is not raised).
        """
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                server = str((await self._client.info("server")).get("run_id", ""))
                found = await self._client.config_get(["maxmemory-policy"])
        except coredis.exceptions.ResponseError as exc:  # CONFIG renamed away, or not allowed
            if not self._policy_unknown_said:
                self._policy_unknown_said = True
                log.warning(
                    "backplane: cannot check maxmemory-policy (%s): it must not be allkeys-*, "
                    "which evicts the broker's streams",
                    _reason(exc),
                    extra={"event": "backplane_eviction_unknown"},
                )
            return
        policy = str(found.get("maxmemory-policy", ""))
        if policy not in EVICTING_POLICIES:
            self.eviction_refusal = None
            self._policy_warned = None
            return
        if self._policy_warned == (server, policy):
            return
        self._policy_warned = (server, policy)
        problem = (
            f"the backplane's maxmemory-policy {policy} can evict the broker's streams "
            "(acknowledged events would vanish): use noeviction or a volatile-* policy"
        )
        if self.eviction == "refuse":
            self.eviction_refusal = problem
        log.warning(
            "backplane: %s%s",
            problem,
            "; publishes are refused (--backplane-eviction refuse)"
            if self.eviction == "refuse"
            else "",
            extra={"event": "backplane_eviction", "policy": policy},
        )

    def statistics(self) -> HistoryStatistics:
        return dataclasses.replace(self._statistics, problem=self.problem)

    @property
    def problem(self) -> str | None:
        return self.down_reason

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    # -- watching: what the reader reads ------------------------------------------

    async def watch(self, topic: str, deliver: Deliver) -> None:
        """Start reading ``topic``'s stream for this node, after its current
        last entry (read now, so nothing published after this returns is
        missed).

        Raises:
            HistoryError: Redis cannot be reached (the subscribe is refused).
        """
        key = KEY_PREFIX + topic
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                last = await self._client.xrevrange(key, "+", "-", count=1)
        except coredis.exceptions.WrongTypeError as exc:
            raise self._not_a_stream(topic, str(exc)) from None
        except REDIS_ERRORS as exc:
            raise self._unavailable("subscribe", exc) from None
        self._positions[key] = last[0].identifier if last else "0-0"
        self._deliver[key] = deliver
        # Read once now: a notice that came while the last id was being read
        # was for a topic not watched yet.
        self._mark([key])

    def unwatch(self, topic: str) -> None:
        """Stop reading ``topic``'s stream (its last local subscriber left)."""
        key = KEY_PREFIX + topic
        self._positions.pop(key, None)
        self._deliver.pop(key, None)
        self._dirty.discard(key)

    def _mark(self, keys: Iterable[str]) -> None:
        """Have the reader read ``keys`` (those still watched)."""
        self._dirty.update(key for key in keys if key in self._positions)
        if self._dirty:
            self._changed.set()

    async def run(self) -> None:
        """The reader: follow the publish notices, read the watched streams
        they name, and hand entries to the hub in stream order."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen)
            nursery.start_soon(self._sweep)
            nursery.start_soon(self._keep_statistics)
            nursery.start_soon(self._write)
            await self._read()

    async def _listen(self) -> None:
        """Follow :data:`NOTIFY_CHANNEL`. Each (re)subscription reads every
        watched stream: notices published while unsubscribed are lost."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                async with RespConnection.like(
                    self._client, connect_timeout=COMMAND_TIMEOUT_SECONDS
                ) as notices:
                    await notices.send("SUBSCRIBE", NOTIFY_CHANNEL)
                    heard = [trio.current_time()]
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._keep_alive, notices, heard)
                        while True:
                            kind, *rest = await notices.receive()
                            heard[0] = trio.current_time()
                            delay = RETRY_FIRST_SECONDS
                            if kind == b"subscribe":
                                self._up()
                                self._mark(list(self._positions))
                            elif kind == b"message":
                                head, *topics = rest[1].decode(errors="replace").split("\n")
                                if head != self._token:  # this node's: the writer saw to them
                                    self._mark([KEY_PREFIX + topic for topic in topics])
            except Exception as exc:
                # Whatever ends the subscription (a lost connection, a PING
                # not answered, a reply not shaped as one), it is logged and
                # taken again.
                self._down("notices", _first_leaf(exc))
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    @staticmethod
    async def _keep_alive(notices: RespConnection, heard: list[float]) -> None:
        """``PING`` the notices' connection once it has been silent for
        :data:`NOTICES_IDLE_SECONDS` (``heard[0]``: when it last spoke).

        Raises:
            ConnectionLostError: no answer within :data:`COMMAND_TIMEOUT_SECONDS`.
        """
        while True:
            await trio.sleep_until(heard[0] + NOTICES_IDLE_SECONDS)
            if trio.current_time() < heard[0] + NOTICES_IDLE_SECONDS:
                continue  # it spoke meanwhile
            pinged = trio.current_time()
            await notices.send_more("PING")
            await trio.sleep(COMMAND_TIMEOUT_SECONDS)
            if heard[0] < pinged:
                raise ConnectionLostError(
                    f"no answer to PING within {COMMAND_TIMEOUT_SECONDS:g} s"
                )

    async def _sweep(self) -> None:
        while True:
            await trio.sleep(SWEEP_SECONDS)
            self._mark(list(self._positions))

    async def _read(self) -> None:
        """Read the marked streams after each one's position, in one
        pipeline; on a failure, mark them again and retry with backoff."""
        async with self._reader:
            await self._read_marked()

    async def _read_marked(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            keys = [
                key
                for key in self._dirty
                # Nothing can follow the last id (another client's entry).
                if self._positions.get(key, LAST_ENTRY_ID) != LAST_ENTRY_ID
            ]
            self._dirty.clear()
            if not keys:
                continue
            positions = {key: self._positions[key] for key in keys}
            try:
                with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                    read = await self._reader.call_many(
                        [
                            ("XRANGE", key, "(" + position, "+", "COUNT", str(READ_COUNT))
                            for key, position in positions.items()
                        ]
                    )
                for reply in read:
                    if isinstance(reply, RespError) and not reply.message.startswith(WRONG_TYPE):
                        raise reply  # Redis' own trouble (loading, a busy script): retried
            except REDIS_ERRORS as exc:
                self._down("read", exc)
                self._mark(keys)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_FIRST_SECONDS
            self._up()
            for key, entries in zip(positions, read, strict=True):
                deliver = self._deliver.get(key)
                topic = key.removeprefix(KEY_PREFIX)
                if isinstance(entries, RespError):
                    # This key's own failure (another client made it a key of
                    # another type): said, and read again at the next notice
                    # or sweep; the other keys go on.
                    self._not_a_stream(topic, entries.message)
                    continue
                if not entries or deliver is None:
                    continue  # nothing new, or unwatched meanwhile
                if self._positions.get(key) != positions[key]:
                    # Watched afresh, or the writer handed this node's own
                    # publish over meanwhile: read again from where it is now.
                    self._mark([key])
                    continue
                self._positions[key] = entries[-1][0].decode()
                if len(entries) == READ_COUNT:
                    self._mark([key])  # more to read
                records, skipped = records_of(
                    topic, [(entry_id, pairs_of(flat)) for entry_id, flat in entries]
                )
                if skipped:
                    self._skipped(topic, skipped)
                if records:
                    await deliver(topic, records)

    async def _keep_statistics(self) -> None:
        """Refresh what ``/stats`` shows every :data:`STATISTICS_INTERVAL_SECONDS`:
        the watched streams' lengths (one pipeline) and Redis' memory; and
        what the publishes rely on: Redis' clock and its eviction policy
        (which a reconnect, to a restarted Redis or another one, may change)."""
        while True:
            keys = list(self._positions)
            try:
                with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                    # Each reply on its own: another client's key of another
                    # type fails its length only (the reader reports it).
                    async with self._client.pipeline(
                        transaction=False, raise_on_error=False
                    ) as pipe:
                        replies = [pipe.xlen(key) for key in keys]
                        memory = pipe.info("memory")
                    lengths = [await _length(reply) for reply in replies]
                    used = int((await memory).get("used_memory", 0))
            except REDIS_ERRORS:
                pass  # the reader and the publishes report the failure
            else:
                topics = sum(1 for length in lengths if length)
                self._statistics = HistoryStatistics("redis", topics, sum(lengths), used)
            try:
                await self.measure_clock()
                await self.check_eviction()
            except REDIS_ERRORS:
                pass  # the reader and the publishes report the failure
            await trio.sleep(STATISTICS_INTERVAL_SECONDS)

    # -- failures -------------------------------------------------------------

    @property
    def url_for_logs(self) -> str:
        """The URL without its password."""
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rpartition("@")[2]
        return scheme + sep + rest

    def _unavailable(self, what: str, exc: BaseException) -> HistoryError:
        self._down(what, exc)
        return HistoryError(f"the backplane is unavailable ({_reason(exc)}); try again")

    def _down(self, what: str, exc: BaseException) -> None:
        self.down_reason = f"backplane {self.url_for_logs} is unavailable: {_reason(exc)}"
        self._complain(what, _reason(exc))

    def _complain(self, what: str, reason: str) -> None:
        """Log that ``what`` failed, at most once per :data:`LOG_INTERVAL_SECONDS`."""
        now = trio.current_time()
        if now >= self._quiet_until.get(what, -math.inf):
            self._quiet_until[what] = now + LOG_INTERVAL_SECONDS
            log.error(
                "backplane: %s failed: %s",
                what,
                reason,
                extra={"event": "backplane_error", "operation": what, "reason": reason},
            )

    def _not_a_stream(self, topic: str, message: str) -> HistoryError:
        """Say that ``topic``'s key is not a stream (another client wrote
        it): that topic's failure only, not the backplane's; the error to
        answer with."""
        reason = f"{topic}: {message.splitlines()[0][:200]}"
        self._complain("read", reason)
        return HistoryError(
            f"the backplane holds another client's key where this topic's stream goes ({reason})"
        )

    def _skipped(self, topic: str, count: int) -> None:
        self._complain(
            "decode",
            f"skipped {count} entries of {topic} it cannot decode (not the broker's events: "
            "another client wrote them)",
        )

    def _up(self) -> None:
        if self.down_reason is not None:
            self.down_reason = None
            self._quiet_until.clear()
            log.info(
                "backplane: %s is reachable again",
                self.url_for_logs,
                extra={"event": "backplane_recovered"},
            )


def _waited() -> HistoryError:
    return HistoryError(
        "the backplane is unavailable (it did not take the publishes before this one within "
        f"{PUBLISH_WINDOW_SECONDS:g} s): not stored; try again"
    )


def _refused(reason: str) -> HistoryError:
    return HistoryError(f"the backplane refused the publish ({reason}): not stored; try again")


def _not_sent(reason: str) -> HistoryError:
    return HistoryError(f"the backplane is unavailable ({reason}): not stored; try again")


def _unknown(reason: str) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"the backplane did not answer ({reason}): the publish may have been stored before "
        "Redis stopped answering; a retry with the same id: is refused (409) if it was"
    )


class CoredisLines(logging.Filter):
    """Installed on coredis' logger for the backplane's life: coredis logs a
    lost or failed connection with its traceback group (over a hundred lines
    per stall). Each becomes one line, ``coredis: backplane: <what>
    (<first error>)``, and each kind is let through at most once per
    :data:`LOG_INTERVAL_SECONDS`, as the backplane's own failures are."""

    def __init__(self) -> None:
        super().__init__()
        self._quiet_until: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        what = record.getMessage()
        now = time.monotonic()
        if now < self._quiet_until.get(what, -math.inf):
            return False
        self._quiet_until[what] = now + LOG_INTERVAL_SECONDS
        error = record.exc_info[1] if record.exc_info else None
        record.msg = "backplane: %s (%s)" if error is not None else "backplane: %s"
        record.args = (what, _reason(_first_leaf(error))) if error is not None else (what,)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError | trio.Cancelled):
        return f"no answer within {COMMAND_TIMEOUT_SECONDS:g} s"
    return describe(exc)


@asynccontextmanager
async def open_redis_history(
    url: str, *, max_events_per_topic: int = 1000, eviction: str = "warn"
) -> AsyncIterator[RedisHistory]:
    """Connect to the Redis at ``url`` and run the reader for the block.
    ``eviction``: what an evicting ``maxmemory-policy`` gets, ``warn`` or
    ``refuse`` (:meth:`RedisHistory.check_eviction`).

    Raises:
        HistoryError: Redis cannot be reached at start-up, or its policy can
            evict the broker's keys and ``eviction`` is ``refuse``.
    """
    # coredis logs each lost connection (INFO) with an empty traceback: our
    # own lines say what failed. What it logs higher is one line (CoredisLines).
    coredis_log = logging.getLogger("coredis")
    coredis_log.setLevel(logging.WARNING)
    lines = CoredisLines()
    coredis_log.addFilter(lines)
    try:
        client = coredis.Redis.from_url(
            url,
            decode_responses=True,
            connect_timeout=COMMAND_TIMEOUT_SECONDS,
            retry_policy=coredis.retry.NoRetryPolicy(),
        )
        history = RedisHistory(
            client,
            url,
            max_events_per_topic=max_events_per_topic,
            eviction=eviction,
        )
        async with client:
            problem = await history.check()
            if problem is None:
                try:
                    await history.measure_clock()
                    await history.check_eviction()
                except REDIS_ERRORS as exc:
                    problem = f"backplane {history.url_for_logs} is unavailable: {_reason(exc)}"
            problem = problem or history.eviction_refusal
            if problem is not None:
                raise HistoryError(problem)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(history.run)
                try:
                    yield history
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        coredis_log.removeFilter(lines)
