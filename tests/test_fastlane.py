"""The publish fast lane: which requests it takes, that it answers exactly as
the Quart route does, and that it hands every other request, mid-connection
included, to Hypercorn intact.

Hypercorn stamps ``server: hypercorn-h11`` on its answers and the lane does
not, which is how these tests tell who served a request.
"""

from __future__ import annotations

import socket

import httpx
import pytest
import trio
import trio.testing

from trio_esper.config import Config
from trio_esper.fastlane import FastLane, parse_publish_head
from trio_esper.hub import open_hub

from .conftest import STEP_SECONDS, TOPIC, Broker, make_token, start_broker

SECRET = "publisher-secret-of-at-least-32-bytes!"
MAX_BODY = 1000


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


# Heads the lane takes, and what it reads from them.
TAKEN = [
    (head("POST /publish/Topic0001 HTTP/1.1", "Host: x", "Content-Length: 8"), "Topic0001", 8),
    (
        head(
            "POST /publish/topic0001?event=a&id=b HTTP/1.1",
            "host:x",
            "content-length:  0  ",
            "Connection: keep-alive",
        ),
        "topic0001",
        0,
    ),
    (head("POST /publish/x HTTP/1.1", "Host: x", "Content-Length: 1000"), "x", 1000),
    (head("POST /publish/t HTTP/1.1", "Host: x", "X-Tab: a\tb", "Content-Length: 1"), "t", 1),
]

