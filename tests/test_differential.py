"""One answer, whoever serves it: a table of requests -- every route, good and
bad -- sent byte for byte to a broker whose edge serves the fast forms and to
one that serves everything through Quart-Trio (``fast_lane=False``). Status
line, every header but ``Date`` (names, case, order) and body bytes must match.
Each answer is read to its end (:func:`read_answer`): an answer per request,
a stream's first frames, or the connection's end.

The edge's handoffs to Hypercorn are counted per connection, so the table
also shows which requests the fast forms took: a table that Hypercorn
answered on both sides would prove nothing.

Then live streams (:data:`SCENARIOS`): delivery, heartbeats, a slow
subscriber dropped, shutdown, subscribers hanging up, requests pipelined
behind ``Connection: close``; what their clients see must match too, but for
the known divergences (:data:`DIVERGENCES`), each pinned to what each lane
does, so that a change to either fails until the row follows.
"""

from __future__ import annotations

import math
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import jwt
import pytest
import trio

from trio_esper.edge import bridge
from trio_esper.endpoints import PublishBudget

from .conftest import STEP_SECONDS, Broker, make_token, start_broker
from .rawhttp import Raw, publish, stats

PUB_SECRET = "publisher-secret-of-at-least-32-bytes!"
SUB_SECRET = "subscriber-secret-of-at-least-32-bytes"
ORIGIN = "https://app.example"


