"""Accepting connections in batches (:mod:`trio_esper.accepting`), on a real
listening socket on loopback with real clients, and through a broker: a
burst of subscribers connecting at once is accepted and served."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, aclosing, contextmanager

import pytest
import trio

from trio_esper import accepting
from trio_esper.accepting import Accepted, SocketAcceptor, listening_socket, open_listeners

from .conftest import STEP_SECONDS, start_broker
from .rawhttp import Raw, accepted_socket_fds, assert_still_serves, open_subscriber, publish


async def _acceptor() -> SocketAcceptor:
    return SocketAcceptor(
        listening_socket(socket.AF_INET, ("127.0.0.1", 0), write_timeout_seconds=10)
    )


@contextmanager
def _clients(acceptor: SocketAcceptor, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connected clients (the kernel completes a connection into
    the listener's backlog before it is accepted)."""
    port = acceptor.socket.getsockname()[1]
    with ExitStack() as stack:
        yield [
            stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            for _ in range(count)
        ]


async def _peers(accepted: Sequence[Accepted], clients: list[socket.socket]) -> set[int]:
    """Which client each accepted socket is connected to: client ``i`` sends
    its number, each accepted socket reads it (and is closed). The address
    each came with is the client's."""
    for i, client in enumerate(clients):
        client.sendall(b"%d\n" % i)
    seen = set()
    for sock, address in accepted:
        assert address == "127.0.0.1"
        with sock, trio.fail_after(5):
            seen.add(int(await sock.recv(16)))
    return seen


async def test_one_call_takes_every_waiting_connection() -> None:
    acceptor = await _acceptor()
    async with aclosing(acceptor):
        with _clients(acceptor, 10) as clients:
            accepted = await acceptor.accept_batch()
            assert await _peers(accepted, clients) == set(range(10))


async def test_a_batch_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accepting, "ACCEPT_BATCH", 4)
    acceptor = await _acceptor()
    async with aclosing(acceptor):
        with _clients(acceptor, 10) as clients:
            batches = [await acceptor.accept_batch() for _ in range(3)]
            assert [len(batch) for batch in batches] == [4, 4, 2]
            accepted = [sock for batch in batches for sock in batch]
            assert await _peers(accepted, clients) == set(range(10))


async def test_waits_for_a_connection_and_yields() -> None:
    acceptor = await _acceptor()
    async with aclosing(acceptor), trio.open_nursery() as nursery:
        got: list[Accepted] = []

        async def accept() -> None:
            got.extend(await acceptor.accept_batch())

        nursery.start_soon(accept)
        await trio.sleep(0.05)
        assert got == []  # nothing waiting: it waits
        with _clients(acceptor, 1) as clients:
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.01)
            assert await _peers(got, clients) == {0}
    # A connection already waiting: taken without a wait, and still a checkpoint.
    acceptor = await _acceptor()
    async with aclosing(acceptor):
        with _clients(acceptor, 1):
            with trio.testing.assert_checkpoints():
                ((sock, _),) = await acceptor.accept_batch()
            sock.close()


async def test_cancelled_takes_nothing() -> None:
    """A cancelled call raises before it accepts: no connection is taken and lost."""
    acceptor = await _acceptor()
    async with aclosing(acceptor):
        with _clients(acceptor, 3) as clients:
            with trio.CancelScope() as scope:
                scope.cancel()
                await acceptor.accept_batch()
                pytest.fail("not cancelled")
            accepted = await acceptor.accept_batch()
            assert await _peers(accepted, clients) == {0, 1, 2}


class _FailingFirst:
    """The listening socket, whose next accept() fails with ``errno``."""

    def __init__(self, sock: socket.socket, code: int) -> None:
        self._sock = sock
        self._code: int | None = code

    def accept(self) -> tuple[socket.socket, object]:
        code, self._code = self._code, None
        if code is not None:
            raise OSError(code, "injected")
        return self._sock.accept()


async def test_skips_a_connection_reset_before_it_was_accepted() -> None:
    acceptor = await _acceptor()
    async with aclosing(acceptor):
        acceptor._listening = _FailingFirst(acceptor._listening, errno.ECONNABORTED)  # type: ignore[assignment]
        with _clients(acceptor, 2) as clients:
            accepted = await acceptor.accept_batch()
            assert await _peers(accepted, clients) == {0, 1}


async def test_out_of_descriptors_is_raised_to_the_loop() -> None:
    acceptor = await _acceptor()
    async with aclosing(acceptor):
        acceptor._listening = _FailingFirst(acceptor._listening, errno.EMFILE)  # type: ignore[assignment]
        with _clients(acceptor, 1) as clients:
            with pytest.raises(OSError) as raised:
                await acceptor.accept_batch()
            assert raised.value.errno == errno.EMFILE
            accepted = await acceptor.accept_batch()  # the connection still waits
            assert await _peers(accepted, clients) == {0}


async def test_a_burst_of_subscribers_is_served(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, fast_lane: bool
) -> None:
    """200 subscribers connecting at once all get their stream, and all
    receive an event (a small batch bound: the burst spans several batches),
    whichever lane serves them."""
    monkeypatch.setattr(accepting, "ACCEPT_BATCH", 16)
    broker = await start_broker(nursery, fast_lane=fast_lane)
    subscribers: list[Raw] = []

    async def subscribe() -> None:
        subscribers.append(await open_subscriber(broker, "bursttopic1"))

    try:
        with trio.fail_after(STEP_SECONDS):
            async with trio.open_nursery() as connecting:
                for _ in range(200):
                    connecting.start_soon(subscribe)
            reply = await publish(broker, "bursttopic1", b"data: to all\n")
            assert reply["subscribers"] == 200
            for subscriber in subscribers:
                await subscriber.read_until(b"data: to all\n\n")
    finally:
        for subscriber in subscribers:
            await subscriber.aclose()
    await assert_still_serves(broker)


async def test_accepted_sockets_bound_their_unsent_bytes(nursery: trio.Nursery) -> None:
    """The edge makes no trio SocketStream for the fast forms, so the options
    trio's stream would set come from the listening socket: no Nagle, and at
    most 16 KiB unsent per socket (a subscriber that stops reading fills its
    queue and is dropped, rather than parking megabytes in the kernel)."""
    broker = await start_broker(nursery)
    async with await open_subscriber(broker, "optionstopic1") as subscriber:
        peer = subscriber.stream.socket.getsockname()[:2]
        fd = accepted_socket_fds(broker.host_port[1])[peer]
        sock = socket.socket(fileno=fd)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 16 * 1024
        finally:
            sock.detach()


async def test_connections_queued_before_they_are_accepted_have_the_options() -> None:
    """Linux copies the listening socket's options into a connection when its
    handshake completes, before it is accepted: so they are set before the
    socket listens, and a connection that waited in the backlog (a worker
    starting, a burst) has them too."""
    for listening in (
        listening_socket(socket.AF_INET, ("127.0.0.1", 0), write_timeout_seconds=7),
        *await open_listeners("127.0.0.1", 0, write_timeout_seconds=7),
    ):
        with listening, socket.create_connection(listening.getsockname()[:2]):
            accepted, _ = listening.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                lowat = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
                assert lowat == 16 * 1024
                timeout = accepted.getsockopt(socket.IPPROTO_TCP, accepting.TCP_USER_TIMEOUT)
                assert timeout == 7000
