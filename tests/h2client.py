"""An HTTP/2 cleartext client for the tests (:class:`H2Client`): the ``h2``
library's state machine over a plain trio TCP stream (or a TLS one), with
prior knowledge, as ``curl --http2-prior-knowledge`` connects."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio

from .conftest import STEP_SECONDS

SUBSCRIBED = b": subscribed\n\n"

#: HTTP/2 frame types and the END_STREAM flag (RFC 9113, section 6).
DATA, HEADERS, RST_STREAM, GOAWAY = 0x0, 0x1, 0x3, 0x7
END_STREAM = 0x1


@dataclass
class H2Stream:
    """What one client stream has received."""

    stream_id: int
    status: int | None = None
    data: bytearray = field(default_factory=bytearray)
    #: A HEADERS or DATA frame with END_STREAM arrived.
    ended: bool = False
    #: The error code of a RST_STREAM the server sent.
    reset_by_server: int | None = None
    #: We reset it ourselves.
    reset_by_us: bool = False


class H2Client:
    """One h2c connection: the ``h2`` state machine over a trio TCP stream.

    A reader task (:meth:`run`, started by :meth:`start`) feeds every
    received byte to the state machine, records status and DATA per stream,
    acknowledges DATA (so flow-control windows reopen), and flushes whatever
    ``h2`` wants to send (SETTINGS ACKs, WINDOW_UPDATEs, PING ACKs). Writers
    share one lock, and each flush sends everything pending under it, so
    frames go out in the order ``h2`` produced them.

    END_STREAM, RST_STREAM and GOAWAY are also read straight off the wire
    (:meth:`_track_frames`): ``h2`` 4.x moves the connection to CLOSED on a
    GOAWAY and raises ``ProtocolError`` at any frame after it, though RFC 9113
    lets a server finish its streams after GOAWAY. From that point on, only
    the raw record is kept (``h2_error``), which is all a shutdown test needs.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        *,
        settings: dict[int, int] | None = None,
        acknowledge: bool = True,
    ) -> None:
        """``settings``: SETTINGS sent in place of ``h2``'s defaults (e.g.
        ``INITIAL_WINDOW_SIZE`` 0). ``acknowledge``: False never reopens a
        flow-control window (no WINDOW_UPDATE), as a client that stopped
        reading would."""
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        if settings is not None:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.acknowledge = acknowledge
        self.streams: dict[int, H2Stream] = {}
        self.settings_received = False
        #: The server's GOAWAY, as ``(last_stream_id, error_code)``.
        self.goaway: tuple[int, int] | None = None
        #: The server closed the TCP connection (or it broke).
        self.eof = False
        #: ``h2`` refused what the server sent (after a GOAWAY, see above).
        self.h2_error: h2.exceptions.ProtocolError | None = None
        self.pings_acked: set[bytes] = set()
        self._raw = bytearray()
        self._send_lock = trio.Lock()
        self._changed = trio.Event()
        self._reader_done = trio.Event()
        self._reader_scope: trio.CancelScope | None = None

    @property
    def closing(self) -> bool:
        """The server sent GOAWAY or closed the connection."""
        return self.eof or self.goaway is not None

    async def start(self, nursery: trio.Nursery) -> None:
        """Send the preface and SETTINGS, start the reader in ``nursery``, and
        wait for the server's SETTINGS (so its MAX_CONCURRENT_STREAMS is known)."""
        self.conn.initiate_connection()
        await self.flush()
        nursery.start_soon(self.run)
        await self.wait_for(lambda: self.settings_received, what="server SETTINGS")

    def close_now(self) -> None:
        """Close the socket at once (idempotent); wakes the reader, which ends."""
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        self.stream.socket.close()

    async def flush(self) -> None:
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data and not self.eof and self.h2_error is None:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._mark_eof()

    def _mark_eof(self) -> None:
        self.eof = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            with trio.CancelScope() as self._reader_scope:
                while True:
                    try:
                        data = await self.stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        self._mark_eof()
                        return
                    self._track_frames(data)
                    if self.h2_error is None:
                        try:
                            self._handle(self.conn.receive_data(data))
                        except h2.exceptions.ProtocolError as error:
                            if self.goaway is None:
                                raise  # the server broke the protocol
                            self.h2_error = error
                    await self.flush()
                    self._notify()
        finally:
            self._reader_done.set()

    def _track_frames(self, data: bytes) -> None:
        """Record END_STREAM, RST_STREAM and GOAWAY from the raw frames."""
        self._raw += data
        while len(self._raw) >= 9:
            length = int.from_bytes(self._raw[:3], "big")
            if len(self._raw) < 9 + length:
                return
            kind, flags = self._raw[3], self._raw[4]
            stream_id = int.from_bytes(self._raw[5:9], "big") & 0x7FFF_FFFF
            payload = bytes(self._raw[9 : 9 + length])
            del self._raw[: 9 + length]
            stream = self.streams.get(stream_id)
            if kind in (DATA, HEADERS) and flags & END_STREAM and stream is not None:
                stream.ended = True
            elif kind == RST_STREAM and stream is not None and not stream.reset_by_us:
                stream.reset_by_server = int.from_bytes(payload[:4], "big")
            elif kind == GOAWAY:
                last_stream_id, error_code = struct.unpack(">II", payload[:8])
                self.goaway = (last_stream_id & 0x7FFF_FFFF, error_code)

    def _handle(self, events: list[h2.events.Event]) -> None:
        for event in events:
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived):
                if stream is not None:
                    stream.status = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                if self.acknowledge:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                if stream is not None:
                    stream.data += event.data
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_received = True
            elif isinstance(event, h2.events.PingAckReceived):
                self.pings_acked.add(event.ping_data)
            # StreamEnded, StreamReset and ConnectionTerminated: _track_frames.

    async def wait_for(
        self, predicate: Callable[[], bool], *, what: str, timeout: float = STEP_SECONDS
    ) -> None:
        """Wait until ``predicate()`` holds; fail after ``timeout``, or at
        once if the connection has closed without it holding."""
        with trio.move_on_after(timeout):
            while not predicate():
                if self.eof:
                    pytest.fail(f"connection closed waiting for {what}: {self.describe()}")
                await self._changed.wait()
            return
        pytest.fail(f"timed out after {timeout} s waiting for {what}: {self.describe()}")

    def describe(self) -> str:
        return (
            f"eof={self.eof} goaway={self.goaway} h2_error={self.h2_error!r} "
            f"streams={len(self.streams)} ended={sum(s.ended for s in self.streams.values())} "
            f"reset_by_server={sum(s.reset_by_server is not None for s in self.streams.values())}"
        )

    def request(self, path: str, method: str = "GET", body: bytes = b"") -> int:
        """Start a request (HEADERS, and DATA if ``body``); flush to send it."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", method),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", path),
        ]
        if body:
            headers.append(("content-length", str(len(body))))
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.streams[stream_id] = H2Stream(stream_id)
        return stream_id

    def reset(self, stream_id: int) -> None:
        """RST_STREAM(CANCEL); flush to send it."""
        self.streams[stream_id].reset_by_us = True
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    async def ping(self) -> None:
        """Round-trip a PING: the server has read everything sent before."""
        payload = struct.pack(">d", time.monotonic())
        self.conn.ping(payload)
        await self.flush()
        await self.wait_for(lambda: payload in self.pings_acked, what="PING ACK")

    async def subscribe(self, topic: str, count: int) -> list[int]:
        """Open ``count`` subscriber streams and wait for ``: subscribed`` on each."""
        ids = [self.request(f"/subscribe/{topic}") for _ in range(count)]
        await self.flush()
        await self.wait_for(
            lambda: all(self.streams[i].data.startswith(SUBSCRIBED) for i in ids),
            what=f"': subscribed' on {count} streams",
        )
        for i in ids:
            assert self.streams[i].status == 200
        return ids

    async def abort(self) -> None:
        """Close the TCP connection abruptly: no GOAWAY, and SO_LINGER 0 so the
        kernel sends RST instead of FIN."""
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        with trio.fail_after(STEP_SECONDS):
            await self._reader_done.wait()
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_now()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Polite close: GOAWAY, then close the socket."""
        if not self.eof:
            self.conn.close_connection()
            await self.flush()
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        with trio.fail_after(STEP_SECONDS):
            await self._reader_done.wait()
        await trio.aclose_forcefully(self.stream)
