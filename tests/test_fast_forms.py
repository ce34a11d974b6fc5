"""The edge's fast forms over a connection's life: keep-alive, pipelining,
requests trickling in, timeouts, shutdown, and the reaper's race with a
request that has just arrived."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio
import trio.testing

from trio_esper.config import Config
from trio_esper.edge import Edge
from trio_esper.hub import open_hub

from .conftest import STEP_SECONDS, TOPIC, Broker, start_broker
from .rawhttp import Raw, request

#: The fast forms' own handling of a connection (the quart lane's answers to the
#: same bytes are compared with theirs in test_differential.py).
pytestmark = pytest.mark.fast_lane_only("the edge's fast forms over a connection's life")


def _publish(body: bytes, *headers: str) -> bytes:
    return request("POST", f"/publish/{TOPIC}", body, *headers)


async def test_requests_arriving_a_byte_at_a_time(broker: Broker) -> None:
    async with await Raw.connect(broker) as raw:
        for byte in _publish(b"id: slow\ndata: drip\n"):
            await raw.send(bytes([byte]))
        answer = await raw.read_response()
    assert answer.status == 200
    assert b'"id": "slow"' in answer.body


async def test_pipelined_publishes_are_answered_in_order(broker: Broker) -> None:
    async with await Raw.connect(broker) as raw:
        await raw.send(b"".join(_publish(f"id: p{n}\ndata: {n}\n".encode()) for n in range(50)))
        answers = [await raw.read_response() for _ in range(50)]
    assert [a.body.split(b'"')[3] for a in answers] == [f"p{n}".encode() for n in range(50)]


async def test_connection_close_is_honoured_and_what_follows_ignored(
    broker: Broker, client: httpx.AsyncClient
) -> None:
    async with await Raw.connect(broker) as raw:
        await raw.send(
            _publish(b"id: bye\ndata: bye\n", "Connection: close")
            + _publish(b"id: never\ndata: x\n")
        )
        answer = await raw.read_response()
        assert answer.headers["connection"] == "close"
        assert await raw.read_to_eof() == b""
    history = await client.get(f"{broker.url}/history/{TOPIC}")
    assert [line.count(b'"never"') for line in history.content.splitlines()] == [0]


async def test_idle_connection_is_closed_after_keep_alive(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery, keep_alive_seconds=0.3)
    async with await Raw.connect(broker) as raw:
        await raw.send(_publish(b"data: x\n"))
        await raw.read_response()
        start = trio.current_time()
        assert await raw.read_to_eof() == b""  # closed, with no answer
        assert trio.current_time() - start >= 0.25
    await broker.stop()


async def test_shutdown_closes_idle_connections_at_once(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery, keep_alive_seconds=60)
    async with await Raw.connect(broker) as raw:
        await raw.send(_publish(b"data: x\n"))
        await raw.read_response()
        with trio.fail_after(STEP_SECONDS):  # not the 60 s keep-alive
            await broker.stop()
            assert await raw.read_to_eof() == b""


async def test_publisher_gone_mid_body_publishes_nothing(
    broker: Broker, client: httpx.AsyncClient
) -> None:
    async with await Raw.connect(broker) as raw:
        await raw.send(_publish(b"data: never\n")[:-4])
    reply = await client.post(f"{broker.url}/publish/{TOPIC}", content=b"data: after\n")
    assert reply.status_code == 200
    stats = (await client.get(f"{broker.url}/stats")).json()
    assert stats["published"] == 1


@pytest.mark.parametrize("timeout", ["head", "body"])
async def test_slow_request_gets_408_and_publishes_nothing(
    nursery: trio.Nursery, client: httpx.AsyncClient, timeout: str
) -> None:
    broker = await start_broker(
        nursery, request_head_timeout_seconds=0.3, request_body_timeout_seconds=0.3
    )
    sent = _publish(b"data: never\n")
    cut = sent.index(b"\r\n\r\n") - 3 if timeout == "head" else len(sent) - 3
    async with await Raw.connect(broker) as raw:
        await raw.send(sent[:cut])
        answer = await raw.read_response()
        assert answer.status == 408
        assert answer.headers["connection"] == "close"
        assert answer.one_line_reason() == f"request {timeout} too slow"
    stats = (await client.get(f"{broker.url}/stats")).json()
    assert stats["published"] == 0
    await broker.stop()


async def test_a_request_that_arrived_is_served_not_cut() -> None:
    # On a busy broker a request can arrive after its connection's keep-alive
    # deadline passed, but before the task waiting on it runs again: that
    # request is served, and only the idle connection is closed.
    async with open_hub() as hub:
        config = Config(bind="127.0.0.1", port=0)
        edge = Edge(config, hub, app=None)  # type: ignore[arg-type]  # no request reaches Quart
        pairs = [socket.socketpair() for _ in range(2)]
        ours = [trio.socket.from_stdlib_socket(a) for a, _ in pairs]
        (_, idle_peer), (_, busy_peer) = pairs
        async with trio.open_nursery() as nursery:
            # Serving no listener: the edge's own tasks run (deadlines, and
            # the readiness its connections wait on), and it takes these two.
            await nursery.start(edge.serve, [], trio.Event())
            for sock in ours:
                nursery.start_soon(edge.handle, sock)
            await trio.testing.wait_all_tasks_blocked()
            # A blocking send from the stdlib socket: no checkpoint, so the
            # connection's task has not run when the reaper looks.
            busy_peer.sendall(_publish(b"data: late\n"))
            edge.reap_expired(trio.current_time() + config.keep_alive_seconds)
            idle, busy = (
                trio.SocketStream(trio.socket.from_stdlib_socket(peer))
                for peer in (idle_peer, busy_peer)
            )
            with trio.fail_after(STEP_SECONDS):
                assert await idle.receive_some() == b""  # the idle one is closed
                answers = b""
                while b"\r\n\r\n" not in answers:
                    answers += await busy.receive_some()
                # Served, not cut, and the connection is still open.
                await busy.send_all(_publish(b"data: later\n"))
                while answers.count(b"\r\n\r\n") < 2:
                    answers += await busy.receive_some()
            nursery.cancel_scope.cancel()
        assert answers.count(b"HTTP/1.1 200 ") == 2
        await idle.aclose()
        await busy.aclose()


async def test_stream_heads_follow_each_request(nursery: trio.Nursery) -> None:
    # The edge makes a stream's head once a second for each kind of request
    # (CORS fields, Connection: close): subscribers of each kind, one after
    # another in the same second, each get the head their request asks for.
    origin = "https://app.example"
    broker = await start_broker(nursery, cors_origins=(origin,))
    kinds = [
        ((), None, False),
        ((f"Origin: {origin}",), origin, False),
        (("Origin: https://other.example",), None, False),
        ((f"Origin: {origin}", "Connection: close"), origin, True),
        (("Connection: close",), None, True),
    ]
    for headers, allowed, close in kinds * 2:
        async with await Raw.connect(broker) as raw:
            await raw.send(request("GET", f"/subscribe/{TOPIC}", None, *headers))
            head = await raw.read_response(body=False)
        assert head.status == 200, headers
        assert head.headers.get("access-control-allow-origin") == allowed, headers
        assert ("vary" in head.headers) == (allowed is not None), headers
        assert (head.headers.get("connection") == "close") == close, headers
