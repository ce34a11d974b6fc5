"""What one hostile client could do to the client-facing edge, found by a
black-box review (2026-12-07) and kept as tests: each request here once got
a broker to close a connection without the answer it deserved, answer 500
with a traceback in the log, hold a connection past its documented
bound, or answer a refusal without its one-line reason. Through real brokers
on 127.0.0.1:0, on both lanes.
"""

from __future__ import annotations

import json
import signal

import h2.config
import h2.connection
import h2.events
import jwt
import pytest
import trio

from .conftest import STEP_SECONDS, BrokerProcess, broker_process, start_broker
from .rawhttp import Raw, request

TOPIC = "hostileedge1"
SECRET = "hostile-edge-secret-0123456789abcdef"
#: A stalled body must be answered within this of the stall timeout (the
#: reaper looks every second; the machine is loaded).
STALL_ANSWER_SECONDS = 3.0

pytestmark = pytest.mark.slow


# -- a token whose exp no float holds -------------------------------------------------------


async def test_a_token_whose_exp_is_past_any_float_subscribes(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    """An integer ``exp`` of 10**400 (valid JSON, a valid NumericDate, far in
    the future) made the stream's deadline overflow: the fast lane closed
    the connection without an answer, the Quart route answered 500."""
    broker = await start_broker(
        nursery, fast_lane=fast_lane, subscriber_secret=SECRET, publisher_secret=SECRET
    )
    token = jwt.encode({"sub": TOPIC, "exp": 10**400}, SECRET, algorithm="HS256")
    async with await Raw.connect(broker) as raw:
        await raw.send(
            request("GET", f"/subscribe/{TOPIC}", None, f"Authorization: Bearer {token}")
        )
        head = await raw.read_response(body=False)
        assert head.status == 200, head
        await raw.read_until(b": subscribed\n\n")
    await broker.stop()


# -- a request read while the broker shuts down ---------------------------------------------


async def _connect(broker: BrokerProcess) -> Raw:
    host, _, port = broker.url.removeprefix("http://").rpartition(":")
    return Raw(await trio.open_tcp_stream(host, int(port)))


async def _wait_for_log(broker: BrokerProcess, pattern: str) -> None:
    with trio.fail_after(STEP_SECONDS):
        while not broker.log_lines(pattern):
            await trio.sleep(0.02)


BODY = b"data: sent during shutdown\n"
#: A publish Hypercorn serves on either lane (the fast forms decline chunked).
CHUNKED_PUBLISH = (
    f"POST /publish/{TOPIC} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
)
#: The same as the fast lane serves it (Hypercorn serves it with --no-fast-lane).
PUBLISH = request("POST", f"/publish/{TOPIC}", BODY)


@pytest.mark.parametrize(
    ("lane", "sent"),
    [
        pytest.param([], CHUNKED_PUBLISH, id="fast-chunked"),
        pytest.param(["--no-fast-lane"], CHUNKED_PUBLISH, id="quart-chunked"),
        pytest.param(["--no-fast-lane"], PUBLISH, id="quart-content-length"),
    ],
)
async def test_a_request_whose_head_arrives_during_shutdown_is_answered(
    lane: list[str], sent: bytes
) -> None:
    """A publisher that had sent part of its request head when SIGTERM came,
    and the rest within the grace period, got its connection closed without
    an answer when Hypercorn served the request: Hypercorn starts its
    keep-alive wait before reading the bytes the edge hands it, and once
    shutdown has begun that wait closes the connection at once. (The fast
    forms answered it.)"""
    async with broker_process("--shutdown-grace", "5", *lane) as broker:
        raw = await _connect(broker)
        async with raw:
            await raw.send(sent[:20])  # part of the request line
            await trio.sleep(0.2)  # read by the edge, which waits for the rest
            broker.process.send_signal(signal.SIGTERM)
            await _wait_for_log(broker, r"shutting down: \d+ connections open")
            await trio.sleep(0.2)  # shutdown has told Hypercorn to stop
            await raw.send(sent[20:])
            answer = await raw.read_response()
            assert answer.status == 200, answer
            assert json.loads(answer.body)["events"] == 1, answer
            assert await raw.read_to_eof() == b""
        with trio.fail_after(STEP_SECONDS):
            assert await broker.process.wait() == 0
            await broker.stderr_closed.wait()
        assert not broker.log_lines(r"Traceback|ERROR"), broker.stderr.decode()


# -- a request body that stalls -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fast_lane", "head"),
    [
        pytest.param(True, "Transfer-Encoding: chunked", id="fast-chunked"),
        pytest.param(False, "Transfer-Encoding: chunked", id="quart-chunked"),
        pytest.param(False, "Content-Length: 60000", id="quart-content-length"),
    ],
)
async def test_a_body_that_stalls_is_408_after_the_stall_timeout(
    nursery: trio.Nursery, fast_lane: bool, head: str
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, request_body_timeout_seconds=0.5)
    async with await Raw.connect(broker) as raw:
        await raw.send(request("POST", f"/publish/{TOPIC}", None, head))
        await raw.send(b"6\r\ndata: \r\n" if "chunked" in head else b"data: ")
        # then nothing: a stall
        answer = await raw.read_response(timeout=0.5 + STALL_ANSWER_SECONDS)
        assert answer.status == 408, answer
        assert answer.one_line_reason()
    await broker.stop()


