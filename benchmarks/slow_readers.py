"""Slow readers: readers' latency with and without stalled subscribers on the same topic.

Issue 10, point 10: with 100 subscribers that stop reading among 1,000 that
read, the readers' p99 latency stays within 2x of a run without the stalled
ones, the stalled ones are dropped per ``--queue``, and memory stays bounded.

Each run starts a fresh trio_esper (compare.py's ``esper``; ``--broker
trio_esper@REV`` runs the package as of commit REV) with ``--queue`` (passed
as ``ESPER_QUEUE_EVENTS``, so older revisions take it too) and measures one
of two cases:

- ``readers``: benchmarks/loadgen.py (a subprocess, as compare.py's
  ``--generator loadgen``) opens ``--readers`` subscribers on one topic and
  publishes ``--count`` events of ``--size`` bytes at ``--rate`` per second;
- ``stalled``: the same, after ``--stalled`` subscribers to the same topic
  have been opened from this process: raw sockets with ``SO_RCVBUF``
  ``--stalled-rcvbuf`` (set before connecting, so the advertised window is
  small from the start) that read the response head and then never read
  again. Their queues fill, and the broker must drop every one of them.

For each run: the readers' latency p50/p99/max, loss and reordering
(loadgen's JSON), the publish rate reached and the publish round trip; the
broker's ``/stats`` sampled every 0.2 s (``dropped``, ``clients``: which must
be the readers alone once the stalled ones are dropped, and when that was);
the broker's RSS before any subscriber, with the stalled ones connected, its
peak over the run (``VmHWM``, reset before the load, and ``VmRSS`` sampled
every 20 ms) and after everyone left; its CPU per delivered event; and the CPU
used by neither the broker nor the generators (``other%``, to spot runs
disturbed by other load). Whether each stalled socket saw its stream end is
checked by reading it out afterwards.

The defaults (1,000 readers, 20 events/s of 1 KB: 20,000 deliveries/s, the
delivery rate of compare.py's ``latency`` scenario; ``--queue 100``) keep the
load moderate on a 2-core machine (200 events/s to 1,000 readers would be
more than twice the fan-out rate BENCHMARKS.md measured, a saturation test)
and let the stalled queues fill before the broker's write timeout does its
part: a stalled socket's unacknowledged data makes the kernel abort the
connection (``TCP_USER_TIMEOUT``, ``ESPER_WRITE_TIMEOUT_SECONDS``, 10 s),
which ``/stats`` does not count as ``dropped``. A queue takes about
queue/rate seconds to fill once the socket is full, so with ``--queue 200``
at 20/s the stalled subscribers are aborted, not dropped (``gone at s`` about
10.7).

With ``--repeat N`` the two cases alternate (readers, stalled; stalled,
readers; ...), each on a fresh broker. Prints a table, the medians, the p99
ratio (stalled/readers) against the 2x target and one JSON line; exit status
1 if any run failed a check (a reader lost or reordered events, a stalled
subscriber was not dropped, a reader was), else 0. Loopback only; bounded by
``--count``/``--rate``, loadgen's ``--drain`` and timeouts.

    python benchmarks/slow_readers.py
    python benchmarks/slow_readers.py --repeat 3
    python benchmarks/slow_readers.py --broker trio_esper@26df294
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from pathlib import Path

import compare
from reconnect import cpu_s, machine_busy_s, proc_status_kb, reset_peak_rss, wait_idle

HOST = "127.0.0.1"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
TOPIC_PREFIX = "slowtopic"
TOPIC = f"{TOPIC_PREFIX}0"  # loadgen's topic 0
#: The issue's target: the readers' p99 with stalled subscribers at most this
#: many times the p99 without them.
TARGET_RATIO = 2.0
CASES = ("readers", "stalled")


# ---------------------------------------------------------------- stalled subscribers


def open_stalled(count: int, port: int, rcvbuf: int) -> list[socket.socket]:
    """``count`` subscribers to TOPIC that read their response head and no more."""
    request = f"GET /subscribe/{TOPIC} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
            sock.settimeout(10)
            sock.connect((HOST, port))
            sock.sendall(request)
            read_head(sock)
    except BaseException:
        close_all(socks)
        raise
    return socks


def read_head(sock: socket.socket) -> None:
    """Read exactly the response head (peeking for its end), check it is 200."""
    deadline = time.monotonic() + 10
    while True:
        peek = sock.recv(4096, socket.MSG_PEEK)
        if not peek:
            raise RuntimeError("a stalled subscriber's connection closed before its head")
        end = peek.find(b"\r\n\r\n")
        if end >= 0:
            head = sock.recv(end + 4)  # all of it is there: recv returns it whole
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"a stalled subscriber got {head[:100]!r}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError("no response head within 10 s")
        time.sleep(0.001)  # only part of the head is in: wait for the rest


def saw_end(sock: socket.socket, deadline: float) -> bool:
    """Read out what the broker sent before it dropped ``sock``: whether the
    stream ended (EOF or reset) by ``deadline``."""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            if not sock.recv(1 << 16):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:  # timed out
        return False


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:  # RST, so no TIME_WAIT is left for the next run
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# ---------------------------------------------------------------- sampling


class Monitor(threading.Thread):
    """Samples the broker's VmRSS every 20 ms and its /stats every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rss_max_kb = 0
        #: (seconds since start, clients, dropped, published)
        self.samples: list[tuple[float, int, int, int]] = []
        self.errors = 0
        self.start_time = time.monotonic()
        self._done = threading.Event()

    def run(self) -> None:
        next_stats = self.start_time
        while not self._done.is_set():
            now = time.monotonic()
            with suppress(OSError):
                self.rss_max_kb = max(self.rss_max_kb, proc_status_kb(self.pid, "VmRSS"))
            if now >= next_stats:
                self.sample_stats()
                next_stats = now + 0.2
            self._done.wait(0.02)

    def sample_stats(self) -> None:
        try:
            s = compare.stats()
        except OSError:
            self.errors += 1
            return
        now = time.monotonic() - self.start_time
        self.samples.append((now, s["clients"], s["dropped"], s["published"]))

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample_stats()  # one last, after the load

    def drops(self, stalled: int, readers: int) -> dict[str, object]:
        """When the stalled subscribers were dropped, from the samples:
        seconds after publishing started until the first and the last drop,
        and ``clients`` in the first sample with all of them dropped (the
        readers alone, if no reader was dropped and no stalled one closed
        otherwise)."""
        started = next((t for t, _, _, published in self.samples if published > 0), None)
        first = next((t for t, _, dropped, _ in self.samples if dropped > 0), None)
        gone = next(  # the readers alone, publishing under way: dropped or closed
            (t for t, c, _, published in self.samples if stalled and published and c == readers),
            None,
        )
        all_dropped = next(
            ((t, c) for t, c, dropped, _ in self.samples if stalled and dropped >= stalled), None
        )
        return {
            "clients_max": max((c for _, c, _, _ in self.samples), default=None),
            "clients_when_all_dropped": all_dropped[1] if all_dropped else None,
            "first_drop_s": round(first - started, 2)
            if first is not None and started is not None
            else None,
            "all_dropped_s": round(all_dropped[0] - started, 2)
            if all_dropped is not None and started is not None
            else None,
            "stalled_gone_s": round(gone - started, 2)
            if gone is not None and started is not None
            else None,
            "stats_samples": len(self.samples),
            "stats_errors": self.errors,
        }


