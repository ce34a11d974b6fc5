"""A raw HTTP/1.1 client for the tests, and what they do with it against a
broker: one request's bytes (:func:`request`), a connection reading into one
buffer (:class:`Raw`), one exchange, a publish, ``/stats``, a subscriber whose
``: subscribed`` frame has arrived, and :func:`assert_still_serves`."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType

import pytest
import trio

from .conftest import STEP_SECONDS, Broker

# -- raw HTTP/1.1 ----------------------------------------------------------------------------


def request(method: str, target: str, body: bytes | None = None, *headers: str) -> bytes:
    """One HTTP/1.1 request's bytes: ``Host: x``, ``headers``, and ``Content-Length``
    when there is a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: x", *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclass
class Response:
    status: int
    #: Lower-cased names; a repeated header's values joined with ", ".
    headers: dict[str, str]
    body: bytes

    def one_line_reason(self) -> str:
        """The body is a one-line ``text/plain`` reason; return it."""
        assert self.headers.get("content-type", "").startswith("text/plain"), self
        text = self.body.decode()
        assert text.endswith("\n"), self
        assert text.count("\n") == 1, self
        assert text.strip(), self
        return text.strip()


class Raw:
    """A raw client connection to the broker, reading into one buffer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False
        #: Every byte received, whatever has been read out of the buffer.
        self.received = bytearray()

    @property
    def consumed(self) -> int:
        """How many of the bytes :attr:`received` have been read out of the buffer."""
        return len(self.received) - len(self.buffer)

    @classmethod
    async def connect(cls, broker: Broker, *, receive_buffer: int | None = None) -> Raw:
        sock = trio.socket.socket()
        if receive_buffer is not None:
            # A tiny receive buffer fills fast, so the broker's writes block.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            await sock.connect(broker.host_port)
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    async def __aenter__(self) -> Raw:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def trickle(self, data: bytes, seconds_per_byte: float) -> None:
        """Send ``data`` a byte at a time, ``seconds_per_byte`` apart, until
        all is sent or the broker has closed the connection."""
        try:
            for byte in range(len(data)):
                await self.send(data[byte : byte + 1])
                await trio.sleep(seconds_per_byte)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _receive(self) -> bool:
        """Read more into the buffer; ``False`` at the end of the connection
        (EOF, or a reset: a broker closing with unread input sends RST)."""
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        self.buffer += data
        self.received += data
        self.eof = not data
        return bool(data)

    async def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not await self._receive():
                raise EOFError(f"connection closed; read {self.buffer!r}")
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    async def read_exactly(self, count: int, timeout: float = STEP_SECONDS) -> bytes:
        """The next ``count`` bytes."""
        with trio.fail_after(timeout):
            return await self._take(count)

    async def read_until(self, marker: bytes, timeout: float = STEP_SECONDS) -> bytes:
        """Everything up to and including ``marker``."""
        with trio.fail_after(timeout):
            while marker not in self.buffer:
                if not await self._receive():
                    raise EOFError(f"connection closed before {marker!r}; read {self.buffer!r}")
            return await self._take(self.buffer.index(marker) + len(marker))

    async def read_response(self, *, body: bool = True, timeout: float = STEP_SECONDS) -> Response:
        """The next response's head and, with ``body``, its body (by
        Content-Length, chunked to the last chunk, or else to EOF); without
        ``body`` (a stream, or an answer to HEAD), what follows the head stays
        in the buffer."""
        with trio.fail_after(timeout):
            head = await self.read_until(b"\r\n\r\n", timeout=math.inf)
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            version, status, *_ = status_line.split(" ", 2)
            assert version in ("HTTP/1.0", "HTTP/1.1"), head
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            content = b""
            if body:
                if "content-length" in headers:
                    content = await self._take(int(headers["content-length"]))
                elif "chunked" in headers.get("transfer-encoding", "").lower():
                    while size := int((await self.read_until(b"\r\n"))[:-2].split(b";")[0], 16):
                        content += (await self._take(size + 2))[:-2]
                    await self.read_until(b"\r\n")
                else:
                    content = await self.read_to_eof(timeout=math.inf)
            return Response(int(status), headers, content)

    async def read_to_eof(self, timeout: float = STEP_SECONDS) -> bytes:
        """Everything until the broker ends the connection."""
        with trio.fail_after(timeout):
            while await self._receive():
                pass
        rest, self.buffer = self.buffer, b""
        return rest

    async def read_for(self, seconds: float) -> bytes:
        """Whatever arrives within ``seconds`` (the connection may stay open)."""
        with trio.move_on_after(seconds):
            while await self._receive():
                pass
        rest, self.buffer = self.buffer, b""
        return rest


async def exchange(
    broker: Broker, method: str, target: str, body: bytes | None = None, *headers: str
) -> Response:
    """One request on a fresh connection (``Connection: close``), and its answer."""
    async with await Raw.connect(broker) as raw:
        await raw.send(request(method, target, body, *headers, "Connection: close"))
        return await raw.read_response()


async def publish(broker: Broker, topic: str, body: bytes) -> dict[str, object]:
    reply = await exchange(broker, "POST", f"/publish/{topic}", body)
    assert reply.status == 200, reply
    payload: dict[str, object] = json.loads(reply.body)
    return payload


async def stats(broker: Broker) -> dict[str, object]:
    reply = await exchange(broker, "GET", "/stats")
    assert reply.status == 200, reply
    payload: dict[str, object] = json.loads(reply.body)
    return payload


async def wait_for_clients(broker: Broker, clients: int, timeout: float = STEP_SECONDS) -> None:
    last: dict[str, object] = {}
    with trio.move_on_after(timeout):
        while (last := await stats(broker))["clients"] != clients:
            await trio.sleep(0.02)
        return
    pytest.fail(f"stats never showed {clients} clients: {last}")


async def assert_history_empty(broker: Broker, topic: str) -> None:
    reply = await exchange(broker, "GET", f"/history/{topic}")
    assert reply.status == 200, reply
    assert reply.body == b"", f"{topic} has history: {reply.body!r}"


async def open_subscriber(broker: Broker, topic: str, **connect: int) -> Raw:
    """A raw subscriber whose ``: subscribed`` frame has arrived."""
    raw = await Raw.connect(broker, **connect)
    await raw.send(request("GET", f"/subscribe/{topic}"))
    head = await raw.read_response(body=False)
    assert head.status == 200, head
    assert head.headers["content-type"] == "text/event-stream"
    await raw.read_until(b": subscribed\n\n")
    return raw


_checks = itertools.count()


async def assert_still_serves(broker: Broker) -> None:
    """The broker is running, and a subscriber receives what a publisher sends."""
    assert not broker.done.is_set(), "the broker has stopped"
    topic = f"stillserves{next(_checks)}"
    with trio.fail_after(STEP_SECONDS):
        async with await open_subscriber(broker, topic) as subscriber:
            reply = await publish(broker, topic, b"data: still serving\n")
            assert reply["subscribers"] == 1
            await subscriber.read_until(b"data: still serving\n\n")


def _port_sockets(port: int) -> Iterator[socket.socket]:
    """This process's IPv4 sockets on local ``port`` (the broker runs
    in-process, so its sockets are ours), each borrowed for the step."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
        except OSError:
            continue
        sock = socket.socket(fileno=fd)
        try:
            if sock.family == socket.AF_INET and sock.getsockname()[1] == port:
                yield sock
        except OSError:
            pass
        finally:
            sock.detach()


def accepted_socket_fds(port: int) -> dict[tuple[str, int], int]:
    """This process's sockets accepted on ``port``: peer address -> fd."""
    found: dict[tuple[str, int], int] = {}
    for sock in _port_sockets(port):
        with suppress(OSError):  # the listener, or reset: no peer
            found[sock.getpeername()[:2]] = sock.fileno()
    return found


def accepted_sockets(port: int) -> list[int]:
    """The descriptors of this process's sockets accepted on ``port``,
    reset ones too (they have no peer address any more)."""
    return [
        sock.fileno()
        for sock in _port_sockets(port)
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ]
