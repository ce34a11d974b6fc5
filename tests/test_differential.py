"""One answer, whoever serves it: a table of requests -- every route, good and
bad -- sent byte for byte to a broker whose edge serves the fast forms and to
one that serves everything through Quart-Trio (``fast_lane=False``). Status
line, every header but ``Date`` (names, case, order) and body bytes must match.

The edge's handoffs to Hypercorn are counted per connection, so the table
also shows which requests the fast forms took: a table that Hypercorn
answered on both sides would prove nothing.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

import pytest
import trio

from trio_esper import edge

from .conftest import Broker, make_token, start_broker
from .rawhttp import Raw

PUB_SECRET = "publisher-secret-of-at-least-32-bytes!"
SUB_SECRET = "subscriber-secret-of-at-least-32-bytes"
ORIGIN = "https://app.example"
#: How long a connection stays quiet before its answer is taken as complete
#: (streams never end; keep-alive connections stay open); generous, since a
#: loaded machine can hold a Quart answer back for most of a second.
QUIET_SECONDS = 2.0


@dataclass(frozen=True)
class Case:
    name: str
    sent: bytes
    """Sent at once on one connection; ``{T}`` is the case's own topic,
    ``{PUB}``/``{SUB}`` a publisher/subscriber token for it."""
    handoffs: int
    """Connections the fast-form broker hands to Hypercorn for this case."""
    half_close: bool = False
    """Shut the client's sending side after sending."""


