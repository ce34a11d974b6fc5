"""Where the edge's connections come from, and the loop that accepts them.

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
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Protocol

import trio

log = logging.getLogger("trio_esper")

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


class ConnectionSource(Protocol):
    """Where the edge's connections come from: a :class:`SocketAcceptor`,
    or a ``--threads`` worker's connections handed over by its supervisor
    (:class:`~trio_esper.workers.HandedListener`)."""

    @property
    def socket(self) -> trio.socket.SocketType:
        """The listening socket (its address and options)."""
        ...

    async def accept_batch(self) -> Sequence[trio.socket.SocketType]:
        """The next connections: at least one, as many as are waiting.

        Raises:
            OSError: accepting failed (see :data:`ACCEPT_CAPACITY_ERRNOS`).
        """
        ...

    async def aclose(self) -> None: ...


class SocketAcceptor:
    """A listening socket, accepted from in batches (see the module docstring).

    It takes over the socket of the trio ``SocketListener`` it is made from:
    close the acceptor, not that listener.
    """

    def __init__(self, listener: trio.SocketListener) -> None:
        listening = listener.socket
        # The same descriptor as a stdlib socket, whose accept() does not
        # yield: trio sockets have no synchronous accept.
        self._listening = socket.socket(
            listening.family, listening.type, listening.proto, fileno=listening.detach()
        )
        #: The listening socket as trio sees it (waits, address, options).
        self.socket = trio.socket.from_stdlib_socket(self._listening)

    async def accept_batch(self) -> list[trio.socket.SocketType]:
        """The connections waiting (:data:`ACCEPT_BATCH` at most); waits
        for one if none is. A checkpoint.

        Raises:
            OSError: accepting failed, for a reason that is not one
                connection's (:data:`ACCEPT_SKIPPED_ERRNOS`), before any
                connection was taken.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        accepted: list[trio.socket.SocketType] = []
        waited = False
        while True:
            try:
                sock, _ = self._listening.accept()
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
            accepted.append(trio.socket.from_stdlib_socket(sock))
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
    handle: Callable[[trio.socket.SocketType], Awaitable[object]],
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
                for sock in accepted:
                    nursery.start_soon(handle, sock, name=name)
