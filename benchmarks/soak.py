"""Soak: subscribe/disconnect cycles while publishing leave nothing behind.

Issue 10, point 8: a soak of 100,000 cycles (clean close and RST mixed) while
publishing must end with 0 subscriptions, the number of trio tasks back at its
baseline, and RSS within 10 MB of where it settled after the first 10,000
cycles. (tests/test_churn.py is the short in-process version, which counts
trio tasks and cyclic garbage directly.)

Starts trio_esper as a subprocess exactly as compare.py does (``esper()``:
the real command line, so the GC thresholds the CLI sets; memory history with
its defaults), then, from this process:

- a publisher on one keep-alive connection: first it fills every topic's
  history ring (``--prefill`` events per topic, the broker's default ring of
  1000; pipelined, one request per topic per batch), so that the rings'
  growth is not mistaken for the churn's; then it publishes ``--rate`` events
  per second (round robin over the topics, ``--size`` bytes of data, each
  answered before the next) for the rest of the run, pauses included;
- ``--cycles`` subscribe/disconnect cycles, ``--concurrency`` in flight at
  once, cycle n on topic n % ``--topics``: non-blocking connect,
  ``GET /subscribe/<topic> HTTP/1.1``, read until ``: subscribed``, keep
  the subscription a random 0 to ``--hold-ms`` ms (100; reading the events
  that arrive: closed at once, as with ``--hold-ms 0``, a subscription is
  gone before any publish reaches it, and the churn never races a delivery),
  then close. Even cycles close with a reset (``SO_LINGER`` 0); odd ones
  cleanly: ``shutdown(SHUT_WR)`` (our FIN), read until the broker's own FIN,
  then ``close()`` -- so no unread byte turns the close into a reset, and
  every clean cycle also checks that the broker ends a stream whose client
  left.

One ``select.epoll`` loop drives both. Every ``--sample-every`` cycles (and at
the end) the churn pauses: the cycles in flight finish, ``/stats`` is polled
until ``clients`` is 0, the broker is left ``--settle`` seconds (the publisher
still publishing), then its VmRSS and open descriptors are sampled. The first
such sample (after 10,000 cycles) is the RSS reference; the last is the end.

The trio task count cannot be read from outside the broker's process, so its
observable proxies stand in for it: each subscriber connection is one task
holding one socket, so the broker's open file descriptors (``/proc/<pid>/fd``)
must be back at their count before the first cycle, and ``/stats`` must show
``clients`` 0 and ``topics`` 0 (each topic with subscribers has a task, ended
when its last subscriber leaves). A task that leaked without holding a socket
or a subscription would escape these; tests/test_churn.py counts the tasks.

Targets (exit status 1 if one is missed; 2 if the run stopped at
``--max-seconds`` before ``--cycles``):

- every cycle got ``200`` and ``: subscribed`` and closed as planned;
- every publish was answered 2xx;
- ``/stats`` at the end: ``clients`` 0, ``topics`` 0;
- the broker's open descriptors at the end equal their baseline;
- RSS at the end at most ``--rss-target-mb`` MiB (default 10) above RSS at the
  first sample.

Prints the samples, the targets and one JSON line (also written to
bench-results/soak.json). Loopback only; bounded: the churn stops after
``--cycles`` or ``--max-seconds`` from the broker's start (prefill included),
whichever comes first; after that at most ``--cycle-timeout`` for the cycles
in flight, ``--drain-timeout`` for ``clients`` to reach 0, ``--settle`` and
the broker's stop (20 s at most).

    python3 -m nox -s soak
    python3 -m nox -s soak -- --cycles 20000 --sample-every 2000
    python benchmarks/soak.py --cycles 2000 --sample-every 500 --settle 1
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import math
import os
import random
import resource
import select
import socket
import statistics
import struct
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field

import compare
from reconnect import cpu_s, listen_drops, machine_busy_s, proc_status_kb, read_reply

HOST = "127.0.0.1"
TOPIC_PREFIX = "soaktopic"
SUBSCRIBED = b": subscribed\n"
READ_BYTES = 1 << 16
#: A subscribe answer longer than this without ``: subscribed`` is wrong.
MAX_HEAD_BYTES = 1 << 16
RST_LINGER = struct.pack("ii", 1, 0)
KIB_PER_MIB = 1024

CONNECTING, SUBSCRIBING, HOLDING, CLOSING, DONE = range(5)
#: Where an event starts in a stream (every publish here has an id line first).
DATA_LINE = b"\ndata: "


# ---------------------------------------------------------------- publishing


def publish_request(topic: int, seq: int, size: int) -> bytes:
    """A publish of one event with ``size`` bytes of data (its seq, padded:
    every event has the same size, so history rings stay the same size)."""
    body = f"data: {f'{seq:012d} '.ljust(size, 'x')}\n".encode()
    return (
        f"POST /publish/{TOPIC_PREFIX}{topic} HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def prefill(sock: socket.socket, topics: int, per_topic: int, size: int) -> int:
    """Publish ``per_topic`` events to every topic, pipelined one per topic at
    a time; return how many were published."""
    pending = b""
    for round_ in range(per_topic):
        seq0 = round_ * topics
        sock.sendall(b"".join(publish_request(t, seq0 + t, size) for t in range(topics)))
        for _ in range(topics):
            (status, _, answer), pending = read_reply(sock, pending)
            if not 200 <= status < 300:
                raise RuntimeError(f"prefill publish answered {status}: {answer[:200]!r}")
    return topics * per_topic


def take_reply(buffer: bytearray) -> int | None:
    """Remove one whole HTTP/1.1 response (its body sized by Content-Length)
    from the front of ``buffer`` and return its status; ``None`` while it is
    incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buffer) < end + 4 + length:
        return None
    del buffer[: end + 4 + length]
    return int(head.split(b" ", 2)[1])


