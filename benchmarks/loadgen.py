"""trio_esper's own SSE load generator (Python, trio, raw sockets).

Opens S subscribers over T topics (subscriber k on topic k % T), then C
publisher keep-alive connections publish N messages (message i to topic i % T,
topic t pinned to connection t % C, so per-topic order is well defined), as
fast as the broker answers or at --rate. Each body is one SSE event whose data
is ``"<seq> <send_ns> <pad>"``.

Subscribers do not parse every event in Python: they count ``data: `` lines
with ``bytes.count`` (C speed), and parse only the last event of each read to
sample latency and check that sequence numbers never go backwards. Loss is the
difference between expected and counted events. Bounded by --count,
--duration and --drain; loopback only.

    python benchmarks/loadgen.py --port 3000 -s 1000 -t 1 -n 2000
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import time

import trio

MARK = b"\ndata: "


class Subscriber:
    def __init__(self, topic: int) -> None:
        self.topic = topic
        self.events = 0
        self.last_seq = -1
        self.reordered = 0
        self.latencies_us: list[float] = []
        self.tail = b""

    def feed(self, data: bytes) -> None:
        now = time.monotonic_ns()
        joined = self.tail + data
        self.events += joined.count(MARK) - self.tail.count(MARK)
        self.tail = joined[-(len(MARK) - 1) :]
        end = joined.rfind(b"\n\n")
        start = joined.rfind(MARK, 0, end)
        if start < 0 or end < 0:
            return
        fields = joined[start + len(MARK) : end].split(b" ", 2)
        if len(fields) < 2 or not fields[0].isdigit():
            return
        seq, sent = int(fields[0]), int(fields[1])
        if seq < self.last_seq:
            self.reordered += 1
        self.last_seq = seq
        self.latencies_us.append((now - sent) / 1000)


async def subscribe(
    host: str,
    port: int,
    path: str,
    sub: Subscriber,
    ready: trio.CapacityLimiter,
    connected: list[int],
) -> None:
    async with ready:
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = b""
        while b": subscribed" not in head:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise RuntimeError(f"subscriber to {path} refused: {head[:200]!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"subscriber to {path} got {head[:100]!r}")
    connected[0] += 1
    async with stream:
        while chunk := await stream.receive_some(1 << 16):
            sub.feed(chunk)


async def publisher(
    host: str,
    port: int,
    messages: list[tuple[int, str, int]],
    args: argparse.Namespace,
    t0: float,
    accepted: list[int],
    rtts: list[float],
) -> None:
    pad = b"x" * max(0, args.size - 40)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        for i, path, seq in messages:
            if args.rate:
                await trio.sleep_until(t0 + i / args.rate)
            sent = time.monotonic_ns()
            body = b"data: %d %d %b\n" % (seq, sent, pad)
            await stream.send_all(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            reply = b""
            while True:
                reply += await stream.receive_some(65536)
                head, sep, rest = reply.partition(b"\r\n\r\n")
                if sep:
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(rest) >= length:
                        break
            rtts.append((time.monotonic_ns() - sent) / 1000)
            if reply.startswith(b"HTTP/1.1 2"):
                accepted[0] += 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit("loopback targets only")
    topics = [f"{args.topic_prefix}{t}" for t in range(args.topics)]
    subs = [Subscriber(k % args.topics) for k in range(args.subs)]
    connected = [0]
    accepted = [0]
    rtts: list[float] = []
    with trio.fail_after(args.connect_timeout + args.duration + args.drain + 30):
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(args.connect_concurrency)
            t_connect = trio.current_time()
            for sub in subs:
                path = f"/subscribe/{topics[sub.topic]}"
                nursery.start_soon(subscribe, args.host, args.port, path, sub, limiter, connected)
            with trio.fail_after(args.connect_timeout):
                while connected[0] < len(subs):
                    await trio.sleep(0.01)
            connect_s = trio.current_time() - t_connect
            await trio.sleep(0.25)
            conns = min(args.pub_conns, args.topics)
            plan: list[list[tuple[int, str, int]]] = [[] for _ in range(conns)]
            for i in range(args.count):
                t = i % args.topics
                plan[t % conns].append((i, f"/publish/{topics[t]}", i // args.topics))
            t0 = trio.current_time()
            start = time.perf_counter()
            with trio.move_on_after(args.duration):
                async with trio.open_nursery() as pubs:
                    for messages in plan:
                        pubs.start_soon(
                            publisher, args.host, args.port, messages, args, t0, accepted, rtts
                        )
            publish_s = time.perf_counter() - start
            per_topic = [0] * args.topics
            for i in range(accepted[0]):
                per_topic[i % args.topics] += 1
            expected = sum(per_topic[s.topic] for s in subs)
            last_total, quiet_since = -1, trio.current_time()
            while True:
                total = sum(s.events for s in subs)
                if total >= expected:
                    break
                if total != last_total:
                    last_total, quiet_since = total, trio.current_time()
                elif trio.current_time() - quiet_since > args.drain:
                    break
                await trio.sleep(0.01)
            delivery_s = time.perf_counter() - start
            nursery.cancel_scope.cancel()  # the subscribers
    lat = [v for s in subs for v in s.latencies_us]
    return {
        "subs_connected": connected[0],
        "connect_s": round(connect_s, 3),
        "publishes_accepted": accepted[0],
        "publish_per_s": round(accepted[0] / publish_s, 1),
        "pub_rtt_p50_us": round(statistics.median(rtts), 1) if rtts else 0,
        "expected_deliveries": expected,
        "events_delivered": sum(s.events for s in subs),
        "lost": max(0, expected - sum(s.events for s in subs)),
        "reordered": sum(s.reordered for s in subs),
        "delivered_per_s": round(sum(s.events for s in subs) / delivery_s),
        "lat_samples": len(lat),
        "lat_p50_us": round(pct(lat, 0.5), 1),
        "lat_p99_us": round(pct(lat, 0.99), 1),
        "lat_max_us": round(max(lat, default=0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("-s", "--subs", type=int, default=1)
    parser.add_argument("-t", "--topics", type=int, default=1)
    parser.add_argument("-c", "--pub-conns", type=int, default=1)
    parser.add_argument("-n", "--count", type=int, default=1000)
    parser.add_argument("-r", "--rate", type=float, default=0)
    parser.add_argument("-z", "--size", type=int, default=100)
    parser.add_argument("-d", "--duration", type=float, default=120)
    parser.add_argument("--drain", type=float, default=3)
    parser.add_argument("--connect-timeout", type=float, default=60)
    parser.add_argument("--connect-concurrency", type=int, default=256)
    parser.add_argument("--topic-prefix", default="loadgentopic")
    print(json.dumps(trio.run(run, parser.parse_args())))


if __name__ == "__main__":
    main()
