"""The HTTP edge under hostile or unusual clients, through a real broker on
loopback and raw sockets: each test sends what a misbehaving (or malicious)
client would send, checks the answer, and then checks that the broker still
serves (:func:`assert_still_serves`)."""

from __future__ import annotations

import logging
import math
import os
import resource

import pytest
import trio

from .conftest import STEP_SECONDS, start_broker
from .rawhttp import (
    Raw,
    accepted_socket_fds,
    assert_history_empty,
    assert_still_serves,
    exchange,
    open_subscriber,
    publish,
    request,
    stats,
    wait_for_clients,
)

# -- 1. file descriptors >= 1024 ---------------------------------------------------------------

SUBSCRIBERS = 1500
IDLE_PUBLISHERS = 20


@pytest.mark.slow
@pytest.mark.both_lanes_in_full  # 1,500 subscribers
async def test_socket_fds_over_1024_do_not_kill_the_broker(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to find the broker's fds")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 4096")
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    broker = await start_broker(nursery, fast_lane=fast_lane, keep_alive_seconds=0.5)
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
        accepted = accepted_socket_fds(broker.host_port[1])
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


async def test_second_pipelined_subscribe_is_not_executed(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    # Through Quart, Hypercorn stops reading a connection while a response
    # is in progress and a pipelined request waits (h11's PAUSED), so the
    # client's leaving shows at the next heartbeat's write instead of at once
    # (README, Design): heartbeats every 0.5 s here.
    # A short grace: there, a connection whose client left stays until a
    # shutdown's grace period ends (test_differential.py, DIVERGENCES).
    heartbeat = 15.0 if fast_lane else 0.5
    broker = await start_broker(
        nursery, fast_lane=fast_lane, heartbeat_seconds=heartbeat, shutdown_grace_seconds=1
    )
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


async def test_publish_pipelined_behind_a_subscribe_is_not_executed(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    # A short grace, as above: the quart lane holds the pipelining connection.
    broker = await start_broker(nursery, fast_lane=fast_lane, shutdown_grace_seconds=1)
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

    async with await Raw.connect(broker) as raw:
        with trio.fail_after(4):
            await raw.send(request("POST", "/publish/trickled01", None, "Content-Length: 1000"))
            async with trio.open_nursery() as sending:
                sending.start_soon(raw.trickle, body, 0.05)
                answer = await raw.read_response(timeout=math.inf)
                assert answer.status == 408, answer
                await raw.read_to_eof(timeout=math.inf)
                sending.cancel_scope.cancel()
    await assert_history_empty(broker, "trickled01")
    await assert_still_serves(broker)
    await broker.stop()


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
    nursery: trio.Nursery, fast_lane: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker = await start_broker(nursery, fast_lane=fast_lane, max_body_bytes=100)
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


async def test_history_limit_superscript_two_is_400(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane)
    answer = await exchange(broker, "GET", "/history/historytopic1?limit=%C2%B2")
    assert answer.status == 400, answer
    answer.one_line_reason()
    await assert_still_serves(broker)
    await broker.stop()


# -- 11. no redirect to the Host header ----------------------------------------------------------


async def test_double_slash_path_is_not_redirected(nursery: trio.Nursery, fast_lane: bool) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane)
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


async def test_subscribe_completed_during_shutdown_is_503(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, shutdown_grace_seconds=3)
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
    second = await start_broker(nursery, fast_lane=fast_lane)
    await assert_still_serves(second)
    await second.stop()


# -- 13. CORS preflight for /history ----------------------------------------------------------

ORIGIN = "https://app.example"


async def test_history_preflight_for_allowed_origin(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, cors_origins=(ORIGIN,))
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
