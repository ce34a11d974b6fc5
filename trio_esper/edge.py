"""The HTTP edge: every connection, from accept to close, in one task.

Resource handling
-----------------
:meth:`Edge.serve` accepts connections (:mod:`.accepting`) and runs
:meth:`Edge.handle` for each in the edge's nursery. ``handle`` owns its
socket until it closes it, in its own ``finally``, whatever happened;
nothing else closes it but the forced end of shutdown (below). A
connection is served one of two ways:

* **Fast forms.** While the requests on a connection are plain HTTP/1.1
  ``POST /publish/{topic}`` or ``GET /subscribe/{topic}`` (what
  :func:`.h1.read_request` takes), the task serves them itself with the same
  code as the Quart routes (:mod:`.endpoints`), answering the same bytes.
  A subscribe's stream is served in the same task until it ends; the
  connection then closes. Bytes a client sends during its stream (pipelined
  requests included) are read and discarded, never executed.
* **Hypercorn.** At the first request the reader declines (another route or
  method, HTTP/1.0, HTTP/2, anything unusual or malformed), the same task
  runs Hypercorn's HTTP protocol on the connection, with the bytes already
  read replayed first; Hypercorn and Quart-Trio answer as they always do.
  ``fast_lane=False`` sends every connection there.
* **TLS.** With a TLS context (``--certfile``/``--keyfile``) the task wraps
  the socket in a :class:`trio.SSLStream`, does the handshake within the
  request-head timeout, and runs Hypercorn on the encrypted stream, which
  speaks HTTP/2 if ALPN chose ``h2`` and HTTP/1.1 otherwise. The fast forms
  read and write the socket's descriptor directly, so they serve plaintext
  connections only (README, "TLS and HTTP/2", has the measurements behind
  that choice). The task closes the TLS stream itself: ``close_notify``,
  within :data:`TLS_CLOSE_SECONDS`.

Error handling
--------------
Whatever fails while serving a connection -- our code, h11, h2, Hypercorn,
Quart -- ends that connection only: it is logged once, in one line (the
traceback at debug level), and never reaches the edge's nursery. A TLS
handshake that fails or times out (a scanner, plaintext sent to the TLS port,
a reset) is logged at debug level only: any client can cause one at will.

Timeouts
--------
A connection waiting for bytes is listed with its deadline; one reaper task
checks the list (a cancel scope per wait costs more than a publish's parsing).
A connection past its deadline has its reading side shut down, which wakes
its task: a partial request then gets 408, an idle one is just closed. The
deadlines: keep-alive idle between requests, the request head (from its
first byte), and the body (a stall, and a minimum average rate).
"""

from __future__ import annotations

import functools
import logging
import os
import select
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from wsgiref.handlers import format_date_time

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState

from . import endpoints, h1, logs
from .accepting import ConnectionSource, accept_connections
from .config import Config, ConfigError
from .errors import EsperError, LimitReached, RequestTimeout
from .hub import Hub
from .metrics import Metrics

log = logging.getLogger("trio_esper")

#: One receive takes at most this much (Hypercorn's MAX_RECV).
RECEIVE_BYTES = 64 * 1024
#: What one read of a stream's socket takes: its client sends nothing that
#: matters, so what it does send is discarded.
DISCARD_BYTES = 4096
#: The reaper looks this often at most (and at least four times per timeout).
REAP_INTERVAL_SECONDS = 1.0
#: A connection closed with unread input is drained this long at most, and
#: this much (see :meth:`Edge._linger`).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 256 * 1024
#: Retry-After for a connection over its address's limit.
CONNECTION_RETRY_AFTER_SECONDS = 1
#: How often shutdown looks whether HTTP/2 connections have written their
#: streams out (see :meth:`Edge._shut_down`).
STREAM_FLUSH_POLL_SECONDS = 0.01
#: ALPN protocols offered, preferred first (RFC 7301): a browser opens at most
#: six HTTP/1.1 connections per origin, while over HTTP/2 every EventSource of
#: a page shares one.
ALPN_PROTOCOLS = ("h2", "http/1.1")
#: RFC 9113, section 9.2.2: TLS 1.2 cipher suites for HTTP/2 must be
#: ephemeral and AEAD (Appendix A lists the rest as prohibited); TLS 1.3's are.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Closing a TLS connection writes ``close_notify``; a peer that stopped
#: reading gets this long before the socket is closed without it.
TLS_CLOSE_SECONDS = 1.0