# Heads it leaves to Hypercorn, each for one reason.
LEFT = [
    head("GET /publish/topic0001 HTTP/1.1", "Host: x"),
    head("POST /publish/topic0001 HTTP/1.0", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Content-Length: 1"),  # no Host
    head("POST /publish/topic0001 HTTP/1.1", "Host: x"),  # no Content-Length
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 1001"),  # too large
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: -1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 0x10"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 1", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Transfer-Encoding: chunked"),
    head(
        "POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 1", "Expect: 100-continue"
    ),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 0", "Upgrade: h2c"),
    head("POST /publish/topic%30001 HTTP/1.1", "Host: x", "Content-Length: 1"),
    head("POST /publish/topic-0001 HTTP/1.1", "Host: x", "Content-Length: 1"),
    head("POST /publish/topic0001/ HTTP/1.1", "Host: x", "Content-Length: 1"),
    head("POST /publish/topic0001#f HTTP/1.1", "Host: x", "Content-Length: 1"),
    head("POST /publish/topic0001  HTTP/1.1", "Host: x", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", " folded", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host x", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Bad Name: x", "Host: x", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x\x00", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x\ny", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: \x7f", "Content-Length: 1"),
]


@pytest.mark.parametrize(("raw", "topic", "length"), TAKEN)
def test_plain_publish_heads_are_taken(raw: bytes, topic: str, length: int) -> None:
    parsed = parse_publish_head(raw, MAX_BODY)
    assert parsed is not None
    assert (parsed.topic, parsed.content_length, parsed.close) == (topic, length, False)


@pytest.mark.parametrize("raw", LEFT)
def test_other_heads_are_left_to_hypercorn(raw: bytes) -> None:
    assert parse_publish_head(raw, MAX_BODY) is None


def test_connection_close_is_read() -> None:
    raw = head("POST /publish/t HTTP/1.1", "Host: x", "Content-Length: 1", "Connection: Close")
    parsed = parse_publish_head(raw, MAX_BODY)
    assert parsed is not None
    assert parsed.close


def test_query_arguments_are_decoded() -> None:
    raw = head(
        "POST /publish/t?token=a%2Bb&event=x+y&id=&id=2 HTTP/1.1", "Host: x", "Content-Length: 1"
    )
    parsed = parse_publish_head(raw, MAX_BODY)
    assert parsed is not None
    request = parsed.request(b"x")
    assert (request.token, request.event, request.id) == ("a+b", "x y", "")


# Requests answered by both front ends; their answers must match.
TOKEN = "TOKEN"
CASES = [
    ("/publish/{t}", {"Content-Type": "text/event-stream"}, b"id: one\ndata: hello\n"),
    ("/publish/{t}", {"Content-Type": "text/event-stream"}, b"id: one\ndata: again\n"),  # 409
    ("/publish/{t}?event=e&id=two", {"Content-Type": "text/plain; charset=utf-8"}, b"a\nb"),
    ("/publish/{t}?event=e", {"Content-Type": "text/event-stream"}, b"data: x\n"),  # 400
    ("/publish/{t}", {}, b"nodata: x\n"),  # 400: no data field
    ("/publish/{t}", {}, b"data: \xff\n"),  # 400: not UTF-8
    ("/publish/short", {}, b"data: x\n"),  # 400: bad topic
    ("/publish/{t}", {"Origin": "https://app.example"}, b"data: cors\n"),
    ("/publish/{t}", {"Origin": "https://evil.example"}, b"data: cors\n"),
]
AUTH_CASES = [
    ("/publish/{t}", {}, b"data: x\n"),  # 401
    ("/publish/{t}", {"Authorization": "Basic abc"}, b"data: x\n"),  # 401
    ("/publish/{t}", {"Authorization": "Bearer nonsense"}, b"data: x\n"),  # 403
    ("/publish/{t}", {"Authorization": "Bearer TOKEN"}, b"data: x\n"),
    ("/publish/{t}?token=TOKEN", {}, b"data: x\n"),
    ("/publish/othertopic1?token=TOKEN", {}, b"data: x\n"),  # 403: sub names another topic
]
COMPARED_HEADERS = (
    "content-type",
    "content-length",
    "www-authenticate",
    "access-control-allow-origin",
    "vary",
    "connection",
)


async def _answers(
    nursery: trio.Nursery, cases: list[tuple[str, dict[str, str], bytes]], **config: object
) -> list[tuple[int, dict[str, str], bytes]]:
    broker = await start_broker(nursery, cors_origins=("https://app.example",), **config)
    token = make_token(SECRET, TOPIC)
    answers = []
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as client:
        for path, headers, body in cases:
            url = broker.url + path.format(t=TOPIC).replace(TOKEN, token)
            headers = {k: v.replace(TOKEN, token) for k, v in headers.items()}
            reply = await client.post(url, content=body, headers=headers)
            served_by_hypercorn = reply.headers.get("server") == "hypercorn-h11"
            assert served_by_hypercorn != config["fast_lane"]
            kept = {k: reply.headers[k] for k in COMPARED_HEADERS if k in reply.headers}
            content = reply.content
            if reply.status_code == 200:
                # Ids the broker assigns differ from run to run; their shape must not.
                payload = reply.json()
                if payload["id"].isdigit() and len(payload["id"]) == 16:
                    payload["id"] = "<assigned>"
                content = repr(sorted(payload.items())).encode()
            answers.append((reply.status_code, kept, content))
    await broker.stop()
    return answers


@pytest.mark.parametrize("auth", [False, True], ids=["open", "publisher-auth"])
async def test_lane_answers_as_the_quart_route_does(nursery: trio.Nursery, auth: bool) -> None:
    cases = AUTH_CASES if auth else CASES
    secret = {"publisher_secret": SECRET} if auth else {}
    lane = await _answers(nursery, cases, fast_lane=True, **secret)
    quart = await _answers(nursery, cases, fast_lane=False, **secret)
    assert lane == quart
    statuses = [status for status, _, _ in lane]
    if auth:
        assert statuses == [401, 401, 403, 200, 200, 403]
        assert lane[0][1]["www-authenticate"] == 'Bearer realm="trio_esper"'
    else:
        assert statuses == [200, 409, 200, 400, 400, 400, 400, 200, 200]
        assert lane[7][1]["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in lane[8][1]


def _publish(body: bytes, *extra: str) -> bytes:
    return (
        head(f"POST /publish/{TOPIC} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra)
        + b"\r\n\r\n"
        + body
    )


async def _read_answers(stream: trio.SocketStream, count: int) -> list[bytes]:
    """Read ``count`` whole answers (Content-Length bodies) from ``stream``."""
    data = b""
    answers: list[bytes] = []
    with trio.fail_after(STEP_SECONDS):
        while len(answers) < count:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                length = next(
                    int(line.split(b":")[1])
                    for line in data[:end].split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(data) >= end + 4 + length:
                    answers.append(data[: end + 4 + length])
                    data = data[end + 4 + length :]
                    continue
            chunk = await stream.receive_some()
            assert chunk, f"connection closed after {len(answers)} answers"
            data += chunk
    assert data == b""
    return answers


async def test_pipelined_requests_cross_from_the_lane_to_hypercorn_and_back(
    broker: Broker,
) -> None:
    stream = await trio.open_tcp_stream(*broker.host_port)
    async with stream:
        await stream.send_all(
            _publish(b"data: one\n")
            + _publish(b"data: two\n")
            + b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
            + _publish(b"data: three\n")  # after the handoff: Hypercorn serves it
        )
        answers = await _read_answers(stream, 4)
    assert [a.split(b" ")[:2] for a in answers] == [[b"HTTP/1.1", b"200"]] * 4
    assert [b"hypercorn" in a for a in answers] == [False, False, True, True]
    assert b'"published": 2' in answers[2]
    assert answers[3].endswith(b'"events": 1, "subscribers": 0}\n')


async def test_requests_arriving_a_byte_at_a_time(broker: Broker) -> None:
    stream = await trio.open_tcp_stream(*broker.host_port)
    async with stream:
        for byte in _publish(b"id: slow\ndata: drip\n"):
            await stream.send_all(bytes([byte]))
        (answer,) = await _read_answers(stream, 1)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"hypercorn" not in answer
    assert b'"id": "slow"' in answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # Hypercorn's h11 refuses what the lane did not recognise.
        (_publish(b"data: x\n", "Content-Length: 9"), b"400"),
        (_publish(b"data: x\n", "Content-Length: 8"), b"200"),  # RFC 9112 6.3: same value
        (_publish(b"x" * 70_000), b"413"),
        (
            head(f"POST /publish/{TOPIC} HTTP/1.1", "Host: x", "Transfer-Encoding: chunked")
            + b"\r\n\r\n8\r\ndata: x\n\r\n0\r\n\r\n",
            b"200",
        ),
        (
            head(f"POST /publish/{TOPIC} HTTP/1.0", "Content-Length: 8") + b"\r\n\r\ndata: x\n",
            b"200",
        ),
        (b"POST /publish/" + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n", b"400"),
    ],
    ids=["conflicting-lengths", "repeated-length", "too-large", "chunked", "http10", "huge-head"],
)
async def test_unusual_requests_are_answered_by_hypercorn(
    broker: Broker, request_bytes: bytes, status: bytes
) -> None:
    stream = await trio.open_tcp_stream(*broker.host_port)
    async with stream:
        await stream.send_all(request_bytes)
        data = b""
        with trio.fail_after(STEP_SECONDS):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                assert chunk
                data += chunk
    assert data.split(b" ")[1] == status
    assert b"server: hypercorn" in data.lower()


async def test_connection_close_is_honoured(broker: Broker) -> None:
    stream = await trio.open_tcp_stream(*broker.host_port)
    async with stream:
        await stream.send_all(
            _publish(b"data: bye\n", "Connection: close") + _publish(b"data: x\n")
        )
        data = b""
        with trio.fail_after(STEP_SECONDS):
            while chunk := await stream.receive_some():
                data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 1  # the request after close is not served
    assert b"Connection: close" in data


async def test_idle_publisher_connection_is_closed_after_keep_alive(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery, keep_alive_seconds=0.3)
    stream = await trio.open_tcp_stream(*broker.host_port)
    async with stream:
        await stream.send_all(_publish(b"data: x\n"))
        await _read_answers(stream, 1)
        start = trio.current_time()
        with trio.fail_after(STEP_SECONDS):
            assert await stream.receive_some() == b""
        assert trio.current_time() - start >= 0.25
    await broker.stop()


async def test_shutdown_closes_idle_publisher_connections(nursery: trio.Nursery) -> None:
    broker = await start_broker(nursery, keep_alive_seconds=60)
    stream = await trio.open_tcp_stream(*broker.host_port)
    async with stream:
        await stream.send_all(_publish(b"data: x\n"))
        await _read_answers(stream, 1)
        with trio.fail_after(STEP_SECONDS):  # not the 60 s keep-alive
            await broker.stop()
            assert await stream.receive_some() == b""


async def test_publisher_gone_mid_body_publishes_nothing(
    broker: Broker, client: httpx.AsyncClient
) -> None:
    stream = await trio.open_tcp_stream(*broker.host_port)
    request = _publish(b"data: never\n")
    await stream.send_all(request[:-4])
    await stream.aclose()
    reply = await client.post(f"{broker.url}/publish/{TOPIC}", content=b"data: after\n")
    assert reply.status_code == 200
    stats = (await client.get(f"{broker.url}/stats")).json()
    assert stats["published"] == 1


@pytest.mark.parametrize("closer", ["keep-alive reaper", "shutdown"])
async def test_a_request_that_arrived_is_served_not_cut(closer: str) -> None:
    # On a busy broker a request can arrive after its connection's keep-alive
    # timeout passed (or shutdown began), but before the task waiting on it
    # runs again: that request is served, and only the idle connection closed.
    async with open_hub() as hub:
        lane = FastLane(Config(bind="127.0.0.1", port=0), hub, keep_alive_timeout_seconds=5)
        pairs = [socket.socketpair() for _ in range(2)]
        ours = [trio.SocketStream(trio.socket.from_stdlib_socket(a)) for a, _ in pairs]
        (_, idle_peer), (_, busy_peer) = pairs
        served: dict[int, bytes | None] = {}

        async def serve(n: int) -> None:
            served[n] = await lane.serve(ours[n])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, 0)
            nursery.start_soon(serve, 1)
            await trio.testing.wait_all_tasks_blocked()
            busy_peer.sendall(_publish(b"data: late\n"))  # no checkpoint before the reaper
            if closer == "shutdown":
                lane.close()
            else:
                lane.reap_expired(trio.current_time())
            with trio.fail_after(STEP_SECONDS):
                while 0 not in served:
                    await trio.sleep(0.01)
                busy = trio.SocketStream(trio.socket.from_stdlib_socket(busy_peer))
                answers = await _read_answers(busy, 1)
            nursery.cancel_scope.cancel()
        assert served[0] is None  # closed by the reaper
        assert answers[0].startswith(b"HTTP/1.1 200 OK")  # served, not cut
        assert (b"Connection: close" in answers[0]) == (closer == "shutdown")
        idle_peer.close()
        await busy.aclose()
        for stream in ours:
            await stream.aclose()