@dataclass(frozen=True)
class Case:
    name: str
    sent: bytes
    """Sent at once on one connection; ``{T}`` is the case's own topic,
    ``{PUB}``/``{SUB}`` a publisher/subscriber token for it (``{M...}``:
    Mercure tokens); in the target and headers only: a body's length is
    counted before they are replaced."""
    handoffs: int
    """Connections the fast-form broker hands to Hypercorn for this case."""
    half_close: bool = False
    """Shut the client's sending side after sending."""
    frames: int = 1
    """Frames of an event stream to read (``: subscribed`` is the first): a
    stream never ends, so its answer is complete at its ``frames``-th frame."""


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
FORM = "Content-Type: application/x-www-form-urlencoded"
#: The Mercure hub, and a subscribe to the case's own topic (an IRI).
HUB = "/.well-known/mercure"
MT = HUB + "?topic=https%3A%2F%2Fexample.com%2F{T}"

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
    Case("subscribe-unknown-last-id", get("/subscribe/{T}", "Last-Event-ID: nope"), 0, frames=2),
    Case(
        "subscribe-resume",
        post("/publish/{T}", b"id: a\ndata: 1\n")
        + post("/publish/{T}", b"id: b\ndata: 2\n")
        + get("/subscribe/{T}?lastEventId=a"),
        0,
        frames=2,
    ),
    Case(
        "subscribe-since-earliest",
        post("/publish/{T}", b"id: a\ndata: 1\n") + get("/subscribe/{T}?since=earliest"),
        0,
        frames=2,
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
    Case("mercure-subscribe", get(MT), 0),
    Case("mercure-subscribe-origin", get(MT, f"Origin: {ORIGIN}"), 0),
    Case("mercure-subscribe-connection-close", get(MT, "Connection: close"), 0),
    Case("mercure-topics-and-template", get(MT + "&topic=https://example.com/{id}&topic=*"), 0),
    Case("mercure-no-topic-then-one", get(HUB) + get(MT), 0),
    Case("mercure-not-utf8", get(HUB + "?topic=%FF"), 0),
    Case("mercure-malformed-escape-dropped", get(HUB + "?topic=%zz&topic=a"), 0),
    Case("mercure-semicolon-dropped", get(HUB + "?topic=a;b&topic=a"), 0),
    Case("mercure-too-many-topics", get(HUB + "?" + "&".join(["topic=a"] * 1001)), 0),
    Case("mercure-earliest", get(MT + "&lastEventID=earliest"), 0),
    Case("mercure-unknown-last-id", get(MT, "Last-Event-ID: nope"), 0),
    Case("mercure-unknown-last-id-query", get(MT + "&lastEventID=nope"), 0),
    Case("mercure-head", req(f"HEAD {MT} HTTP/1.1", "Host: x"), 1),
    Case("mercure-publish", post(HUB, b"topic=https%3A%2F%2Fexample.com%2F1&data=y", FORM), 0),
    Case(
        "mercure-publish-fields",
        post(HUB, b"topic=a1&topic=b&data=l1%0Al2&id=m1&type=t&retry=50&private=on", FORM),
        0,
    ),
    Case("mercure-publish-no-topic", post(HUB, b"data=y", FORM), 0),
    Case("mercure-publish-not-a-form", post(HUB, b"topic=a&data=y", PLAIN), 0),
    Case("mercure-publish-bad-retry", post(HUB, b"topic=a1&data=y&retry=-1", FORM), 0),
    Case("mercure-publish-bad-escape", post(HUB, b"topic=a%zz&data=y", FORM), 0),
    Case("mercure-publish-cr-in-id", post(HUB, b"topic=a1&data=y&id=a%0Db", FORM), 0),
    Case("mercure-publish-reserved", post(HUB, b"topic=/.well-known/mercure/x&data=y", FORM), 0),
    Case("mercure-publish-bad-query", post(HUB + "?a=%zz", b"topic=a1&data=y", FORM), 0),
    Case(
        "mercure-publish-origin-pipelined",
        post(HUB, b"topic=a1&data=1", FORM, f"Origin: {ORIGIN}")
        + post(HUB, b"topic=a1&data=2", FORM, "Connection: close"),
        0,
    ),
    Case("mercure-publish-over-limit", post(HUB, b"topic=a&data=" + b"x" * 2000, FORM), 1),
    Case("mercure-publish-no-length", req(f"POST {HUB} HTTP/1.1", "Host: x"), 1),
    Case("mercure-subscriptions-off", get(HUB + "/subscriptions"), 1),
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
    Case("mercure-anonymous", get(MT), 0),
    Case("mercure-token-header", get(MT, "Authorization: Bearer {MSUB}"), 0),
    Case("mercure-token-query", get(MT + "&authorization={MSUB}"), 0),
    Case("mercure-token-cookie", get(MT, "Cookie: mercureAuthorization={MSUB}"), 0),
    Case(
        "mercure-token-header-and-cookie",
        get(MT, "Authorization: Bearer {MSUB}", "Cookie: a=b"),
        0,
    ),
    Case("mercure-bad-token", get(MT, "Authorization: Bearer x.y.z"), 0),
    Case("mercure-basic", get(MT, "Authorization: Basic abc"), 0),
    Case("mercure-expired-token", get(MT, "Authorization: Bearer {MEXP}"), 0),
    Case("mercure-esper-token", get(MT, "Authorization: Bearer {SUB}"), 0),
    Case("mercure-publisher-key", get(MT, "Authorization: Bearer {MPUB}"), 0),
    Case("mercure-publish-no-token", post(HUB, b"topic=a1&data=y", FORM), 0),
    Case(
        "mercure-publish-token",
        post(HUB, b"topic=a1&data=y&id=p1", FORM, "Authorization: Bearer {MPUB}"),
        0,
    ),
    Case(
        "mercure-publish-query-token",
        post(HUB + "?authorization={MPUB}", b"topic=a1&data=y&id=p2", FORM),
        0,
    ),
    Case(
        "mercure-publish-cookie-only",
        post(HUB, b"topic=a1&data=y", FORM, "Cookie: mercureAuthorization={MPUB}"),
        0,
    ),
    Case(
        "mercure-publish-outside-claim",
        post(HUB, b"topic=b1&data=y", FORM, "Authorization: Bearer {MPUBA}"),
        0,
    ),
    Case(
        "mercure-publish-subscriber-key",
        post(HUB, b"topic=a1&data=y", FORM, "Authorization: Bearer {MSUB}"),
        0,
    ),
]


def mercure_token(key: str, exp_in: float | None = 60, **claims: object) -> str:
    """A Mercure token: ``claims`` in its ``mercure`` claim."""
    payload: dict[str, object] = {"mercure": claims}
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    return jwt.encode(payload, key, algorithm="HS256")


#: A request line (a bare LF ends one too: a case sends that).
_REQUEST_LINE = re.compile(rb"(?m)^([A-Z]+) \S+ HTTP/1\.[01]\r?$")


