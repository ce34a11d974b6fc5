"""One accepted connection: its socket, from the edge's accept to its one close.

Owns the socket. Every read and write the edge makes goes through
:class:`Connection`, which translates the socket's errors into trio's two
stream errors in one place (:func:`_stream_error`): an error that means the
peer is gone raises :class:`trio.BrokenResourceError`, a socket already
closed :class:`trio.ClosedResourceError`; end of input is ``b""``. It is a
:class:`trio.abc.HalfCloseableStream` itself, so Hypercorn and TLS use it in
place of trio's ``SocketStream``: one translation for every front end, and
no ``@contextmanager`` in the error path (trio's leaves a reference cycle
per broken connection on Python 3.12+, which only the collector frees).

Owns the direct writer too (:meth:`Connection.attach`): the topic's task
writes a parked subscriber's events to the socket's descriptor number
itself, and the number could name another connection's socket once this one
is closed. :meth:`Connection.close` detaches the subscription first, and it
is the only way the socket is closed, so no write can outlive the socket.
"""

from __future__ import annotations

import errno
import functools
import os
import select
import socket
from contextlib import suppress

import trio

from ..accepting import peer_address
from ..endpoints import PublishBudget
from ..hub import Subscription
from .lifetime import Deadlines
from .readiness import Readiness

#: One receive takes at most this much (Hypercorn's MAX_RECV).
RECEIVE_BYTES = 64 * 1024
#: What one read of a stream's socket takes: its client sends nothing that
#: matters, so what it does send is discarded.
DISCARD_BYTES = 4096
#: A connection closed with unread input is drained this long at most, and
#: this much (see :meth:`Connection.linger`).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 256 * 1024


class Expired(Exception):
    """A connection's deadline passed while it waited for bytes."""


