"""Reconnect storm: S subscribers on T topics resume at once, each R events back.

Publishes H events to each of T topics (message i to topic i % T, one
keep-alive connection, each publish answered before the next), keeping the id
each publish answer returns (trio_esper: ``{"id": ...}``; Nchan, asked for
JSON: ``"last_message_id"``, its ``<time>:<tag>`` id). Then opens all S
subscriptions at once (subscriber k on topic k % T), each with
``Last-Event-ID`` = the id of its topic's event H-R-1, so that the broker
replays the last R events, and measures:

- the time until every subscriber has received all R replayed events (and
  until every one had its 200 head);
- the broker's peak RSS during the storm: VmHWM, reset just before the storm
  through ``/proc/<pid>/clear_refs`` (so the publish phase does not count),
  and VmRSS sampled every 10 ms, summed over the broker's processes;
- the broker's CPU time over the storm, per replayed event, and the CPU used
  by neither it nor this driver (``run_cpu_other_pct``, as ssebench reports
  it, to spot runs disturbed by other load);
- connections the kernel dropped at a full listen queue (``listen_drops``:
  each costs that subscriber a SYN retransmission, 1 s or more).

Afterwards every subscriber's stream is checked: exactly the R expected
events, ids and sequence numbers in order, nothing else (an
unknown-id ``reset`` followed by all of history fails the check).

One ``select.epoll`` loop over non-blocking sockets; loopback only; bounded by
``--timeout`` (the storm) and socket timeouts (the publish phase). Standalone,
it starts the broker itself (as compare.py does)::

    python benchmarks/reconnect.py --broker trio_esper
    python benchmarks/reconnect.py --broker nchan --subs 5000 --topics 50

or, as compare.py's ``reconnect`` scenario runs it, against a broker already
listening (``--port``, ``--kind esper|nchan``, ``--server-pid``). Prints one
JSON line; exit status 0 when every subscriber got exactly its events, 2 on
a connection or HTTP failure, 3 on wrong events, 4 on timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import statistics
import struct
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from loadgen import open_socket

READ_BYTES = 1 << 16
MARK = b"\ndata: "
HOST = "127.0.0.1"
TOPIC_PREFIX = "stormtopic"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- publishing


def publish_history(
    port: int, kind: str, topics: int, per_topic: int, size: int
) -> tuple[list[list[str]], float]:
    """Publish ``per_topic`` events to each topic; return each topic's ids
    (as the publish answers gave them) and the time taken."""
    ids: list[list[str]] = [[] for _ in range(topics)]
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        for i in range(topics * per_topic):
            topic, seq = i % topics, i // topics
            pad = "x" * max(0, size - 12 - len(str(seq)))
            if kind == "nchan":  # the body is the event's data; ask for a JSON answer
                body, headers = (
                    f"{seq} {pad}",
                    "Content-Type: text/plain\r\nAccept: application/json",
                )
            else:  # trio_esper: SSE fields
                body, headers = f"data: {seq} {pad}\n", "Content-Type: text/event-stream"
            data = body.encode()
            sock.sendall(
                f"POST /publish/{TOPIC_PREFIX}{topic} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            reply, pending = read_reply(sock, pending)
            status, _, answer = reply
            if not 200 <= status < 300:
                raise RuntimeError(f"publish {i} answered {status}: {answer[:200]!r}")
            parsed = json.loads(answer)
            ids[topic].append(str(parsed["last_message_id" if kind == "nchan" else "id"]))
    return ids, time.monotonic() - start


def read_reply(sock: socket.socket, pending: bytes) -> tuple[tuple[int, bytes, bytes], bytes]:
    """One HTTP/1.1 response with a Content-Length body: ``(status, head,
    body)``, and whatever followed it."""
    while b"\r\n\r\n" not in pending:
        pending += recv_or_fail(sock)
    head, _, rest = pending.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += recv_or_fail(sock)
    status = int(head.split(b" ", 2)[1])
    return (status, head, rest[:length]), rest[length:]


def recv_or_fail(sock: socket.socket) -> bytes:
    data = sock.recv(READ_BYTES)
    if not data:
        raise RuntimeError("the broker closed the publisher connection")
    return data


# ---------------------------------------------------------------- the storm


class StreamError(Exception):
    pass


@dataclass(eq=False)
class Subscriber:
    sock: socket.socket
    topic: int
    request: bytes
    head: bytes = b""
    admitted_s: float = -1.0
    caught_up_s: float = -1.0
    chunked: bool = False
    left: int = 0  # bytes of the current chunk still to come (chunked streams)
    raw: bytearray = field(default_factory=bytearray)
    body: bytearray = field(default_factory=bytearray)
    events: int = 0

    def feed(self, data: bytes) -> None:
        """Take bytes after the response head: de-chunk them into ``body``
        and count its data lines (only in what is new, and the few bytes
        before it where a line start may have been cut)."""
        start = max(0, len(self.body) - len(MARK) + 1)
        if not self.chunked:
            self.body += data
        else:
            self.raw += data
            self.dechunk()
        self.events += self.body.count(MARK, start)

    def dechunk(self) -> None:
        raw = self.raw
        while True:
            if self.left == 0:
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(raw[:end])
                del raw[: end + 2]
                if not line:  # the CRLF that ends a chunk's data
                    continue
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    raise StreamError("stream ended (last chunk)")
                self.left = size
            if not raw:
                return
            take = min(self.left, len(raw))
            self.body += raw[:take]
            del raw[:take]
            self.left -= take


def replayed(body: bytes) -> list[tuple[str | None, int | None]]:
    """The (id, first integer of the data) of every event with data in
    ``body``; ``None`` for a missing id or data that does not start with an
    integer (e.g. a ``reset`` event)."""
    events: list[tuple[str | None, int | None]] = []
    for block in body.split(b"\n\n"):
        event_id: str | None = None
        seq: int | None = None
        has_data = False
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                event_id = line[4:].decode()
            elif line.startswith(b"data: "):
                has_data = True
                first = line[6:].split(b" ", 1)[0]
                seq = int(first) if first.isdigit() else None
        if has_data:
            events.append((event_id, seq))
    return events


# ---------------------------------------------------------------- /proc


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(key.encode() + b":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0)."""
    try:
        for pid in pids:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
    except OSError:
        return False
    return True


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid``, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine, in seconds."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def listen_drops() -> int:
    """The kernel's count of connections dropped at a full listen queue
    (TcpExt ListenDrops, which includes ListenOverflows), machine-wide."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenDrops"])
    return 0


def wait_idle(max_s: float, busy_pct: float = 15) -> float:
    """Wait up to ``max_s`` for the machine to be busy below ``busy_pct`` %
    of one core over 0.5 s (as ssebench's --idle-wait); return the wait."""
    start = time.monotonic()
    while time.monotonic() - start < max_s:
        busy0, _ = machine_busy_s()
        time.sleep(0.5)
        busy1, _ = machine_busy_s()
        if (busy1 - busy0) / 0.5 * 100 < busy_pct:
            break
    return time.monotonic() - start


# ---------------------------------------------------------------- run


def storm(
    port: int,
    ids: list[list[str]],
    subs: int,
    replay: int,
    pids: list[int],
    timeout: float,
    pace: float,
) -> dict[str, object]:
    topics = len(ids)
    resume = [topic_ids[-replay - 1] for topic_ids in ids]
    epoll = select.epoll()
    by_fd: dict[int, Subscriber] = {}
    errors: list[str] = []
    failed: set[Subscriber] = set()

    def fail(sub: Subscriber, reason: str) -> None:
        if not errors:
            errors.append(reason)
        failed.add(sub)
        epoll.unregister(sub.sock.fileno())

    rss_start = sum(proc_status_kb(pid, "VmRSS") for pid in pids)
    hwm_reset = reset_peak_rss(pids)
    rss_max = rss_start
    server0 = sum(cpu_s(pid) for pid in pids)
    self0 = sum(os.times()[:2])
    busy0, total0 = machine_busy_s()
    drops0 = listen_drops()
    t0 = time.monotonic()
    all_subs: list[Subscriber] = []
    for k in range(subs):  # all at once
        topic = k % topics
        request = (
            f"GET /subscribe/{TOPIC_PREFIX}{topic} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Accept: text/event-stream\r\nLast-Event-ID: {resume[topic]}\r\n\r\n"
        ).encode()
        sub = Subscriber(open_socket(HOST, port), topic, request)
        all_subs.append(sub)
        by_fd[sub.sock.fileno()] = sub
        epoll.register(sub.sock.fileno(), select.EPOLLOUT)
    remaining = subs
    recvs = 0
    next_sample = t0
    stopped_by = "complete"
    while remaining > len(failed):
        now = time.monotonic()
        if now >= next_sample:
            rss_max = max(rss_max, sum(proc_status_kb(pid, "VmRSS") for pid in pids))
            next_sample = now + 0.01
        if now - t0 > timeout:
            stopped_by = "timeout"
            break
        ready = epoll.poll(0.01)
        for fd, mask in ready:
            sub = by_fd[fd]
            if sub.admitted_s < 0 and not sub.head and mask & select.EPOLLOUT:
                code = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    fail(sub, f"connect: {os.strerror(code)}")
                    continue
                sub.sock.send(sub.request)  # small: the fresh socket takes it whole
                epoll.modify(fd, select.EPOLLIN)
                continue
            recvs += 1
            try:
                data = sub.sock.recv(READ_BYTES)
            except OSError as exc:
                fail(sub, f"recv: {exc}")
                continue
            if not data:
                fail(sub, f"stream closed after {sub.events} events: {sub.head[:100]!r}")
                continue
            if sub.admitted_s < 0:
                sub.head += data
                head, sep, rest = sub.head.partition(b"\r\n\r\n")
                if not sep:
                    continue
                if not head.startswith(b"HTTP/1.1 200") or b"text/event-stream" not in head:
                    fail(sub, f"subscribe answered {head[:100]!r}")
                    continue
                sub.admitted_s = time.monotonic() - t0
                sub.chunked = b"transfer-encoding: chunked" in head.lower()
                sub.head = head
                data = rest
            try:
                sub.feed(data)
            except (StreamError, ValueError) as exc:
                fail(sub, f"bad stream: {exc}")
                continue
            if sub.events >= replay and sub.body.endswith(b"\n\n"):
                sub.caught_up_s = time.monotonic() - t0
                epoll.unregister(fd)  # stays connected, no longer read
                remaining -= 1
        if pace and ready:  # let more arrive, so one recv takes several events
            time.sleep(pace)
    end = time.monotonic()
    busy1, total1 = machine_busy_s()
    drops = listen_drops() - drops0
    server_s = sum(cpu_s(pid) for pid in pids) - server0
    self_s = sum(os.times()[:2]) - self0
    rss_end = sum(proc_status_kb(pid, "VmRSS") for pid in pids)
    rss_max = max(rss_max, rss_end)
    rss_peak = sum(proc_status_kb(pid, "VmHWM") for pid in pids)
    for sub in all_subs:  # RST, so no TIME_WAIT is left for the next run
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sub.sock.close()
    epoll.close()

    verified = 0
    wrong = 0
    for sub in all_subs:
        if sub.caught_up_s < 0:
            continue
        expected = [
            (ids[sub.topic][n], n)
            for n in range(len(ids[sub.topic]) - replay, len(ids[sub.topic]))
        ]
        if replayed(bytes(sub.body)) == expected:
            verified += 1
        else:
            wrong += 1
            if not errors:
                errors.append(f"wrong events on topic {sub.topic}: {bytes(sub.body[:300])!r}")
    admitted = sorted(s.admitted_s for s in all_subs if s.admitted_s >= 0)
    caught = sorted(s.caught_up_s for s in all_subs if s.caught_up_s >= 0)
    wall = end - t0
    machine_pct = (busy1 - busy0) / wall * 100 if total1 > total0 else 0.0
    if wrong:
        exit_code = 3
    elif failed:
        exit_code = 2
    elif stopped_by == "timeout":
        exit_code = 4
    else:
        exit_code = 0
    all_in = len(caught) == subs
    return {
        "subs_admitted": len(admitted),
        "subs_caught_up": len(caught),
        "subs_verified": verified,
        "subs_failed": len(failed),
        "subs_wrong_events": wrong,
        "admit_all_s": round(admitted[-1], 3) if len(admitted) == subs else None,
        "admit_p50_s": round(statistics.median(admitted), 3) if admitted else None,
        "admit_per_s": round(subs / admitted[-1]) if len(admitted) == subs else None,
        "caught_up_all_s": round(caught[-1], 3) if all_in else None,
        "caught_up_p50_s": round(statistics.median(caught), 3) if caught else None,
        "caught_up_p99_s": round(caught[min(len(caught) - 1, int(0.99 * len(caught)))], 3)
        if caught
        else None,
        "replayed_per_s": round(subs * replay / caught[-1]) if all_in else None,
        "storm_wall_s": round(wall, 3),
        "self_recvs": recvs,
        "listen_drops": drops,
        "server_rss_kb_start": rss_start,
        "server_rss_kb_peak": rss_peak if hwm_reset else None,
        "server_rss_kb_max_sampled": rss_max,
        "server_rss_kb_end": rss_end,
        "server_peak_bytes_per_sub": round((max(rss_peak, rss_max) - rss_start) * 1024 / subs),
        "server_cpu_s": round(server_s, 2),
        "server_cpu_us_per_event": round(server_s / (subs * replay) * 1e6, 2),
        "run_cpu_server_pct": round(server_s / wall * 100, 1),
        "run_cpu_self_pct": round(self_s / wall * 100, 1),
        "run_cpu_machine_pct": round(machine_pct, 1),
        "run_cpu_other_pct": round(machine_pct - (server_s + self_s) / wall * 100, 1),
        "stopped_by": stopped_by,
        "error": errors[0] if errors else "",
        "exit_code": exit_code,
    }


def run(args: argparse.Namespace, port: int, kind: str, pids: list[int]) -> dict[str, object]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.subs + 64:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.subs} subscribers")
    ids, publish_s = publish_history(port, kind, args.topics, args.history, args.size)
    waited = wait_idle(args.idle_wait)
    result: dict[str, object] = {
        "label": args.label,
        "kind": kind,
        "subs": args.subs,
        "topics": args.topics,
        "history_per_topic": args.history,
        "replay_per_sub": args.replay,
        "expected_events": args.subs * args.replay,
        "size": args.size,
        "publish_s": round(publish_s, 3),
        "publish_per_s": round(args.topics * args.history / publish_s),
        "pre_run_wait_s": round(waited, 2),
        "server_pids": len(pids),
    }
    result.update(
        storm(port, ids, args.subs, args.replay, pids, args.timeout, args.read_pace_ms / 1000)
    )
    return result


