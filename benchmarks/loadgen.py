"""trio_esper's own SSE load generator (Python, one epoll loop, raw sockets).

Opens S subscribers over T topics (subscriber k on topic k % T), then C
publisher keep-alive connections publish N messages (message i to topic i % T,
topic t pinned to connection t % C, so per-topic order is well defined), as
fast as the broker answers or at --rate. Each body is one SSE event whose data
is ``"<seq> <send_ns> <pad>"``.

Built not to be the bottleneck: one ``select.epoll`` loop over non-blocking
sockets, no event-loop library (trio's per-receive overhead capped an
earlier trio version at about 17k deliveries/s). Subscribers do not parse
every event in Python: they count ``data: `` lines with ``bytes.count`` (C
speed), and parse only the last event of each read to sample latency and
check that sequence numbers never go backwards. Loss is the difference
between expected and counted events. Bounded by --count, --duration,
--drain and --connect-timeout; loopback only.

    python benchmarks/loadgen.py --port 3000 -s 1000 -t 1 -n 2000
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import resource
import select
import socket
import statistics
import time

MARK = b"\ndata: "
READ_BYTES = 1 << 16


class Subscriber:
    __slots__ = (
        "events",
        "head",
        "last_seq",
        "latencies_us",
        "ready",
        "reordered",
        "sock",
        "tail",
        "topic",
    )

    def __init__(self, sock: socket.socket, topic: int) -> None:
        self.sock = sock
        self.topic = topic
        self.ready = False
        self.head = b""
        self.events = 0
        self.last_seq = -1
        self.reordered = 0
        self.latencies_us: list[float] = []
        self.tail = b""

    def feed(self, data: bytes, now_ns: int) -> int:
        """Count the events ``data`` completes; sample the last one's latency
        and order. Returns how many events it counted."""
        joined = self.tail + data
        counted = joined.count(MARK) - self.tail.count(MARK)
        self.events += counted
        self.tail = joined[-(len(MARK) - 1) :]
        end = joined.rfind(b"\n\n")
        start = joined.rfind(MARK, 0, end)
        if start < 0 or end < 0:
            return counted
        fields = joined[start + len(MARK) : end].split(b" ", 2)
        if len(fields) < 2 or not fields[0].isdigit() or not fields[1].isdigit():
            return counted
        seq, sent = int(fields[0]), int(fields[1])
        if seq < self.last_seq:
            self.reordered += 1
        self.last_seq = seq
        self.latencies_us.append((now_ns - sent) / 1000)
        return counted


class Publisher:
    __slots__ = ("messages", "next", "reply", "sent_ns", "sock")

    def __init__(self, sock: socket.socket, messages: list[tuple[int, bytes, int]]) -> None:
        self.sock = sock
        self.messages = messages
        self.next = 0
        self.reply = b""
        self.sent_ns = 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def open_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    code = sock.connect_ex((host, port))
    if code not in (0, errno.EINPROGRESS):
        raise OSError(code, os.strerror(code))
    return sock


def connect_subscribers(
    args: argparse.Namespace, topics: list[str], epoll: select.epoll
) -> tuple[list[Subscriber], float]:
    """Open every subscriber (at most --connect-concurrency handshakes at a
    time) and wait for each one's 200 head; return them and the time taken."""
    subs: list[Subscriber] = []
    by_fd: dict[int, Subscriber] = {}
    pending = 0
    ready = 0
    start = time.monotonic()
    deadline = start + args.connect_timeout
    while ready < args.subs:
        while pending < args.connect_concurrency and len(subs) < args.subs:
            sub = Subscriber(open_socket(args.host, args.port), len(subs) % args.topics)
            subs.append(sub)
            by_fd[sub.sock.fileno()] = sub
            epoll.register(sub.sock.fileno(), select.EPOLLOUT)
            pending += 1
        if time.monotonic() > deadline:
            raise SystemExit(f"only {ready} of {args.subs} subscribers ready in time")
        for fd, mask in epoll.poll(0.5):
            sub = by_fd[fd]
            if mask & select.EPOLLOUT:
                request = (
                    f"GET /subscribe/{topics[sub.topic]} HTTP/1.1\r\nHost: {args.host}\r\n"
                    "Accept: text/event-stream\r\n\r\n"
                )
                sub.sock.send(request.encode())  # small: the fresh socket takes it whole
                epoll.modify(fd, select.EPOLLIN)
                continue
            data = sub.sock.recv(READ_BYTES)
            if not data:
                raise SystemExit(f"subscriber refused: {sub.head[:200]!r}")
            sub.head += data
            head, sep, _ = sub.head.partition(b"\r\n\r\n")
            if sep:  # ready once the 200 head is in, as ssebench counts it
                if not head.startswith(b"HTTP/1.1 200") or b"text/event-stream" not in head:
                    raise SystemExit(f"subscriber got {sub.head[:100]!r}")
                sub.ready = True
                sub.head = b""
                pending -= 1
                ready += 1
    return subs, time.monotonic() - start