def _address_of(sock: trio.socket.SocketType) -> str:
    try:
        address = sock.getpeername()
    except OSError:
        return ""
    # Interned: every subscription of the address holds the same string.
    return sys.intern(str(address[0])) if isinstance(address, tuple) else "local"


def _whole_head(buffer: bytes) -> h1.Sentinel:
    return h1.DECLINE if h1.head_complete(buffer) else h1.NEED_DATA


class _Expired(Exception):
    """A connection's deadline passed while it waited for bytes."""


class Connection:
    """One accepted connection, as the edge sees it."""

    __slots__ = ("_stream", "address", "budget", "expired", "socket")

    def __init__(
        self, sock: trio.socket.SocketType, budget: endpoints.PublishBudget | None
    ) -> None:
        self.socket = sock
        self._stream: trio.SocketStream | None = None
        #: The client's address (IP), what per-address limits count.
        self.address = _address_of(sock)
        #: The connection's publish rate limit, whoever serves it.
        self.budget = budget
        #: Set by the reaper: the wait that timed out.
        self.expired = False

    @property
    def stream(self) -> trio.SocketStream:
        """The socket as a trio stream, made when first asked for: the fast
        forms write the descriptor directly and never need one (making it
        costs two ``setsockopt`` calls per connection)."""
        if self._stream is None:
            self._stream = trio.SocketStream(self.socket)
        return self._stream

    @property
    def peer(self) -> str:
        """``host:port`` for the log (and ``local`` for a non-IP socket)."""
        try:
            address = self.socket.getpeername()
        except OSError:
            return "?"
        return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "local"

    @property
    def fileno(self) -> int:
        return self.socket.fileno()

    def write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now; return how many bytes that was.

        Raises:
            OSError: the connection is broken or closed.
        """
        try:
            return os.write(self.fileno, data)
        except BlockingIOError:
            return 0

    def direct_writer(self) -> Callable[[bytes], int]:
        """:meth:`write_nowait` for the topic's direct writes to a parked
        stream: ``os.write`` on the descriptor's number taken now, which
        raises ``BlockingIOError`` when the socket takes nothing (the hub's
        :data:`~trio_esper.hub.WriteNowait`). The topic calls it once per
        subscriber per event; a C callable, it runs no Python frame (a
        method of ours was a third of a delivery's instructions).

        The number stays this socket's while the writer is attached: the
        stream's task detaches it (``finally``) before its owner closes the
        socket, and shutdown closes sockets itself only after closing the hub,
        which ends every direct write (a closed subscription is never written to).
        """
        return functools.partial(os.write, self.fileno)

    async def send_all(self, data: bytes) -> None:
        """Write ``data``: directly if the socket takes it at once (an answer
        is a few hundred bytes), else through trio."""
        written = self.write_nowait(data)
        if written < len(data):
            await self.stream.send_all(data[written:])

    def has_arrived(self) -> bool:
        """Whether bytes (or the peer's EOF, or an error) wait unread: the
        connection's task will see them when it next runs, on a busy broker.
        ``poll``, not ``select``: any descriptor number works."""
        poller = select.poll()
        poller.register(self.fileno, select.POLLIN | select.POLLRDHUP)
        return bool(poller.poll(0))

    def interrupt(self) -> None:
        """Wake the connection's task from a read (it sees end of input) and
        from a write (it fails); the task closes the socket itself."""
        with suppress(OSError):  # not connected any more: its task already knows
            self.socket.shutdown(socket.SHUT_RDWR)

    def stop_reading(self) -> None:
        """Wake the connection's task from a read: it sees end of input."""
        with suppress(OSError):
            self.socket.shutdown(socket.SHUT_RD)


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) takes four times as long.
@dataclass(slots=True)
class _Opened:
    """A subscribe request checked, its stream not yet open."""

    plan: endpoints.Stream
    cors: endpoints.Headers
    close: bool
    """The connection ends with the stream (the client sent ``Connection: close``)."""


# Not frozen: one is built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) takes four times as long.
@dataclass(slots=True)
class _Refused:
    """A subscribe request refused: its answer, and whether the client keeps
    the connection."""

    answer: endpoints.Answer
    keep_alive: bool


class _HypercornStream:
    """The connection's socket stream as Hypercorn uses it.

    * The bytes the edge already read come first.
    * Ending output and closing leave the socket to its owner
      (:meth:`Edge.handle`), which closes it once Hypercorn is done, after a
      lingering close; a read in progress ends. Hypercorn ends a connection
      from its reading task, so it can do so while a response it has already
      framed waits to be written (a 413 with a request pipelined behind it:
      h11 refuses the bytes after a ``Connection: close`` response); that
      response is still written.
    """

    def __init__(self, stream: trio.abc.Stream, unread: bytes) -> None:
        self._stream = stream
        self._unread = unread
        self._closed = False
        self._receiving: trio.CancelScope | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._unread:
            data, self._unread = self._unread, b""
            await trio.lowlevel.checkpoint()
            return data
        with trio.CancelScope() as self._receiving:
            if not self._closed:
                return await self._stream.receive_some(max_bytes)
        raise trio.ClosedResourceError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._closed = True
        if self._receiving is not None:
            self._receiving.cancel()
        await trio.lowlevel.checkpoint()


class _HypercornPlainStream(_HypercornStream):
    """A plaintext connection: Hypercorn reads the peer's address from
    ``socket``, and takes a stream without ``do_handshake`` for plaintext."""

    def __init__(self, stream: trio.SocketStream, unread: bytes) -> None:
        super().__init__(stream, unread)
        self.socket = stream.socket


class _HypercornTLSStream(_HypercornStream):
    """A TLS connection whose handshake the edge has done: Hypercorn sees TLS
    by ``do_handshake`` (here a checkpoint), picks HTTP/2 or HTTP/1.1 by
    ``selected_alpn_protocol()``, and reads the peer's address from
    ``transport_stream.socket``, as it does with the ``SSLStream`` its own
    listener makes."""

    def __init__(self, tls: trio.SSLStream[trio.SocketStream]) -> None:
        super().__init__(tls, b"")
        self._tls = tls
        self.transport_stream = tls.transport_stream

    async def do_handshake(self) -> None:
        await self._tls.do_handshake()

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self._tls.selected_alpn_protocol()
        return protocol


def load_tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context for ``config.certfile`` and ``config.keyfile``
    (``None`` without either): TLS 1.2 or later, ALPN ``h2`` then ``http/1.1``.

    Raises:
        ConfigError: only one of the two is set; a file cannot be read,
            holds no PEM certificate or unencrypted PEM private key, or the
            key is not the certificate's.
    """
    certfile, keyfile = config.certfile, config.keyfile
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        given, missing = ("certfile", "keyfile") if keyfile is None else ("keyfile", "certfile")
        raise ConfigError(
            f"{given} is set but {missing} is not (--{missing}, ESPER_{missing.upper()}): "
            "TLS needs both"
        )
    certificate, key = _read_pem(certfile), _read_pem(keyfile)
    if b"-----BEGIN CERTIFICATE-----" not in certificate:
        raise ConfigError(f"certfile {certfile} holds no PEM certificate")
    # PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY") and OpenSSL's legacy PEM encryption.
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key or b"Proc-Type: 4,ENCRYPTED" in key:
        raise ConfigError(
            f"keyfile {keyfile} is encrypted: the broker takes an unencrypted key "
            "(protect it with file permissions)"
        )
    if b"PRIVATE KEY-----" not in key:
        raise ConfigError(f"keyfile {keyfile} holds no PEM private key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # RFC 9113, section 9.2: TLS 1.2 or later, without compression.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        # A password callback that refuses: OpenSSL would otherwise prompt
        # on the terminal for a key encrypted in a form not recognised above.
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except _PasswordNeeded:
        raise ConfigError(f"keyfile {keyfile} is encrypted") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"keyfile {keyfile} is not the key of the certificate in certfile {certfile}"
            ) from None
        raise ConfigError(f"certfile {certfile} and keyfile {keyfile}: {exc}") from None
    except OSError as exc:  # removed or changed since it was read
        raise ConfigError(f"certfile {certfile} and keyfile {keyfile}: {exc.strerror}") from None
    return context


class _PasswordNeeded(Exception):
    pass


def _no_password() -> bytes:
    raise _PasswordNeeded


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


class Edge:
    """Accepts and serves every connection of :func:`~trio_esper.server.serve`."""

    def __init__(
        self,
        config: Config,
        hub: Hub,
        app: AppWrapper,
        metrics: Metrics | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: every connection is TLS (:func:`load_tls_context`)."""
        self._config = config
        self._tls = tls
        self._hub = hub
        self._app = app
        self._metrics = metrics
        self._hyper = HypercornConfig()
        self._hyper.keep_alive_timeout = config.keep_alive_seconds
        # Publishers keep one connection for millions of requests (Hypercorn: 1000).
        self._hyper.keep_alive_max_requests = 1 << 62
        # Both front ends answer the same bytes: the fast forms send no Server field.
        self._hyper.include_server_header = False
        self._hyper.errorlog = _hypercorn_logger()
        self._context = WorkerContext(None)
        self._connections: set[Connection] = set()
        #: Open connections per client address.
        self._per_address: dict[str, int] = {}
        self._empty = trio.Event()
        #: Connections waiting for bytes: until when, and whether idle
        #: between requests (nothing of a request read yet).
        self._waiting: dict[Connection, tuple[float, bool]] = {}
        #: Hypercorn's servers of the connections it serves now.
        self._servers: set[TCPServer] = set()
        #: TLS handshakes in progress: shutdown cancels them.
        self._handshakes: set[trio.CancelScope] = set()
        self._closing = False
        self._date = (0, b"")
        #: Stream heads made this second (see _stream_head), and that second's Date.
        self._stream_heads: dict[tuple[object, ...], bytes] = {}
        self._stream_heads_date = b""
        # The same for every stream: encoded once.
        self._stream_fields = _encode_headers(endpoints.STREAM_HEADERS)
        self._opening_chunk = h1.chunk(endpoints.opening_frame(config))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def serve(
        self,
        listeners: Sequence[ConnectionSource],
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on ``listeners`` until ``shutdown`` is set, then shut down:
        idle connections close now, busy ones after their current answer,
        every stream ends (the hub ends them), and after the grace period the
        sockets of connections still open (a peer that stopped reading) are
        closed. Returns once every connection is gone."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reap)
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(accept_connections, listener, self.handle, nursery)
                task_status.started()
                await shutdown.wait()
                accepting.cancel_scope.cancel()
            await self._shut_down(self._config.shutdown_grace_seconds)
            nursery.cancel_scope.cancel()

    async def handle(self, sock: trio.socket.SocketType) -> None:
        """Serve one connection until it ends, and close it.

        Never raises but for cancellation: a failure ends this connection
        only, and is logged once.
        """
        config = self._config
        rate = config.publish_rate_per_connection
        connection = Connection(sock, endpoints.PublishBudget(rate) if rate else None)
        address = connection.address
        held = self._per_address.get(address, 0)
        if held >= config.max_connections_per_address:
            # Debug only: a client could otherwise flood the log at will.
            log.debug(
                "refused a connection from %s: its limit of connections is reached",
                address,
                extra={"event": "connection_refused", "client": address},
            )
            if self._metrics is not None:
                self._metrics.connection_error("refused")
            if self._tls is not None:
                # An answer would take a handshake first: the CPU the limit saves.
                sock.close()
                return
            refusal = LimitReached(
                f"this address holds its limit of {held} connections",
                retry_after_seconds=CONNECTION_RETRY_AFTER_SECONDS,
            )
            try:
                with trio.move_on_after(LINGER_SECONDS):
                    await self._refuse(connection, refusal)
                    await self._linger(connection)
            finally:
                sock.close()  # cancelled too (shutdown): never left to the collector
            return
        self._per_address[address] = held + 1
        self._connections.add(connection)
        try:
            if self._tls is not None:
                await self._serve_tls(connection, self._tls)
            else:
                if config.fast_lane:
                    unread = await self._serve_fast(connection)
                else:
                    read = await self._read_head(connection, b"")
                    unread = None if read is None else read[0]
                if unread is not None:
                    await self._serve_hypercorn(
                        connection, _HypercornPlainStream(connection.stream, unread)
                    )
                await self._linger(connection)
        except* Exception as group:
            error = _first_leaf(group)
            # One line; at debug level with the traceback.
            log.warning(
                "connection from %s ended by %s: %s",
                connection.peer,
                type(error).__name__,
                error,
                exc_info=group if log.isEnabledFor(logging.DEBUG) else None,
                extra={
                    "event": "connection_failed",
                    "client": address,
                    "error": type(error).__name__,
                },
            )
            if self._metrics is not None:
                self._metrics.connection_error("failure")
            del error  # its traceback holds this frame: a cycle
        finally:
            sock.close()
            if self._per_address[address] == 1:
                del self._per_address[address]
            else:
                self._per_address[address] -= 1
            self._connections.discard(connection)
            if not self._connections:
                self._empty.set()

    async def _linger(self, connection: Connection) -> None:
        """Before closing a connection that has unread input: end output and
        read what the client still sends, for a moment. Closing with unread
        input makes the kernel send a reset, which can destroy the answer
        just written (a 413 or 408 while the client still sends its body)."""
        if connection.fileno < 0 or not connection.has_arrived():
            return
        with suppress(OSError):
            connection.socket.shutdown(socket.SHUT_WR)
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_MAX_BYTES:
                try:
                    data = os.read(connection.fileno, RECEIVE_BYTES)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(connection.socket)
                    continue
                except OSError:
                    return
                if not data:
                    return
                drained += len(data)

    async def _shut_down(self, grace_seconds: float) -> None:
        log.info(
            "shutting down: %d connections open",
            len(self._connections),
            extra={"event": "stop", "connections": len(self._connections)},
        )
        self._closing = True
        self._hub.close()
        for handshake in self._handshakes:
            handshake.cancel()
        for connection, (_, idle) in list(self._waiting.items()):
            if idle and not connection.has_arrived():
                connection.stop_reading()
        with trio.move_on_after(grace_seconds):
            # Streams served through Hypercorn end before it is told to stop:
            # over HTTP/2 it would close a connection whose last stream ended
            # before that stream's END_STREAM went out.
            await self._hub.wait_closed()
            # Hypercorn's HTTP/2 protocol writes a stream's END_STREAM from
            # its send task after the stream's body ended; told to stop before
            # that, it closes the connection first (a fixed moment's wait was
            # not enough on a busy machine). Hypercorn signals nothing: poll.
            while self._h2_unflushed():  # noqa: ASYNC110
                await trio.sleep(STREAM_FLUSH_POLL_SECONDS)
            # Hypercorn closes a connection after its current response once
            # `terminated` is set, and wakes idle keep-alive ones.
            await self._context.terminated.set()
            while self._connections:
                self._empty = trio.Event()
                await self._empty.wait()
        if self._connections:
            log.warning(
                "closing %d connections still open after the grace period",
                len(self._connections),
                extra={"event": "stop_forced", "connections": len(self._connections)},
            )
        for connection in list(self._connections):
            # Closing the socket wakes a write blocked on a peer that stopped
            # reading (trio.lowlevel.notify_closing), even a shielded one.
            connection.socket.close()

    # --- Hypercorn --------------------------------------------------------

    async def _serve_hypercorn(self, connection: Connection, stream: _HypercornStream) -> None:
        # Every request's ASGI scope gets a copy of this state: the publish
        # route charges the connection's budget, as the fast forms do.
        state = ConnectionState({endpoints.BUDGET_KEY: connection.budget})
        server = TCPServer(self._app, self._hyper, self._context, state, stream)  # type: ignore[arg-type]
        self._servers.add(server)
        try:
            await server
        finally:
            self._servers.discard(server)
            # TCPServer -> protocol -> its bound protocol_send -> TCPServer: a
            # reference cycle of about 4 KB per connection that only the cyclic
            # collector would free (and rarely, under our raised thresholds).
            server.__dict__.pop("protocol", None)

    def _h2_unflushed(self) -> bool:
        """Whether an HTTP/2 connection Hypercorn serves still has a stream
        open, or data or an END_STREAM to write.

        Reads Hypercorn 0.18's ``H2Protocol``: ``streams`` holds the streams
        whose response has not ended; ``stream_buffers`` the data its send
        task has yet to write, each entry removed once the stream's
        END_STREAM is written (``complete``: only END_STREAM is left). An
        entry whose stream the client reset before its body ended is never
        written nor removed: it is neither of those and is not waited for.
        """
        for server in self._servers:
            protocol = getattr(server.__dict__.get("protocol"), "protocol", None)
            if not isinstance(protocol, H2Protocol) or protocol.closed:
                continue
            if protocol.streams or any(
                buffer.buffer or buffer.complete for buffer in protocol.stream_buffers.values()
            ):
                return True
        return False

    # --- TLS ----------------------------------------------------------------

    async def _serve_tls(self, connection: Connection, context: ssl.SSLContext) -> None:
        """Handshake, then serve the connection through Hypercorn (HTTP/2 if
        ALPN chose ``h2``) and close the TLS stream. Without a handshake there
        is nothing to close but the socket (:meth:`handle` does): a stream
        whose handshake never ran would try it in ``aclose``."""
        tls = trio.SSLStream(connection.stream, context, server_side=True)
        if not await self._handshake(connection, tls):
            return
        try:
            await self._serve_hypercorn(connection, _HypercornTLSStream(tls))
        finally:
            await self._close_tls(connection, tls)

    async def _handshake(
        self, connection: Connection, tls: trio.SSLStream[trio.SocketStream]
    ) -> bool:
        """Do the TLS handshake within the request-head timeout; whether it
        succeeded. A failure is the client's (a scanner, plaintext HTTP, a
        reset, no shared protocol version or cipher): logged at debug level."""
        if self._closing:
            return False
        with trio.move_on_after(self._config.request_head_timeout_seconds) as scope:
            self._handshakes.add(scope)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                reason = str(error.__cause__ or error)
                outcome = f"failed: {reason}"
            else:
                return True
            finally:
                self._handshakes.discard(scope)
        if scope.cancelled_caught:
            reason = outcome = "cut short by shutdown" if self._closing else "timed out"
        log.debug(
            "TLS handshake with %s %s",
            connection.peer,
            outcome,
            extra={"event": "tls_failed", "client": connection.address, "reason": reason},
        )
        return False

    async def _close_tls(
        self, connection: Connection, tls: trio.SSLStream[trio.SocketStream]
    ) -> None:
        """Close the TLS stream: ``close_notify`` (RFC 8446, section 6.1), then
        the socket; within :data:`TLS_CLOSE_SECONDS` even when cancelled or
        the peer stopped reading. A peer still sending (a body after 413)
        gets the lingering close instead, so the answer is not lost to a reset."""
        await self._linger(connection)
        with (
            trio.CancelScope(deadline=trio.current_time() + TLS_CLOSE_SECONDS, shield=True),
            suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await tls.aclose()

    # --- Fast forms -------------------------------------------------------

    async def _serve_fast(self, connection: Connection) -> bytes | None:
        """Serve the connection's requests while they are fast forms.

        Returns the bytes read but not consumed -- the start of the first
        request declined -- for Hypercorn; or ``None`` once the connection is
        done (closed by the peer, timed out, ``Connection: close``, a stream
        ended, or shutdown).
        """
        config = self._config
        buffer = b""
        # Whether the task yielded since its last read: a task just started
        # has had no step yet, so its first request is read without one.
        checkpointed = True
        while True:
            read = await self._read_head(
                connection, buffer, self._parse_head, checkpointed=checkpointed
            )
            checkpointed = False
            if read is None:
                return None
            buffer, request = read
            del read  # an open stream keeps nothing of its request (below)
            if not isinstance(request, h1.Request):
                return buffer  # declined, or cut short: Hypercorn answers as it would
            if request.route == "subscribe":
                buffer = buffer[request.head_bytes :]
                opened = self._open_stream(request, connection.address)
                del request  # an open stream keeps nothing of its request
                if isinstance(opened, _Refused):
                    if not await self._send_answer(connection, opened.answer, opened.keep_alive):
                        return None
                    continue
                await self._stream(connection, opened)
                return None
            # The body: a stall timeout, and a minimum average rate.
            end = request.head_bytes + request.content_length
            now = trio.current_time()
            body_deadline = (
                now
                + config.request_body_timeout_seconds
                + request.content_length / config.request_body_min_rate_bytes
            )
            while len(buffer) < end:
                deadline = min(now + config.request_body_timeout_seconds, body_deadline)
                try:
                    data = await self._receive(connection, deadline)
                except _Expired:
                    await self._refuse(connection, RequestTimeout("request body too slow"))
                    return None
                if not data:
                    return buffer  # Hypercorn answers a truncated body as the route would
                buffer += data
                now = trio.current_time()
            body, buffer = buffer[request.head_bytes : end], buffer[end:]
            if not await self._publish(connection, request, body):
                return None
            checkpointed = True

    def _parse_head(self, buffer: bytes) -> h1.Request | h1.Sentinel:
        """The fast forms' reading of a head; a head they decline is read
        whole all the same, so the head timeout holds for Hypercorn's too."""
        request = h1.read_request(buffer, self._config.max_body_bytes)
        if request is h1.DECLINE and not h1.head_complete(buffer):
            return h1.NEED_DATA
        return request

    async def _read_head(
        self,
        connection: Connection,
        buffer: bytes,
        parse: Callable[[bytes], h1.Request | h1.Sentinel] = _whole_head,
        *,
        checkpointed: bool = False,
    ) -> tuple[bytes, h1.Request | h1.Sentinel] | None:
        """Read a request head: until ``parse(buffer)`` is not
        :data:`~.h1.NEED_DATA` (by default: until the head is whole, for
        Hypercorn). Idle until its first byte (the keep-alive timeout), then
        the head timeout (408). ``checkpointed``: the task has yielded since
        it last read (see :meth:`_receive`).

        Returns the buffer and what ``parse`` made of it (``NEED_DATA`` if
        the peer ended its side mid-head: Hypercorn answers that); ``None``
        if the connection is done (closed idle, timed out, shutdown).
        """
        config = self._config
        deadline = trio.current_time() + (
            config.request_head_timeout_seconds if buffer else config.keep_alive_seconds
        )
        while (parsed := parse(buffer)) is h1.NEED_DATA:
            if not buffer and self._closing:
                return None
            try:
                data = await self._receive(
                    connection, deadline, idle=not buffer, checkpointed=checkpointed
                )
            except _Expired:
                if buffer:
                    await self._refuse(connection, RequestTimeout("request head too slow"))
                return None
            if not data:
                return (buffer, parsed) if buffer else None
            if not buffer:
                deadline = trio.current_time() + config.request_head_timeout_seconds
            buffer += data
            checkpointed = False
        return buffer, parsed

    async def _receive(
        self,
        connection: Connection,
        deadline: float,
        *,
        idle: bool = False,
        checkpointed: bool = False,
    ) -> bytes:
        """The next bytes from the connection, or ``b""`` at its end. A
        checkpoint, unless ``checkpointed`` (the task yielded since its last
        read: a publish always does) and the bytes are there already.

        Reads the socket directly: trio's ``receive_some`` costs more than
        the rest of a publish's reading.

        Raises:
            _Expired: ``deadline`` passed first.
        """
        fd = connection.fileno
        waited = False
        while True:
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                pass
            except OSError:  # reset by the peer
                return b""
            else:
                if not data and connection.expired:
                    raise _Expired
                if not waited and not checkpointed:
                    # Under load the next request is often there already; the
                    # checkpoint keeps one busy publisher from starving the
                    # rest (after a wait, the task has yielded already).
                    await trio.lowlevel.checkpoint()
                return data
            waited = True
            self._waiting[connection] = (deadline, idle)
            try:
                await trio.lowlevel.wait_readable(connection.socket)
            finally:
                self._waiting.pop(connection, None)

    async def _reap(self) -> None:
        """Wake connections whose deadline passed (see the module docstring)."""
        config = self._config
        shortest = min(
            config.keep_alive_seconds,
            config.request_head_timeout_seconds,
            config.request_body_timeout_seconds,
        )
        while True:
            await trio.sleep(min(REAP_INTERVAL_SECONDS, shortest / 4))
            self.reap_expired(trio.current_time())

    def reap_expired(self, now: float) -> None:
        """Wake the connections whose deadline is ``now`` or earlier, unless
        what they wait for has arrived (their task has yet to run, on a busy
        broker): that request is served."""
        for connection, (deadline, _) in list(self._waiting.items()):
            if deadline <= now and not connection.has_arrived():
                connection.expired = True
                connection.stop_reading()

    async def _refuse(self, connection: Connection, error: EsperError) -> None:
        """Answer ``error`` (the connection then closes)."""
        await self._send_answer(connection, endpoints.error_answer(error, []), keep_alive=False)

    async def _publish(self, connection: Connection, request: h1.Request, body: bytes) -> bool:
        """Answer a publish; whether the connection stays open. A checkpoint."""
        config = self._config
        cors = endpoints.cors_headers(config, request.header(b"origin"))
        publish = endpoints.PublishRequest(
            request.topic,
            body,
            request.query,
            content_type=request.header(b"content-type"),
            authorization=request.header(b"authorization"),
            cookie=request.header(b"cookie"),
            budget=connection.budget,
        )
        try:
            answer = endpoints.json_answer(
                await endpoints.publish(config, self._hub, publish), cors
            )
        except EsperError as error:
            logs.auth_failed(error, client=connection.address, topic=request.topic)
            answer = endpoints.error_answer(error, cors)
            # Hub.publish is a checkpoint; so is a refusal, so that a client
            # pipelining bad requests cannot keep the task from yielding.
            await trio.lowlevel.checkpoint()
        return await self._send_answer(connection, answer, request.keep_alive)

    def _open_stream(self, request: h1.Request, client: str) -> _Opened | _Refused:
        """Check ``client``'s subscribe request: where its stream starts, or its refusal."""
        config = self._config
        cors = endpoints.cors_headers(config, request.header(b"origin"))
        subscribe = endpoints.SubscribeRequest(
            request.topic,
            request.query,
            authorization=request.header(b"authorization"),
            cookie=request.header(b"cookie"),
            last_event_id=request.header(b"last-event-id"),
        )
        try:
            plan = endpoints.plan_subscribe(config, subscribe)
        except EsperError as error:
            logs.auth_failed(error, client=client, topic=request.topic)
            return _Refused(endpoints.error_answer(error, cors), request.keep_alive)
        return _Opened(plan, cors, close=not request.keep_alive)

    async def _stream(self, connection: Connection, opened: _Opened) -> None:
        """Serve a subscriber's stream until it ends or the peer leaves, then
        end the body (the connection then closes).

        The task parks on the socket (to see the peer leave) rather than on
        the queue: while it is parked the topic writes to the socket directly
        (:meth:`Subscription.park`), and only what the socket does not take
        at once is queued and wakes this task to write it.
        """
        sock = connection.socket
        started = False
        try:
            async with self._hub.subscribe(
                opened.plan.topic, frame=h1.chunk, client=connection.address
            ) as subscription:
                await connection.send_all(self._stream_head(opened.cors, opened.close))
                started = True
                if opened.plan.resume:
                    async with aclosing(
                        endpoints.replay_pages(self._hub, subscription, opened.plan)
                    ) as pages:
                        async for page in pages:
                            await connection.send_all(h1.chunk(page))
                # Dropping a slow subscriber also abandons a write it is stuck in.
                subscription.on_drop = connection.interrupt
                subscription.attach(connection.direct_writer())
                try:
                    while True:
                        with trio.CancelScope() as parked:
                            if subscription.park(parked.cancel):
                                await trio.lowlevel.wait_readable(sock)
                                try:
                                    if not os.read(sock.fileno(), DISCARD_BYTES):
                                        return  # the peer closed its end
                                except BlockingIOError:
                                    pass
                                continue
                        subscription.unpark()
                        chunk = subscription.take_nowait()
                        if chunk is None:
                            break
                        if chunk:
                            await connection.send_all(chunk)
                    if not subscription.dropped:
                        await connection.send_all(h1.LAST_CHUNK)
                finally:
                    subscription.unpark()
                    subscription.attach(None)
        except EsperError as error:
            if started:
                # A history read failed: end the stream; the client
                # reconnects and resumes.
                log.warning(
                    "stream to %s on %s ended: %s",
                    connection.peer,
                    opened.plan.topic,
                    error.reason,
                    extra={
                        "event": "stream_failed",
                        "client": connection.address,
                        "topic": opened.plan.topic,
                        "reason": error.reason,
                    },
                )
            else:  # refused on entry: the broker is shutting down
                await self._send_answer(
                    connection, endpoints.error_answer(error, opened.cors), keep_alive=False
                )
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # reset, or interrupted by a drop or by shutdown

    async def _send_answer(
        self, connection: Connection, answer: endpoints.Answer, keep_alive: bool
    ) -> bool:
        """Write ``answer``; whether the connection stays open."""
        if answer.status >= 400 and self._metrics is not None:
            self._metrics.error_answered(answer.status)
        keep = keep_alive and not self._closing and not _closes(answer)
        try:
            await connection.send_all(self._head(answer, close=not keep) + answer.body)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return keep

    def _head(self, answer: endpoints.Answer, *, close: bool) -> bytes:
        headers = [*answer.headers, ("content-length", str(len(answer.body)))]
        return h1.response_head(
            answer.status, _encode_headers(headers), date=self._http_date(), close=close
        )

    def _stream_head(self, cors: endpoints.Headers, close: bool) -> bytes:
        """A stream's response head and opening chunk. Every subscriber with
        the same CORS fields and ``close`` gets the same bytes within a
        second (its Date), so each is made once a second; the CORS fields
        take one value per allowed origin, plus none, which bounds the cache."""
        date = self._http_date()
        if date is not self._stream_heads_date:
            self._stream_heads = {}
            self._stream_heads_date = date
        key = (close, *cors)
        head = self._stream_heads.get(key)
        if head is None:
            head = self._stream_heads[key] = (
                h1.response_head(
                    200,
                    self._stream_fields + _encode_headers(cors),
                    date=date,
                    close=close,
                    chunked=True,
                )
                + self._opening_chunk
            )
        return head

    def _http_date(self) -> bytes:
        # RFC 9110, section 6.6.1: an origin server with a clock MUST send Date.
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, format_date_time(now).encode("ascii"))
        return self._date[1]


def _closes(answer: endpoints.Answer) -> bool:
    return ("connection", "close") in answer.headers


def _encode_headers(headers: endpoints.Headers) -> list[tuple[bytes, bytes]]:
    return [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers]


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class _OneLineTracebacks(logging.Filter):
    """Hypercorn logs an application error with its traceback; a client that
    can trigger one could flood the log. One line each, the traceback only
    when debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not log.isEnabledFor(logging.DEBUG):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def _hypercorn_logger() -> logging.Logger:
    logger = logging.getLogger("trio_esper.hypercorn")
    if not logger.filters:
        logger.addFilter(_OneLineTracebacks())
    return logger
