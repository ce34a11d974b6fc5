"""Where the edge's connections come from: listening sockets, set up before
they listen, and the loop that accepts from them.

Accepted sockets inherit the listening socket's TCP options on Linux, taken
when their handshake completes (in the backlog, before they are accepted): so
the options go on before ``listen()`` (:func:`listening_socket`), and the
edge sets none per connection.

trio's ``SocketListener.accept`` takes one connection per call and yields
after each, so a storm of new connections (every subscriber reconnecting
after a restart) costs a pass of the scheduler per connection before its
task even starts. :class:`SocketAcceptor` takes every connection waiting on
its listening socket in one step instead (up to :data:`ACCEPT_BATCH`), as
nginx's ``multi_accept`` does; :func:`accept_connections` starts a task for
each. The connection's task (:meth:`.edge.Edge.handle`) owns it from there.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Protocol

import trio

log = logging.getLogger("trio_esper")

#: Connections the kernel completes and holds until they are accepted.
LISTEN_BACKLOG = 4096
#: Unsent bytes a connection's socket takes at most (see :func:`listening_socket`):
#: trio's ``SocketStream`` value.
NOTSENT_LOWAT_BYTES = 16 * 1024
#: Linux's TCP_USER_TIMEOUT option number (the socket module lacks it before 3.12).
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
#: At most this many connections are accepted in one step (then the
#: acceptor yields, so that the connections' own tasks get to run).
ACCEPT_BATCH = 64
#: accept() errors that mean "out of file descriptors or memory for now".
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How long to wait before accepting again after one of them.
ACCEPT_RETRY_SECONDS = 0.1
#: accept() errors about one connection only (it was reset or refused before
#: it was accepted): skip it. trio's ``SocketListener`` skips the same list.
ACCEPT_SKIPPED_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)


#: An accepted connection's socket and its peer's address as the per-address
#: limits count it (``None``: unknown, the connection asks its socket).
Accepted = tuple[trio.socket.SocketType, str | None]


def peer_address(address: object) -> str:
    """``accept``'s peer address as the per-address limits count it: the IP
    (interned: every subscription of the address holds the same string), or
    ``local`` for a non-IP socket."""
    return sys.intern(str(address[0])) if isinstance(address, tuple) else "local"


def listening_socket(
    family: socket.AddressFamily, address: tuple[object, ...], *, write_timeout_seconds: float
) -> socket.socket:
    """A TCP socket listening on ``address``, with the options every
    connection accepted from it inherits set before it listens:

    * ``TCP_NODELAY``: an event is one small write and must not wait for Nagle.
    * ``TCP_NOTSENT_LOWAT``: a socket takes at most 16 KiB not yet sent, so a
      subscriber that stopped reading fills its queue and is dropped instead
      of parking megabytes in the kernel (trio's ``SocketStream`` sets the
      same; the edge makes one only when it needs trio's stream API).
    * ``TCP_USER_TIMEOUT``: a write nobody acknowledges for
      ``write_timeout_seconds`` aborts the connection (a dead peer).

    ``SO_REUSEADDR`` and, for IPv6, ``IPV6_V6ONLY``, as trio's
    ``open_tcp_listeners`` sets them.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_NOTSENT_LOWAT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_BYTES)
        try:
            sock.setsockopt(
                socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(write_timeout_seconds * 1000)
            )
        except OSError:  # not Linux
            log.debug("TCP_USER_TIMEOUT is not available here")
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_listeners(
    host: str, port: int, *, write_timeout_seconds: float
) -> list[socket.socket]:
    """:func:`listening_socket` on every address ``host`` stands for, as
    trio's ``open_tcp_listeners`` does (``localhost``: IPv4 and IPv6);
    address families this system lacks are skipped. trio resolves a numeric
    address at once, and only a name in a thread: a thread left in the
    process slows every subscribe after it (BENCHMARKS.md).

    Raises:
        OSError: an address cannot be bound, or no family is supported.
    """
    addresses = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in addresses:
            try:
                sockets.append(
                    listening_socket(family, address, write_timeout_seconds=write_timeout_seconds)
                )
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EAFNOSUPPORT, f"no address family of {host} is supported here")
    return sockets


class ConnectionSource(Protocol):
    """Where the edge's connections come from: a :class:`SocketAcceptor`,
    or a ``--threads`` worker's connections handed over by its supervisor
    (:class:`~trio_esper.workers.HandedListener`)."""

    @property
    def socket(self) -> trio.socket.SocketType:
        """The listening socket (its address and options)."""
        ...

    async def accept_batch(self) -> Sequence[Accepted]:
        """The next connections: at least one (a :class:`SocketAcceptor`
        takes those waiting, up to :data:`ACCEPT_BATCH`).

        Raises:
            OSError: accepting failed (see :data:`ACCEPT_CAPACITY_ERRNOS`).
        """
        ...

    async def aclose(self) -> None: ...


class SocketAcceptor:
    """A listening socket (:func:`listening_socket`), accepted from in
    batches (see the module docstring); it owns the socket."""

    def __init__(self, listening: socket.socket) -> None:
        # A stdlib socket, whose accept() does not yield: trio sockets have
        # no synchronous accept.
        self._listening = listening
        #: The listening socket as trio sees it (waits, address, options);
        #: non-blocking from here on.
        self.socket = trio.socket.from_stdlib_socket(listening)

    async def accept_batch(self) -> list[Accepted]:
        """The connections waiting (:data:`ACCEPT_BATCH` at most); waits
        for one if none is. A checkpoint.

        Raises:
            OSError: accepting failed, for a reason that is not one
                connection's (:data:`ACCEPT_SKIPPED_ERRNOS`), before any
                connection was taken.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        accepted: list[Accepted] = []
        waited = False
        while True:
            try:
                sock, address = self._listening.accept()
            except BlockingIOError:
                if accepted:
                    break
                await trio.lowlevel.wait_readable(self.socket)
                waited = True
                continue
            except OSError as exc:
                if exc.errno in ACCEPT_SKIPPED_ERRNOS:
                    continue
                if accepted:
                    break  # the error comes again on the next call
                raise
            accepted.append((trio.socket.from_stdlib_socket(sock), peer_address(address)))
            if len(accepted) == ACCEPT_BATCH:
                break
        if not waited:
            # Yield (as every checkpoint does), but do not let a cancellation
            # lose the connections taken: it is seen at the next call.
            await trio.lowlevel.cancel_shielded_checkpoint()
        return accepted

    async def aclose(self) -> None:
        self.socket.close()
        await trio.lowlevel.checkpoint()


async def accept_connections(
    source: ConnectionSource,
    handle: Callable[[trio.socket.SocketType, str | None], Awaitable[object]],
    nursery: trio.Nursery,
) -> None:
    """Accept connections from ``source`` until cancelled (then close it),
    each handled by its own task in ``nursery``."""
    # Named once: trio would format the name of the function for every task.
    name = f"{getattr(handle, '__module__', None)}.{getattr(handle, '__qualname__', handle)}"
    async with aclosing(source):
        while True:
            try:
                accepted = await source.accept_batch()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.warning(
                    "accept failed (%s); retrying in %g s",
                    exc,
                    ACCEPT_RETRY_SECONDS,
                    extra={"event": "accept_failed", "error": str(exc)},
                )
                await trio.sleep(ACCEPT_RETRY_SECONDS)
            else:
                for sock, address in accepted:
                    nursery.start_soon(handle, sock, address, name=name)
