"""Every bad input a client can send, through a real broker on loopback on both
lanes (the edge's fast forms, and Quart-Trio with ``--no-fast-lane``): its
status, its one-line ``text/plain`` reason, and that nothing reaches subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from .conftest import STEP_SECONDS, TOPIC, Broker, SSEStream, make_token, start_broker

SECRET = "c" * 64
ORIGIN = "https://app.example"
OTHER_ORIGIN = "https://evil.example"


def assert_one_line_reason(response: httpx.Response, status: int) -> str:
    """The response is ``status`` with a one-line text/plain reason; return the line."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert text.endswith("\n")
    assert text.count("\n") == 1, text
    assert text.strip()
    return text.strip()


async def get_finite(client: httpx.AsyncClient, url: str, **kwargs: object) -> httpx.Response:
    """GET ``url`` expecting an error; a live event stream fails fast instead of hanging."""
    with trio.fail_after(STEP_SECONDS):
        async with client.stream("GET", url, **kwargs) as response:  # type: ignore[arg-type]
            if response.headers.get("content-type") == "text/event-stream":
                return response
            await response.aread()
            return response


async def publish_good_and_expect_it_first(
    client: httpx.AsyncClient, broker: Broker, stream: SSEStream
) -> None:
    """Nothing was delivered: a good event published now is the first one received."""
    reply = await client.post(f"{broker.url}/publish/{TOPIC}", content=b"data: good\n")
    assert reply.status_code == 200
    assert reply.json()["subscribers"] == 1
    frame = f"id: {reply.json()['id']}\ndata: good\n\n".encode()
    assert await stream.next_event() == frame
    assert stream.raw == b": subscribed\n\n" + frame


