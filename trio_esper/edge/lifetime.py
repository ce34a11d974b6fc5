"""How long connections live: deadlines while they wait for bytes, and the
set of open connections that shutdown waits for.

Owns: :class:`Deadlines`, the connections waiting for bytes now with each
one's deadline, and the reaper task that enforces them; :class:`Registry`,
the open connections (and their count per client address), which the
edge's per-address limit reads and shutdown waits on. Neither owns a
socket: each connection's task does (:class:`.connection.Connection`).

Timeouts: one reaper task checks the waiting connections' deadlines (a
cancel scope per wait costs more than a publish's parsing). A connection
past its deadline has its reading side shut down, which wakes its task:
a partial request then gets 408, an idle one is just closed. The deadlines:
keep-alive idle between requests, the request head (from its first byte),
and the body (a stall, and a minimum average rate).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

import trio

#: The reaper looks this often at most (and at least four times per timeout).
REAP_INTERVAL_SECONDS = 1.0


class Waiter(Protocol):
    """A connection as the reaper sees it."""

    def has_arrived(self) -> bool:
        """Whether input waits unread (its task has yet to run)."""

    def expire(self) -> None:
        """Its wait timed out: wake it."""

    def nudge(self) -> None:
        """Wake it to read what has arrived (it finds it, or waits again)."""

    def stop_reading(self) -> None:
        """Wake it from a read (it sees end of input)."""


class Deadlines:
    """The connections waiting for bytes, each until when."""

    def __init__(self) -> None:
        #: Until when, and whether idle between requests (nothing of a
        #: request read yet).
        self._waiting: dict[Waiter, tuple[float, bool]] = {}

    def start(self, waiter: Waiter, deadline: float, idle: bool) -> None:
        """``waiter`` waits for bytes until ``deadline``, until :meth:`stop`
        (two calls rather than a context manager: a read waits once per
        request, and a generator's context manager costs more than the wait)."""
        self._waiting[waiter] = (deadline, idle)

    def stop(self, waiter: Waiter) -> None:
        """``waiter`` no longer waits."""
        self._waiting.pop(waiter, None)

    async def run(self, *timeouts_seconds: float) -> None:
        """The reaper: wake the waiters whose deadline passed, until cancelled.
        ``timeouts_seconds``: the timeouts in use (the shortest sets the pace)."""
        while True:
            await trio.sleep(min(REAP_INTERVAL_SECONDS, min(timeouts_seconds) / 4))
            self.reap_expired(trio.current_time())

    def reap_expired(self, now: float) -> None:
        """Wake the waiters whose deadline is ``now`` or earlier; those whose
        input has arrived are not expired (their task has yet to run, on a
        busy broker: that request is served) but woken to read it, so that a
        wake-up the edge's epoll set missed costs a reaper's pass, never a
        connection held open."""
        for waiter, (deadline, _) in list(self._waiting.items()):
            if deadline <= now:
                if waiter.has_arrived():
                    waiter.nudge()
                else:
                    waiter.expire()

    def wake_idle(self) -> None:
        """Shutdown: wake the waiters idle between requests (they close)."""
        for waiter, (_, idle) in list(self._waiting.items()):
            if idle and not waiter.has_arrived():
                waiter.stop_reading()


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class Registry(Generic[C]):
    """The open connections, and how many each client address holds."""

    def __init__(self) -> None:
        self._open: set[C] = set()
        self._per_address: dict[str, int] = {}
        self._empty = trio.Event()

    def __len__(self) -> int:
        return len(self._open)

    def held(self, address: str) -> int:
        """How many connections ``address`` holds open."""
        return self._per_address.get(address, 0)

    def add(self, connection: C, address: str) -> None:
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self._open.add(connection)

    def remove(self, connection: C, address: str) -> None:
        if self._per_address[address] == 1:
            del self._per_address[address]
        else:
            self._per_address[address] -= 1
        self._open.discard(connection)
        if not self._open:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Wait until no connection is open."""
        while self._open:
            self._empty = trio.Event()
            await self._empty.wait()

    def close_all(self) -> None:
        """Close every open connection (its task then ends)."""
        for connection in list(self._open):
            connection.close()