# ---------------------------------------------------------------- one run


def wait_clients(expected: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if compare.stats()["clients"] == expected:
            return True
        time.sleep(0.02)
    return False


def run_loadgen(args: argparse.Namespace) -> tuple[dict[str, object], str]:
    """loadgen.py against the broker: (its JSON, or an error; its stderr's tail)."""
    publish_cap = args.count / args.rate * 2 + 10
    cmd = [sys.executable, str(LOADGEN), "--port", str(args.port)]
    cmd += ["-s", str(args.readers), "-t", "1", "-c", "1", "-n", str(args.count)]
    cmd += ["-r", str(args.rate), "-z", str(args.size), "-d", str(publish_cap)]
    cmd += ["--drain", "5", "--connect-timeout", "60", "--body", "sse"]
    cmd += ["--topic-prefix", TOPIC_PREFIX]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=publish_cap + 120, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": "loadgen timed out", "loadgen_exit_code": None}, ""
    lines = done.stdout.strip().splitlines()
    result: dict[str, object] = json.loads(lines[-1]) if lines else {"error": done.stderr[-300:]}
    result["loadgen_exit_code"] = done.returncode
    return result, done.stderr[-300:]


def run_case(
    case: str,
    label: str,
    args: argparse.Namespace,
    factory: Callable[[], AbstractContextManager[list[int]]],
) -> dict[str, object]:
    stalled_n = args.stalled if case == "stalled" else 0
    result: dict[str, object] = {"case": case, "label": label, "stalled": stalled_n}
    with factory() as pids:
        pid = pids[0]
        time.sleep(0.3)
        rss_before = proc_status_kb(pid, "VmRSS")
        stalled = open_stalled(stalled_n, args.port, args.stalled_rcvbuf)
        try:
            connected = wait_clients(stalled_n, 10)
            rss_stalled = proc_status_kb(pid, "VmRSS")
            waited = wait_idle(args.idle_wait)
            hwm_reset = reset_peak_rss([pid])
            monitor = Monitor(pid)
            monitor.start()
            server0, self0 = cpu_s(pid), sum(os.times()[:2])
            busy0, _ = machine_busy_s()
            t0 = time.monotonic()
            load, stderr = run_loadgen(args)
            wall = time.monotonic() - t0
            busy1, _ = machine_busy_s()
            server_s, self_s = cpu_s(pid) - server0, sum(os.times()[:2]) - self0
            monitor.stop()
            rss_peak = proc_status_kb(pid, "VmHWM")
            deadline = time.monotonic() + 5
            ended = sum(saw_end(sock, deadline) for sock in stalled)
        finally:
            close_all(stalled)
        all_left = wait_clients(0, 10)
        time.sleep(0.3)
        rss_after = proc_status_kb(pid, "VmRSS")
        final = compare.stats()
    loadgen_cpu = load.get("self_cpu_s")
    loadgen_s = loadgen_cpu if isinstance(loadgen_cpu, int | float) else 0.0
    delivered = load.get("events_delivered")
    result.update(load)
    result.update(monitor.drops(stalled_n, args.readers))
    result.update(
        stalled_connected=connected,
        stalled_saw_end=ended,
        all_left=all_left,
        dropped=final["dropped"],
        published=final["published"],
        pre_run_wait_s=round(waited, 2),
        server_rss_kb_before=rss_before,
        server_rss_kb_stalled=rss_stalled,
        server_rss_kb_peak=rss_peak if hwm_reset else None,
        server_rss_kb_max_sampled=monitor.rss_max_kb,
        # Peak over the run less RSS before any subscriber: a fresh broker's
        # starting RSS itself varies by 10 MB from run to run.
        server_rss_kb_growth=max(rss_peak, monitor.rss_max_kb) - rss_before,
        server_rss_kb_after=rss_after,
        server_cpu_s=round(server_s, 2),
        server_cpu_us_per_event=round(server_s / delivered * 1e6, 2)
        if isinstance(delivered, int) and delivered
        else None,
        run_wall_s=round(wall, 2),
        run_cpu_other_pct=round(((busy1 - busy0) - server_s - self_s - loadgen_s) / wall * 100, 1),
    )
    if stderr and "error" in result:
        result["loadgen_stderr"] = stderr
    result["failures"] = failures(result, args)
    result["notes"] = notes(result, args)
    return result


def failures(result: dict[str, object], args: argparse.Namespace) -> list[str]:
    """The checks a run must pass."""
    found: list[str] = []
    if "error" in result:
        return [f"loadgen: {result['error']}"]
    stalled = result["stalled"]
    if result.get("subs_connected") != args.readers:
        found.append(f"readers connected: {result.get('subs_connected')}")
    if result.get("lost") != 0 or result.get("reordered") != 0:
        found.append(f"readers lost {result.get('lost')}, reordered {result.get('reordered')}")
    if result.get("publishes_accepted") != args.count:
        found.append(f"publishes accepted: {result.get('publishes_accepted')} of {args.count}")
    if not result["stalled_connected"]:
        found.append("the stalled subscribers did not all connect")
    if result["dropped"] != stalled:
        found.append(f"dropped {result['dropped']}, expected {stalled}")
    if stalled and result.get("clients_when_all_dropped") != args.readers:
        found.append(f"clients once all stalled dropped: {result.get('clients_when_all_dropped')}")
    if result["stalled_saw_end"] != stalled:
        found.append(f"stalled streams ended: {result['stalled_saw_end']} of {stalled}")
    if not result["all_left"]:
        found.append("subscriptions left after the run")
    return found


def notes(result: dict[str, object], args: argparse.Namespace) -> list[str]:
    """What makes a run's figures less telling, without failing it."""
    found: list[str] = []
    rate = result.get("publish_per_s")
    if isinstance(rate, int | float) and rate < 0.9 * args.rate:
        found.append(f"published {rate:.0f}/s of {args.rate:.0f}/s: saturated or disturbed")
    if compare.disturbed(result):
        found.append(f"other% > {compare.OTHER_MAX}")
    return found


# ---------------------------------------------------------------- report

#: (label, key, format, divisor)
COLUMNS: list[tuple[str, str, str, float]] = [
    ("p50 ms", "lat_p50_us", "{:.2f}", 1000),
    ("p99 ms", "lat_p99_us", "{:.2f}", 1000),
    ("max ms", "lat_max_us", "{:.1f}", 1000),
    ("lost", "lost", "{}", 1),
    ("reord", "reordered", "{}", 1),
    ("pub/s", "publish_per_s", "{:.0f}", 1),
    ("pub rtt ms", "pub_rtt_p50_us", "{:.2f}", 1000),
    ("deliv/s", "delivered_per_s", "{:.0f}", 1),
    ("dropped", "dropped", "{}", 1),
    ("clients", "clients_when_all_dropped", "{}", 1),
    ("drops at s", "first_drop_s", "{:.1f}", 1),
    ("..all at s", "all_dropped_s", "{:.1f}", 1),
    ("gone at s", "stalled_gone_s", "{:.1f}", 1),
    ("RSS0 MB", "server_rss_kb_before", "{:.1f}", 1024),
    ("+stalled MB", "server_rss_kb_stalled", "{:.1f}", 1024),
    ("peak MB", "server_rss_kb_peak", "{:.1f}", 1024),
    ("growth MB", "server_rss_kb_growth", "{:.1f}", 1024),
    ("after MB", "server_rss_kb_after", "{:.1f}", 1024),
    ("us/ev", "server_cpu_us_per_event", "{:.1f}", 1),
    ("other%", "run_cpu_other_pct", "{:.0f}", 1),
]
#: Median columns: (label, key, divisor).
MEDIANS: list[tuple[str, str, float]] = [
    ("p50 ms", "lat_p50_us", 1000),
    ("p99 ms", "lat_p99_us", 1000),
    ("max ms", "lat_max_us", 1000),
    ("pub rtt ms", "pub_rtt_p50_us", 1000),
    ("peak MB", "server_rss_kb_peak", 1024),
    ("growth MB", "server_rss_kb_growth", 1024),
    ("after MB", "server_rss_kb_after", 1024),
    ("us/ev", "server_cpu_us_per_event", 1),
]


def print_table(runs: list[dict[str, object]]) -> None:
    header = ["case", "run", *(c[0] for c in COLUMNS), "checks"]
    rows = [header]
    for r in runs:
        cells = [compare.cell(r, key, fmt, divisor) for _, key, fmt, divisor in COLUMNS]
        failed = r["failures"]
        checks = "; ".join(map(str, failed)) if isinstance(failed, list) and failed else "ok"
        noted = r.get("notes")
        if isinstance(noted, list) and noted:
            checks += " (" + "; ".join(map(str, noted)) + ")"
        rows.append([str(r["case"]), str(r["label"]), *cells, checks])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))
    print()


