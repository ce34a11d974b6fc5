"""What one publish request costs the server, layer by layer.

The minimal reproduction behind the edge's fast forms (``trio_esper/edge.py``,
``trio_esper/h1.py``): server CPU time
per ``POST /publish/{topic}`` (utime + stime from /proc, divided by requests)
for

- ``h11``: h11 alone parsing the request and framing a 200 answer, in-process;
- ``lane-parse``: the edge's request reader (``h1.read_request``) and answer
  framing (``h1.response_head``), in-process;
- ``lane-read``: ``h1.read_request`` alone, the head read;
- ``httptools-parse``: httptools (llhttp, the C parser uvloop uses) reading
  the same head into a dict of fields, in-process: the part of
  ``lane-read`` a C parser could take over (the route, the declines and the
  answer would still be Python's). Issue 24 named it as a candidate;
- ``bare-trio``: a trio server that parses by hand and answers ``{}`` (the
  floor for Python on trio);
- ``hypercorn-asgi``: a trivial raw ASGI app on ``hypercorn.trio``;
- ``hypercorn-quart-trio``: a trivial Quart-Trio route on Hypercorn;
- ``trio_esper-no-lane`` and ``trio_esper``: the broker without and with its
  fast lane (publishing to a topic without subscribers, memory history);
- ``trio_esper-json-api``: the same event published through the topic API
  (``POST /api/v1/pubsubs/{id}/events``, a JSON body; Quart-Trio serves it).

Load: 16 keep-alive connections, one request in flight each, from a separate
process (so the client's own CPU does not count), bounded by ``--requests``
and a 120 s deadline per server. Loopback only.

    python3 -m nox -s bench_cost
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import timeit
from pathlib import Path

from compare import stop, wait_listening

ROOT = Path(__file__).resolve().parent.parent
PORT = 3097
CONNECTIONS = 16
BODY = b"data: " + b"x" * 93 + b"\n"
REQUEST = (
    b"POST /publish/benchtopic1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
)
JSON_BODY = b'{"event": {"message": "%b"}}' % (b"x" * 93)
JSON_REQUEST = (
    b"POST /api/v1/pubsubs/benchtopic1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(JSON_BODY), JSON_BODY)
)
DEADLINE_SECONDS = 120.0


def h11_cost(n: int = 5000) -> float:
    """Microseconds for h11 to parse REQUEST and frame a small 200 answer."""
    import h11

    connection = h11.Connection(h11.SERVER)

    def one() -> None:
        connection.receive_data(REQUEST)
        while not isinstance(connection.next_event(), h11.EndOfMessage):
            pass
        connection.send(h11.Response(status_code=200, headers=[("content-length", "2")]))
        connection.send(h11.Data(data=b"{}"))
        connection.send(h11.EndOfMessage())
        connection.start_next_cycle()

    return timeit.timeit(one, number=n) / n * 1e6


def lane_parse_cost(n: int = 5000) -> float:
    """Microseconds for the edge to read REQUEST's head and frame an answer."""
    from trio_esper import h1

    def one() -> None:
        request = h1.read_request(REQUEST, 65536)
        assert isinstance(request, h1.Request)
        request.header(b"content-type")
        h1.response_head(
            200,
            [(b"content-type", b"application/json"), (b"content-length", b"2")],
            date=b"Sun, 29 Nov 2026 08:00:00 GMT",
            close=False,
        )

    return timeit.timeit(one, number=n) / n * 1e6


def lane_read_cost(n: int = 5000) -> float:
    """Microseconds for the edge to read REQUEST's head (``lane-parse``
    without the answer): what ``httptools-parse`` compares with."""
    from trio_esper import h1

    def one() -> None:
        request = h1.read_request(REQUEST, 65536)
        assert isinstance(request, h1.Request)

    return timeit.timeit(one, number=n) / n * 1e6


def httptools_parse_cost(n: int = 5000) -> float:
    """Microseconds for httptools to read REQUEST's head: the method, the
    target and the fields (lower-cased names), with the callbacks that collects them."""
    import httptools

    class Head:
        __slots__ = ("fields", "target")

        def __init__(self) -> None:
            self.target = b""
            self.fields: dict[bytes, bytes] = {}

        def on_url(self, url: bytes) -> None:
            self.target += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.fields[name.lower()] = value

    def one() -> None:
        head = Head()
        parser = httptools.HttpRequestParser(head)
        parser.feed_data(REQUEST)
        assert parser.get_method() == b"POST"
        assert head.fields[b"content-type"] == b"text/event-stream"

    return timeit.timeit(one, number=n) / n * 1e6


# -- servers, each started as `python request_cost.py --serve NAME` ---------------------------


