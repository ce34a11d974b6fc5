"""A lean RESP2 connection for the backplane's hot path: the writer's one
script per batch of publishes (:meth:`.redis.RedisHistory._write`), the
listener's notices (:meth:`.redis.RedisHistory._listen`) and the reader's
pipelined ``XRANGE`` of the streams they name (:meth:`.redis.RedisHistory._read`).

Why not coredis here: coredis (the client for everything else) runs a writer
and a reader task per connection with anyio streams between them and a
pool, and that was a third of the broker's busy time with the backplane
(BENCHMARKS.md, "A lean connection for the backplane's hot path"). The writer sends one
command and waits for its reply, the reader one pipeline, and the listener
only reads (and PINGs when silent): none needs a pool, so each owns one socket
here, writes its commands and reads their replies itself.

Where Redis is, and how to log in, comes from coredis' reading of the URL
(its pool's ``location`` and ``connection_kwargs``), so the ``--backplane``
URL forms stay one source of truth.

What a failure means, for the publish's answer:

- :class:`NotSentError`: the command never reached Redis. No connection
  could be made (or logging in failed), the connection held was found
  closed before sending (:meth:`RespConnection._usable`), or sending
  failed: Redis runs a command only once all of it has arrived.
- :class:`RespError`: Redis answered with an error; the connection stays.
- Anything else (a lost connection while waiting for the reply, a reply
  that is not RESP, a cancellation): Redis may have run it, unless
  :attr:`RespConnection.unsent` says the cancellation came before all of it
  was sent. The connection is closed, since its next reply could be this one's.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Sequence
from typing import Any

import trio

#: Most bytes one receive reads.
RECEIVE_BYTES = 65536


class RespError(Exception):
    """Redis answered the command with an error (``-ERR ...``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotSentError(ConnectionError):
    """The command never reached Redis: it was not run."""


class ConnectionLostError(ConnectionError):
    """Redis closed the connection, or answered what is not RESP."""


def encode(args: tuple[str | bytes, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


#: What :meth:`ReplyParser.parse` returns while the buffer ends within a reply.
NEED_DATA: Any = object()

#: Longest bulk string a reply may hold: Redis' own default limit
#: (``proto-max-bulk-len``); the replies read here are far shorter, so a
#: longer one is a broken server, not one to buffer.
MAX_BULK_BYTES = 512 << 20

#: Deepest nesting of arrays in a reply: those read here nest three deep
#: (``XRANGE``'s entries); deeper is a broken server, not a reply.
MAX_DEPTH = 16


class ReplyParser:
    """Takes RESP2 replies from the start of a buffer, one at a time, and
    keeps its place within a reply between receives: a reply that comes in
    many pieces (a long ``XRANGE`` comes in one per TCP segment) is parsed
    once, not again from its start at each piece. Bulk strings are bytes,
    simple strings str, errors :class:`RespError` instances (raised by the
    caller at the top level only), nulls None."""

    def __init__(self) -> None:
        #: Where the next element begins, and the arrays begun before it
        #: (their items so far and their count), for a reply not yet whole.
        self._position = 0
        self._arrays: list[tuple[list[Any], int]] = []

    def reset(self) -> None:
        """Forget the reply begun (its buffer is cleared)."""
        self._position = 0
        self._arrays = []

    def parse(self, buffer: bytearray) -> Any:
        """The reply at the start of ``buffer``, deleted from it; or
        :data:`NEED_DATA` if ``buffer`` ends within it (append to it, and
        call again).

        Raises:
            ConnectionLostError: it is not RESP2.
        """
        position = self._position
        arrays = self._arrays
        while True:
            end = buffer.find(b"\r\n", position)
            if end < 0:
                self._position = position
                return NEED_DATA
            kind = buffer[position]
            line = bytes(buffer[position + 1 : end])
            after = end + 2
            try:
                if kind == 0x24:  # $: bulk string
                    size = int(line)
                    if not -1 <= size <= MAX_BULK_BYTES:
                        raise ConnectionLostError(f"Redis sent a bulk length of {size}")
                    value: Any = None
                    if size >= 0:
                        if len(buffer) < after + size + 2:
                            self._position = position
                            return NEED_DATA
                        if buffer[after + size : after + size + 2] != b"\r\n":
                            raise ConnectionLostError(
                                f"Redis sent a bulk string longer than it said ({line[:40]!r})"
                            )
                        value = bytes(buffer[after : after + size])
                        after += size + 2
                elif kind == 0x2A:  # *: array
                    count = int(line)
                    if count < -1:
                        raise ConnectionLostError(f"Redis sent an array length of {count}")
                    if count > 0:
                        if len(arrays) >= MAX_DEPTH:
                            raise ConnectionLostError("Redis sent arrays nested too deep")
                        arrays.append(([], count))
                        position = after
                        continue
                    value = None if count < 0 else []
                elif kind == 0x3A:  # :: integer
                    value = int(line)
                elif kind == 0x2B:  # +: simple string
                    value = line.decode(errors="replace")
                elif kind == 0x2D:  # -: error
                    value = RespError(line.decode(errors="replace"))
                else:
                    raise ConnectionLostError(
                        f"Redis sent what is not RESP2 ({bytes(buffer[position:end])[:40]!r})"
                    )
            except ValueError:
                raise ConnectionLostError(
                    f"Redis sent a malformed reply ({line[:40]!r})"
                ) from None
            position = after
            while arrays:
                items, count = arrays[-1]
                items.append(value)
                if len(items) < count:
                    break
                arrays.pop()
                value = items
            else:
                del buffer[:position]
                self._position = 0
                return value


class RespConnection:
    """One connection to Redis, opened on first use and again after a
    failure, owned by the one task that uses it (the async context closes
    it). See the module docstring for what each failure means."""

    def __init__(
        self,
        location: Any,
        options: dict[str, Any],
        *,
        connect_timeout: float,
    ) -> None:
        #: coredis' ``TCPLocation`` (``host``, ``port``) or
        #: ``UnixDomainSocketLocation`` (``path``).
        self._location = location
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._db = int(options.get("db") or 0)
        self._ssl_context: ssl.SSLContext | None = options.get("ssl_context")
        self._connect_timeout = connect_timeout
        self._stream: trio.abc.Stream | None = None
        self._poll: Any = None
        self._buffer = bytearray()
        self._parser = ReplyParser()
        #: Whether the last command sent never wholly reached the socket: its
        #: sending (or connecting first) was cancelled. Redis runs a command
        #: only once all of it has arrived, and a cancelled send closes the
        #: connection, so Redis never runs it. (trio's ``send_all`` is
        #: cancelled only before it has handed over its last byte.)
        self.unsent = False

    @classmethod
    def like(cls, client: Any, *, connect_timeout: float) -> RespConnection:
        """A connection to where the coredis ``client`` connects, as it logs in."""
        pool = client.connection_pool
        return cls(pool.location, pool.connection_kwargs, connect_timeout=connect_timeout)

    async def __aenter__(self) -> RespConnection:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._poll = None
        self._buffer.clear()
        self._parser.reset()
        if stream is not None:
            await trio.aclose_forcefully(stream)
        else:
            await trio.lowlevel.checkpoint()

    async def call(self, *args: str | bytes) -> Any:
        """Send one command and return Redis' reply to it.

        Raises:
            NotSentError: it never reached Redis.
            RespError: Redis answered with an error.
            ConnectionLostError: Redis may have run it (the connection is closed).
        """
        await self.send(*args)
        return await self.receive()

    async def call_many(self, commands: Sequence[tuple[str | bytes, ...]]) -> list[Any]:
        """Send ``commands`` in one write (a pipeline) and return their
        replies in order. An error reply is its own command's: it is
        returned in its place, a :class:`RespError`, not raised.

        Raises:
            NotSentError: not all of them reached Redis (the first may
                have: a failed send can be cut anywhere in the pipeline).
            ConnectionLostError: Redis may have run some (the connection is closed).
        """
        await self._send(b"".join(encode(command) for command in commands))
        return [await self._receive() for _ in commands]

    async def send(self, *args: str | bytes) -> None:
        """Send one command (connecting first if needed).

        Raises:
            NotSentError: it never reached Redis.
        """
        await self._send(encode(args))

    async def send_more(self, *args: str | bytes) -> None:
        """Send one command on the connection open now, even while a reply
        is awaited (``PING`` to a subscribed connection, from another task).

        Raises:
            ConnectionLostError: none is open, or sending failed (the task
                that receives sees the connection end).
        """
        stream = self._stream
        if stream is None:
            raise ConnectionLostError("not connected")
        try:
            await stream.send_all(encode(args))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLostError(f"sending failed ({describe(exc)})") from exc

    async def _send(self, data: bytes) -> None:
        self.unsent = True
        stream = await self._ready()
        try:
            await stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.aclose()
            raise NotSentError(f"sending failed ({describe(exc)})") from exc
        except BaseException:
            await self.aclose()
            raise
        self.unsent = False

    async def receive(self) -> Any:
        """The next reply (for ``SUBSCRIBE``: the next message).

        Raises:
            RespError: the reply is an error (the connection stays).
            ConnectionLostError: the connection is gone (and closed).
        """
        reply = await self._receive()
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def _receive(self) -> Any:
        """The next reply, an error reply returned."""
        stream = self._stream
        if stream is None:
            raise ConnectionLostError("not connected")
        try:
            return await self._read(stream)
        except BaseException:
            await self.aclose()
            raise

    async def _read(self, stream: trio.abc.Stream) -> Any:
        buffer = self._buffer
        while True:
            reply = self._parser.parse(buffer)
            if reply is not NEED_DATA:
                return reply
            try:
                chunk = await stream.receive_some(RECEIVE_BYTES)
            except (OSError, trio.BrokenResourceError) as exc:
                raise ConnectionLostError(
                    f"the connection to Redis broke ({describe(exc)})"
                ) from exc
            if not chunk:
                raise ConnectionLostError("Redis closed the connection")
            buffer += chunk

    def _usable(self) -> bool:
        """Whether the idle connection held is still open: with no reply
        due, anything to read (the peer's end, a reset) means it is not."""
        if isinstance(self._stream, trio.SSLStream) and _tls_holds_bytes(self._stream):
            return False
        return not self._poll.poll(0)

    async def _ready(self) -> trio.abc.Stream:
        if self._stream is not None and not self._buffer and self._usable():
            return self._stream
        await self.aclose()
        try:
            with trio.fail_after(self._connect_timeout):
                self._stream = await self._connect()
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, RespError) as exc:
            await self.aclose()
            raise NotSentError(f"cannot connect to Redis ({describe(exc)})") from exc
        except BaseException:
            await self.aclose()
            raise
        return self._stream

    async def _connect(self) -> trio.abc.Stream:
        """Open, log in, select the database and ``PING`` (which also reads
        what a TLS server sends after its handshake, so that an idle
        connection has nothing to read while it is open)."""
        location = self._location
        socket_stream: trio.SocketStream
        if hasattr(location, "path"):
            socket_stream = await trio.open_unix_socket(location.path)
        else:
            socket_stream = await trio.open_tcp_stream(location.host, location.port)
        stream: trio.abc.Stream = socket_stream
        self._stream = stream
        if self._ssl_context is not None:
            stream = self._stream = trio.SSLStream(
                socket_stream, self._ssl_context, server_hostname=location.host
            )
        self._poll = select.poll()
        self._poll.register(socket_stream.socket.fileno(), select.POLLIN)
        hello: list[tuple[str | bytes, ...]] = []
        if self._password is not None:
            if self._username is not None:
                hello.append(("AUTH", self._username, self._password))
            else:
                hello.append(("AUTH", self._password))
        if self._db:
            hello.append(("SELECT", str(self._db)))
        hello.append(("PING",))
        await stream.send_all(b"".join(encode(command) for command in hello))
        for _ in hello:
            await self.receive()
        return stream


def _tls_holds_bytes(stream: trio.SSLStream[Any]) -> bool:
    """Whether ``stream`` holds bytes received and not yet read, which
    polling the socket cannot see: TLS hands over one record per read, and
    keeps the others in its buffers (trio's private ``_ssl_object``, decrypted,
    and ``_incoming``, not yet; tests/test_resp_hostile.py reads through them)."""
    return bool(stream._ssl_object.pending() or stream._incoming.pending)


def describe(exc: BaseException) -> str:
    """``exc`` in one line for a log or an answer: its type and the first
    line of its message."""
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
