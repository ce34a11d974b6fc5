"""The edge's one epoll set for connections' input (trio_esper/edge/readiness.py),
on real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from trio_esper.edge.lifetime import Deadlines
from trio_esper.edge.readiness import Readiness

from .conftest import STEP_SECONDS


@asynccontextmanager
async def _running() -> AsyncIterator[Readiness]:
    readiness = Readiness()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(readiness.run)
        yield readiness
        nursery.cancel_scope.cancel()


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


async def _woken_by(readiness: Readiness, fd: int, wake: Callable[[], object]) -> None:
    """A task waits on ``fd``; it still waits a moment later (nothing
    arrived); ``wake()`` wakes it."""
    async with trio.open_nursery() as nursery:
        woke = trio.Event()

        async def wait() -> None:
            await readiness.wait_readable(fd)
            woke.set()

        nursery.start_soon(wait)
        await trio.sleep(0.05)
        assert not woke.is_set()  # nothing arrived: it waits
        wake()
        with trio.fail_after(STEP_SECONDS):
            await woke.wait()


async def test_wakes_on_input_and_on_the_peers_end() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        async with _running() as readiness:
            await _woken_by(readiness, ours.fileno(), lambda: theirs.send(b"x"))
            assert ours.recv(16) == b"x"
            # Edge-triggered: the next wait is for the next input, here the end.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(readiness.wait_readable, ours.fileno())
                await trio.sleep(0.05)
                theirs.shutdown(socket.SHUT_WR)
            assert ours.recv(16) == b""


async def test_input_that_arrives_while_nobody_waits_is_remembered() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        async with _running() as readiness:
            # Registered by a first wait, which input ends.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(readiness.wait_readable, ours.fileno())
                await trio.sleep(0.05)
                theirs.send(b"a")
            assert ours.recv(16) == b"a"
            with pytest.raises(BlockingIOError):
                ours.recv(16)
            # Between that read and the next wait, input arrives (the poller
            # sees it with no task waiting): the wait does not miss it.
            theirs.send(b"b")
            await trio.sleep(0.05)
            with trio.fail_after(STEP_SECONDS):
                await readiness.wait_readable(ours.fileno())
            assert ours.recv(16) == b"b"


async def test_forget_wakes_the_waiter_with_closed() -> None:
    ours, theirs = _pair()
    with theirs:
        async with _running() as readiness:
            raised: list[BaseException] = []

            async def wait() -> None:
                try:
                    await readiness.wait_readable(ours.fileno())
                except trio.ClosedResourceError as error:
                    raised.append(error)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.sleep(0.05)
                readiness.forget(ours.fileno())
                ours.close()
            assert len(raised) == 1
            # A closed socket's number (-1) is refused at once.
            with pytest.raises(trio.ClosedResourceError):
                await readiness.wait_readable(ours.fileno())


async def test_one_waiter_per_socket_and_cancellation_leaves_none() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        async with _running() as readiness:
            with trio.move_on_after(0.05) as scope:
                await readiness.wait_readable(ours.fileno())
            assert scope.cancelled_caught  # cancelled, and its place freed:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(readiness.wait_readable, ours.fileno())
                await trio.sleep(0.05)
                with pytest.raises(trio.BusyResourceError):
                    await readiness.wait_readable(ours.fileno())
                theirs.send(b"x")


async def test_a_reused_number_starts_afresh() -> None:
    """Input remembered for a socket that closed is not a newcomer's with its number."""
    ours, theirs = _pair()
    async with _running() as readiness:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(readiness.wait_readable, ours.fileno())
            await trio.sleep(0.05)
            theirs.send(b"a")
        theirs.send(b"b")  # arrives with nobody waiting: remembered
        await trio.sleep(0.05)
        number = ours.fileno()
        readiness.forget(number)
        ours.close()
        theirs.close()
        newcomer, peer = _pair()
        with newcomer, peer:
            assert number in (newcomer.fileno(), peer.fileno())
            if peer.fileno() == number:
                newcomer, peer = peer, newcomer
            with trio.move_on_after(0.1) as scope:
                await readiness.wait_readable(newcomer.fileno())
            assert scope.cancelled_caught  # nothing arrived for it: it waited
            with trio.fail_after(STEP_SECONDS):  # and it is in the set
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(readiness.wait_readable, newcomer.fileno())
                    await trio.sleep(0.05)
                    peer.send(b"c")
            assert newcomer.recv(16) == b"c"


async def test_nudge_wakes_the_waiter_or_the_next_wait() -> None:
    ours, theirs = _pair()
    with ours, theirs:
        async with _running() as readiness:
            # Nothing arrived: woken all the same.
            await _woken_by(readiness, ours.fileno(), lambda: readiness.nudge(ours.fileno()))
            readiness.nudge(ours.fileno())  # nobody waits: the next wait returns
            with trio.fail_after(STEP_SECONDS):
                await readiness.wait_readable(ours.fileno())


class _Arrived:
    """A waiter whose input has arrived (as the reaper sees it)."""

    def __init__(self, arrived: bool) -> None:
        self.arrived = arrived
        self.calls: list[str] = []

    def has_arrived(self) -> bool:
        return self.arrived

    def expire(self) -> None:
        self.calls.append("expire")

    def nudge(self) -> None:
        self.calls.append("nudge")

    def stop_reading(self) -> None:
        self.calls.append("stop_reading")


def test_the_reaper_wakes_a_waiter_whose_input_arrived() -> None:
    """Past its deadline, a waiter with input is woken to read it (a missed
    wake-up costs a reaper's pass), one without is expired."""
    deadlines = Deadlines()
    arrived, idle = _Arrived(True), _Arrived(False)
    deadlines.start(arrived, 1.0, False)
    deadlines.start(idle, 1.0, True)
    deadlines.reap_expired(0.5)
    assert arrived.calls == idle.calls == []  # not yet
    deadlines.reap_expired(1.0)
    assert arrived.calls == ["nudge"]
    assert idle.calls == ["expire"]