class Publisher:
    """Publishes ``rate`` events per second on a non-blocking keep-alive
    connection, one request out at a time, round robin over the topics."""

    def __init__(self, sock: socket.socket, topics: int, size: int, rate: float, seq: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.topics = topics
        self.size = size
        self.interval = 1 / rate if rate > 0 else math.inf
        self.seq = seq
        self.next_at = time.monotonic()
        self.waiting = False  # a request is out, its answer not yet in
        self.closed = False
        self.buffer = bytearray()
        self.sent = 0
        self.answered = 0
        self.errors = 0
        self.error = ""

    def fail(self, reason: str) -> None:
        self.errors += 1
        if not self.error:
            self.error = reason

    def wait_s(self, now: float) -> float:
        """Seconds until the next publish is due (inf while one is out)."""
        if self.waiting or self.closed or self.interval == math.inf:
            return math.inf
        return max(0.0, self.next_at - now)

    def maybe_send(self, now: float) -> None:
        if self.waiting or self.closed or now < self.next_at:
            return
        request = publish_request(self.seq % self.topics, self.seq, self.size)
        try:
            sent = self.sock.send(request)
        except OSError as exc:
            self.fail(f"publish send: {exc}")
            self.closed = True
            return
        if sent != len(request):  # a few hundred bytes into an idle connection
            self.fail(f"publish send took {sent} of {len(request)} bytes")
            self.closed = True
            return
        self.seq += 1
        self.sent += 1
        self.waiting = True
        self.next_at += self.interval
        if self.next_at < now - 1:  # after a long stall: resume the pace, no burst
            self.next_at = now

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            self.fail(f"publish recv: {exc}")
        if not data:
            if not self.closed:
                self.fail("the broker closed the publisher's connection")
            self.closed = True
            return
        self.buffer += data
        while (status := take_reply(self.buffer)) is not None:
            self.answered += 1
            self.waiting = False
            if not 200 <= status < 300:
                self.fail(f"publish answered {status}")


# ---------------------------------------------------------------- cycles


@dataclass(eq=False)
class Cycle:
    n: int
    sock: socket.socket
    started: float
    state: int = CONNECTING
    got: bytearray = field(default_factory=bytearray)
    closing_since: float = 0.0
    tail: bytes = b""  # the last bytes read, for a DATA_LINE cut between reads

    @property
    def reset(self) -> bool:
        """Even cycles close with a TCP reset, odd ones cleanly (as tests/test_churn.py)."""
        return self.n % 2 == 0


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    clean: int = 0
    resets: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    #: connect to ``: subscribed``, and (clean closes) our FIN to the broker's, in s.
    subscribe_s: list[float] = field(default_factory=list)
    close_s: list[float] = field(default_factory=list)
    #: Events the subscribers read (while held, and before the broker's FIN).
    events: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace, pid: int, publisher: Publisher) -> None:
        self.args = args
        self.pid = pid
        self.port = compare.ESPER_PORT
        self.publisher = publisher
        self.epoll = select.epoll()
        self.epoll.register(publisher.sock.fileno(), select.EPOLLIN)
        self.active: dict[int, Cycle] = {}
        self.started = 0
        self.tally = Tally()
        self.next_sweep = 0.0
        self.hold_s = args.hold_ms / 1000
        self.random = random.Random(args.seed)
        #: (when, n, cycle): held subscriptions, by when they are to close.
        self.holds: list[tuple[float, int, Cycle]] = []

    # ---- one cycle

    def start(self) -> None:
        n = self.started
        self.started += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        cycle = Cycle(n, sock, time.monotonic())
        code = sock.connect_ex((HOST, self.port))
        if code not in (0, errno.EINPROGRESS):
            self.finish(cycle, f"connect: {os.strerror(code)}", registered=False)
            return
        self.active[sock.fileno()] = cycle
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def finish(self, cycle: Cycle, failure: str = "", *, registered: bool = True) -> None:
        sock = cycle.sock
        cycle.state = DONE
        if registered:
            del self.active[sock.fileno()]
            self.epoll.unregister(sock.fileno())
        tally = self.tally
        if failure:
            tally.failed += 1
            tally.failures[failure] = tally.failures.get(failure, 0) + 1
            cycle.got.clear()
        if cycle.reset or failure:
            with suppress(OSError):  # a failed connect
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_LINGER)
        sock.close()
        if not failure:
            tally.ok += 1
            if cycle.reset:
                tally.resets += 1
            else:
                tally.clean += 1
                tally.close_s.append(time.monotonic() - cycle.closing_since)

    def on_event(self, cycle: Cycle, mask: int) -> None:
        sock = cycle.sock
        if cycle.state == CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.finish(cycle, f"connect: {os.strerror(code)}")
                return
            topic = cycle.n % self.args.topics
            sock.send(  # small: the fresh socket takes it whole
                f"GET /subscribe/{TOPIC_PREFIX}{topic} HTTP/1.1\r\nHost: {HOST}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            cycle.state = SUBSCRIBING
            self.epoll.modify(sock.fileno(), select.EPOLLIN)
            return
        try:
            data = sock.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            where = ("connect", "subscribe", "held", "clean close")[cycle.state]
            self.finish(cycle, f"{where}: {exc.strerror or exc}")
            return
        if cycle.state in (HOLDING, CLOSING):
            if data:
                seen = cycle.tail + data
                self.tally.events += seen.count(DATA_LINE)
                cycle.tail = seen[-len(DATA_LINE) + 1 :]
            elif cycle.state == CLOSING:  # the broker's FIN
                self.finish(cycle)
            else:
                self.finish(cycle, "stream ended while held")
            return
        if not data:
            self.finish(cycle, f"stream ended before ': subscribed': {bytes(cycle.got[:80])!r}")
            return
        cycle.got += data
        if len(cycle.got) >= 12 and not cycle.got.startswith(b"HTTP/1.1 200"):
            self.finish(cycle, f"subscribe answered {bytes(cycle.got[:40])!r}")
            return
        if SUBSCRIBED not in cycle.got:
            if len(cycle.got) > MAX_HEAD_BYTES:
                self.finish(cycle, "no ': subscribed' in the first 64 KiB")
            return
        now = time.monotonic()
        self.tally.subscribe_s.append(now - cycle.started)
        rest = cycle.got[cycle.got.find(SUBSCRIBED) :]
        self.tally.events += rest.count(DATA_LINE)
        cycle.tail = bytes(rest[-len(DATA_LINE) + 1 :])
        cycle.got.clear()
        if self.hold_s > 0:
            cycle.state = HOLDING
            hold = self.random.uniform(0, self.hold_s)
            heapq.heappush(self.holds, (now + hold, cycle.n, cycle))
        else:
            self.close(cycle, now)

    def close(self, cycle: Cycle, now: float) -> None:
        """End a subscription: a reset, or our FIN (then wait for the broker's)."""
        if cycle.reset:
            self.finish(cycle)
            return
        cycle.state = CLOSING
        cycle.closing_since = now
        cycle.sock.shutdown(socket.SHUT_WR)

    def release_holds(self, now: float) -> None:
        holds = self.holds
        while holds and holds[0][0] <= now:
            _, _, cycle = heapq.heappop(holds)
            if cycle.state == HOLDING:  # not failed meanwhile
                self.close(cycle, now)

    def sweep(self, now: float) -> None:
        """Fail the cycles older than --cycle-timeout."""
        limit = now - self.args.cycle_timeout
        for cycle in [c for c in self.active.values() if c.started < limit]:
            states = ("connect", "subscribe", "held", "clean close: no FIN from the broker")
            self.finish(cycle, f"timed out: {states[cycle.state]}")

    # ---- the loop

    def pump(self, max_wait: float = 0.01) -> None:
        """One round: wait for sockets (or the next publish), serve them."""
        publisher = self.publisher
        now = time.monotonic()
        wait = min(max_wait, publisher.wait_s(now))
        if self.holds:
            wait = max(0.0, min(wait, self.holds[0][0] - now))
        publisher_fd = publisher.sock.fileno()
        for fd, mask in self.epoll.poll(wait):
            if fd == publisher_fd:
                publisher.on_readable()
            else:
                self.on_event(self.active[fd], mask)
        now = time.monotonic()
        self.release_holds(now)
        publisher.maybe_send(now)
        if now >= self.next_sweep:
            self.sweep(now)
            self.next_sweep = now + 0.25

    def pump_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(min(left, 0.01))

    def churn_until(self, mark: int, deadline: float) -> None:
        """Cycles until ``mark`` have started (or ``deadline``), then until
        all in flight have finished."""
        concurrency = self.args.concurrency
        while self.started < mark and time.monotonic() < deadline:
            while len(self.active) < concurrency and self.started < mark:
                self.start()
            self.pump()
        while self.active:  # bounded by --cycle-timeout
            self.pump()

    def wait_clients_zero(self) -> dict[str, int]:
        """``/stats`` once ``clients`` is 0, or after --drain-timeout."""
        end = time.monotonic() + self.args.drain_timeout
        while True:
            stats = compare.stats()
            if stats["clients"] == 0 or time.monotonic() > end:
                return stats
            self.pump_for(0.05)

    def sample(self, t0: float) -> dict[str, object]:
        """The broker once no subscription is left and it settled."""
        start = time.monotonic()
        zero = self.wait_clients_zero()
        drained = time.monotonic() - start
        self.pump_for(self.args.settle)
        rss = proc_status_kb(self.pid, "VmRSS")
        fds = fd_count(self.pid)
        stats = compare.stats()  # after the fds: its connection is not counted
        return {
            "cycles": self.tally.ok + self.tally.failed,
            "t_s": round(time.monotonic() - t0, 1),
            "rss_kb": rss,
            "fds": fds,
            "clients": stats["clients"],
            "topics": stats["topics"],
            "clients_zero_after_s": round(drained, 3) if zero["clients"] == 0 else None,
            "published": stats["published"],
            "delivered": stats["delivered"],
            "dropped": stats["dropped"],
            "failed": self.tally.failed,
        }


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slope_kb_per_10k(rows: list[dict[str, object]]) -> float | None:
    """Least-squares slope of RSS over cycles, from the reference sample on."""
    points = [(float(str(r["cycles"])), float(str(r["rss_kb"]))) for r in rows]
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den * 10_000


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace, pid: int, t0: float) -> dict[str, object]:
    deadline = t0 + args.max_seconds
    stats0 = compare.stats()
    sock = socket.create_connection((HOST, compare.ESPER_PORT), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    prefilled = prefill(sock, args.topics, args.prefill, args.size)
    prefill_s = time.monotonic() - start
    publisher = Publisher(sock, args.topics, args.size, args.rate, prefilled)
    soak = Soak(args, pid, publisher)
    try:
        soak.pump_for(args.settle)  # publishing; the /stats connection is gone
        fds0 = fd_count(pid)
        rss0 = proc_status_kb(pid, "VmRSS")
        published0 = publisher.answered
        server0, self0 = cpu_s(pid), sum(os.times()[:2])
        busy0, _ = machine_busy_s()
        drops0 = listen_drops()
        churn_start = time.monotonic()
        churn_s = 0.0
        rows: list[dict[str, object]] = []
        stopped_by = "cycles"
        while soak.started < args.cycles:
            if rows and time.monotonic() >= deadline:  # the last sample is the end
                stopped_by = "max-seconds"
                break
            every = args.sample_every
            mark = min(args.cycles, (soak.started // every + 1) * every)
            before, done_before = time.monotonic(), soak.tally.ok + soak.tally.failed
            soak.churn_until(mark, deadline)
            interval_s = time.monotonic() - before
            churn_s += interval_s
            if soak.started < mark:
                stopped_by = "max-seconds"
            rows.append(soak.sample(churn_start))
            done = soak.tally.ok + soak.tally.failed - done_before
            rows[-1]["cycles_per_s"] = round(done / interval_s) if interval_s else None
            print(format_row(rows[-1], rows[0]), file=sys.stderr, flush=True)
            if stopped_by != "cycles":
                break
        wall = time.monotonic() - churn_start
        server_s = cpu_s(pid) - server0
        self_s = sum(os.times()[:2]) - self0
        busy1, _ = machine_busy_s()
        drops = listen_drops() - drops0
        # The last sample: back to baseline? Descriptors may take a moment
        # (a lingering close); wait for them as for clients.
        end = rows[-1]
        fds_end = int(str(end["fds"]))
        wait_end = time.monotonic() + args.drain_timeout
        while fds_end != fds0 and time.monotonic() < wait_end:
            soak.pump_for(0.1)
            fds_end = fd_count(pid)
        published = publisher.answered - published0
    finally:
        publisher.sock.close()
        for cycle in list(soak.active.values()):
            soak.finish(cycle, "stopped")
        soak.epoll.close()

    tally = soak.tally
    ref = rows[0] if len(rows) > 1 else None
    rss_ref = int(str(ref["rss_kb"])) if ref else None
    rss_end = int(str(end["rss_kb"]))
    growth = rss_end - rss_ref if rss_ref is not None else None
    after_ref = rows[rows.index(ref) :] if ref else []
    targets = {
        "cycles_all_ok": tally.failed == 0 and tally.ok == soak.started,
        "publishes_all_ok": publisher.errors == 0,
        "clients_zero": end["clients"] == 0,
        "topics_zero": end["topics"] == 0,
        "fds_at_baseline": fds_end == fds0,
        "rss_within_target": growth is not None and growth <= args.rss_target_mb * KIB_PER_MIB,
    }
    machine_pct = (busy1 - busy0) / wall * 100
    cycles_done = tally.ok + tally.failed
    if not all(targets.values()):
        exit_code = 1
    elif stopped_by != "cycles":
        exit_code = 2
    else:
        exit_code = 0
    return {
        "cycles_asked": args.cycles,
        "cycles_done": cycles_done,
        "cycles_ok": tally.ok,
        "cycles_failed": tally.failed,
        "failures": tally.failures,
        "clean_closes": tally.clean,
        "reset_closes": tally.resets,
        "concurrency": args.concurrency,
        "hold_ms": args.hold_ms,
        "topics": args.topics,
        "stopped_by": stopped_by,
        "churn_s": round(churn_s, 1),
        "wall_s": round(wall, 1),
        "cycles_per_s": round(cycles_done / churn_s) if churn_s else None,
        "subscribe_ms_p50": ms(percentile(tally.subscribe_s, 0.5)),
        "subscribe_ms_p99": ms(percentile(tally.subscribe_s, 0.99)),
        "subscribe_ms_max": ms(max(tally.subscribe_s, default=None)),
        "clean_close_ms_p50": ms(percentile(tally.close_s, 0.5)),
        "clean_close_ms_p99": ms(percentile(tally.close_s, 0.99)),
        "prefill_events": prefilled,
        "prefill_s": round(prefill_s, 1),
        "publish_rate_asked": args.rate,
        "published_during_churn": published,
        "publish_per_s": round(published / wall, 1) if wall else None,
        "publish_errors": publisher.errors,
        "publish_error": publisher.error,
        "delivered": int(str(end["delivered"])) - stats0["delivered"],
        "events_read": tally.events,
        "dropped": int(str(end["dropped"])) - stats0["dropped"],
        "listen_drops": drops,
        "rss_kb_before_churn": rss0,
        "rss_kb_reference": rss_ref,
        "rss_reference_cycles": ref["cycles"] if ref else None,
        "rss_kb_end": rss_end,
        "rss_growth_kb": growth,
        "rss_target_kb": round(args.rss_target_mb * KIB_PER_MIB),
        "rss_slope_kb_per_10k_cycles": round(s, 1)
        if (s := slope_kb_per_10k(after_ref)) is not None
        else None,
        "rss_kb_max_sampled": max(int(str(r["rss_kb"])) for r in rows),
        "fds_baseline": fds0,
        "fds_end": fds_end,
        "clients_end": end["clients"],
        "topics_end": end["topics"],
        "server_cpu_s": round(server_s, 1),
        "server_cpu_us_per_cycle": round(server_s / cycles_done * 1e6) if cycles_done else None,
        "run_cpu_server_pct": round(server_s / wall * 100, 1),
        "run_cpu_self_pct": round(self_s / wall * 100, 1),
        "run_cpu_other_pct": round(machine_pct - (server_s + self_s) / wall * 100, 1),
        "samples": rows,
        "targets": targets,
        "exit_code": exit_code,
    }


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


SAMPLE_HEADER = (
    f"{'cycles':>8} {'t s':>7} {'cyc/s':>6} {'RSS MB':>7} {'dRSS MB':>8} {'fds':>5} "
    f"{'clients':>7} {'topics':>6} {'published':>9} {'delivered':>9} {'failed':>6}"
)


def format_row(row: dict[str, object], ref: dict[str, object]) -> str:
    rss, rss_ref = int(str(row["rss_kb"])), int(str(ref["rss_kb"]))
    return (
        f"{row['cycles']:>8} {row['t_s']:>7} {row.get('cycles_per_s', ''):>6} "
        f"{rss / 1024:>7.1f} {(rss - rss_ref) / 1024:>+8.2f} {row['fds']:>5} "
        f"{row['clients']:>7} {row['topics']:>6} {row['published']:>9} "
        f"{row['delivered']:>9} {row['failed']:>6}"
    )


def print_report(result: dict[str, object]) -> None:
    rows = result["samples"]
    assert isinstance(rows, list)
    print(SAMPLE_HEADER)
    for row in rows:
        print(format_row(row, rows[0]))
    print()

    def mib(key: str) -> str:
        value = result[key]
        return "-" if not isinstance(value, int) else f"{value / 1024:.2f} MiB"

    targets = result["targets"]
    assert isinstance(targets, dict)
    lines = [
        ("cycles", f"{result['cycles_ok']} ok, {result['cycles_failed']} failed "
         f"of {result['cycles_asked']} ({result['clean_closes']} clean, "
         f"{result['reset_closes']} reset)", targets["cycles_all_ok"]),
        ("publishes", f"{result['published_during_churn']} at {result['publish_per_s']}/s, "
         f"{result['publish_errors']} errors", targets["publishes_all_ok"]),
        ("events to the churned subscribers", f"{result['delivered']} delivered (/stats), "
         f"{result['events_read']} read, {result['dropped']} subscribers dropped", None),
        ("/stats clients at end (target 0)", str(result["clients_end"]), targets["clients_zero"]),
        ("/stats topics at end (target 0)", str(result["topics_end"]), targets["topics_zero"]),
        ("broker fds: baseline -> end", f"{result['fds_baseline']} -> {result['fds_end']}",
         targets["fds_at_baseline"]),
        (f"RSS after {result['rss_reference_cycles']} cycles", mib("rss_kb_reference"), None),
        ("RSS at end", mib("rss_kb_end"), None),
        (f"RSS growth (target <= {result['rss_target_kb']} KiB)",
         f"{result['rss_growth_kb']} KiB", targets["rss_within_target"]),
        ("RSS slope from the reference", f"{result['rss_slope_kb_per_10k_cycles']} KiB "
         "per 10k cycles", None),
    ]  # fmt: skip
    width = max(len(label) for label, _, _ in lines)
    for label, value, met in lines:
        verdict = "" if met is None else ("  met" if met else "  MISSED")
        print(f"{label:<{width}}  {value}{verdict}")
    print(
        f"rate {result['cycles_per_s']} cycles/s over {result['churn_s']} s of churn; "
        f"subscribe p50 {result['subscribe_ms_p50']} ms, p99 {result['subscribe_ms_p99']} ms; "
        f"clean close p50 {result['clean_close_ms_p50']} ms; broker "
        f"{result['server_cpu_us_per_cycle']} us CPU per cycle; other% "
        f"{result['run_cpu_other_pct']}; stopped by {result['stopped_by']}"
    )
    if result["failures"]:
        print(f"failures: {result['failures']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=600, help="bound on the churn")
    parser.add_argument("--concurrency", type=int, default=200, help="cycles in flight")
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument(
        "--hold-ms",
        type=float,
        default=100,
        help="keep each subscription open a random 0 to this many ms after ': subscribed', "
        "so that events reach it before it closes (0: close at once)",
    )
    parser.add_argument("--seed", type=int, default=1, help="for the hold times")
    parser.add_argument("--rate", type=float, default=200, help="publishes per second")
    parser.add_argument("-z", "--size", type=int, default=100, help="bytes of data per event")
    parser.add_argument(
        "--prefill",
        type=int,
        default=1000,
        help="events published to each topic first: the broker's default ring, so the "
        "history is full before the first cycle (0: none)",
    )
    parser.add_argument(
        "--sample-every", type=int, default=10_000, help="cycles; the first sample is the "
        "RSS reference"
    )  # fmt: skip
    parser.add_argument("--settle", type=float, default=2, help="s before each sample")
    parser.add_argument("--rss-target-mb", type=float, default=10, help="MiB")
    parser.add_argument("--cycle-timeout", type=float, default=10, help="s")
    parser.add_argument("--drain-timeout", type=float, default=30, help="s for clients to be 0")
    args = parser.parse_args()
    if args.cycles <= args.sample_every:
        parser.error("--cycles must exceed --sample-every (the first sample is the reference)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.concurrency + 64:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is too low for --concurrency")
    t0 = time.monotonic()
    with compare.esper() as pids:
        result = run(args, pids[0], t0)
    compare.OUT.mkdir(exist_ok=True)
    (compare.OUT / "soak.json").write_text(json.dumps(result, indent=1))
    print_report(result)
    print(json.dumps(result))
    sys.exit(int(str(result["exit_code"])))


if __name__ == "__main__":
    main()