async def read_answer(
    raw: Raw, sent: bytes, frames: int = 1, timeout: float = STEP_SECONDS
) -> bytes:
    """What ``raw`` received in answer to ``sent``, up to its end: an answer
    per request in ``sent`` (head, and body by its framing; a ``HEAD``'s has
    none), until a stream's ``frames``-th frame (a stream never ends), or the
    end of the connection, or, after an answer that closes the connection,
    that end. Bytes that arrived past that point are left out. On a timeout:
    what came, then ``<timed out>``."""
    start = raw.consumed
    methods = [line.group(1) for line in _REQUEST_LINE.finditer(sent)] or [b""]
    try:
        with trio.fail_after(timeout):
            for method in methods:
                if not await _read_one_answer(raw, method, frames):
                    break
    except trio.TooSlowError:
        return bytes(raw.received[start:]) + b"<timed out>"
    except EOFError:
        pass
    return bytes(raw.received[start : raw.consumed])


async def _read_one_answer(raw: Raw, method: bytes, frames: int) -> bool:
    """Read one answer (raises ``EOFError`` at the end of the connection);
    whether another may follow on the connection."""
    head = await raw.read_until(b"\r\n\r\n", timeout=math.inf)
    fields = head.lower()
    stream = b"\r\ncontent-type: text/event-stream\r\n" in fields and method != b"HEAD"
    if head.startswith(b"HTTP/1.1 200 ") and stream:
        await read_frames(raw, frames, chunked=b"\r\ntransfer-encoding: chunked\r\n" in fields)
        return False
    raw.buffer = head + raw.buffer  # read again, as a whole answer
    answer = await raw.read_response(body=method != b"HEAD", timeout=math.inf)
    if "close" in answer.headers.get("connection", "").lower():
        await raw.read_to_eof(timeout=math.inf)
        return False
    return True


async def read_frames(raw: Raw, frames: int, *, chunked: bool) -> bytes:
    """An event stream's body up to the end of its ``frames``-th frame (and,
    ``chunked``, of the chunk that holds it), de-chunked."""
    data = b""
    while data.count(b"\n\n") < frames:
        if not chunked:
            data += await raw.read_until(b"\n\n", timeout=math.inf)
            continue
        size = int((await raw.read_until(b"\r\n", timeout=math.inf))[:-2].split(b";")[0], 16)
        if size == 0:
            raise EOFError(f"the stream ended after {data!r}")
        data += (await raw.read_exactly(size + 2, timeout=math.inf))[:-2]
    return data


async def _answers(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, cases: list[Case], **config: object
) -> tuple[list[bytes], dict[str, int]]:
    """Each case's answer bytes (date and assigned ids normalised), and the
    handoffs to Hypercorn per case."""
    broker: Broker = await start_broker(nursery, cors_origins=(ORIGIN,), **config)
    case_of_peer: dict[str, str] = {}
    handoffs: dict[str, int] = {}
    serve_hypercorn = bridge.Hypercorn.serve

    async def counted(
        self: bridge.Hypercorn, stream: bridge.HypercornStream, budget: PublishBudget | None
    ) -> None:
        assert isinstance(stream, bridge.PlainStream)
        host, port = stream.socket.getpeername()[:2]
        name = case_of_peer.get(f"{host}:{port}", "?")
        handoffs[name] = handoffs.get(name, 0) + 1
        await serve_hypercorn(self, stream, budget)

    monkeypatch.setattr(bridge.Hypercorn, "serve", counted)
    answers: dict[int, bytes] = {}

    async def run(n: int, case: Case) -> None:
        topic = f"difftopic{n:03d}"
        sent = (
            case.sent.replace(b"{T}", topic.encode())
            .replace(b"{PUB}", make_token(PUB_SECRET, topic).encode())
            .replace(b"{SUB}", make_token(SUB_SECRET, topic).encode())
            .replace(b"{MSUB}", mercure_token(SUB_SECRET, subscribe=["*"]).encode())
            .replace(b"{MEXP}", mercure_token(SUB_SECRET, -10, subscribe=["*"]).encode())
            .replace(b"{MPUBA}", mercure_token(PUB_SECRET, publish=["a1"]).encode())
            .replace(b"{MPUB}", mercure_token(PUB_SECRET, publish=["*"]).encode())
        )
        async with await Raw.connect(broker) as raw:
            host, port = raw.stream.socket.getsockname()[:2]
            case_of_peer[f"{host}:{port}"] = case.name
            await raw.send(sent)
            if case.half_close:
                raw.stream.socket.shutdown(socket.SHUT_WR)
            answers[n] = _normalise(await read_answer(raw, sent, case.frames))

    async with trio.open_nursery() as cases_nursery:
        for n, case in enumerate(cases):
            cases_nursery.start_soon(run, n, case)
    monkeypatch.setattr(bridge.Hypercorn, "serve", serve_hypercorn)
    await broker.stop()
    return [answers[n] for n in range(len(cases))], handoffs