def _stream_error(error: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    """``error`` from the socket as trio's stream error (trio's own
    ``_translate_socket_errors_to_stream_errors`` makes the same split)."""
    if error.errno == errno.EBADF:
        return trio.ClosedResourceError("the connection's socket is closed")
    return trio.BrokenResourceError(f"the connection broke: {error}")


def _address_of(sock: trio.socket.SocketType) -> str:
    try:
        return peer_address(sock.getpeername())
    except OSError:
        return ""


class Connection(trio.abc.HalfCloseableStream):
    """One accepted connection, as the edge sees it.

    Resource handling: the edge's connection task builds it around the
    accepted socket and calls :meth:`close` in its ``finally``; shutdown may
    call :meth:`close` earlier, past its grace period, and a TLS stream over
    it calls :meth:`aclose` after its ``close_notify``. Each of those is
    :meth:`close`; nothing else closes the socket.
    """

    __slots__ = (
        "_attached",
        "_deadlines",
        "_drained",
        "_readiness",
        "_socket",
        "address",
        "budget",
        "expired",
    )

    def __init__(
        self,
        sock: trio.socket.SocketType,
        budget: PublishBudget | None,
        deadlines: Deadlines,
        readiness: Readiness,
        address: str | None = None,
    ) -> None:
        """``address``: the peer's, as ``accept`` gave it (else asked of the socket)."""
        self._socket = sock
        self._deadlines = deadlines
        self._readiness = readiness
        #: The last :meth:`receive` emptied the socket (see there).
        self._drained = False
        self._attached: Subscription | None = None
        #: The client's address (IP), what per-address limits count.
        self.address = _address_of(sock) if address is None else address
        #: The connection's publish rate limit, whoever serves it.
        self.budget = budget
        #: Set by the reaper: the wait that timed out.
        self.expired = False

    @property
    def socket(self) -> trio.socket.SocketType:
        """The socket, for its addresses and options (Hypercorn reads the
        peer's address from it); closing it is :meth:`close`'s."""
        return self._socket

    @property
    def peer(self) -> str:
        """``host:port`` for the log (and ``local`` for a non-IP socket)."""
        try:
            address = self._socket.getpeername()
        except OSError:
            return "?"
        return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "local"

    @property
    def fileno(self) -> int:
        """The descriptor's number; -1 once closed."""
        return self._socket.fileno()

    # --- reading ------------------------------------------------------------

    async def receive(
        self, deadline: float, *, idle: bool = False, checkpointed: bool = False
    ) -> bytes:
        """The next bytes from the peer, or ``b""`` at the end of its input.

        A checkpoint, unless ``checkpointed`` (the task yielded since its
        last read: a publish always does) and the bytes are there already.
        Reads the descriptor directly: trio's ``receive_some`` costs more
        than the rest of a publish's reading. ``idle``: nothing of a request
        is read yet (shutdown wakes such a wait; see :class:`.Deadlines`).

        Raises:
            Expired: ``deadline`` passed first.
            trio.BrokenResourceError: the peer reset the connection.
            trio.ClosedResourceError: the socket is closed.
        """
        waited = False
        # After a read that emptied the socket, what arrives is new input,
        # which the edge-triggered set reports: the task waits without a
        # read first (a publisher sends its next request once answered).
        read = not self._drained
        while True:
            if read:
                try:
                    data = os.read(self._socket.fileno(), RECEIVE_BYTES)
                except BlockingIOError:
                    pass
                except OSError as error:
                    raise _stream_error(error) from None
                else:
                    # Fewer bytes than asked for: none were left.
                    self._drained = 0 < len(data) < RECEIVE_BYTES
                    if not data and self.expired:
                        raise Expired
                    if not waited and not checkpointed:
                        # Under load the next request is often there already; the
                        # checkpoint keeps one busy publisher from starving the
                        # rest (after a wait, the task has yielded already).
                        await trio.lowlevel.checkpoint()
                    return data
            read = True
            waited = True
            deadlines = self._deadlines
            deadlines.start(self, deadline, idle)
            try:
                await self._readiness.wait_readable(self._socket.fileno())
            finally:
                deadlines.stop(self)

    async def discard_some(self) -> bool:
        """Throw input away (a subscriber's client sends nothing that
        matters while its stream is open), waiting for some if none is
        there; False once the peer has ended its input. A checkpoint.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`receive`.
        """
        return bool(await self.receive_some(DISCARD_BYTES))

    async def peek(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the peer's first bytes, left unread (``b""``
        at the end of its input), once some have arrived.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`receive`.
        """
        try:
            return await self._socket.recv(max_bytes, socket.MSG_PEEK)
        except OSError as error:
            raise _stream_error(error) from None

    def has_arrived(self) -> bool:
        """Whether bytes (or the peer's EOF, or an error) wait unread: the
        connection's task will see them when it next runs, on a busy broker.
        ``poll``, not ``select``: any descriptor number works."""
        poller = select.poll()
        poller.register(self._socket.fileno(), select.POLLIN | select.POLLRDHUP)
        return bool(poller.poll(0))

    # --- writing ------------------------------------------------------------

    def try_write(self, data: bytes | memoryview) -> int:
        """Write what the socket takes of ``data`` now (perhaps nothing);
        return how many bytes that was.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`receive`.
        """
        try:
            return os.write(self._socket.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError as error:
            raise _stream_error(error) from None

    async def write_all(self, data: bytes) -> None:
        """Write ``data``; a checkpoint only if the socket does not take it
        all at once (an answer is a few hundred bytes): the fast forms
        checkpoint where they choose to.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`receive`.
        """
        written = self.try_write(data)
        if written < len(data):
            await self._write_rest(memoryview(data)[written:])

    async def _write_rest(self, view: memoryview) -> None:
        while view:
            await trio.lowlevel.wait_writable(self._socket)
            view = view[self.try_write(view) :]

    # --- trio's Stream interface (Hypercorn, TLS) ---------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` (:data:`RECEIVE_BYTES` if ``None``), or ``b""``
        at the end of the peer's input. No deadline: Hypercorn keeps its own."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                data = os.read(self._socket.fileno(), max_bytes or RECEIVE_BYTES)
            except BlockingIOError:
                waited = True
                await self._readiness.wait_readable(self._socket.fileno())
                continue
            except OSError as error:
                raise _stream_error(error) from None
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting for the socket as needed; a checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        with memoryview(data) as view:
            written = self.try_write(view)
            if written < len(view):
                await self._write_rest(view[written:])
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._socket)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        with suppress(OSError):
            self._socket.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        """:meth:`close` (for a TLS stream over the connection)."""
        self.close()
        await trio.lowlevel.checkpoint()

    # --- the direct writer -------------------------------------------------

    def attach(self, subscription: Subscription) -> None:
        """Let ``subscription``'s topic write to this socket directly while
        the subscriber is parked, until :meth:`detach` or :meth:`close`.

        The writer is ``os.write`` on the descriptor's number itself, a C
        callable that runs no Python frame per delivery. A dropped subscriber
        interrupts the connection (:meth:`interrupt`): a write stuck on a
        peer that stopped reading is abandoned.
        """
        self.detach()
        subscription.attach(functools.partial(os.write, self._socket.fileno()), self.interrupt)
        self._attached = subscription

    def detach(self) -> None:
        """End direct writes to this socket (safe to call when none are attached)."""
        if self._attached is not None:
            self._attached.detach()
            self._attached = None

    # --- ending -------------------------------------------------------------

    def interrupt(self) -> None:
        """Wake the connection's task from a read (it sees end of input) and
        from a write (it fails); the task closes the socket itself."""
        with suppress(OSError):  # not connected any more: its task already knows
            self._socket.shutdown(socket.SHUT_RDWR)

    def stop_reading(self) -> None:
        """Wake the connection's task from a read: it sees end of input."""
        with suppress(OSError):
            self._socket.shutdown(socket.SHUT_RD)

    def expire(self) -> None:
        """The reaper's verdict: the wait in progress timed out."""
        self.expired = True
        self.stop_reading()

    def nudge(self) -> None:
        """The reaper's second look: input has arrived past the deadline;
        wake the task to read it."""
        self._readiness.nudge(self._socket.fileno())

    async def linger(self) -> None:
        """Before closing a connection that has unread input: end output and
        read what the client still sends, for a moment. Closing with unread
        input makes the kernel send a reset, which can destroy the answer
        just written (a 413 or 408 while the client still sends its body)."""
        if self.fileno < 0 or not self.has_arrived():
            return
        with suppress(OSError):
            self._socket.shutdown(socket.SHUT_WR)
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_MAX_BYTES:
                try:
                    data = os.read(self._socket.fileno(), RECEIVE_BYTES)
                except BlockingIOError:
                    await self._readiness.wait_readable(self._socket.fileno())
                    continue
                except OSError:
                    return
                if not data:
                    return
                drained += len(data)

    def close(self) -> None:
        """Detach the direct writer, then close the socket (this wakes a
        task blocked on it, even a shielded one: trio's ``notify_closing``).
        Idempotent."""
        self.detach()
        self._readiness.forget(self._socket.fileno())
        self._socket.close()
