"""The Redis backplane: the history of every topic in Redis Streams, shared by
every broker process and node that names the same Redis.

Design
------
One Redis Stream per topic is the topic's ordered log (``XADD`` with
``MAXLEN ~ N`` as retention). The stream entry id (``1795947651928-0``) is
the event's SSE id, so a subscriber resumes with ``Last-Event-ID`` on any
node. A publish is acknowledged once Redis has accepted its ``XADD``
(the events of one body, and a notice naming the topic on
:data:`NOTIFY_CHANNEL`, in one ``MULTI``/``EXEC``), and is *not* delivered
by the node that took it: every node, that one included, follows the
notices and reads (``XRANGE``, pipelined) the streams they name that it has
local subscribers for, and hands what it reads to the hub, so every
subscriber everywhere sees one order, the stream's. A node pays nothing for
topics it has no subscribers for but a notice each. Notices are lost while a
node is unsubscribed: each (re)subscription reads every watched stream, and
every stream is read every :data:`SWEEP_SECONDS` besides.

A subscription to a topic new to the node first *watches* the stream
(:meth:`RedisHistory.watch`): it reads the stream's last id before the
subscriber is told ``: subscribed``, and the reader starts after that id, so
an event published after the subscribe is never missed.

Redis goes away: publishes fail fast with :class:`HistoryError` (503) and
nothing acknowledged is lost; subscriptions to new topics get 503; open
streams stay open (their heartbeats come from the hub), and the reader
retries with backoff, then goes on from the last id it read per stream.

Ids are the broker's: a publisher-given ``id:`` is refused (400), because an
id must name a place in the shared log. ``coredis`` is the client: it runs
on anyio, so natively under Trio (docs/scaling.md, "Client: coredis").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import coredis
import coredis.exceptions
import coredis.retry
import trio

from ..errors import BadRequest, HistoryError
from ..routing import Route, decode_route, encode_route
from ..sse import Event
from . import Deliver, HistoryStatistics, Record, Replay

log = logging.getLogger("trio_esper")

#: Key of a topic's stream.
KEY_PREFIX = "trio_esper:topic:"
#: The channel every publish names its topic on (in the XADD's MULTI).
NOTIFY_CHANNEL = "trio_esper:published"
#: Most entries one XRANGE reads of a stream (more: read again).
READ_COUNT = 1000
#: Every watched stream is read this often even without a notice (a notice
#: lost with a connection is caught up at once on reconnecting; this is the
#: belt to those braces).
SWEEP_SECONDS = 30.0
#: A command Redis has not answered in this long fails (publishes: 503).
COMMAND_TIMEOUT_SECONDS = 2.0
#: The reader's retry delays after a failure: from the first to the cap.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
#: Each kind of failure is logged at most once this often.
LOG_INTERVAL_SECONDS = 10.0
#: How often the reader refreshes the statistics /stats shows.
STATISTICS_INTERVAL_SECONDS = 5.0
#: Errors that mean Redis (or the way to it) failed, not our request.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def seq_of(entry_id: str) -> int:
    """A stream entry id as an integer in the same order (milliseconds, then
    the sequence within the millisecond)."""
    millis, _, sequence = entry_id.partition("-")
    return (int(millis) << 24) | min(int(sequence or 0), (1 << 24) - 1)


def _valid_entry_id(text: str) -> bool:
    millis, dash, sequence = text.partition("-")
    return bool(dash) and millis.isascii() and millis.isdigit() and sequence.isdigit()


def _record(topic: str, entry_id: str, fields: Any) -> Record:
    retry = fields.get("r")
    event = Event(fields.get("d", ""), fields.get("e"), entry_id, int(retry) if retry else None)
    route = fields.get("w")
    return Record.create(
        seq_of(entry_id),
        topic,
        event,
        float(fields.get("t", 0.0)),
        None if route is None else decode_route(route),
    )


def _fields(event: Event, when: float, route: Route | None) -> dict[str, str]:
    fields = {"d": event.data, "t": repr(when)}
    if event.event is not None:
        fields["e"] = event.event
    if event.retry is not None:
        fields["r"] = str(event.retry)
    if route is not None:
        fields["w"] = encode_route(route)
    return fields


class RedisHistory:
    """See the module docstring. Build with :func:`open_redis_history`."""

    def __init__(self, client: Any, url: str, *, max_events_per_topic: int) -> None:
        self._client = client
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

    # -- the History protocol ----------------------------------------------------

    async def append(
        self, topic: str, events: Sequence[Event], deliver: Deliver, route: Route | None = None
    ) -> list[Record]:
        for event in events:
            if event.id is not None:
                raise BadRequest(
                    "with the Redis backplane the broker numbers events (the stream's ids, "
                    "valid on every node): publish without id:"
                )
        now = time.time()
        key = KEY_PREFIX + topic
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                async with self._client.pipeline(transaction=True) as pipe:
                    pending = [
                        pipe.xadd(
                            key,
                            _fields(event, now, route),
                            trim_strategy=coredis.PureToken.MAXLEN,
                            trim_operator=coredis.PureToken.APPROXIMATELY,
                            threshold=self.max_events_per_topic,
                        )
                        for event in events
                    ]
                    notice = pipe.publish(NOTIFY_CHANNEL, topic)
                ids = [await request for request in pending]
                await notice
        except REDIS_ERRORS as exc:
            raise self._unavailable("publish", exc) from None
        self._up()
        return [
            Record.create(
                seq_of(entry_id), topic, Event(e.data, e.event, entry_id, e.retry), now, route
            )
            for entry_id, e in zip(ids, events, strict=True)
        ]

    async def after(self, topic: str, last_id: str | None, limit: int) -> Replay:
        key = KEY_PREFIX + topic
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                found = last_id is None
                start = "-"
                if last_id is not None and _valid_entry_id(last_id):
                    found = bool(await self._client.xrange(key, last_id, last_id, count=1))
                    if found:
                        start = "(" + last_id
                entries = await self._client.xrange(key, start, "+", count=limit)
        except REDIS_ERRORS as exc:
            raise self._unavailable("read", exc) from None
        self._up()
        return Replay([_record(topic, e.identifier, e.field_values) for e in entries], found)

    async def delete(self, topic: str) -> None:
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                await self._client.delete([KEY_PREFIX + topic])
        except REDIS_ERRORS as exc:
            raise self._unavailable("delete", exc) from None

    async def check(self) -> str | None:
        try:
            with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                await self._client.ping()
        except REDIS_ERRORS as exc:
            return f"backplane {self.url_for_logs} is unavailable: {_reason(exc)}"
        return self.down_reason

    def statistics(self) -> HistoryStatistics:
        return dataclasses.replace(self._statistics, problem=self.down_reason)

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
            await self._read()

    async def _listen(self) -> None:
        """Follow :data:`NOTIFY_CHANNEL`. Each (re)subscription reads every
        watched stream: notices published while unsubscribed are lost."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                # Its own retries would hide an outage: this loop retries.
                async with self._client.pubsub(
                    channels=[NOTIFY_CHANNEL], retry_policy=coredis.retry.NoRetryPolicy()
                ) as notices:
                    async for message in notices:
                        delay = RETRY_FIRST_SECONDS
                        if message["type"] == "subscribe":
                            self._up()
                            self._mark(list(self._positions))
                        elif message["type"] == "message":
                            self._mark([KEY_PREFIX + str(message["data"])])
            except Exception as exc:
                # Whatever ends the subscription (a lost connection, in the
                # pub/sub task group), it is logged and taken again.
                self._down("notices", _first_leaf(exc))
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _sweep(self) -> None:
        while True:
            await trio.sleep(SWEEP_SECONDS)
            self._mark(list(self._positions))

    async def _read(self) -> None:
        """Read the marked streams after each one's position, in one
        pipeline; on a failure, mark them again and retry with backoff."""
        delay = RETRY_FIRST_SECONDS
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            keys = [key for key in self._dirty if key in self._positions]
            self._dirty.clear()
            if not keys:
                continue
            positions = {key: self._positions[key] for key in keys}
            try:
                with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                    async with self._client.pipeline(transaction=False) as pipe:
                        pending = [
                            pipe.xrange(key, "(" + position, "+", count=READ_COUNT)
                            for key, position in positions.items()
                        ]
                    read = [await request for request in pending]
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
                if not entries or deliver is None or self._positions.get(key) != positions[key]:
                    continue  # nothing new, or unwatched (or watched afresh) meanwhile
                topic = key.removeprefix(KEY_PREFIX)
                self._positions[key] = entries[-1].identifier
                if len(entries) == READ_COUNT:
                    self._mark([key])  # more to read
                await deliver(
                    topic, [_record(topic, e.identifier, e.field_values) for e in entries]
                )

    async def _keep_statistics(self) -> None:
        """Refresh what ``/stats`` shows every :data:`STATISTICS_INTERVAL_SECONDS`:
        the watched streams' lengths (one pipeline) and Redis' memory."""
        while True:
            keys = list(self._positions)
            try:
                with trio.fail_after(COMMAND_TIMEOUT_SECONDS):
                    async with self._client.pipeline(transaction=False) as pipe:
                        lengths = [pipe.xlen(key) for key in keys]
                        memory = pipe.info("memory")
                    events = sum([await length for length in lengths])
                    used = int((await memory).get("used_memory", 0))
            except REDIS_ERRORS:
                pass  # the reader and the publishes report the failure
            else:
                self._statistics = HistoryStatistics("redis", len(keys), events, used)
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
        now = trio.current_time()
        if now >= self._quiet_until.get(what, -math.inf):
            self._quiet_until[what] = now + LOG_INTERVAL_SECONDS
            log.error(
                "backplane: %s failed: %s",
                what,
                _reason(exc),
                extra={"event": "backplane_error", "operation": what, "reason": _reason(exc)},
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


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {COMMAND_TIMEOUT_SECONDS:g} s"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@asynccontextmanager
async def open_redis_history(
    url: str, *, max_events_per_topic: int = 1000
) -> AsyncIterator[RedisHistory]:
    """Connect to the Redis at ``url`` and run the reader for the block.

    Raises:
        HistoryError: Redis cannot be reached at start-up.
    """
    # coredis logs each lost connection with an empty traceback: our own
    # lines say what failed, once per interval.
    logging.getLogger("coredis").setLevel(logging.WARNING)
    client = coredis.Redis.from_url(
        url,
        decode_responses=True,
        connect_timeout=COMMAND_TIMEOUT_SECONDS,
        retry_policy=coredis.retry.NoRetryPolicy(),
    )
    history = RedisHistory(client, url, max_events_per_topic=max_events_per_topic)
    async with client:
        problem = await history.check()
        if problem is not None:
            raise HistoryError(problem)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(history.run)
            try:
                yield history
            finally:
                nursery.cancel_scope.cancel()