def publish_request(args: argparse.Namespace, path: bytes, seq: int, pad: bytes) -> bytes:
    if args.body == "sse":  # trio_esper: SSE fields
        body, content_type = b"data: %d %d %b\n" % (seq, time.monotonic_ns(), pad), b"event-stream"
    else:  # Nchan: the body is the event's data
        body, content_type = b"%d %d %b" % (seq, time.monotonic_ns(), pad), b"plain"
    return (
        b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: text/%b\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (path, args.host.encode(), content_type, len(body), body)
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit("loopback targets only")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    topics = [f"{args.topic_prefix}{t}" for t in range(args.topics)]
    epoll = select.epoll()
    subs, connect_s = connect_subscribers(args, topics, epoll)
    by_fd: dict[int, Subscriber | Publisher] = {s.sock.fileno(): s for s in subs}
    time.sleep(0.25)

    conns = min(args.pub_conns, args.topics)
    plan: list[list[tuple[int, bytes, int]]] = [[] for _ in range(conns)]
    for i in range(args.count):
        t = i % args.topics
        plan[t % conns].append((i, f"/publish/{topics[t]}".encode(), i // args.topics))
    pad = b"x" * max(0, args.size - 40)
    pubs = [Publisher(open_socket(args.host, args.port), messages) for messages in plan]
    for pub in pubs:
        by_fd[pub.sock.fileno()] = pub
        epoll.register(pub.sock.fileno(), select.EPOLLOUT)
    accepted = 0
    rtts: list[float] = []
    t0 = time.monotonic()
    publishing = len(pubs)
    waiting: list[Publisher] = []  # with --rate: publishers whose next message is not due
    last_event = t0
    publish_end = None
    expected = 0
    delivered = 0

    def send_next(pub: Publisher, now: float) -> None:
        nonlocal publishing
        if pub.next >= len(pub.messages) or now - t0 > args.duration:
            publishing -= 1
            return
        i, path, seq = pub.messages[pub.next]
        if args.rate and t0 + i / args.rate > now:
            waiting.append(pub)
            return
        pub.next += 1
        pub.sent_ns = time.monotonic_ns()
        pub.sock.send(publish_request(args, path, seq, pad))

    while True:
        now = time.monotonic()
        if publishing == 0 and publish_end is None:
            publish_end = now
            per_topic = [0] * args.topics
            for n in range(accepted):
                per_topic[n % args.topics] += 1
            expected = sum(per_topic[s.topic] for s in subs)
        if publish_end is not None and (delivered >= expected or now - last_event > args.drain):
            break
        if waiting:
            due, waiting[:] = waiting[:], []
            for pub in due:
                send_next(pub, now)
        for fd, mask in epoll.poll(0.001 if waiting else 0.05):
            conn = by_fd[fd]
            if isinstance(conn, Subscriber):
                data = conn.sock.recv(READ_BYTES)
                if not data:
                    raise SystemExit("a subscriber's stream ended")
                delivered += conn.feed(data, time.monotonic_ns())
                last_event = time.monotonic()
            elif mask & select.EPOLLOUT:
                epoll.modify(fd, select.EPOLLIN)
                send_next(conn, time.monotonic())
            else:
                data = conn.sock.recv(READ_BYTES)
                if not data:
                    raise SystemExit("the broker closed a publisher connection")
                conn.reply += data
                head, sep, rest = conn.reply.partition(b"\r\n\r\n")
                if not sep:
                    continue
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    continue
                rtts.append((time.monotonic_ns() - conn.sent_ns) / 1000)
                if head.startswith(b"HTTP/1.1 2"):
                    accepted += 1
                conn.reply = rest[length:]
                send_next(conn, time.monotonic())
    end = time.monotonic()
    assert publish_end is not None
    lat = [v for s in subs for v in s.latencies_us]
    for conn in by_fd.values():
        conn.sock.close()
    epoll.close()
    return {
        "subs_connected": sum(s.ready for s in subs),
        "connect_s": round(connect_s, 3),
        "connect_per_s": round(len(subs) / connect_s) if connect_s > 0 else 0,
        "publishes_accepted": accepted,
        "publish_per_s": round(accepted / (publish_end - t0), 1),
        "pub_rtt_p50_us": round(statistics.median(rtts), 1) if rtts else 0,
        "expected_deliveries": expected,
        "events_delivered": delivered,
        "lost": max(0, expected - delivered),
        "reordered": sum(s.reordered for s in subs),
        "delivered_per_s": round(delivered / (min(end, last_event) - t0)),
        "lat_samples": len(lat),
        "lat_p50_us": round(pct(lat, 0.5), 1),
        "lat_p99_us": round(pct(lat, 0.99), 1),
        "lat_max_us": round(max(lat, default=0), 1),
        "self_cpu_s": round(sum(os.times()[:2]), 2),
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
    parser.add_argument(
        "--body", choices=("sse", "raw"), default="sse", help="sse: trio_esper; raw: Nchan"
    )
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