async def _chunks(body: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- topics -----------------------------------------------------------------------------------

BAD_TOPICS = [
    pytest.param("short7c", id="too-short"),
    pytest.param("a" * 65, id="too-long"),
    pytest.param("test-topic-01", id="hyphen"),
    pytest.param("test_topic_01", id="underscore"),
    pytest.param("test.topic.01", id="dot"),
    pytest.param("test topic 01", id="space"),
    pytest.param("testtopic01!", id="bang"),
    pytest.param("cafétopic01", id="non-ascii-latin"),
    pytest.param("".join(chr(ord(c) + 0xFEE0) for c in "testtopic"), id="fullwidth"),
    pytest.param("\u0442\u0435\u0441\u0442topic01", id="cyrillic"),
]


@pytest.mark.parametrize("topic", BAD_TOPICS)
@pytest.mark.parametrize("route", ["subscribe", "publish"])
async def test_invalid_topic_is_400(
    broker: Broker, client: httpx.AsyncClient, route: str, topic: str
) -> None:
    url = f"{broker.url}/{route}/{topic}"
    if route == "subscribe":
        response = await get_finite(client, url)
    else:
        with trio.fail_after(STEP_SECONDS):
            response = await client.post(url, content=b"data: x\n")
    reason = assert_one_line_reason(response, 400)
    assert "topic" in reason


@pytest.mark.parametrize("topic", ["a" * 8, "Z9" * 32])
async def test_topic_length_bounds_are_inclusive(
    broker: Broker, client: httpx.AsyncClient, subscribe, topic: str
) -> None:
    stream = await subscribe(f"{broker.url}/subscribe/{topic}")
    reply = await client.post(f"{broker.url}/publish/{topic}", content=b"data: edge\n")
    assert reply.status_code == 200
    assert await stream.next_event() == f"id: {reply.json()['id']}\ndata: edge\n\n".encode()


# -- published bodies -------------------------------------------------------------------------

BAD_BODIES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\n\n\n", id="blank-lines-only"),
    pytest.param(b": just a comment\n", id="comment-only"),
    pytest.param(b"event: note\nid: 1\n", id="no-data-field"),
    pytest.param(b"data: caf\xe9\n", id="latin-1-not-utf8"),
    pytest.param(b"data: \xff\xfe\n", id="invalid-utf8"),
    pytest.param(b"id: a\x00b\ndata: x\n", id="nul-in-id"),
    pytest.param(b"event: a\x00b\ndata: x\n", id="nul-in-event"),
    pytest.param(b"colour: red\ndata: x\n", id="unknown-field"),
    pytest.param(b"data: x\nDATA: y\n", id="field-names-are-case-sensitive"),
    pytest.param(b"retry: soon\ndata: x\n", id="retry-not-digits"),
    pytest.param(b"retry: -5\ndata: x\n", id="retry-negative"),
    pytest.param(b"retry: 1.5\ndata: x\n", id="retry-fraction"),
    pytest.param(b"retry:\ndata: x\n", id="retry-empty"),
    # A body is all or nothing: a bad second event must stop the good first one.
    pytest.param(b"data: first\n\ncolour: red\ndata: second\n", id="bad-second-event"),
    pytest.param(b"data: first\n\nid: 2\n", id="second-event-without-data"),
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_bad_body_is_400_and_nothing_is_delivered(
    broker: Broker, client: httpx.AsyncClient, subscribe, body: bytes
) -> None:
    stream = await subscribe(f"{broker.url}/subscribe/{TOPIC}")
    with trio.fail_after(STEP_SECONDS):
        response = await client.post(f"{broker.url}/publish/{TOPIC}", content=body)
    assert_one_line_reason(response, 400)
    await publish_good_and_expect_it_first(client, broker, stream)


# -- body size --------------------------------------------------------------------------------

MAX_BODY_BYTES = 1024


@pytest.fixture
async def small_broker(nursery: trio.Nursery, fast_lane: bool) -> AsyncIterator[Broker]:
    broker = await start_broker(nursery, fast_lane=fast_lane, max_body_bytes=MAX_BODY_BYTES)
    yield broker
    await broker.stop()


def _body(size: int) -> bytes:
    body = b"data: " + b"x" * (size - len(b"data: \n")) + b"\n"
    assert len(body) == size
    return body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_limit_is_413_and_nothing_is_delivered(
    small_broker: Broker, client: httpx.AsyncClient, subscribe, chunked: bool
) -> None:
    stream = await subscribe(f"{small_broker.url}/subscribe/{TOPIC}")
    body = _body(2000)
    content = _chunks(body) if chunked else body
    async with httpx.AsyncClient(timeout=STEP_SECONDS) as publisher:
        with trio.fail_after(STEP_SECONDS):
            response = await publisher.post(f"{small_broker.url}/publish/{TOPIC}", content=content)
    assert ("content-length" not in response.request.headers) is chunked
    reason = assert_one_line_reason(response, 413)
    assert "1024" in reason
    await publish_good_and_expect_it_first(client, small_broker, stream)


#: How long a connection that will be closed gets to show it (EOF) before we use it again.
CLOSE_WAIT_SECONDS = 0.5


def _chunked(body: bytes, size: int = 100) -> list[bytes]:
    """``body`` in HTTP/1.1 chunked framing, one wire piece per chunk."""
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


async def _read_response(sock: trio.socket.SocketType, buffer: bytearray) -> bytes:
    """One Content-Length-framed response from ``sock``; leftovers stay in ``buffer``."""
    with trio.fail_after(STEP_SECONDS):
        while b"\r\n\r\n" not in buffer:
            chunk = await sock.recv(65536)
            assert chunk, f"connection closed mid-response: {bytes(buffer)!r}"
            buffer.extend(chunk)
        head_end = buffer.index(b"\r\n\r\n") + 4
        head = bytes(buffer[:head_end]).lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(buffer) < head_end + length:
            chunk = await sock.recv(65536)
            assert chunk, f"connection closed mid-response: {bytes(buffer)!r}"
            buffer.extend(chunk)
    response = bytes(buffer[: head_end + length])
    del buffer[: head_end + length]
    return response


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_413_leaves_no_silently_dead_connection(small_broker: Broker, chunked: bool) -> None:
    # The broker answers 413 before the whole body has arrived. Either it says
    # it will close (Connection: close) so the client does not reuse the
    # connection, or it reads past the rest of the body and serves the next
    # request. Closing without saying so makes a pooling client's next request
    # fail with no response at all (httpx: "Server disconnected without
    # sending a response").
    body = _body(2000)
    if chunked:
        head = f"POST /publish/{TOPIC} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        pieces = _chunked(body)
        first, rest = b"".join(pieces[:12]), b"".join(pieces[12:])  # 1200 bytes: over the limit
    else:
        head = f"POST /publish/{TOPIC} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        first, rest = body[:100], body[100:]
    sock = trio.socket.socket()
    with sock:
        await sock.connect(small_broker.host_port)
        await sock.send(head.encode() + first)
        buffer = bytearray()
        refused = await _read_response(sock, buffer)
        assert refused.startswith(b"HTTP/1.1 413")
        if b"\r\nconnection: close\r\n" in refused.lower():
            return
        with trio.move_on_after(CLOSE_WAIT_SECONDS):
            assert await sock.recv(1) != b"", "413 without Connection: close, then EOF"
        try:
            await sock.send(rest + b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            following = await _read_response(sock, buffer)
        except OSError as exc:
            pytest.fail(f"413 without Connection: close, then the connection died: {exc!r}")
        assert following.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_at_limit_is_accepted(
    small_broker: Broker, client: httpx.AsyncClient, subscribe, chunked: bool
) -> None:
    stream = await subscribe(f"{small_broker.url}/subscribe/{TOPIC}")
    body = _body(MAX_BODY_BYTES)
    content = _chunks(body) if chunked else body
    with trio.fail_after(STEP_SECONDS):
        response = await client.post(f"{small_broker.url}/publish/{TOPIC}", content=content)
    assert response.status_code == 200, response.text
    assert await stream.next_event() == f"id: {response.json()['id']}\n".encode() + body + b"\n"


# -- routes and methods -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/subscribe"),
        ("GET", "/subscribe/"),
        ("GET", f"/subscribe/{TOPIC}/extra"),
        ("POST", "/publish"),
        ("POST", f"/publish/{TOPIC}/extra"),
        ("GET", "/stats/extra"),
    ],
)
async def test_unknown_route_is_404(
    broker: Broker, client: httpx.AsyncClient, method: str, path: str
) -> None:
    with trio.fail_after(STEP_SECONDS):
        response = await client.request(method, f"{broker.url}{path}")
    assert_one_line_reason(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/publish/x", "POST"),
        ("GET", f"/publish/{TOPIC}", "POST"),
        ("PUT", f"/publish/{TOPIC}", "POST"),
        ("POST", "/subscribe/x", "GET"),
        ("POST", f"/subscribe/{TOPIC}", "GET"),
        ("DELETE", f"/subscribe/{TOPIC}", "GET"),
        ("DELETE", "/stats", "GET"),
        ("POST", "/stats", "GET"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    broker: Broker, client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    with trio.fail_after(STEP_SECONDS):
        response = await client.request(method, f"{broker.url}{path}")
    assert_one_line_reason(response, 405)
    allow = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed in allow
    assert method not in allow


# -- CORS -------------------------------------------------------------------------------------


async def _cors_headers(
    client: httpx.AsyncClient, broker: Broker, route: str, origin: str | None
) -> httpx.Headers:
    headers = {} if origin is None else {"Origin": origin}
    url = f"{broker.url}/{route}/{TOPIC}"
    with trio.fail_after(STEP_SECONDS):
        if route == "publish":
            response = await client.post(url, content=b"data: x\n", headers=headers)
            assert response.status_code == 200
            return response.headers
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            return response.headers


@pytest.mark.parametrize("route", ["subscribe", "publish"])
@pytest.mark.parametrize(
    ("cors_origins", "origin", "expected"),
    [
        pytest.param((ORIGIN,), ORIGIN, ORIGIN, id="listed-origin-echoed"),
        pytest.param((ORIGIN,), OTHER_ORIGIN, None, id="other-origin-none"),
        pytest.param((ORIGIN,), None, None, id="no-origin-none"),
        pytest.param((ORIGIN, OTHER_ORIGIN), OTHER_ORIGIN, OTHER_ORIGIN, id="second-listed"),
        pytest.param(("*",), ORIGIN, "*", id="wildcard"),
        pytest.param((), ORIGIN, None, id="default-none"),
    ],
)
async def test_cors_allow_origin(
    nursery: trio.Nursery,
    fast_lane: bool,
    client: httpx.AsyncClient,
    route: str,
    cors_origins: tuple[str, ...],
    origin: str | None,
    expected: str | None,
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, cors_origins=cors_origins)
    headers = await _cors_headers(client, broker, route, origin)
    assert headers.get("access-control-allow-origin") == expected
    if expected not in (None, "*"):
        # A cache must not hand one origin's answer to another.
        assert "origin" in headers.get("vary", "").lower()
    await broker.stop()


async def test_cors_on_error_responses_lets_the_page_read_the_reason(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, cors_origins=(ORIGIN,))
    with trio.fail_after(STEP_SECONDS):
        response = await client.post(
            f"{broker.url}/publish/{TOPIC}", content=b"colour: red\n", headers={"Origin": ORIGIN}
        )
    assert_one_line_reason(response, 400)
    assert response.headers["access-control-allow-origin"] == ORIGIN
    await broker.stop()


@pytest.mark.parametrize("route", ["publish", "subscribe"])
@pytest.mark.parametrize("auth", [False, True], ids=["open", "publisher-auth"])
async def test_preflight_for_allowed_origin(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient, route: str, auth: bool
) -> None:
    # A browser sends no credentials on a preflight, so auth must not refuse it.
    secrets = {"publisher_secret": SECRET, "subscriber_secret": SECRET} if auth else {}
    broker = await start_broker(nursery, fast_lane=fast_lane, cors_origins=(ORIGIN,), **secrets)
    with trio.fail_after(STEP_SECONDS):
        response = await client.options(
            f"{broker.url}/{route}/{TOPIC}",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST" if route == "publish" else "GET",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == ORIGIN
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    # The route's own methods, no more.
    assert methods == ({"POST", "OPTIONS"} if route == "publish" else {"GET", "OPTIONS"})
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "last-event-id"} <= allowed
    assert int(response.headers["access-control-max-age"]) > 0
    await broker.stop()


@pytest.mark.parametrize(
    ("cors_origins", "origin"),
    [
        pytest.param((ORIGIN,), OTHER_ORIGIN, id="other-origin"),
        pytest.param((), ORIGIN, id="cors-off"),
    ],
)
async def test_preflight_for_other_origin_grants_nothing(
    nursery: trio.Nursery,
    fast_lane: bool,
    client: httpx.AsyncClient,
    cors_origins: tuple[str, ...],
    origin: str,
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane, cors_origins=cors_origins)
    with trio.fail_after(STEP_SECONDS):
        response = await client.options(
            f"{broker.url}/publish/{TOPIC}",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
    assert response.status_code == 204
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-methods" not in response.headers
    assert "access-control-allow-headers" not in response.headers
    await broker.stop()


async def test_authorised_publish_from_browser_origin(
    nursery: trio.Nursery, fast_lane: bool, client: httpx.AsyncClient
) -> None:
    broker = await start_broker(
        nursery, fast_lane=fast_lane, cors_origins=(ORIGIN,), publisher_secret=SECRET
    )
    with trio.fail_after(STEP_SECONDS):
        refused = await client.post(
            f"{broker.url}/publish/{TOPIC}", content=b"data: x\n", headers={"Origin": ORIGIN}
        )
        accepted = await client.post(
            f"{broker.url}/publish/{TOPIC}",
            content=b"data: x\n",
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {make_token(SECRET)}"},
        )
    assert_one_line_reason(refused, 401)
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert accepted.status_code == 200
    assert accepted.headers["access-control-allow-origin"] == ORIGIN
    await broker.stop()