# -- h11's own refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "status", "reason"),
    [
        pytest.param(
            ("Content-Length: 8", "Content-Length: 9"),
            400,
            "conflicting Content-Length headers",
            id="two-content-lengths-400",
        ),
        pytest.param(("Content-Length: +8",), 400, "bad Content-Length", id="signed-cl-400"),
        pytest.param(
            ("Transfer-Encoding: gzip, chunked",),
            501,
            "Only Transfer-Encoding: chunked is supported",
            id="unknown-coding-501",
        ),
        pytest.param(
            ("X-Long: " + "a" * 70_000, "Content-Length: 8"),
            431,
            "request head larger than 16384 bytes",
            id="huge-head-431",
        ),
        pytest.param(("Bad Field: y",), 400, "illegal header line", id="illegal-field-400"),
    ],
)
async def test_a_request_h11_refuses_gets_a_reason(
    nursery: trio.Nursery, fast_lane: bool, extra: tuple[str, ...], status: int, reason: str
) -> None:
    # Hypercorn's own refusal had an empty body; h11's reason, without the bytes it quotes.
    broker = await start_broker(nursery, fast_lane=fast_lane)
    async with await Raw.connect(broker) as raw:
        head = "\r\n".join([f"POST /publish/{TOPIC} HTTP/1.1", "Host: x", *extra])
        await raw.send(head.encode() + b"\r\n\r\ndata: x\n")
        answer = await raw.read_response()
        assert answer.status == status, answer
        assert answer.one_line_reason() == reason
    await broker.stop()


# -- an HTTP/2 connection that opens no stream ----------------------------------------------


async def test_an_h2c_connection_that_opens_no_stream_is_closed_after_the_keep_alive(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    """HTTP/2 with prior knowledge, the preface and SETTINGS, then nothing:
    Hypercorn's h11 took the preface's ``PRI *`` line for a request, which
    stopped the keep-alive wait, and its HTTP/2 protocol restarts the wait
    only when a stream closes: the socket was held until the client left."""
    broker = await start_broker(nursery, fast_lane=fast_lane, keep_alive_seconds=0.5)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    async with await Raw.connect(broker) as raw:
        await raw.send(client.data_to_send())
        with trio.fail_after(0.5 + STALL_ANSWER_SECONDS):
            while await raw.read_for(0.1) or not raw.eof:
                pass  # the server's SETTINGS and its ACK, then the end
    # A stream after the preface keeps the connection (till the keep-alive after it).
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    async with await Raw.connect(broker) as raw:
        await raw.send(client.data_to_send())
        await trio.sleep(0.3)
        client.send_headers(
            1,
            [(":method", "GET"), (":path", "/ready"), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
        )
        await raw.send(client.data_to_send())
        ended = False
        with trio.fail_after(STEP_SECONDS):
            while not ended:
                data = await raw.read_for(0.1)
                events = client.receive_data(data)
                ended = any(isinstance(e, h2.events.StreamEnded) for e in events)
                assert not raw.eof, "closed before the stream's answer"
    await broker.stop()


# -- a WebSocket handshake ------------------------------------------------------------------


@pytest.mark.parametrize("lane", [[], ["--no-fast-lane"]], ids=["fast", "quart"])
async def test_a_websocket_handshake_is_refused_with_a_reason_and_no_traceback(
    lane: list[str],
) -> None:
    """No route takes a WebSocket; Hypercorn hands Quart a handshake as a
    websocket, without a request context, and the error handler read the
    request's Origin: 500 with an empty body, and a traceback at ERROR in
    the log for every handshake (a client could fill the log at will)."""
    async with broker_process("--cors-origin", "https://page.example", *lane) as broker:
        for target in (f"/subscribe/{TOPIC}", "/stats", "/nothere"):
            raw = await _connect(broker)
            async with raw:
                await raw.send(
                    request(
                        "GET",
                        target,
                        None,
                        "Origin: https://page.example",
                        "Connection: Upgrade",
                        "Upgrade: websocket",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version: 13",
                    )
                )
                answer = await raw.read_response()
                assert 400 <= answer.status < 500, answer
                assert answer.one_line_reason(), answer
                assert answer.headers["access-control-allow-origin"] == "https://page.example"
        assert await broker.stop() == 0
    assert not broker.log_lines(r"Traceback|ERROR"), broker.stderr.decode()


# -- a slow head after the first request ----------------------------------------------------


@pytest.mark.parametrize(
    ("fast_lane", "first"),
    [
        pytest.param(True, request("GET", "/stats"), id="fast-after-a-declined-request"),
        pytest.param(False, request("POST", f"/publish/{TOPIC}", BODY), id="quart"),
    ],
)
async def test_a_second_head_that_trickles_is_408_after_the_head_timeout(
    nursery: trio.Nursery, fast_lane: bool, first: bytes
) -> None:
    """The edge timed the head of a connection's first request only; where
    Hypercorn read the next (every connection with --no-fast-lane, and on the
    fast lane after a request the fast forms decline) a head that trickled in
    got no 408: the connection was closed unanswered at --keep-alive after the
    last answer (a --keep-alive over --request-head-timeout let it hold the
    connection that long)."""
    broker = await start_broker(
        nursery, fast_lane=fast_lane, keep_alive_seconds=3, request_head_timeout_seconds=0.5
    )
    second = request("GET", "/stats", None, "X-Slow: " + "a" * 100)
    async with await Raw.connect(broker) as raw:
        await raw.send(first)
        assert (await raw.read_response()).status == 200
        async with trio.open_nursery() as sending:
            sending.start_soon(raw.trickle, second, 0.1)
            answer = await raw.read_response(timeout=0.5 + 2.0)
            sending.cancel_scope.cancel()
        assert answer.status == 408, answer
        assert answer.one_line_reason()
    await broker.stop()