def standalone_broker(
    name: str, history: int
) -> tuple[AbstractContextManager[list[int]], int, str]:
    """The broker ``name`` as compare.py starts it: (context, port, kind)."""
    from compare import BROKERS, ESPER_PORT, NCHAN_PORT, at_revision, ensure_nchan, nchan

    if name == "nchan":
        if not ensure_nchan():
            raise SystemExit("Nchan is not installed and cannot be (not root)")
        return nchan(buffer_length=history), NCHAN_PORT, "nchan"
    if history > 1000:  # trio_esper's default --history-events
        raise SystemExit("trio_esper as compare.py starts it retains 1000 events per topic")
    factory = (
        at_revision(name.partition("@")[2]) if name.startswith("trio_esper@") else BROKERS[name]
    )
    return factory(), ESPER_PORT, "esper"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker",
        help="start this broker as compare.py does: trio_esper, trio_esper@REV, nchan, ...",
    )
    parser.add_argument("--port", type=int, help="or: a broker already listening on this port")
    parser.add_argument("--kind", choices=("esper", "nchan"), default="esper", help="with --port")
    parser.add_argument("--server-pid", default="", help="with --port: its pids, comma-separated")
    parser.add_argument("-s", "--subs", type=int, default=5000)
    parser.add_argument("-t", "--topics", type=int, default=50)
    parser.add_argument("--history", type=int, default=150, help="events published per topic")
    parser.add_argument("--replay", type=int, default=100, help="events each subscriber resumes")
    parser.add_argument("-z", "--size", type=int, default=100, help="bytes of data per event")
    parser.add_argument("--timeout", type=float, default=120, help="bound on the storm, s")
    parser.add_argument("--idle-wait", type=float, default=15, help="wait for an idle machine, s")
    parser.add_argument(
        "--read-pace-ms",
        type=float,
        default=2,
        help="pause after each epoll round, so that one recv takes several events: without it "
        "the driver takes a core against Nchan, which writes each event on its own (0: none)",
    )
    parser.add_argument("--label", default="reconnect")
    args = parser.parse_args()
    if args.replay >= args.history:
        parser.error("--replay must be below --history (the resume id is an event before them)")
    if args.broker:
        context, port, kind = standalone_broker(args.broker, args.history)
        with context as pids:
            result = run(args, port, kind, pids)
        result["broker"] = args.broker
    elif args.port:
        pids = [int(p) for p in args.server_pid.split(",") if p]
        result = run(args, args.port, args.kind, pids)
    else:
        parser.error("give --broker, or --port (and --kind, --server-pid) of a running broker")
    print(json.dumps(result))
    sys.exit(int(str(result["exit_code"])))


if __name__ == "__main__":
    main()
