"""Replay: N subscribers reconnect at once and each catches up on E events.

Starts the broker as a subprocess (``--history memory`` or ``sqlite:PATH``),
publishes 1 + E events to one topic, then opens N subscriptions together,
each resuming with ``Last-Event-ID`` = the first event's id (what a browser
sends when it reconnects; ``--earliest`` uses ``?since=earliest`` instead),
and measures the time until every one has received all E events.
Loopback only; bounded by --timeout.

    python benchmarks/replay.py --subscribers 1000 --events 1000 --history memory
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import trio

PORT = 3093
TOPIC = "replaytopic1"


async def publish(events: int, size: int) -> str:
    """Publish; return the first event's id."""
    stream = await trio.open_tcp_stream("127.0.0.1", PORT)
    pad = "x" * size
    first_id = ""
    async with stream:
        for n in range(events):
            body = f"data: {n} {pad}\n".encode()
            await stream.send_all(
                f"POST /publish/{TOPIC} HTTP/1.1\r\nHost: x\r\nContent-Type: text/event-stream"
                f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                reply += await stream.receive_some()
            assert reply.startswith(b"HTTP/1.1 200"), reply
            if n == 0:
                first_id = json.loads(reply.partition(b"\r\n\r\n")[2])["id"]
    return first_id


async def catch_up(events: int, query: str, header: str, done: list[float], t0: float) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", PORT)
    async with stream:
        await stream.send_all(
            f"GET /subscribe/{TOPIC}{query} HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode()
        )
        seen = 0
        tail = b""
        while seen < events:
            chunk = await stream.receive_some(1 << 16)
            if not chunk:
                raise RuntimeError("stream ended early")
            data = tail + chunk
            seen += data.count(b"\ndata: ")
            tail = data[-6:]
        done.append(time.perf_counter() - t0)


async def run(
    subscribers: int, events: int, size: int, timeout: float, earliest: bool
) -> dict[str, object]:
    first_id = await publish(1 + events, size)
    if earliest:
        query, header, events = "?since=earliest", "", events + 1
    else:
        query, header = "", f"Last-Event-ID: {first_id}\r\n"
    done: list[float] = []
    t0 = time.perf_counter()
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            for _ in range(subscribers):
                nursery.start_soon(catch_up, events, query, header, done, t0)
    done.sort()
    return {
        "subscribers": subscribers,
        "events": events,
        "all_caught_up_s": done[-1],
        "median_caught_up_s": done[len(done) // 2],
        "replayed_events_per_s": subscribers * events / done[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--history", default="memory", help="memory or sqlite (a temp file)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--earliest", action="store_true", help="?since=earliest, not resume")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = "memory" if args.history == "memory" else f"sqlite:{tmp}/replay.db"
        broker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trio_esper",
                "--port",
                str(PORT),
                "--no-auth",
                "--log-level",
                "warning",
                "--history",
                spec,
                "--history-events",
                str(args.events + 1),
                "--queue",
                str(max(1000, args.events)),
            ],
        )
        try:
            time.sleep(1.5)
            result = trio.run(
                run, args.subscribers, args.events, args.size, args.timeout, args.earliest
            )
        finally:
            broker.send_signal(signal.SIGINT)
            broker.wait(timeout=30)
    result["history"] = args.history
    result["mode"] = "since=earliest" if args.earliest else "Last-Event-ID"
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