async def _bare_trio() -> None:
    import trio

    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        while True:
            end = buffer.find(b"\r\n\r\n")
            while end < 0:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                end = buffer.find(b"\r\n\r\n")
            length = 0
            for line in buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            while len(buffer) < end + 4 + length:
                buffer += await stream.receive_some(65536)
            buffer = buffer[end + 4 + length :]
            await stream.send_all(answer)

    await trio.serve_tcp(handle, PORT, host="127.0.0.1")


async def asgi_app(scope: dict[str, object], receive: object, send: object) -> None:
    """A trivial raw ASGI app: read the body, answer {}."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()  # type: ignore[operator]
            kind = message["type"].rpartition(".")[2]
            await send({"type": f"lifespan.{kind}.complete"})  # type: ignore[operator]
            if kind == "shutdown":
                return
    more = True
    while more:
        message = await receive()  # type: ignore[operator]
        more = message.get("more_body", False)
    await send(  # type: ignore[operator]
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]


def _quart_app() -> object:
    from quart import request
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)

    @app.post("/publish/<topic>")
    async def publish(topic: str) -> dict[str, object]:
        await request.get_data()
        return {}

    return app


def serve(name: str) -> None:
    import trio

    if name == "bare-trio":
        trio.run(_bare_trio)
        return
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"127.0.0.1:{PORT}"]
    config.keep_alive_max_requests = 1 << 62
    app = asgi_app if name == "hypercorn-asgi" else _quart_app()
    trio.run(hypercorn_serve, app, config)  # type: ignore[arg-type]


def start(name: str) -> subprocess.Popen[bytes]:
    if name.startswith("trio_esper"):
        extra = ["--no-fast-lane"] if name == "trio_esper-no-lane" else []
        cmd = [sys.executable, "-m", "trio_esper", "--port", str(PORT), "--no-auth", *extra]
        cmd += ["--log-level", "warning"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", name]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_listening(PORT, deadline_s=20)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(requests: int, request: bytes = REQUEST) -> float:
    """Send ``requests`` copies of ``request`` over CONNECTIONS keep-alive
    connections, one in flight each, with plain blocking sockets and select;
    return the wall time."""
    import selectors

    per = requests // CONNECTIONS
    selector = selectors.DefaultSelector()
    left: dict[socket.socket, int] = {}
    pending: dict[socket.socket, bytes] = {}
    start = time.monotonic()
    for _ in range(CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", PORT))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        left[sock], pending[sock] = per - 1, b""
        selector.register(sock, selectors.EVENT_READ)
    while left and time.monotonic() - start < DEADLINE_SECONDS:
        for key, _ in selector.select(timeout=1):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            sock = ready
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the server closed a connection")
            buffer = pending[sock] + data
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                head = buffer[:end].lower()
                if not head.startswith(b"http/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {head[:80]!r}")
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buffer) < end + 4 + length:
                    break
                buffer = buffer[end + 4 + length :]
                if left[sock] == 0:
                    selector.unregister(sock)
                    sock.close()
                    del left[sock]
                    break
                left[sock] -= 1
                sock.sendall(request)
            pending[sock] = buffer
    if left:
        raise RuntimeError("deadline reached")
    return time.monotonic() - start


SERVERS = (
    "bare-trio",
    "hypercorn-asgi",
    "hypercorn-quart-trio",
    "trio_esper-no-lane",
    "trio_esper",
    "trio_esper-json-api",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=16_000)
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma list of servers to measure"
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    rows = [
        {"server": "h11 (in-process)", "cpu_us_per_request": h11_cost()},
        {"server": "lane-parse (in-process)", "cpu_us_per_request": lane_parse_cost()},
        {"server": "lane-read (in-process)", "cpu_us_per_request": lane_read_cost()},
        {"server": "httptools-parse (in-process)", "cpu_us_per_request": httptools_parse_cost()},
    ]
    for name in args.servers.split(","):
        request = JSON_REQUEST if name == "trio_esper-json-api" else REQUEST
        proc = start(name)
        try:
            drive(CONNECTIONS * 20)  # warm-up; the topic is then known to the API
            before = cpu_seconds(proc.pid)
            wall = drive(args.requests, request)
            cpu = cpu_seconds(proc.pid) - before
        finally:
            stop(proc, signal.SIGINT)
        rows.append(
            {
                "server": name,
                "cpu_us_per_request": cpu / args.requests * 1e6,
                "requests_per_s": args.requests / wall,
            }
        )
    print(f"{'server':26} {'CPU us/request':>14} {'requests/s':>11}")
    for row in rows:
        rate = row.get("requests_per_s")
        rate_text = f"{rate:11.0f}" if isinstance(rate, float) else f"{'':>11}"
        print(f"{row['server']:26} {row['cpu_us_per_request']:14.1f} {rate_text}")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "request_cost.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
