"""Stalled subscribers on topics of large events: what do their queues hold
(issue 22, point 2)?

A broker served in this process on 127.0.0.1:0 (64 MiB history budget);
SUBSCRIBERS raw-socket subscribers, each on a topic of its own, read their
response head and then nothing (a 2 KiB receive buffer). EVENTS events of
SIZE bytes are published to each topic (through the hub, round-robin).
Reports the process's RSS growth while they are stalled and after they
leave, the subscribers dropped, and /stats ``queued_bytes``:

    python benchmarks/stalled_queues.py                      # the defaults
    python benchmarks/stalled_queues.py --queue 1000 --queue-bytes 1e12 \\
        --queue-total-bytes 1e12                            # bounded by events only
    python benchmarks/stalled_queues.py --table              # both, a process each
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import subprocess
import sys
import time

import trio

from trio_esper.config import (
    DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_EVENTS,
    DEFAULT_QUEUE_TOTAL_BYTES,
    Config,
)
from trio_esper.server import Listening, serve
from trio_esper.sse import Event

MIB = 1 << 20
HISTORY_BUDGET_BYTES = 64 * MIB
STALLED_RCVBUF = 2048
#: Each case's settings: (name, extra argv).
TABLE_CASES = [
    ("defaults", []),
    (
        "events only (--queue 1000, bytes unbounded)",
        ["--queue", "1000", "--queue-bytes", "1e12", "--queue-total-bytes", "1e12"],
    ),
]


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def stalled(host: str, port: int, topic: str) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    await sock.connect((host, port))
    await sock.send(f"GET /subscribe/{topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await sock.recv(1)
    return sock


async def run(args: argparse.Namespace) -> dict[str, float]:
    config = Config(
        bind="127.0.0.1",
        port=0,
        history_max_bytes=HISTORY_BUDGET_BYTES,
        queue_events=args.queue,
        queue_bytes=int(args.queue_bytes),
        queue_total_bytes=int(args.queue_total_bytes),
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        listening: Listening = await nursery.start(
            lambda task_status: serve(config, shutdown=shutdown, task_status=task_status)
        )
        hub = listening.hub
        topics = [f"stalled{n:04d}" for n in range(args.subscribers)]
        sockets = [await stalled(listening.host, listening.port, t) for t in topics]
        while hub.statistics().clients < len(sockets):
            await trio.sleep(0.01)
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        data = "z" * args.size
        most_queued = 0
        for n in range(args.events):
            for topic in topics:
                await hub.publish(topic, [Event(f"{n} {data}")])
            most_queued = max(most_queued, hub.statistics().queued_bytes)
        seconds = time.perf_counter() - started
        await trio.sleep(0.5)
        gc.collect()
        stalled_growth = rss_bytes() - before
        stats = hub.statistics()
        for sock in sockets:
            sock.close()
        while hub.statistics().clients:
            await trio.sleep(0.01)
        gc.collect()
        after = rss_bytes() - before
        result = {
            "subscribers": args.subscribers,
            "events_per_topic": args.events,
            "event_bytes": args.size,
            "queue": args.queue,
            "queue_bytes": int(args.queue_bytes),
            "queue_total_bytes": int(args.queue_total_bytes),
            "dropped": stats.dropped,
            "most_queued_mib": most_queued / MIB,
            "rss_growth_stalled_mib": stalled_growth / MIB,
            "rss_growth_after_leaving_mib": after / MIB,
            "queued_bytes_after_leaving": hub.statistics().queued_bytes,
            "history_mib": hub.history.statistics().bytes / MIB,
            "seconds": seconds,
        }
        shutdown.set()
    return result


def table() -> None:
    print(
        "| queues | dropped | most queued | RSS growth, stalled | after they left "
        "| queued_bytes after | history |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, extra in TABLE_CASES:
        argv = [sys.executable, __file__, *extra]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {r['dropped']} | {r['most_queued_mib']:.1f} MiB "
            f"| {r['rss_growth_stalled_mib']:.0f} MiB "
            f"| {r['rss_growth_after_leaving_mib']:.0f} MiB "
            f"| {r['queued_bytes_after_leaving']} | {r['history_mib']:.0f} MiB |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--events", type=int, default=1000, help="per topic")
    parser.add_argument("--size", type=int, default=60 * 1024, help="event data bytes")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE_EVENTS)
    parser.add_argument("--queue-bytes", type=float, default=DEFAULT_QUEUE_BYTES)
    parser.add_argument("--queue-total-bytes", type=float, default=DEFAULT_QUEUE_TOTAL_BYTES)
    parser.add_argument("--table", action="store_true", help="the cases above, a process each")
    args = parser.parse_args()
    if args.table:
        table()
    else:
        print(json.dumps(trio.run(run, args)))


if __name__ == "__main__":
    main()
