"""The HTTP edge under hostile or unusual clients, through a real broker on
loopback and raw sockets: each test sends what a misbehaving (or malicious)
client would send, checks the answer, and then checks that the broker still
serves (:func:`assert_still_serves`)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import resource
import socket
from dataclasses import dataclass
from types import TracebackType

import pytest
import trio

from .conftest import STEP_SECONDS, Broker, start_broker

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
        self.eof = not data
        return bool(data)

    async def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not await self._receive():
                raise EOFError(f"connection closed; read {self.buffer!r}")
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

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


FAST_LANE = pytest.mark.parametrize("fast_lane", [True, False], ids=["lane", "no-lane"])

# -- 1. file descriptors >= 1024 ---------------------------------------------------------------

SUBSCRIBERS = 1500
IDLE_PUBLISHERS = 20


def _accepted_socket_fds(port: int) -> dict[tuple[str, int], int]:
    """This process's sockets accepted on ``port``: peer address -> fd (the
    broker runs in-process, so its sockets are ours)."""
    found: dict[tuple[str, int], int] = {}
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
                found[sock.getpeername()[:2]] = fd
        except OSError:  # the listener: no peer
            pass
        finally:
            sock.detach()
    return found


@pytest.mark.slow
async def test_socket_fds_over_1024_do_not_kill_the_broker(nursery: trio.Nursery) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to find the broker's fds")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 4096")
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    broker = await start_broker(nursery, keep_alive_seconds=0.5)
    subscribers: list[Raw] = []
    idle: list[Raw] = []
    try:
        limiter = trio.CapacityLimiter(64)

        async def subscribe(n: int) -> None:
            async with limiter:
                subscribers.append(await open_subscriber(broker, f"manyfds{n % 10:03d}"))

        with trio.fail_after(15):
            async with trio.open_nursery() as opening:
                for n in range(SUBSCRIBERS):
                    opening.start_soon(subscribe, n)
        # Opened after 3000 sockets (both ends): every fd the broker gets now is >= 1024.
        with trio.fail_after(STEP_SECONDS):
            for _ in range(IDLE_PUBLISHERS):
                raw = await Raw.connect(broker)
                idle.append(raw)
                await raw.send(request("POST", "/publish/idlepub001", b"data: x\n"))
                assert (await raw.read_response()).status == 200
            idle.append(await Raw.connect(broker))  # a publisher that never sends
        accepted = _accepted_socket_fds(broker.host_port[1])
        idle_peers = [raw.stream.socket.getsockname()[:2] for raw in idle[:IDLE_PUBLISHERS]]
        assert all(accepted[peer] >= 1024 for peer in idle_peers), accepted
        assert sum(fd >= 1024 for fd in accepted.values()) >= SUBSCRIBERS // 2

        await trio.sleep(2)  # the keep-alive reaper runs several times meanwhile
        assert not broker.done.is_set(), "the broker stopped"
        with trio.fail_after(STEP_SECONDS):
            for raw in idle:  # idle past keep_alive_seconds: closed (a 408 first is allowed)
                rest = await raw.read_to_eof()
                assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest
        await assert_still_serves(broker)
        assert (await stats(broker))["clients"] == SUBSCRIBERS

        await broker.stop()
        ends: list[bytes] = []

        async def read_end(raw: Raw) -> None:
            ends.append(await raw.read_to_eof())

        with trio.fail_after(STEP_SECONDS):
            async with trio.open_nursery() as reading:
                for raw in subscribers:
                    reading.start_soon(read_end, raw)
        unclean = [end for end in ends if not end.endswith(b"0\r\n\r\n")]
        assert not unclean, f"{len(unclean)} streams did not end cleanly, e.g. {unclean[0]!r}"
    finally:
        with trio.CancelScope(shield=True):
            for raw in subscribers + idle:
                await raw.aclose()
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- 2. two pipelined subscribes -----------------------------------------------------------------


@FAST_LANE
async def test_second_pipelined_subscribe_is_not_executed(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    # Through Quart, Hypercorn stops reading a connection while a response
    # is in progress and a pipelined request waits (h11's PAUSED), so the
    # client's leaving shows at the next heartbeat's write instead of at once
    # (README, Design): heartbeats every 0.5 s here.
    heartbeat = 15.0 if fast_lane else 0.5
    broker = await start_broker(nursery, fast_lane=fast_lane, heartbeat_seconds=heartbeat)
    both = request("GET", "/subscribe/aaaaaaaa1") + request("GET", "/subscribe/bbbbbbbb2")
    for n in range(5):
        async with await Raw.connect(broker) as raw:
            await raw.send(both)
            head = await raw.read_response(body=False)
            assert head.status == 200, head
            assert head.headers["content-type"] == "text/event-stream"
            await raw.read_until(b": subscribed\n\n")
            await trio.sleep(0.1)  # room for the second request to (wrongly) run
            assert not broker.done.is_set(), "the broker stopped"
            assert (await stats(broker))["clients"] == 1
            assert (await publish(broker, "bbbbbbbb2", b"data: b\n"))["subscribers"] == 0
            reply = await publish(broker, "aaaaaaaa1", f"data: a{n}\n".encode())
            assert reply["subscribers"] == 1
            received = await raw.read_until(f"data: a{n}\n\n".encode())
            assert b"HTTP/1.1" not in received
        await trio.sleep(0.1)  # nor does it run once the first stream has ended
        assert (await publish(broker, "bbbbbbbb2", b"data: b\n"))["subscribers"] == 0
        await wait_for_clients(broker, 0, timeout=3)  # README: within a second
    await assert_still_serves(broker)
    await broker.stop()


# -- 3. a publish pipelined behind a subscribe -------------------------------------------------


@FAST_LANE
async def test_publish_pipelined_behind_a_subscribe_is_not_executed(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane)
    watcher = await open_subscriber(broker, "pipedtarget1")
    async with watcher, await Raw.connect(broker) as raw:
        await raw.send(
            request("GET", "/subscribe/pipedstream1")
            + request("POST", "/publish/pipedtarget1", b"data: smuggled\n")
        )
        head = await raw.read_response(body=False)
        assert head.status == 200, head
        await raw.read_until(b": subscribed\n\n")
        await trio.sleep(0.3)  # room for the publish to (wrongly) run
        await assert_history_empty(broker, "pipedtarget1")
        await publish(broker, "pipedtarget1", b"data: marker\n")
        received = await watcher.read_until(b"data: marker\n\n")
        assert b"smuggled" not in received
        assert b"HTTP/1.1" not in await raw.read_for(0.1)
    await assert_still_serves(broker)
    await broker.stop()


# -- 4. HEAD /subscribe ----------------------------------------------------------------------


@FAST_LANE
async def test_head_subscribe_is_headers_only_and_no_subscriber(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane)
    async with await Raw.connect(broker) as raw:
        await raw.send(request("HEAD", "/subscribe/headtopic1"))
        head = await raw.read_response(body=False)
        assert head.status == 200, head
        assert head.headers["content-type"] == "text/event-stream"
        assert await raw.read_for(0.3) == b""
        assert (await publish(broker, "headtopic1", b"data: x\n"))["subscribers"] == 0
        assert await raw.read_for(0.3) == b""
        assert (await stats(broker))["clients"] == 0
    await assert_still_serves(broker)
    await broker.stop()


# -- 6. request bodies and heads that never finish ---------------------------------------------


@FAST_LANE
async def test_publish_body_that_never_arrives_is_408(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, request_body_timeout_seconds=0.5)
    async with await Raw.connect(broker) as raw:
        with trio.fail_after(3):
            head = request("POST", "/publish/stalledbody1", None, "Content-Length: 100")
            await raw.send(head + b"data: 123")  # 10 of the 100 bytes, then nothing
            answer = await raw.read_response(timeout=math.inf)
            assert answer.status == 408, answer
            await raw.read_to_eof(timeout=math.inf)
    await assert_history_empty(broker, "stalledbody1")
    await assert_still_serves(broker)
    await broker.stop()


@FAST_LANE
async def test_publish_body_trickled_too_slowly_is_408(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(
        nursery,
        fast_lane=fast_lane,
        request_body_timeout_seconds=0.5,
        request_body_min_rate_bytes=1000,
    )
    body = b"data: " + b"x" * 993 + b"\n"
    assert len(body) == 1000

    async def trickle(raw: Raw) -> None:
        try:
            for byte in range(len(body)):
                await raw.send(body[byte : byte + 1])
                await trio.sleep(0.05)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with await Raw.connect(broker) as raw:
        with trio.fail_after(4):
            await raw.send(request("POST", "/publish/trickled01", None, "Content-Length: 1000"))
            async with trio.open_nursery() as sending:
                sending.start_soon(trickle, raw)
                answer = await raw.read_response(timeout=math.inf)
                assert answer.status == 408, answer
                await raw.read_to_eof(timeout=math.inf)
                sending.cancel_scope.cancel()
    await assert_history_empty(broker, "trickled01")
    await assert_still_serves(broker)
    await broker.stop()


@FAST_LANE
async def test_request_head_that_never_completes_is_closed(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, request_head_timeout_seconds=0.5)
    async with await Raw.connect(broker) as raw:
        await raw.send(b"POST /publish/stalledhead1 HTTP/1.1\r\nHost: x\r\n")
        data = await raw.read_to_eof(timeout=3)
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
    await assert_still_serves(broker)
    await broker.stop()


# -- 7. Content-Length with Transfer-Encoding: chunked ---------------------------------------


@FAST_LANE
async def test_content_length_with_chunked_is_400_and_closes(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane)
    smuggled = request("POST", "/publish/smuggled01", b"data: smuggled\n")
    chunked = b"c\r\ndata: first\n\r\n0\r\n\r\n"  # a well-formed chunked body
    body = chunked + smuggled  # Content-Length covers both; chunked framing ends early
    head = request(
        "POST",
        "/publish/cltefront1",
        None,
        f"Content-Length: {len(body)}",
        "Transfer-Encoding: chunked",
    )
    async with await Raw.connect(broker) as raw:
        await raw.send(head + body)
        answer = await raw.read_response()
        assert answer.status == 400, answer
        assert await raw.read_to_eof() == b""  # closed, and no second answer
    await assert_history_empty(broker, "smuggled01")
    await assert_history_empty(broker, "cltefront1")
    await assert_still_serves(broker)
    await broker.stop()


# -- 9. a 413 followed by a pipelined request logs no traceback ---------------------------------


async def test_413_with_pipelined_request_logs_no_traceback(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker = await start_broker(nursery, max_body_bytes=100)
    body = b"data: " + b"x" * 193 + b"\n"
    assert len(body) == 200
    answers: list[bytes] = []
    for trigger in range(10):
        before = len(caplog.records)
        async with await Raw.connect(broker) as raw:
            await raw.send(request("POST", "/publish/toolarge01", body) + request("GET", "/stats"))
            answers.append(await raw.read_for(0.3))
        await trio.sleep(0.05)
        records = caplog.records[before:]
        tracebacks = [r for r in records if r.levelno >= logging.INFO and r.exc_info]
        assert not tracebacks, (trigger, [f"{r.name}: {r.getMessage()}" for r in tracebacks])
        warnings = [r for r in records if r.levelno >= logging.WARNING]
        assert len(warnings) <= 2, (trigger, [f"{r.name}: {r.getMessage()}" for r in warnings])
    assert all(answer.startswith(b"HTTP/1.1 413 ") for answer in answers), answers
    await assert_still_serves(broker)
    await broker.stop()


# -- 10. a query argument that is a digit but not ASCII ----------------------------------------


async def test_history_limit_superscript_two_is_400(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery)
    answer = await exchange(broker, "GET", "/history/historytopic1?limit=%C2%B2")
    assert answer.status == 400, answer
    answer.one_line_reason()
    await assert_still_serves(broker)
    await broker.stop()


# -- 11. no redirect to the Host header ----------------------------------------------------------


async def test_double_slash_path_is_not_redirected(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery)
    async with await Raw.connect(broker) as raw:
        await raw.send(
            b"GET //subscribe/redirecttopic1 HTTP/1.1\r\nHost: evil.example\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = await raw.read_response(body=False)
    assert not 300 <= answer.status < 400, answer
    assert "location" not in answer.headers, answer
    assert answer.status == 404, answer
    await assert_still_serves(broker)
    await broker.stop()


# -- 12. a subscribe arriving during shutdown ------------------------------------------------


async def test_subscribe_completed_during_shutdown_is_503(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery, shutdown_grace_seconds=3)
    stalled = await open_subscriber(broker, "stalledsub1", receive_buffer=4096)
    async with stalled, await Raw.connect(broker) as late:
        payload = b"x" * 16_000
        for n in range(30):  # fill the socket buffers: the broker's writes to it block
            await publish(broker, "stalledsub1", b"data: %d %s\n" % (n, payload))
        await late.send(b"GET /subscribe/latetopic1 HTTP/1.1\r\nHo")
        await trio.sleep(0.1)
        broker.shutdown.set()  # the grace period runs: `stalled` keeps it open
        await trio.sleep(0.2)
        await late.send(b"st: x\r\n\r\n")
        answer = await late.read_response(timeout=2)
        assert answer.status == 503, answer
        answer.one_line_reason()
    with trio.fail_after(STEP_SECONDS):
        await broker.done.wait()
    # This broker is gone by design; a new one in the same process serves.
    second = await start_broker(nursery)
    await assert_still_serves(second)
    await second.stop()


# -- 13. CORS preflight for /history ----------------------------------------------------------

ORIGIN = "https://app.example"


async def test_history_preflight_for_allowed_origin(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery, cors_origins=(ORIGIN,))
    answer = await exchange(
        broker,
        "OPTIONS",
        "/history/historytopic1",
        None,
        f"Origin: {ORIGIN}",
        "Access-Control-Request-Method: GET",
        "Access-Control-Request-Headers: authorization",
    )
    assert answer.status == 204, answer
    assert answer.body == b""
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    methods = {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
    assert "GET" in methods
    allowed = {
        h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")
    }
    assert "authorization" in allowed
    assert int(answer.headers["access-control-max-age"]) > 0
    await assert_still_serves(broker)
    await broker.stop()