def medians(runs: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Per case, the median of each column. Runs with other% > 30 are left
    out (compare.py's rule) when both cases have quieter runs, so that the
    two cases' medians come from alike conditions."""
    quiet = [r for r in runs if not compare.disturbed(r)]
    if all(any(r["case"] == case for r in quiet) for case in CASES):
        runs = quiet
    out: dict[str, dict[str, float]] = {}
    for case in CASES:
        mine = [r for r in runs if r["case"] == case]
        out[case] = {"runs": len(mine)}
        for label, key, divisor in MEDIANS:
            values = [v / divisor for r in mine if isinstance(v := r.get(key), int | float)]
            if values:
                out[case][label] = statistics.median(values)
    return out


def summary(runs: list[dict[str, object]], args: argparse.Namespace) -> dict[str, object]:
    meds = medians(runs)
    for case, values in meds.items():
        line = ", ".join(
            f"{label} {value:.2f}" for label, value in values.items() if label != "runs"
        )
        total = sum(r["case"] == case for r in runs)
        print(f"{case} medians of {values.get('runs', 0):.0f} of {total} runs: {line}")
    p99 = {case: meds[case].get("p99 ms") for case in CASES}
    ratio = None
    if p99["readers"] and p99["stalled"]:
        ratio = p99["stalled"] / p99["readers"]
    pairs = []  # run by run: stalled run n against readers run n
    for n in range(args.repeat):
        a = next((r for r in runs if r["case"] == "readers" and r["label"] == f"#{n}"), None)
        b = next((r for r in runs if r["case"] == "stalled" and r["label"] == f"#{n}"), None)
        pa, pb = (a or {}).get("lat_p99_us"), (b or {}).get("lat_p99_us")
        if isinstance(pa, int | float) and isinstance(pb, int | float) and pa > 0:
            pairs.append(round(pb / pa, 2))
    peak = {case: meds[case].get("growth MB") for case in CASES}
    peak_delta = None
    if peak["readers"] is not None and peak["stalled"] is not None:
        peak_delta = peak["stalled"] - peak["readers"]
    # The most the stalled subscribers' queues could hold if no bytes were
    # shared (the topic shares each event's bytes among its subscribers).
    bound_mb = args.stalled * args.queue * (args.size + 64) / 2**20
    met = ratio is not None and ratio <= TARGET_RATIO
    failed = sum(bool(r["failures"]) for r in runs)
    if ratio is not None:
        print(
            f"p99 with {args.stalled} stalled / without: {ratio:.2f}x "
            f"(pairs: {', '.join(f'{p:.2f}x' for p in pairs)}); "
            f"target <= {TARGET_RATIO:.0f}x: {'met' if met else 'NOT met'}"
        )
    if peak_delta is not None:
        print(
            f"RSS growth over the run, with stalled - without: {peak_delta:+.1f} MB "
            f"(the stalled queues' bound, unshared: {bound_mb:.1f} MB)"
        )
    print(f"runs failing a check: {failed} of {len(runs)}")
    return {
        "p99_ms": p99,
        "p99_ratio": round(ratio, 3) if ratio is not None else None,
        "p99_ratio_pairs": pairs,
        "target_ratio": TARGET_RATIO,
        "target_met": met,
        "rss_growth_delta_mb": round(peak_delta, 2) if peak_delta is not None else None,
        "stalled_queue_bound_mb": round(bound_mb, 1),
        "medians": meds,
        "runs_failing_checks": failed,
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker", default="trio_esper", help="trio_esper, or trio_esper@REV (a git revision)"
    )
    parser.add_argument("--port", type=int, default=3094, help="the broker's port (loopback)")
    parser.add_argument(
        "--queue",
        type=int,
        default=100,
        help="the broker's --queue; the stalled queues must fill (about queue/rate s after "
        "their sockets do) before the broker's write timeout (10 s) aborts them",
    )
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=100)
    parser.add_argument("--stalled-rcvbuf", type=int, default=4096, help="SO_RCVBUF, bytes")
    parser.add_argument("-n", "--count", type=int, default=300, help="events published")
    parser.add_argument("-r", "--rate", type=float, default=20, help="events per second")
    parser.add_argument("-z", "--size", type=int, default=1000, help="bytes of data per event")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs, alternating")
    parser.add_argument("--idle-wait", type=float, default=15, help="wait for an idle machine, s")
    parser.add_argument("--cases", default=",".join(CASES), help="readers, stalled or both")
    parser.add_argument("--json", type=Path, help="also write the runs and summary here")
    args = parser.parse_args()
    factory: Callable[[], AbstractContextManager[list[int]]]
    if args.broker == "trio_esper":
        factory = compare.esper
    elif args.broker.startswith("trio_esper@"):
        factory = compare.at_revision(args.broker.partition("@")[2])
    else:
        parser.error("--broker: trio_esper or trio_esper@REV")
    with socket.socket() as probe:
        if probe.connect_ex((HOST, args.port)) == 0:
            raise SystemExit(f"something already listens on {HOST}:{args.port}")
    # compare.esper() and compare.stats() use this port; the queue reaches
    # the broker (of any revision) through its environment.
    compare.ESPER_PORT = args.port
    os.environ["ESPER_QUEUE_EVENTS"] = str(args.queue)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.stalled + 64:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is too low")

    runs: list[dict[str, object]] = []
    cases = [c for c in CASES if c in args.cases.split(",")]
    for n in range(args.repeat):
        order = cases if n % 2 == 0 else cases[::-1]  # alternate, so drift hits both
        for case in order:
            runs.append(run_case(case, f"#{n}", args, factory))
            print(json.dumps(runs[-1]), file=sys.stderr)
    print_table(runs)
    overall = summary(runs, args)
    result = {
        "broker": args.broker,
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "summary": overall,
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    sys.exit(1 if overall["runs_failing_checks"] else 0)


if __name__ == "__main__":
    main()