def req(line: str, *headers: str, body: bytes | None = None) -> bytes:
    lines = [line, *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def post(target: str, body: bytes, *headers: str) -> bytes:
    return req(f"POST {target} HTTP/1.1", "Host: x", *headers, body=body)


def get(target: str, *headers: str) -> bytes:
    return req(f"GET {target} HTTP/1.1", "Host: x", *headers)


SSE = "Content-Type: text/event-stream"
PLAIN = "Content-Type: text/plain; charset=utf-8"

OPEN_CASES = [
    Case("publish", post("/publish/{T}", b"id: one\ndata: hello\n", SSE), 0),
    Case(
        "publish-conflict-pipelined",
        post("/publish/{T}", b"id: one\ndata: a\n") + post("/publish/{T}", b"id: one\ndata: b\n"),
        0,
    ),
    Case("publish-assigned-id", post("/publish/{T}", b"data: x\n"), 0),
    Case("publish-empty-id", post("/publish/{T}", b"id:\ndata: x\n"), 0),
    Case("publish-id-trailing-space", post("/publish/{T}", b"id: 1 \ndata: x\n"), 0),
    Case("publish-plain-id-with-tab", post("/publish/{T}?id=a%09b", b"x", PLAIN), 0),
    Case("publish-plain", post("/publish/{T}?event=e&id=two", b"a\nb", PLAIN), 0),
    Case("publish-plain-bad-escape", post("/publish/{T}?id=%FF", b"a", PLAIN), 0),
    Case("publish-plain-escape", post("/publish/{T}?id=caf%C3%A9&event=%20e", b"a", PLAIN), 0),
    Case("publish-query-with-sse-body", post("/publish/{T}?event=e", b"data: x\n", SSE), 0),
    Case("publish-no-data", post("/publish/{T}", b"nodata: x\n"), 0),
    Case("publish-not-utf8", post("/publish/{T}", b"data: \xff\n"), 0),
    Case("publish-short-topic", post("/publish/short", b"data: x\n"), 0),
    Case("publish-long-topic", post("/publish/" + "a" * 65, b"data: x\n"), 0),
    Case("publish-origin-allowed", post("/publish/{T}", b"data: x\n", f"Origin: {ORIGIN}"), 0),
    Case(
        "publish-origin-other", post("/publish/{T}", b"data: x\n", "Origin: https://e.example"), 0
    ),
    # Not pipelined behind it: h11 refuses bytes after a Connection: close
    # request, and Hypercorn then answers 400 instead of the request (README).
    Case("publish-connection-close", post("/publish/{T}", b"data: x\n", "Connection: close"), 0),
    Case("publish-over-limit", post("/publish/{T}", b"data: " + b"x" * 2000 + b"\n"), 1),
    Case(
        "publish-truncated-body",
        req("POST /publish/{T} HTTP/1.1", "Host: x", "Content-Length: 50") + b"data: x\n",
        1,
        half_close=True,
    ),
    Case(
        "publish-bare-lf",
        b"POST /publish/{T} HTTP/1.1\nHost: x\nContent-Length: 8\n\ndata: x\n",
        1,
    ),
    Case(
        "publish-length-and-chunked",
        req(
            "POST /publish/{T} HTTP/1.1",
            "Host: x",
            "Content-Length: 13",
            "Transfer-Encoding: chunked",
        )
        + b"8\r\ndata: x\n\r\n0\r\n\r\n"
        + post("/publish/{T}", b"data: smuggled\n"),
        1,
    ),
    Case(
        "publish-chunked",
        req("POST /publish/{T} HTTP/1.1", "Host: x", "Transfer-Encoding: chunked")
        + b"8\r\ndata: x\n\r\n0\r\n\r\n",
        1,
    ),
    Case("publish-http10", req("POST /publish/{T} HTTP/1.0", body=b"data: x\n"), 1),
    Case("publish-wrong-method", get("/publish/{T}"), 1),
    Case(
        "publish-then-history-then-publish",
        post("/publish/{T}", b"id: a\ndata: 1\n")
        # (Not a whole /history page: its float times vary in length.)
        + get("/history/{T}?limit=0")
        + post("/publish/{T}", b"id: b\ndata: 2\n"),
        1,
    ),
    Case("subscribe", get("/subscribe/{T}"), 0),
    Case("subscribe-origin", get("/subscribe/{T}", f"Origin: {ORIGIN}"), 0),
    Case("subscribe-connection-close", get("/subscribe/{T}", "Connection: close"), 0),
    Case("subscribe-short-topic", get("/subscribe/short") + get("/subscribe/{T}"), 0),
    Case("subscribe-bad-since", get("/subscribe/{T}?since=later"), 0),
    Case("subscribe-bad-escape", get("/subscribe/{T}?lastEventId=%FF%FE"), 0),
    Case("subscribe-unknown-last-id", get("/subscribe/{T}", "Last-Event-ID: nope"), 0),
    Case(
        "subscribe-resume",
        post("/publish/{T}", b"id: a\ndata: 1\n")
        + post("/publish/{T}", b"id: b\ndata: 2\n")
        + get("/subscribe/{T}?lastEventId=a"),
        0,
    ),
    Case(
        "subscribe-since-earliest",
        post("/publish/{T}", b"id: a\ndata: 1\n") + get("/subscribe/{T}?since=earliest"),
        0,
    ),
    Case(
        "subscribe-then-pipelined-publish",
        get("/subscribe/{T}") + post("/publish/{T}", b"data: never\n"),
        0,
    ),
    Case("subscribe-head", req("HEAD /subscribe/{T} HTTP/1.1", "Host: x"), 1),
    Case("subscribe-http10", req("GET /subscribe/{T} HTTP/1.0"), 1),
    Case("subscribe-with-body", req("GET /subscribe/{T} HTTP/1.1", "Host: x", body=b"abc"), 1),
    Case("subscribe-wrong-method", post("/subscribe/{T}", b""), 1),
    Case("subscribe-double-slash", get("//subscribe/{T}", "Host: evil.example"), 1),
    Case("subscribe-percent-topic", get("/subscribe/%41bcdefgh12"), 1),
    Case("history", get("/history/{T}?limit=%C2%B2"), 1),
    Case("stats-wrong-method", post("/stats", b""), 1),
    Case(
        "preflight-history",
        req(
            "OPTIONS /history/{T} HTTP/1.1",
            "Host: x",
            f"Origin: {ORIGIN}",
            "Access-Control-Request-Method: GET",
        ),
        1,
    ),
    Case("unknown-route", get("/nope"), 1),
    Case("not-http", b"hello\r\n\r\n", 1),
]

AUTH_CASES = [
    Case("publish-no-token", post("/publish/{T}", b"data: x\n"), 0),
    Case("publish-basic", post("/publish/{T}", b"data: x\n", "Authorization: Basic abc"), 0),
    Case("publish-bad-token", post("/publish/{T}", b"data: x\n", "Authorization: Bearer x.y"), 0),
    Case("publish-token", post("/publish/{T}", b"data: x\n", "Authorization: Bearer {PUB}"), 0),
    Case("publish-query-token", post("/publish/{T}?token={PUB}", b"data: x\n"), 0),
    Case("publish-sub-token", post("/publish/{T}?token={SUB}", b"data: x\n"), 0),
    Case("publish-other-topic", post("/publish/othertopic1?token={PUB}", b"data: x\n"), 0),
    Case(
        "subscribe-no-token-then-token",
        get("/subscribe/{T}") + get("/subscribe/{T}", "Authorization: Bearer {SUB}"),
        0,
    ),
    Case("subscribe-query-token", get("/subscribe/{T}?token={SUB}"), 0),
    Case("subscribe-pub-token", get("/subscribe/{T}?token={PUB}"), 0),
    Case("stats-no-token", get("/stats"), 1),
]


async def _answers(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, cases: list[Case], **config: object
) -> tuple[list[bytes], dict[str, int]]:
    """Each case's answer bytes (date and assigned ids normalised), and the
    handoffs to Hypercorn per case."""
    broker: Broker = await start_broker(nursery, cors_origins=(ORIGIN,), **config)
    case_of_peer: dict[str, str] = {}
    handoffs: dict[str, int] = {}
    serve_hypercorn = edge.Edge._serve_hypercorn

    async def counted(self: edge.Edge, connection: edge.Connection, unread: bytes) -> None:
        name = case_of_peer.get(connection.peer, "?")
        handoffs[name] = handoffs.get(name, 0) + 1
        await serve_hypercorn(self, connection, unread)

    monkeypatch.setattr(edge.Edge, "_serve_hypercorn", counted)
    answers: dict[int, bytes] = {}

    async def run(n: int, case: Case) -> None:
        topic = f"difftopic{n:03d}"
        sent = (
            case.sent.replace(b"{T}", topic.encode())
            .replace(b"{PUB}", make_token(PUB_SECRET, topic).encode())
            .replace(b"{SUB}", make_token(SUB_SECRET, topic).encode())
        )
        async with await Raw.connect(broker) as raw:
            host, port = raw.stream.socket.getsockname()[:2]
            case_of_peer[f"{host}:{port}"] = case.name
            await raw.send(sent)
            if case.half_close:
                raw.stream.socket.shutdown(socket.SHUT_WR)
            answers[n] = _normalise(await raw.read_for(QUIET_SECONDS))

    async with trio.open_nursery() as cases_nursery:
        for n, case in enumerate(cases):
            cases_nursery.start_soon(run, n, case)
    monkeypatch.setattr(edge.Edge, "_serve_hypercorn", serve_hypercorn)
    await broker.stop()
    return [answers[n] for n in range(len(cases))], handoffs


_DATE = re.compile(rb"(?i)\r\ndate: [^\r\n]*")
#: Ids the broker assigns: 16 decimal digits, different from run to run.
_ASSIGNED = re.compile(rb"(?<![0-9])[0-9]{16}(?![0-9])")
_STATUS = re.compile(rb"HTTP/1\.1 ([0-9]{3}) \r\n")
#: Publish times in /history.
_TIME = re.compile(rb'"time": [0-9.]+')


def _normalise(answer: bytes) -> bytes:
    answer = _DATE.sub(b"\r\ndate: <date>", answer)
    answer = _TIME.sub(b'"time": <time>', answer)
    return _ASSIGNED.sub(b"<assigned id>", answer)


@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
async def test_fast_forms_answer_as_the_quart_routes_do(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, auth: bool
) -> None:
    cases = AUTH_CASES if auth else OPEN_CASES
    secrets = {"publisher_secret": PUB_SECRET, "subscriber_secret": SUB_SECRET} if auth else {}
    fast, fast_handoffs = await _answers(
        nursery, monkeypatch, cases, max_body_bytes=1000, fast_lane=True, **secrets
    )
    quart, quart_handoffs = await _answers(
        nursery, monkeypatch, cases, max_body_bytes=1000, fast_lane=False, **secrets
    )
    differ = [
        (case.name, fast_answer, quart_answer)
        for case, fast_answer, quart_answer in zip(cases, fast, quart, strict=True)
        if fast_answer != quart_answer or not fast_answer
    ]
    assert not differ, "\n".join(f"{name}:\n  {f!r}\n  {q!r}" for name, f, q in differ)
    statuses = {int(status) for answer in fast for status in _STATUS.findall(answer)}
    assert statuses >= ({200, 401, 403} if auth else {200, 204, 400, 404, 405, 409, 413})
    # Which cases the fast forms took: all of them but the declined ones.
    assert fast_handoffs == {case.name: 1 for case in cases if case.handoffs}
    assert quart_handoffs == {case.name: 1 for case in cases}


def test_the_table_covers_statuses_and_both_forms() -> None:
    # A guard on the table itself: good and bad answers on both routes.
    names = {case.name for case in OPEN_CASES + AUTH_CASES}
    for needed in ("publish", "subscribe", "subscribe-resume", "publish-over-limit"):
        assert needed in names
    assert sum(not case.handoffs for case in OPEN_CASES) >= 20
