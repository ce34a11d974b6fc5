"""The sans-IO reader of the edge's fast forms: a table of heads it takes and
heads it declines, and generated requests run through it and through h11,
which must agree on everything the reader returns."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_esper import h1

MAX_BODY = 1000


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"


# Heads the reader takes, and what it reads from them: (route, topic, query, length, keep-alive).
TAKEN = [
    (
        head("POST /publish/Topic0001 HTTP/1.1", "Host: x", "Content-Length: 8"),
        ("publish", "Topic0001", b"", 8, True),
    ),
    (
        head(
            "POST /publish/topic0001?event=a&id=b HTTP/1.1",
            "host:x",
            "content-length:  0  ",
            "Connection: keep-alive",
        ),
        ("publish", "topic0001", b"event=a&id=b", 0, True),
    ),
    (
        head("POST /publish/x HTTP/1.1", "Host: x", "Content-Length: 1000"),
        ("publish", "x", b"", 1000, True),
    ),
    (
        head("POST /publish/t HTTP/1.1", "Host: x", "X-Tab: a\tb", "Content-Length: 1"),
        ("publish", "t", b"", 1, True),
    ),
    (head("GET /subscribe/abc HTTP/1.1", "Host: x"), ("subscribe", "abc", b"", 0, True)),
    (
        head("GET /subscribe/abc?since=earliest HTTP/1.1", "Host: x", "Connection: Close"),
        ("subscribe", "abc", b"since=earliest", 0, False),
    ),
    (
        head("GET /subscribe/abc HTTP/1.1", "Host: x", "Content-Length: 0", "Last-Event-ID: 7"),
        ("subscribe", "abc", b"", 0, True),
    ),
    (
        head("GET /subscribe/abc?a=%FF&b=/? HTTP/1.1", "Host: x", "Connection: te, close"),
        ("subscribe", "abc", b"a=%FF&b=/?", 0, False),
    ),
    (
        head("GET /.well-known/mercure?topic=https%3A%2F%2Fa.example%2F1 HTTP/1.1", "Host: x"),
        ("mercure", "", b"topic=https%3A%2F%2Fa.example%2F1", 0, True),
    ),
    (head("GET /.well-known/mercure HTTP/1.1", "Host: x"), ("mercure", "", b"", 0, True)),
    (
        head("POST /.well-known/mercure HTTP/1.1", "Host: x", "Content-Length: 12"),
        ("mercure-publish", "", b"", 12, True),
    ),
]

# Heads it declines (Hypercorn then reads them), each for one reason.
DECLINED = [
    head("GET /publish/topic0001 HTTP/1.1", "Host: x"),
    head("POST /subscribe/topic0001 HTTP/1.1", "Host: x", "Content-Length: 0"),
    head("HEAD /subscribe/topic0001 HTTP/1.1", "Host: x"),
    head("OPTIONS /subscribe/topic0001 HTTP/1.1", "Host: x"),
    head("GET /subscribe/topic0001 HTTP/1.0"),
    head("GET //subscribe/topic0001 HTTP/1.1", "Host: x"),
    head("GET /subscribe/topic0001 HTTP/1.1", "Host: x", "Content-Length: 3"),
    head("GET /subscribe/topic0001 HTTP/1.1", "Host: x", "Upgrade: h2c"),
    head("GET /history/topic0001 HTTP/1.1", "Host: x"),
    head("POST /.well-known/mercure HTTP/1.1", "Host: x"),  # no Content-Length
    head("POST /.well-known/mercure HTTP/1.1", "Host: x", "Content-Length: 1001"),  # too large
    head("HEAD /.well-known/mercure?topic=a HTTP/1.1", "Host: x"),
    head("GET /.well-known/mercure/subscriptions HTTP/1.1", "Host: x"),
    head("GET /.well-known/mercure/ HTTP/1.1", "Host: x"),
    head("GET /.well-known/Mercure?topic=a HTTP/1.1", "Host: x"),
    head("GET /.well-known/mercure?topic=a#f HTTP/1.1", "Host: x"),
    head("POST /publish/topic0001 HTTP/1.0", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Content-Length: 1"),  # no Host
    head("POST /publish/topic0001 HTTP/1.1", "Host: x"),  # no Content-Length
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 1001"),  # too large
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: -1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 0x10"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: \u00b2"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Content-Length: 1", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: x", "Transfer-Encoding: chunked"),
    head(
        "POST /publish/topic0001 HTTP/1.1",
        "Host: x",
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
    ),
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
    head("POST /publish/topic0001 HTTP/1.1", "Host: x\x01", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: \x7f", "Content-Length: 1"),
    head("POST /publish/topic0001 HTTP/1.1", "Host: caf\xe9", "Content-Length: 1"),
    b"POST /publish/topic0001 HTTP/1.1\r\nHost: x\nContent-Length: 1\r\n\r\n",
    b"GET /subscribe/topic0001 HTTP/1.1\nHost: x\n\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"POST /publish/" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize(("raw", "expected"), TAKEN)
def test_heads_taken(raw: bytes, expected: tuple[str, str, bytes, int, bool]) -> None:
    request = h1.read_request(raw + b"body", MAX_BODY)
    assert isinstance(request, h1.Request)
    read = (request.route, request.topic, request.query, request.content_length)
    assert (*read, request.keep_alive) == expected
    assert request.head_bytes == len(raw)
    assert_h11_agrees(raw + b"x" * request.content_length, request)


@pytest.mark.parametrize("raw", DECLINED)
def test_heads_declined(raw: bytes) -> None:
    assert h1.read_request(raw, MAX_BODY) is h1.DECLINE


@pytest.mark.parametrize("raw", [raw for raw, _ in TAKEN])
def test_every_incomplete_head_needs_data(raw: bytes) -> None:
    for end in range(len(raw)):
        assert h1.read_request(raw[:end], MAX_BODY) is h1.NEED_DATA, raw[:end]


@pytest.mark.parametrize(
    "start",
    [
        b"G",
        b"GET /",
        b"GET /.well-known/merc",
        b"POST /.well-known/m",
        b"POST /publish/abc HTTP/1.1\r\nHost: x\r\n",
    ],
)
def test_a_possible_start_needs_data(start: bytes) -> None:
    assert h1.read_request(start, MAX_BODY) is h1.NEED_DATA


@pytest.mark.parametrize(
    "start",
    [b"GET /h", b"PRI * HTTP/2.0\r\n", b"DELETE", b"POST /publish/abc HTTP/1.1\nHost"],
)
def test_an_impossible_start_is_declined_at_once(start: bytes) -> None:
    assert h1.read_request(start, MAX_BODY) is h1.DECLINE


def assert_h11_agrees(data: bytes, request: h1.Request) -> None:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    event = connection.next_event()
    assert isinstance(event, h11.Request)
    assert event.method.decode() == request.method
    assert event.target == request.target
    assert dict(event.headers) == request.headers
    body = b""
    while isinstance(more := connection.next_event(), h11.Data):
        body += more.data
    # The body is the next content_length bytes, however many have arrived.
    assert body == data[request.head_bytes : request.head_bytes + request.content_length]
    complete = len(data) >= request.head_bytes + request.content_length
    assert isinstance(more, h11.EndOfMessage) == complete
    if not complete:
        return
    assert connection.their_state is not h11.ERROR
    # h11 keeps the connection alive exactly when the reader says so.
    assert connection.our_state is h11.SEND_RESPONSE
    connection.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
    connection.send(h11.EndOfMessage())
    assert (connection.our_state is h11.DONE) == request.keep_alive


# Generated requests: a valid fast form, then a few bytes changed, so that
# the examples fall on both sides of every line the reader draws.
_topics = st.text(alphabet="abcXYZ019", min_size=1, max_size=8)
_queries = st.sampled_from(["", "?", "?a=b", "?id=%FF", "?token=x.y&since=earliest", "?q=/?"])
_extra_headers = st.lists(
    st.tuples(
        st.sampled_from(["Authorization", "Last-Event-ID", "Origin", "X-A", "Connection"]),
        st.sampled_from(["", "x", "Bearer a.b.c", "close", "keep-alive", "a\tb", "1 2"]),
    ),
    max_size=3,
    unique_by=lambda pair: pair[0],
)
_mutations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "replace", "delete"]),
        st.integers(min_value=0, max_value=10_000),
        st.sampled_from(list(b" \t\r\n:/?#%\x00\x01\x7f\x80\xffaZ0-")),
    ),
    max_size=2,
)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=12))
    form = draw(st.sampled_from(["publish", "subscribe", "mercure", "mercure-publish"]))
    if form == "publish":
        lines = [f"POST /publish/{draw(_topics)}{draw(_queries)} HTTP/1.1"]
        lines.append(f"Content-Length: {len(body)}")
    elif form == "subscribe":
        lines = [f"GET /subscribe/{draw(_topics)}{draw(_queries)} HTTP/1.1"]
        body = b""
    elif form == "mercure":
        lines = [f"GET /.well-known/mercure{draw(_queries)} HTTP/1.1"]
        body = b""
    else:
        lines = [f"POST /.well-known/mercure{draw(_queries)} HTTP/1.1"]
        lines.append(f"Content-Length: {len(body)}")
    lines.insert(draw(st.integers(1, len(lines))), "Host: x")
    lines += [f"{name}: {value}" for name, value in draw(_extra_headers)]
    data = bytearray(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    for kind, where, byte in draw(_mutations):
        where %= len(data) + 1
        if kind == "insert":
            data[where:where] = bytes([byte])
        elif where < len(data):
            data[where : where + 1] = b"" if kind == "delete" else bytes([byte])
    cut = draw(st.integers(min_value=0, max_value=len(data)))
    return bytes(data) if draw(st.booleans()) else bytes(data[:cut])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_reader_reads_what_h11_reads(data: bytes) -> None:
    request = h1.read_request(data, MAX_BODY)
    if request is h1.DECLINE:
        return
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)  # b"" would be end of input: h11 then reads none
    if request is h1.NEED_DATA and data:
        # h11 cannot have read a request from these bytes either.
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError:
            return  # h11 refuses early what the reader waits to decline
        assert event is h11.NEED_DATA
        return
    if request is h1.NEED_DATA:
        return
    assert isinstance(request, h1.Request)
    assert_h11_agrees(data, request)