_DATE = re.compile(rb"(?i)\r\ndate: [^\r\n]*")
#: Ids the broker assigns: 16 decimal digits, different from run to run.
_ASSIGNED = re.compile(rb"(?<![0-9])[0-9]{16}(?![0-9])")
_STATUS = re.compile(rb"HTTP/1\.1 ([0-9]{3}) \r\n")
#: Ids the Mercure hub makes.
_UUID = re.compile(rb"urn:uuid:[0-9a-f-]{36}")
#: Publish times in /history.
_TIME = re.compile(rb'"time": [0-9.]+')


def _normalise(answer: bytes) -> bytes:
    answer = _DATE.sub(b"\r\ndate: <date>", answer)
    answer = _TIME.sub(b'"time": <time>', answer)
    answer = _UUID.sub(b"urn:uuid:<made>", answer)
    return _ASSIGNED.sub(b"<assigned id>", answer)


@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
async def test_fast_forms_answer_as_the_quart_routes_do(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, auth: bool
) -> None:
    cases = AUTH_CASES if auth else OPEN_CASES
    secrets = {"publisher_secret": PUB_SECRET, "subscriber_secret": SUB_SECRET} if auth else {}
    # Short: a connection closes at its keep-alive's end after a 400 that says it
    # closes (not at once), and a shutdown waits the grace period for a quart-lane
    # connection whose subscriber left with a request pipelined (DIVERGENCES).
    config = {"max_body_bytes": 1000, "keep_alive_seconds": 1, "shutdown_grace_seconds": 1}
    fast, fast_handoffs = await _answers(
        nursery, monkeypatch, cases, fast_lane=True, **config, **secrets
    )
    quart, quart_handoffs = await _answers(
        nursery, monkeypatch, cases, fast_lane=False, **config, **secrets
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
    for needed in (
        "publish",
        "subscribe",
        "subscribe-resume",
        "publish-over-limit",
        "mercure-subscribe",
        "mercure-token-header",
    ):
        assert needed in names
    assert sum(not case.handoffs for case in OPEN_CASES) >= 20


# -- live streams: delivery, heartbeats, slow subscribers, shutdown ----------------------------
#
# Each scenario drives a broker of its own on one lane, waits for its own end
# conditions (frames read, a stream's end, /stats showing a drop, the broker
# stopped) and returns what its clients saw, by name. Both lanes must see the
# same, but for the known divergences below: each is a row that fails when
# the difference changes or goes away (then the row goes too).

#: What the clients of a scenario saw, by observation.
Seen = dict[str, object]


@dataclass
class Stream:
    """A subscriber's connection, read frame by frame, its wire bytes kept."""

    raw: Raw
    head: bytes

    async def frames(self, count: int) -> bytes:
        """The next ``count`` frames as they came on the wire, chunk framing and all."""
        start = self.raw.consumed
        with trio.fail_after(STEP_SECONDS):
            await read_frames(self.raw, count, chunked=True)
        return bytes(self.raw.received[start : self.raw.consumed])

    async def frame(self) -> bytes:
        """The next chunk that holds a frame, as it came."""
        return await self.frames(1)

    async def until_end(self) -> str:
        """Read on until the stream ends: ``"last chunk"`` (the body is
        complete) or ``"connection closed"`` (it is cut short)."""
        try:
            await self.raw.read_until(b"\r\n0\r\n\r\n")
        except EOFError:
            return "connection closed"
        return "last chunk"


async def open_stream(
    broker: Broker, topic: str, *headers: str, receive_buffer: int | None = None
) -> Stream:
    """A chunked subscriber stream whose ``: subscribed`` frame has arrived."""
    raw = await Raw.connect(broker, receive_buffer=receive_buffer)
    await raw.send(get(f"/subscribe/{topic}", *headers))
    head = await raw.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    stream = Stream(raw, _normalise(head))
    assert await stream.frame() == b"e\r\n: subscribed\n\n\r\n"
    return stream


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's data (a chunk cut short: what arrived of it), and
    whether the last chunk ended it."""
    data = b""
    while body:
        size_line, found, body = body.partition(b"\r\n")
        if not found:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return data, True
        data += body[:size]
        body = body[size + 2 :]
    return data, False


async def stats_of(broker: Broker, *names: str) -> dict[str, object]:
    return {name: value for name, value in (await stats(broker)).items() if name in names}


async def wait_for_stat(broker: Broker, name: str, value: int) -> float:
    """Poll /stats until ``name`` is ``value``; the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(STEP_SECONDS):
        while (await stats(broker))[name] != value:
            await trio.sleep(0.02)
    return trio.current_time() - start


async def live_delivery(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """Events of every form to two subscribers, one at a time, then a burst."""
    broker = await start_broker(nursery, fast_lane=fast_lane, cors_origins=(ORIGIN,))
    topic = "livetopic01"
    streams = [
        await open_stream(broker, topic),
        await open_stream(broker, topic, f"Origin: {ORIGIN}"),
    ]
    seen: Seen = {"heads": [stream.head for stream in streams]}
    forms = [
        (
            "several events",
            post(
                f"/publish/{topic}",
                b"id: a\ndata: 1\n\nevent: two\ndata: 2\ndata: 2b\n\nid: c\ndata: 3\n",
            ),
            3,
        ),
        ("plain text", post(f"/publish/{topic}?event=note&id=p1", b"one\ntwo", PLAIN), 1),
        ("retry", post(f"/publish/{topic}", b"retry: 1500\nid: r\ndata: x\n"), 1),
    ]
    async with await Raw.connect(broker) as publisher:
        for name, sent, frames in forms:
            await publisher.send(sent)
            seen[f"{name}: answer"] = _normalise(await read_answer(publisher, sent))
            seen[f"{name}: frames"] = [
                _normalise(await stream.frames(frames)) for stream in streams
            ]
        # Pipelined: how the frames fall into chunks may vary; their bytes may not.
        burst = b"".join(
            post(f"/publish/{topic}", b"id: q%d\ndata: %d\n" % (n, n)) for n in range(20)
        )
        await publisher.send(burst)
        seen["burst: answers"] = _normalise(await read_answer(publisher, burst))
        seen["burst: frames"] = [dechunk(await stream.frames(20)) for stream in streams]
    seen["stats"] = await stats_of(
        broker, "clients", "topics", "published", "delivered", "dropped"
    )
    for stream in streams:
        await stream.raw.aclose()
    await broker.stop()
    return seen


async def heartbeats(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """An idle stream's heartbeats, an event between them, on a keep-alive
    stream and a ``Connection: close`` one."""
    broker = await start_broker(nursery, fast_lane=fast_lane, heartbeat_seconds=0.3)
    topic = "beattopic01"
    streams = [
        await open_stream(broker, topic),
        await open_stream(broker, topic, "Connection: close"),
    ]
    seen: Seen = {"heads": [stream.head for stream in streams]}
    seen["idle"] = [await stream.frames(2) for stream in streams]
    await publish(broker, topic, b"id: between\ndata: x\n")
    for n, stream in enumerate(streams):
        # A heartbeat may come first: it is due when it is due.
        while b"data: x" not in (chunk := await stream.frame()):
            assert chunk == b"d\r\n: heartbeat\n\n\r\n", chunk
        seen[f"event {n}"] = chunk
        seen[f"after the event {n}"] = await stream.frame()
    for stream in streams:
        await stream.raw.aclose()
    await broker.stop()
    return seen


#: An event that fills a small socket buffer fast.
BIG = b"x" * 16_000


async def slow_subscriber(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """A subscriber that stops reading while events come is dropped when its
    queue (--queue 2) is full; another keeps everything."""
    broker = await start_broker(nursery, fast_lane=fast_lane, queue_events=2)
    topic = "slowtopic01"
    stalled = await open_stream(broker, topic, receive_buffer=4096)
    healthy = await open_stream(broker, topic)
    sent: list[bytes] = []
    with trio.fail_after(STEP_SECONDS):
        while not (await stats(broker))["dropped"]:
            assert len(sent) < 100, "never dropped"
            sent.append(b"id: e%d\ndata: %s\n" % (len(sent), BIG))
            await publish(broker, topic, sent[-1])
    seen: Seen = {"stats": await stats_of(broker, "clients", "dropped")}
    received, ended = dechunk(await healthy.frames(len(sent)))
    seen["the other subscriber"] = (received == b"".join(s + b"\n" for s in sent), ended)
    seen["the dropped stream ends by"] = await stalled.until_end()
    # Is the connection still there, to serve another request?
    try:
        await stalled.raw.send(get("/stats"))
        answer = await stalled.raw.read_response()
        seen["a request after the stream"] = answer.status
    except (EOFError, trio.BrokenResourceError):
        seen["a request after the stream"] = "connection closed"
    await stalled.raw.aclose()
    await healthy.raw.aclose()
    await broker.stop()
    return seen


async def shutdown(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """Open streams when the broker stops: how each ends, and that the stop
    has nothing to wait for."""
    broker = await start_broker(nursery, fast_lane=fast_lane, shutdown_grace_seconds=5)
    topic = "stoptopic01"
    streams = [
        await open_stream(broker, topic),
        await open_stream(broker, topic, "Connection: close"),
    ]
    await publish(broker, topic, b"id: last\ndata: x\n")
    seen: Seen = {"last event": [await stream.frame() for stream in streams]}
    start = trio.current_time()
    await broker.stop()
    seen["stopped well inside the grace period"] = trio.current_time() - start < 2.5
    seen["ends"] = [await stream.raw.read_to_eof() for stream in streams]
    for stream in streams:
        await stream.raw.aclose()
    return seen


async def shutdown_beside_a_stalled_stream(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """The broker stops while one subscriber has stopped reading: the stop
    waits the grace period for it; how the others' streams end meanwhile."""
    grace = 2.0
    broker = await start_broker(nursery, fast_lane=fast_lane, shutdown_grace_seconds=grace)
    topic = "stalltopic1"
    stalled = await open_stream(broker, topic, receive_buffer=4096)
    healthy = await open_stream(broker, topic)
    for n in range(30):  # fill the stalled one's socket buffers
        await publish(broker, topic, b"id: e%d\ndata: %s\n" % (n, BIG))
    await healthy.frames(30)
    seen: Seen = {}
    start = trio.current_time()

    async def read_healthy() -> None:
        seen["the other stream's end"] = await healthy.raw.read_to_eof()
        seen["the other connection closed well inside the grace period"] = (
            trio.current_time() - start < grace / 2
        )

    async with trio.open_nursery() as reading:
        reading.start_soon(read_healthy)
        await broker.stop()
        seen["the stop waited the grace period"] = trio.current_time() - start >= grace * 0.9
    seen["the stalled stream ends by"] = await stalled.until_end()
    await stalled.raw.aclose()
    await healthy.raw.aclose()
    return seen


async def subscribers_leave(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """A subscriber hangs up, and one hangs up with a request pipelined
    behind its stream: when each is gone, and what the broker then holds."""
    heartbeat, grace = 1.0, 2.0
    broker = await start_broker(
        nursery, fast_lane=fast_lane, heartbeat_seconds=heartbeat, shutdown_grace_seconds=grace
    )
    seen: Seen = {}
    for name, pipelined in (("hangs up", b""), ("hangs up, a request pipelined", get("/stats"))):
        stream = await open_stream(broker, "leavetopic1")
        await stream.raw.send(pipelined)
        await wait_for_stat(broker, "clients", 1)
        await stream.raw.aclose()
        gone = await wait_for_stat(broker, "clients", 0)
        seen[f"{name}: gone within half a heartbeat"] = gone < heartbeat / 2
    start = trio.current_time()
    await broker.stop()
    seen["the stop had nothing to wait for"] = trio.current_time() - start < grace / 2
    return seen


async def pipelined_behind_close(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """A request pipelined behind one that says ``Connection: close``."""
    broker = await start_broker(nursery, fast_lane=fast_lane)
    topic = "closetopic1"
    seen: Seen = {}
    cases = {
        "publish": post(f"/publish/{topic}", b"data: 1\n", "Connection: close"),
        "subscribe": get(f"/subscribe/{topic}", "Connection: close"),
    }
    for name, first in cases.items():
        async with await Raw.connect(broker) as raw:
            await raw.send(first + post(f"/publish/{topic}", b"data: 2\n"))
            seen[name] = _normalise(await read_answer(raw, first))
    seen["published"] = await stats_of(broker, "published")
    await broker.stop()
    return seen


async def open_mercure(broker: Broker, topics: list[str], *headers: str) -> Stream:
    """A Mercure subscriber's chunked stream whose ``: subscribed`` frame has arrived."""
    raw = await Raw.connect(broker)
    query = "&".join("topic=" + quote(topic, safe="") for topic in topics)
    await raw.send(get(f"{HUB}?{query}", *headers))
    head = await raw.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    stream = Stream(raw, _normalise(head))
    assert await stream.frame() == b"e\r\n: subscribed\n\n\r\n"
    return stream


async def mercure_streams(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """Mercure subscribers of every kind (exact, template, several topics,
    private by header and by cookie), updates published through the form,
    a resume by id, and a token's expiry ending its stream."""
    broker = await start_broker(
        nursery,
        fast_lane=fast_lane,
        cors_origins=(ORIGIN,),
        publisher_secret=PUB_SECRET,
        subscriber_secret=SUB_SECRET,
        mercure_anonymous=True,
    )
    book, other = "https://example.com/books/1", "https://example.com/other"
    private = f"Authorization: Bearer {mercure_token(SUB_SECRET, subscribe=[book])}"
    cookie = f"Cookie: mercureAuthorization={mercure_token(SUB_SECRET, subscribe=['*'])}"
    streams = {
        "exact": await open_mercure(broker, [book]),
        "template": await open_mercure(broker, ["https://example.com/books/{id}"]),
        "private by header": await open_mercure(
            broker, [book, other], private, f"Origin: {ORIGIN}"
        ),
        "private by cookie": await open_mercure(broker, [other, book], cookie),
    }
    # The token expires at the next second but one: its stream ends then.
    expiring = await open_mercure(
        broker, [book], f"Authorization: Bearer {mercure_token(SUB_SECRET, 2, subscribe=['*'])}"
    )
    seen: Seen = {"heads": {name: stream.head for name, stream in streams.items()}}
    publisher = f"Authorization: Bearer {mercure_token(PUB_SECRET, publish=['*'])}"
    updates = [
        b"topic=" + quote(book, safe="").encode() + b"&id=u1&data=public",
        b"topic=" + quote(book, safe="").encode() + b"&id=u2&data=secret&private=on",
        b"topic="
        + quote(other, safe="").encode()
        + b"&topic="
        + quote(book, safe="").encode()
        + b"&id=u3&data=both&type=note&retry=500",
        b"topic=https%3A%2F%2Fexample.com%2Fnobody&id=u4&data=none",
    ]
    async with await Raw.connect(broker) as raw:
        for n, update in enumerate(updates):
            sent = post(HUB, update, FORM, publisher)
            await raw.send(sent)
            seen[f"update {n}: answer"] = _normalise(await read_answer(raw, sent))
    expected = {"exact": 2, "template": 2, "private by header": 3, "private by cookie": 3}
    for name, stream in streams.items():
        seen[f"{name}: events"] = dechunk(await stream.frames(expected[name]))
    resumed = await open_mercure(broker, [book], private, "Last-Event-ID: u1")
    seen["resumed: head"] = resumed.head
    seen["resumed: events"] = dechunk(await resumed.frames(2))
    seen["the expiring stream ends by"] = await expiring.until_end()
    for stream in [*streams.values(), expiring, resumed]:
        await stream.raw.aclose()
    await broker.stop()
    return seen


async def token_expiry(nursery: trio.Nursery, fast_lane: bool) -> Seen:
    """A stream whose token expires: its last event says so, then its body
    ends; a stream with a longer token goes on."""
    broker = await start_broker(nursery, fast_lane=fast_lane, subscriber_secret=SUB_SECRET)
    topic = "expirytopic1"
    expiring = await open_stream(
        broker, topic, f"Authorization: Bearer {make_token(SUB_SECRET, topic, exp_in=2)}"
    )
    lasting = await open_stream(
        broker, topic, f"Authorization: Bearer {make_token(SUB_SECRET, topic)}"
    )
    await publish(broker, topic, b"id: before\ndata: x\n")
    seen: Seen = {"before": [await stream.frame() for stream in (expiring, lasting)]}
    seen["the expiring stream's last frame"] = last = await expiring.frame()
    assert b'event: expired\ndata: {"reason": "token-expired"}\n\n' in last, last
    seen["then comes"] = await expiring.raw.read_to_eof()
    assert seen["then comes"] == b"0\r\n\r\n"  # the last chunk: the body is complete
    await publish(broker, topic, b"id: after\ndata: y\n")
    seen["the other stream goes on"] = await lasting.frame()
    for stream in (expiring, lasting):
        await stream.raw.aclose()
    await broker.stop()
    return seen


SCENARIOS = [
    live_delivery,
    token_expiry,
    mercure_streams,
    heartbeats,
    slow_subscriber,
    shutdown,
    shutdown_beside_a_stalled_stream,
    subscribers_leave,
    pipelined_behind_close,
]


@dataclass(frozen=True)
class Divergence:
    """A known difference between the lanes: what each one's clients see."""

    scenario: str
    observation: str
    fast: object
    quart: object
    why: str


DIVERGENCES = [
    Divergence(
        "slow_subscriber",
        "the dropped stream ends by",
        "connection closed",
        "last chunk",
        "the edge ends a dropped stream by closing the connection, its body cut short; "
        "Quart's response generator ends, and Hypercorn completes the body",
    ),
    Divergence(
        "slow_subscriber",
        "a request after the stream",
        "connection closed",
        200,
        "Hypercorn keeps the connection after the completed body, and serves it",
    ),
    Divergence(
        "shutdown_beside_a_stalled_stream",
        "the other connection closed well inside the grace period",
        True,
        False,
        "the edge closes a connection when its stream ends; Hypercorn's waits for the "
        "shutdown to close it, at the grace period's end",
    ),
    Divergence(
        "subscribers_leave",
        "hangs up, a request pipelined: gone within half a heartbeat",
        True,
        False,
        "Hypercorn stops reading while a response is in progress and a request waits "
        "(h11 PAUSED): the hang-up shows at a heartbeat's write (README, Design)",
    ),
    Divergence(
        "subscribers_leave",
        "the stop had nothing to wait for",
        True,
        False,
        "reported: that connection's stream ended by a failed write, and Hypercorn, still "
        "waiting to read the pipelined request, holds it until a shutdown's grace period ends",
    ),
    Divergence(
        "pipelined_behind_close",
        "publish",
        b"HTTP/1.1 200 \r\ncontent-type: application/json\r\ncontent-length: 58\r\n"
        b"date: <date>\r\nConnection: close\r\n\r\n"
        b'{"id": "<assigned id>", "events": 1, "subscribers": 0}\n',
        b"HTTP/1.1 400 \r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 28\r\n"
        b"date: <date>\r\nConnection: close\r\n\r\nGot data when expecting EOF\n",
        "h11 refuses bytes after a Connection: close request, and Hypercorn answers 400 "
        "instead of the request's answer; the edge answers it and ignores the rest (README). "
        "Reported: the publish is made all the same ('published' is 1 on both lanes)",
    ),
    Divergence(
        "pipelined_behind_close",
        "subscribe",
        b"HTTP/1.1 200 \r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"x-accel-buffering: no\r\ndate: <date>\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\ne\r\n: subscribed\n\n\r\n",
        b"HTTP/1.1 400 \r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 28\r\n"
        b"date: <date>\r\nConnection: close\r\n\r\nGot data when expecting EOF\n",
        "as for a publish",
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_live_streams_are_served_alike(
    nursery: trio.Nursery, scenario: Callable[[trio.Nursery, bool], Awaitable[Seen]]
) -> None:
    fast = await scenario(nursery, True)
    quart = await scenario(nursery, False)
    assert fast.keys() == quart.keys()
    known = {row.observation: row for row in DIVERGENCES if row.scenario == scenario.__name__}
    assert known.keys() <= fast.keys(), "a divergence row names no observation"
    unexpected = []
    for name in fast:
        row = known.get(name)
        if row is None and fast[name] != quart[name]:
            unexpected.append(f"{name}:\n  fast:  {fast[name]!r}\n  quart: {quart[name]!r}")
        elif row is not None and (fast[name], quart[name]) != (row.fast, row.quart):
            unexpected.append(
                f"{name} (a known divergence, now changed):\n"
                f"  fast:  {fast[name]!r}, the row says {row.fast!r}\n"
                f"  quart: {quart[name]!r}, the row says {row.quart!r}"
            )
    assert not unexpected, "\n".join(unexpected)


def test_every_divergence_is_a_difference_of_a_scenario() -> None:
    names = {scenario.__name__ for scenario in SCENARIOS}
    for row in DIVERGENCES:
        assert row.scenario in names, row
        assert row.fast != row.quart, row
        assert row.why, row
