"""Waiting for a connection's input: one edge-triggered epoll set for all of
the edge's plain connections.

trio registers a socket for one wait at a time (``EPOLLONESHOT``): every
wait for input costs an ``epoll_ctl`` system call to arm it again, and the
first wait on a new socket two (trio tries ``EPOLL_CTL_MOD``, which fails,
then ``EPOLL_CTL_ADD``) with a Python exception between them. A publisher
connection waits once per request and a subscriber at least twice, so on a
busy broker those calls are a tenth of its time (BENCHMARKS.md, issue 24).
:class:`Readiness` registers each connection once, edge-triggered, and one
task turns the kernel's ready list into wake-ups: a wait costs no system
call, and every connection that became ready since the last look is woken
in one step.

Edge-triggered means the kernel reports new input, not input left unread,
so a task waits here only after a read found nothing (``EAGAIN``): every
caller in :mod:`.connection` reads first. Input that arrives while no task
waits is remembered (:meth:`Readiness.wait_readable` then returns at once);
a wake-up with nothing to read is harmless, as the caller reads again.

Owns the epoll set (closed when :meth:`Readiness.run` ends) and the table of
waiting tasks; never a socket. A socket leaves the set when it is closed
(:meth:`Readiness.forget` first wakes its waiter, as trio's
``notify_closing`` does).
"""

from __future__ import annotations

import select

import outcome
import trio

#: Input, the peer's end of it (a half-close wakes the reader too), and TCP
#: urgent data.
_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLPRI | select.EPOLLET
#: What stays true once reported, and can sit behind input that one read
#: returns whole (fewer bytes than asked for): the end of input or a reset
#: (read after the bytes before it), and urgent data (a read stops short at
#: its mark). Reported with that input in one wake-up, such a condition is
#: remembered as well, so that the next wait returns at once and the
#: caller's read finds it: the set reports nothing new for it.
_LASTING = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR | select.EPOLLPRI
#: How many ready connections one look takes at most (the rest at the next).
MAX_EVENTS = 1024


class Readiness:
    """The edge's connections' waits for input (see the module docstring).

    Resource handling: the edge makes one, runs :meth:`run` in its nursery
    for as long as it serves, and a connection calls :meth:`forget` before
    its socket closes.
    """

    __slots__ = ("_epoll", "_ready", "_registered", "_waiting")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        #: Descriptors in the set.
        self._registered: set[int] = set()
        #: Descriptors with input that arrived while no task waited.
        self._ready: set[int] = set()
        #: The task waiting on each descriptor.
        self._waiting: dict[int, trio.lowlevel.Task] = {}

    async def run(self) -> None:
        """Wake the tasks whose connections became ready, until cancelled;
        then close the set (waiters left are woken with ClosedResourceError)."""
        epoll, ready, waiting = self._epoll, self._ready, self._waiting
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, events in epoll.poll(0, MAX_EVENTS):
                    task = waiting.pop(fd, None)
                    if task is None or events & _LASTING:
                        ready.add(fd)
                    if task is not None:
                        reschedule(task)
        finally:
            for fd in list(self._waiting):
                self.forget(fd)
            self._registered.clear()
            epoll.close()

    async def wait_readable(self, fd: int) -> None:
        """Wait until input arrives on ``fd`` (or its peer ends it, or it
        fails) after the caller's last read, which must have found none.
        A checkpoint.

        Raises:
            trio.ClosedResourceError: ``fd`` was forgotten (closed) meanwhile.
            trio.BusyResourceError: another task waits on ``fd``.
        """
        if fd not in self._registered:
            try:
                self._epoll.register(fd, _EVENTS)
            except FileExistsError:  # a closed descriptor's number, still in the set
                self._epoll.modify(fd, _EVENTS)
            except (OSError, ValueError):  # closed meanwhile, or the set is gone
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("the connection's socket is closed") from None
            self._registered.add(fd)
        elif fd in self._ready:
            self._ready.discard(fd)
            await trio.lowlevel.checkpoint()
            return
        if fd in self._waiting:
            await trio.lowlevel.checkpoint()
            raise trio.BusyResourceError("another task waits for this connection's input")
        waiting = self._waiting
        waiting[fd] = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            waiting.pop(fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def nudge(self, fd: int) -> None:
        """Wake ``fd``'s waiter as if input had arrived (or let its next wait
        return at once): for input the set may not report again, which the
        caller's read then finds. A wake-up with nothing to read is harmless."""
        task = self._waiting.pop(fd, None)
        if task is None:
            if fd in self._registered:
                self._ready.add(fd)
        else:
            trio.lowlevel.reschedule(task)

    def forget(self, fd: int) -> None:
        """``fd`` is about to close: wake its waiter with ClosedResourceError
        and drop what is known of it (closing it takes it out of the set)."""
        if fd < 0:
            return
        self._registered.discard(fd)
        self._ready.discard(fd)
        task = self._waiting.pop(fd, None)
        if task is not None:
            error = trio.ClosedResourceError("the connection's socket was closed")
            trio.lowlevel.reschedule(task, outcome.Error(error))
