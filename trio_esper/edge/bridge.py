"""The Hypercorn bridge: where the edge hands a connection to Hypercorn (and
through it to Quart-Trio), and the one module that touches names those
packages do not publish.

Owns: Hypercorn's per-connection servers while they run, and its worker
context (the ``terminated`` event that ends keep-alive connections at
shutdown). The connection's socket stays its task's (:mod:`.connection`).

The private names, each used with the shape :data:`PRIVATE_SHAPES` lists
and :func:`check_private_names` checks (at start-up, and in
tests/test_bridge.py, so that an upgrade fails loudly rather than quietly
changes behaviour; the versions are pinned in pyproject.toml):

* ``hypercorn.trio.tcp_server.TCPServer(app, config, context, state,
  stream)``, awaited: Hypercorn's server for one connection. It tells TLS
  from plaintext by trying ``stream.do_handshake`` (``AttributeError``:
  plaintext, the peer's address then from ``stream.socket``; else
  ``selected_alpn_protocol()`` and ``stream.transport_stream.socket``).
* ``TCPServer._read_data()``, which returns once the peer has ended its
  input, and ``TCPServer.idle_task`` (``stop()``), the keep-alive wait:
  :class:`_TCPServer` stops the wait then; ``TCPServer.protocol_send(event)``,
  where an ``Updated`` event with ``idle`` restarts that wait: it does not
  once the input has ended, nor does the first event without ``idle`` stop
  it over HTTP/2 with prior knowledge (h11's, for the preface's ``PRI *``
  line, as ``H11Protocol._handle_events`` sends it before switching);
  ``TCPServer._idle_timeout()``, the wait ``run`` starts first and each
  ``Updated`` with ``idle`` restarts: it does not when the edge has read an
  HTTP/1 request; between HTTP/1 requests it ends at the keep-alive (its
  ``config.keep_alive_timeout``), at shutdown (``context.terminated``) or,
  once a byte of the next request has come, at the head timeout, and closes
  as Hypercorn's does (``_initiate_server_close()``).
* ``TCPServer.protocol``, set while it runs: a ``ProtocolWrapper`` whose
  ``protocol`` is an ``H2Protocol`` (``streams``, ``stream_buffers`` of
  ``StreamBuffer`` with ``buffer`` and ``complete``, ``closed``) over HTTP/2.
* Over HTTP/2, the ``send`` an application gets is an ``HTTPStream``'s
  ``app_send`` (``stream_id``, and ``send``: its ``H2Protocol``'s
  ``stream_send``, which takes ``StreamClosed``); the protocol's
  ``connection`` (the ``h2`` state machine), ``send``, ``priority`` and
  ``has_data``; ``StreamBuffer.close()``. :class:`H2Stream` uses them to
  reset a stream (:class:`BoundedApp`).
* ``Config.h2_max_concurrent_streams``, which Hypercorn advertises as
  SETTINGS_MAX_CONCURRENT_STREAMS.
* ``hypercorn.trio.worker_context.WorkerContext(max_requests)`` and its
  ``terminated`` event.
* ``hypercorn.utils.wrap_app(app, wsgi_max_body_size, mode)``.
* ``quart_trio.asgi.TrioASGIHTTPConnection.handle_request(nursery,
  request, send)`` and ``QuartTrio.asgi_http_class``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from typing import Any

import h2.errors
import h2.exceptions
import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import wrap_app
from priority.priority import MissingStreamError
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from .. import endpoints, web
from ..config import Config, ConfigError
from ..errors import RequestTimeout
from .answers import Answers
from .connection import Connection

log = logging.getLogger("trio_esper")

#: The least an HTTP/2 connection may hold unwritten, all its streams
#: together (see :func:`connection_unsent_max_bytes`): many small events
#: queued for a slow reader, as an HTTP/1.1 socket's kernel buffer holds.
CONNECTION_UNSENT_MIN_BYTES = 4 * 1024 * 1024
#: A connection's unwritten bytes may reach this many of the largest
#: publish body (a stalled reader's few largest events).
CONNECTION_UNSENT_MAX_BODIES = 4
#: Streams a client may open past ``--h2-max-streams`` to be refused:
#: advertising the limit itself would make a browser queue the next stream
#: on its side, where it waits for a slot without end.
H2_REFUSAL_HEADROOM_STREAMS = 100


def connection_unsent_max_bytes(config: Config) -> int:
    """The most an HTTP/2 connection may hold unwritten, all its streams
    together: past it, the stream that adds more is reset."""
    return max(CONNECTION_UNSENT_MIN_BYTES, CONNECTION_UNSENT_MAX_BODIES * config.max_body_bytes)


def h2_advertised_streams(config: Config) -> int:
    """SETTINGS_MAX_CONCURRENT_STREAMS: ``--h2-max-streams`` and room for
    the streams over it to reach the broker and be refused."""
    return config.h2_max_streams + min(config.h2_max_streams, H2_REFUSAL_HEADROOM_STREAMS)


#: How an HTTP/2 connection with prior knowledge starts: the first line of
#: its preface (RFC 9113, section 3.4), all the edge waits for (a "head").
H2_PREFACE_LINE = b"PRI * HTTP/2.0\r\n"


class HypercornStream:
    """The connection's stream as Hypercorn uses it.

    * The bytes the edge already read come first.
    * Ending output and closing leave the socket to its owner (the
      connection's task), which closes it once Hypercorn is done, after a
      lingering close; a read in progress ends. Hypercorn ends a connection
      from its reading task, so it can do so while a response it has already
      framed waits to be written (a 413 with a request pipelined behind it:
      h11 refuses the bytes after a ``Connection: close`` response); that
      response is still written.
    """

    def __init__(self, stream: trio.abc.Stream, unread: bytes) -> None:
        self._stream = stream
        self._unread = unread
        #: HTTP/2 with prior knowledge: the edge read the preface's first line.
        self.h2_preface = unread.startswith(H2_PREFACE_LINE)
        #: Set when bytes arrive (:meth:`_TCPServer._idle_timeout` replaces it).
        self.arrived = trio.Event()
        self._closed = False
        self._receiving: trio.CancelScope | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._unread:
            data, self._unread = self._unread, b""
            await trio.lowlevel.checkpoint()
            return data
        with trio.CancelScope() as self._receiving:
            if not self._closed:
                received = await self._stream.receive_some(max_bytes)
                self.arrived.set()
                return received
        raise trio.ClosedResourceError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    @property
    def holds_request(self) -> bool:
        """Whether the bytes the edge read, still to be read here, are an
        HTTP/1 request head (not HTTP/2's connection preface)."""
        return bool(self._unread) and not self.h2_preface

    async def aclose(self) -> None:
        self._closed = True
        if self._receiving is not None:
            self._receiving.cancel()
        await trio.lowlevel.checkpoint()


class PlainStream(HypercornStream):
    """A plaintext connection: Hypercorn reads the peer's address from
    ``socket``, and takes a stream without ``do_handshake`` for plaintext."""

    def __init__(self, connection: Connection, unread: bytes) -> None:
        super().__init__(connection, unread)
        self.socket = connection.socket


class TLSStream(HypercornStream):
    """A TLS connection whose handshake the edge has done: Hypercorn sees TLS
    by ``do_handshake`` (here a checkpoint), picks HTTP/2 or HTTP/1.1 by
    ``selected_alpn_protocol()``, and reads the peer's address from
    ``transport_stream.socket``, as it does with the ``SSLStream`` its own
    listener makes."""

    def __init__(self, tls: trio.SSLStream[Connection]) -> None:
        super().__init__(tls, b"")
        self._tls = tls
        self.transport_stream = tls.transport_stream

    async def do_handshake(self) -> None:
        await self._tls.do_handshake()

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self._tls.selected_alpn_protocol()
        return protocol


class H2Stream:
    """One HTTP/2 stream, as its application task reaches it: Hypercorn's
    protocol for the connection, and the stream's id."""

    def __init__(self, protocol: H2Protocol, stream_id: int) -> None:
        self.protocol = protocol
        self.stream_id = stream_id

    @classmethod
    def of(cls, send: Callable[..., Awaitable[None]]) -> H2Stream:
        """The stream whose application was given ``send`` (over HTTP/2:
        its ``HTTPStream.app_send``, see the module's docstring)."""
        http_stream: HTTPStream = send.__self__  # type: ignore[attr-defined]
        protocol: H2Protocol = http_stream.send.__self__  # type: ignore[attr-defined]
        return cls(protocol, http_stream.stream_id)

    def rank(self) -> int:
        """Streams open on the connection that were opened before this one."""
        return sum(1 for stream_id in self.protocol.streams if stream_id < self.stream_id)

    def unsent_bytes(self) -> int:
        """What the stream's application sent that is not written yet."""
        buffer = self.protocol.stream_buffers.get(self.stream_id)
        return 0 if buffer is None else len(buffer.buffer)

    def connection_unsent_bytes(self) -> int:
        """What every stream of the connection has not written yet."""
        return sum(len(buffer.buffer) for buffer in self.protocol.stream_buffers.values())

    async def reset(self, error_code: h2.errors.ErrorCodes) -> None:
        """RST_STREAM with ``error_code``; the stream ends as if the client
        had reset it (its application is told ``http.disconnect``) and what
        it had not written is let go."""
        protocol = self.protocol
        try:
            protocol.connection.reset_stream(self.stream_id, error_code)
        except h2.exceptions.ProtocolError:
            return  # closed already
        await protocol.send(RawData(data=protocol.connection.data_to_send()))
        buffer = protocol.stream_buffers.get(self.stream_id)
        if buffer is not None:
            # Emptied now; Hypercorn's send task drops it when it next looks
            # (it cannot end a reset stream, and lets it go).
            await buffer.close()
        await protocol.stream_send(StreamClosed(stream_id=self.stream_id))
        try:
            protocol.priority.unblock(self.stream_id)
        except MissingStreamError:
            return
        await protocol.has_data.set()


class BoundedApp:
    """The application as Hypercorn calls it, with the bounds HTTP/2 needs.

    * A stream beyond ``--h2-max-streams`` open on its connection is refused
      (RST_STREAM REFUSED_STREAM, which clients retry: RFC 9113, 8.7) before
      the application sees it.
    * A stream that cannot be written -- its client keeps its flow-control
      window shut -- counts against the subscriber's ``--queue`` and
      ``--queue-bytes`` bounds as an HTTP/1.1 subscriber that stops reading
      does: the messages (each one or more events) its application sent that
      are not written yet, and their bytes. Past either bound, or past
      :func:`connection_unsent_max_bytes` for the connection, the stream is
      reset (RST_STREAM CANCEL): the subscriber is dropped, and reconnects
      and resumes as after any drop. (Hypercorn's stream buffer
      stops holding the application back once a shut window paused it.)
    """

    def __init__(self, app: AppWrapper, config: Config, on_dropped: Callable[[], object]) -> None:
        """``on_dropped`` is called for each stream reset for its client not
        reading (the hub counts it with the subscribers it drops)."""
        self._app = app
        self._on_dropped = on_dropped
        self._max_streams = config.h2_max_streams
        self._max_messages = config.queue_events
        self._max_bytes = config.queue_bytes
        self._connection_max_bytes = connection_unsent_max_bytes(config)

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] != "http" or scope["http_version"] != "2":
            await self._app(scope, receive, send, sync_spawn, call_soon)
            return
        stream = H2Stream.of(send)
        if stream.rank() >= self._max_streams:
            log.debug(
                "refused stream %d: its connection serves its limit of %d streams",
                stream.stream_id,
                self._max_streams,
                extra={"event": "stream_refused", "client": _client(scope)},
            )
            await stream.reset(h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        bounded = _BoundedSend(
            stream,
            send,
            self._max_messages,
            self._max_bytes,
            self._connection_max_bytes,
            self._on_dropped,
        )
        await self._app(scope, receive, bounded, sync_spawn, call_soon)


def _client(scope: Any) -> str | None:
    client = scope.get("client")
    return None if client is None else str(client[0])


class _BoundedSend:
    """An HTTP/2 stream's ``send``, which resets the stream once it holds
    too much unwritten (see :class:`BoundedApp`)."""

    def __init__(
        self,
        stream: H2Stream,
        send: Callable[[Any], Awaitable[None]],
        max_messages: int,
        max_bytes: int,
        connection_max_bytes: int,
        on_dropped: Callable[[], object],
    ) -> None:
        self._stream = stream
        self._on_dropped = on_dropped
        self._send = send
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._connection_max_bytes = connection_max_bytes
        #: Where each message not yet wholly written ends, in bytes sent.
        self._ends: deque[int] = deque()
        self._sent = 0
        self._reset = False

    async def __call__(self, message: Any) -> None:
        await self._send(message)
        if self._reset or message["type"] != "http.response.body" or not message.get("body"):
            return
        self._sent += len(message["body"])
        self._ends.append(self._sent)
        written = self._sent - self._stream.unsent_bytes()
        while self._ends and self._ends[0] <= written:
            self._ends.popleft()
        if len(self._ends) > self._max_messages:
            why = f"{len(self._ends)} messages unwritten, over the queue bound"
        elif self._sent - written > self._max_bytes:
            why = f"{self._sent - written} bytes unwritten, over the queue's bytes bound"
        elif self._stream.connection_unsent_bytes() > self._connection_max_bytes:
            why = f"its connection holds over {self._connection_max_bytes} bytes unwritten"
        else:
            return
        self._reset = True
        self._on_dropped()
        log.info(
            "HTTP/2 stream %d dropped: %s (its client does not read)",
            self._stream.stream_id,
            why,
            extra={"event": "subscriber_dropped", "reason": why},
        )
        await self._stream.reset(h2.errors.ErrorCodes.CANCEL)


class _TCPServer(TCPServer):
    """Hypercorn's server for one connection, closing it when the peer ends
    its input. Hypercorn's closes only once its keep-alive wait is over: a
    client that closed between requests left the socket in CLOSE-WAIT for
    the whole ``--keep-alive`` (its protocol has nothing to close then, and
    the connection's task group waits for the idle task). A request still
    being answered when the input ends makes the protocol idle afterwards
    (``Updated(idle=True)``), which would start the wait again: once the
    input has ended it does not."""

    #: Set by :meth:`Hypercorn.serve`: the edge's ``--request-head-timeout``
    #: and its 408 answer's bytes (their Date is the moment's).
    head_timeout_seconds: float
    head_refusal: Callable[[], bytes]
    _input_ended = False
    _preface_read = False

    async def _read_data(self) -> None:
        await super()._read_data()
        self._input_ended = True
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if self._input_ended and isinstance(event, Updated) and event.idle:
            return  # nothing more can come: the task group ends, and the connection closes
        if isinstance(event, Updated) and not event.idle and not self._preface_read:
            self._preface_read = True
            stream: object = self.stream  # (Hypercorn types it as trio's streams)
            if isinstance(stream, HypercornStream) and stream.h2_preface:
                # h11 took the preface's "PRI *" line for a request; HTTP/2
                # restarts the wait only when a stream closes, so a connection
                # that opened none was held until its client left.
                return
        await super().protocol_send(event)

    async def _idle_timeout(self) -> None:
        # A connection handed over with an HTTP/1 request the edge read is
        # not idle. Hypercorn starts this wait before reading, and once
        # shutdown has begun it closes at once: a request read during the
        # grace period went unanswered. h11 answers or refuses what the edge
        # read (a whole head, or all the peer sent), then stops or restarts
        # the wait. (An HTTP/2 connection may open no stream: it waits.)
        stream: object = self.stream  # (Hypercorn types it as trio's streams)
        if not isinstance(stream, HypercornStream):
            await super()._idle_timeout()
            return
        if stream.holds_request:
            return
        if stream.h2_preface or isinstance(self.protocol.protocol, H2Protocol):
            await super()._idle_timeout()
            return
        # HTTP/1 between requests: idle until the next request's first byte
        # (or shutdown), then the head timeout, as the edge times a first
        # request's head; h11 stops this wait once the head is whole.
        stream.arrived = trio.Event()
        with trio.move_on_after(self.config.keep_alive_timeout):
            async with trio.open_nursery() as waiting:
                for wait in (self.context.terminated.wait, stream.arrived.wait):
                    waiting.start_soon(_cancel_after, wait, waiting.cancel_scope)
        if stream.arrived.is_set() and not self.context.terminated.is_set():
            await trio.sleep(self.head_timeout_seconds)
            with (
                trio.CancelScope(shield=True),
                suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await stream.send_all(self.head_refusal())
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


async def _cancel_after(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()


async def _send_refusal(self: H11Protocol, status_code: int) -> None:
    """``H11Protocol._send_error_response``, with a one-line ``text/plain``
    reason as every other refusal has (Hypercorn's has an empty body). Its
    one caller awaits it while handling h11's ``RemoteProtocolError``: the
    reason is that error's message."""
    error = sys.exception()
    detail = str(error).splitlines()[0] if isinstance(error, h11.RemoteProtocolError) else ""
    # h11 quotes an illegal field line whole, as a bytearray's repr: left out.
    detail = detail.partition(": bytearray(")[0][:200]
    if status_code == 431:  # h11's "Receive buffer too long"
        detail = f"request head larger than {self.config.h11_max_incomplete_size} bytes"
    elif not detail:
        detail = "the request is not valid HTTP/1.1"
    body = f"{detail}\n".encode()
    head = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *self.config.response_headers("h11"),
    ]
    events = (h11.Response(status_code=status_code, headers=head), h11.Data(data=body))
    try:
        # One write: the connection ends right after it (a stream's task
        # can end it between two writes, and the body was lost).
        data = b"".join(self.connection.send(e) or b"" for e in (*events, h11.EndOfMessage()))
    except h11.LocalProtocolError:  # as Hypercorn's _send_h11_event
        if self.connection.their_state != h11.ERROR:
            raise
        return
    await self.send(RawData(data=data))


class Hypercorn:
    """Hypercorn, serving the connections the edge hands it, for one edge."""

    def __init__(
        self, config: Config, app: AppWrapper, *, on_dropped: Callable[[], object]
    ) -> None:
        """``on_dropped``: see :class:`BoundedApp`."""
        self._app = BoundedApp(app, config, on_dropped)
        self._config = HypercornConfig()
        self._config.h2_max_concurrent_streams = h2_advertised_streams(config)
        self._config.keep_alive_timeout = config.keep_alive_seconds
        # Publishers keep one connection for millions of requests (Hypercorn: 1000).
        self._config.keep_alive_max_requests = 1 << 62
        # Both front ends answer the same bytes: the fast forms send no Server field.
        self._config.include_server_header = False
        self._config.errorlog = _hypercorn_logger()
        self._context = WorkerContext(None)
        # Idempotent, the same for every edge: h11's refusals say why.
        H11Protocol._send_error_response = _send_refusal  # type: ignore[method-assign]
        self._head_timeout_seconds = config.request_head_timeout_seconds
        answers = Answers(config)
        refusal = endpoints.error_answer(RequestTimeout("request head too slow"), [])
        self._head_refusal = lambda: answers.head(refusal, close=True) + refusal.body
        #: The servers of the connections Hypercorn serves now.
        self._servers: set[TCPServer] = set()

    async def serve(self, stream: HypercornStream, budget: endpoints.PublishBudget | None) -> None:
        """Serve the connection behind ``stream`` until Hypercorn is done with it."""
        # Every request's ASGI scope gets a copy of this state: the publish
        # route charges the connection's budget, as the fast forms do.
        state = ConnectionState({endpoints.BUDGET_KEY: budget})
        server = _TCPServer(self._app, self._config, self._context, state, stream)  # type: ignore[arg-type]
        server.head_timeout_seconds = self._head_timeout_seconds
        server.head_refusal = self._head_refusal
        self._servers.add(server)
        try:
            await server
        finally:
            self._servers.discard(server)
            # TCPServer -> protocol -> its bound protocol_send -> TCPServer: a
            # reference cycle per connection that only the cyclic collector
            # would free (and rarely, under our raised thresholds).
            server.__dict__.pop("protocol", None)

    def unflushed(self) -> bool:
        """Whether an HTTP/2 connection still has a stream open, or data or
        an END_STREAM to write.

        ``H2Protocol.streams`` holds the streams whose response has not
        ended; ``stream_buffers`` the data its send task has yet to write,
        each entry removed once the stream's END_STREAM is written
        (``complete``: only END_STREAM is left). An entry whose stream the
        client reset before its body ended is never written nor removed: it
        is neither of those and is not waited for.
        """
        for server in self._servers:
            wrapper: ProtocolWrapper | None = server.__dict__.get("protocol")
            if wrapper is None:  # not started yet
                continue
            protocol = wrapper.protocol
            if not isinstance(protocol, H2Protocol) or protocol.closed:
                continue
            if protocol.streams or any(
                buffer.buffer or buffer.complete for buffer in protocol.stream_buffers.values()
            ):
                return True
        return False

    async def terminate(self) -> None:
        """Close each connection after its current response, and the idle
        keep-alive ones now."""
        await self._context.terminated.set()


def wrap_asgi(app: QuartTrio) -> AppWrapper:
    """``app`` as Hypercorn's per-connection server takes an application."""
    return wrap_app(app, HypercornConfig.wsgi_max_body_size, "asgi")


class ClosingHTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's HTTP connection, with the final response message shielded.

    quart-trio cancels its per-request nursery as soon as it receives
    ``http.disconnect``. Hypercorn sends that message from *inside* our final
    ``send()`` (when it tidies the stream), so the cancellation lands while
    hypercorn is still closing a ``Connection: close`` / HTTP/1.0 socket or
    arming the keep-alive idle timer: the client never sees EOF and idle
    connections are never closed. Shielding that one call lets hypercorn
    finish; its socket writes are shielded anyway, so this adds no new wait.
    Set as the application's ``asgi_http_class``.

    It also owns what a handler holds for the request (:func:`..web.held`):
    released when the request ends, however it ends.
    """

    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, send: Callable[[Any], Awaitable[None]]
    ) -> None:
        async def send_last_shielded(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        async with AsyncExitStack() as held:
            request.scope[web.HELD_KEY] = held
            await super().handle_request(nursery, request, send_last_shielded)


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


def _parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _assigns(function: Callable[..., object], *names: str) -> bool:
    """Whether ``function`` sets each of ``self.<name>`` (annotated or not)."""
    source = _source(function)
    return all(re.search(rf"self\.{name}\b\s*(:[^=\n]*)?=", source) for name in names)


def _source(function: Callable[..., object]) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


#: Each private name this module uses, and what it must look like: a check
#: that holds in the pinned versions (True) or a problem.
PRIVATE_SHAPES: dict[str, Callable[[], bool]] = {
    "TCPServer(app, config, context, state, stream)": lambda: (
        _parameters(TCPServer.__init__) == ["self", "app", "config", "context", "state", "stream"]
    ),
    "TCPServer is awaitable": lambda: hasattr(TCPServer, "__await__"),
    "TCPServer._read_data() reads to the end; .idle_task.stop()": lambda: (
        _parameters(TCPServer._read_data) == ["self"]
        and "self.idle_task.restart(self._task_group, self._idle_timeout)"
        in _source(TCPServer.run)
        and _parameters(TCPServer._idle_timeout) == ["self"]
        and "self.context.terminated.wait()" in _source(TCPServer._idle_timeout)
        and "self.config.keep_alive_timeout" in _source(TCPServer._idle_timeout)
        and _parameters(TCPServer._initiate_server_close) == ["self"]
        and re.search(
            r"h11\.Request\):\s*await self\.send\(Updated\(idle=False\)\)\s*"
            r"await self\._check_protocol\(event\)",
            _source(H11Protocol._handle_events),
        )
        is not None
        and _parameters(TCPServer.protocol_send) == ["self", "event"]
        and "isinstance(event, Updated)" in _source(TCPServer.protocol_send)
        and "event.idle" in _source(TCPServer.protocol_send)
        and _assigns(TCPServer.__init__, "idle_task")
        and _parameters(TrioSingleTask.stop) == ["self"]
    ),
    "H11Protocol._send_error_response(status_code), awaited in h11's error's handler only": (
        lambda: (
            _parameters(H11Protocol._send_error_response)
            in (["self", "status_code"], ["status_code"])
            and re.search(
                r"except h11\.RemoteProtocolError as error:\s*if [^\n]*:\s*"
                r"await self\._send_error_response\(error\.error_status_hint\)",
                _source(H11Protocol._handle_events),
            )
            is not None
            and _source(H11Protocol).count("self._send_error_response(") == 1
            and _assigns(H11Protocol.__init__, "connection", "send")
        )
    ),
    "TCPServer.run tells TLS by stream.do_handshake, else reads stream.socket": lambda: all(
        part in _source(TCPServer.run)
        for part in (
            "self.stream.do_handshake()",
            "except AttributeError",
            "self.stream.selected_alpn_protocol()",
            "self.stream.transport_stream.socket",
            "self.stream.socket",
        )
    ),
    "TCPServer.run sets self.protocol to a ProtocolWrapper": lambda: (
        re.search(r"self\.protocol = ProtocolWrapper\(", _source(TCPServer.run)) is not None
    ),
    "ProtocolWrapper.protocol holds the H11Protocol or H2Protocol": lambda: (
        re.search(r"self\.protocol = H2Protocol\(", _source(ProtocolWrapper.__init__)) is not None
    ),
    "H2Protocol.streams, .stream_buffers and .closed": lambda: _assigns(
        H2Protocol.__init__, "streams", "stream_buffers", "closed"
    ),
    "StreamBuffer.buffer and .complete": lambda: (
        _assigns(StreamBuffer.__init__, "buffer")
        and isinstance(inspect.getattr_static(StreamBuffer, "complete"), property)
    ),
    "an HTTP/2 application's send is its HTTPStream's app_send": lambda: (
        re.search(
            r"spawn_app\(\s*self\.app, self\.config, self\.scope, self\.app_send",
            _source(HTTPStream.handle),
        )
        is not None
        and _assigns(HTTPStream.__init__, "send", "stream_id")
    ),
    "HTTPStream.send is its H2Protocol's stream_send, which takes StreamClosed": lambda: (
        "self.stream_send," in _source(H2Protocol._create_stream)
        and "isinstance(event, StreamClosed)" in _source(H2Protocol.stream_send)
    ),
    "H2Protocol.connection, .send, .priority and .has_data": lambda: _assigns(
        H2Protocol.__init__, "connection", "send", "priority", "has_data"
    ),
    "StreamBuffer.close()": lambda: _parameters(StreamBuffer.close) == ["self"],
    "Config.h2_max_concurrent_streams": lambda: isinstance(
        HypercornConfig.h2_max_concurrent_streams, int
    ),
    "WorkerContext(max_requests) with a terminated event": lambda: (
        _parameters(WorkerContext.__init__) == ["self", "max_requests"]
        and _assigns(WorkerContext.__init__, "terminated")
    ),
    "wrap_app(app, wsgi_max_body_size, mode)": lambda: (
        _parameters(wrap_app) == ["app", "wsgi_max_body_size", "mode"]
        and hasattr(HypercornConfig, "wsgi_max_body_size")
    ),
    "TrioASGIHTTPConnection.handle_request(nursery, request, send)": lambda: (
        _parameters(TrioASGIHTTPConnection.handle_request)
        == ["self", "nursery", "request", "send"]
    ),
    "QuartTrio.asgi_http_class": lambda: issubclass(
        QuartTrio.asgi_http_class, TrioASGIHTTPConnection
    ),
}


@functools.cache
def check_private_names() -> tuple[str, ...]:
    """The private names of :data:`PRIVATE_SHAPES` that do not have the
    shape this module uses, in the installed versions (none: all is well).
    Checked once per process."""
    return tuple(name for name, holds in PRIVATE_SHAPES.items() if not _holds(holds))


def require_private_names() -> None:
    """Check the private names (:func:`check_private_names`) before serving.

    Raises:
        ConfigError: one of them does not have the shape this module uses.
    """
    problems = check_private_names()
    if problems:
        raise ConfigError(
            "the installed Hypercorn or quart-trio is not the version trio_esper is "
            f"written for (reinstall with constraints.txt): {'; '.join(problems)}"
        )


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:
        return False
