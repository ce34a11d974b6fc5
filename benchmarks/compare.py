"""The benchmark scenarios against trio_esper and, in the same run, Nchan.

Builds ``ssebench`` (the C load generator in ``../shared/bench``), then for
each scenario, each repeat and each broker starts a fresh broker --
trio_esper as a subprocess (``trio_esper@REV``: the package as of commit
REV), Nchan as a private nginx with ``../shared/bench/nchan.conf`` -- runs
the load against it (ssebench, or ``--generator loadgen`` for our own),
stops it, and prints a table (deliveries/s, publishes/s, latency p50/p99/max,
loss, reordering, server CPU, RSS and memory per subscriber), then the
medians per broker and the ratios; the runs go to bench-results/*.json.
Interleaving the brokers within one run keeps machine noise from favouring
either. Loopback only; every run is bounded by the generator's
``--count``/``--duration``/``--drain-max``.

Scenarios of our own: ``admission`` and ``admission6k`` (10,000 and 6,000
subscribers, 512 handshakes in flight: subscriptions admitted per second,
ssebench's connect_per_s), ``mixed`` (32 topics x 32 subscribers, 4
publisher connections, 1 KiB events), and, only when named, ``reconnect``
(a reconnect storm driven by benchmarks/reconnect.py: 5000 subscribers
resume 100 events back at once; time until all have caught up, the
broker's peak RSS).

Also measures two latencies of trio_esper directly: subscribe-to-first-byte
and disconnect-cleanup (client closes -> gone from /stats).

    python3 -m nox -s bench                   # trio_esper alone, seven scenarios
    python3 -m nox -s bench_compare -- --repeat 3 --scenarios fanout
    python3 -m nox -s bench_compare -- --scenarios admission,reconnect --no-probes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_BENCH = Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
OUT = ROOT / "bench-results"
ESPER_PORT = 3091
NCHAN_PORT = 8081  # fixed by nchan.conf
#: The backplane benchmark's own redis-server.
REDIS_PORT = 6391
NGINX_PREFIX = Path("/tmp/trio-esper-bench/nginx")


@dataclass(frozen=True)
class Scenario:
    name: str
    args: tuple[str, ...]
    #: What drives the load: ``ssebench`` (or ``--generator loadgen``), or
    #: ``reconnect`` (benchmarks/reconnect.py, whatever --generator says).
    driver: str = "ssebench"


#: The scenarios of ../shared/bench/run_nchan.sh, with the same arguments,
#: then our own (not run unless named in --scenarios).
SCENARIOS = {
    # 1000 subscribers, 1 topic, 2000 x 100-byte messages, one publisher connection.
    "fanout": Scenario("fanout", ("-s", "1000", "-t", "1", "-c", "1", "-n", "2000", "-z", "100")),
    # 10,000 subscribers on one topic, 200 messages; memory sampled when all are idle.
    "idle10k": Scenario(
        "idle10k",
        (
            *("-s", "10000", "-t", "1", "-c", "1", "-n", "200", "-z", "100"),
            *("--connect-concurrency", "512", "--drain-max", "300"),
        ),
    ),
    # 1000 topics x 1 subscriber, 20,000 messages round robin, 16 publisher connections.
    "topics": Scenario(
        "topics", ("-s", "1000", "-t", "1000", "-c", "16", "-n", "20000", "-z", "100")
    ),
    # Moderate load: 100 subscribers, 200 messages/s.
    "latency": Scenario(
        "latency",
        ("-s", "100", "-t", "1", "-c", "1", "-n", "2000", "-r", "200", "-z", "100", "-d", "15"),
    ),
    # Admission: 10,000 subscribers, 512 handshakes in flight; the figure is
    # connect_per_s (then 10 messages to all, to see every stream is live).
    "admission": Scenario(
        "admission",
        (
            *("-s", "10000", "-t", "1", "-c", "1", "-n", "10", "-z", "100"),
            *("--connect-concurrency", "512", "--connect-timeout", "120"),
        ),
    ),
    # Admission at 6,000 subscribers (issue 24 names 6,000 and 10,000).
    "admission6k": Scenario(
        "admission6k",
        (
            *("-s", "6000", "-t", "1", "-c", "1", "-n", "10", "-z", "100"),
            *("--connect-concurrency", "512", "--connect-timeout", "120"),
        ),
    ),
    # Mixed load: 32 topics x 32 subscribers, 4 publisher connections, 1 KiB
    # events, 200 per topic.
    "mixed": Scenario("mixed", ("-s", "1024", "-t", "32", "-c", "4", "-n", "6400", "-z", "1024")),
    # Reconnect storm: 150 events on each of 50 topics, then 5000 subscribers
    # connect at once, each with Last-Event-ID 100 events back (reconnect.py).
    "reconnect": Scenario(
        "reconnect",
        ("--subs", "5000", "--topics", "50", "--history", "150", "--replay", "100"),
        driver="reconnect",
    ),
}
#: What runs when --scenarios is not given: run_nchan.sh's matrix, then the
#: cost of one request (issue 24): admission at 6,000 and 10,000, mixed load.
DEFAULT_SCENARIOS = (
    *("fanout", "idle10k", "topics", "latency"),
    *("admission6k", "admission", "mixed"),
)


def build_ssebench() -> Path:
    source = SHARED_BENCH / "ssebench.c"
    binary = OUT / "ssebench"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        OUT.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def free_port() -> int:
    """A loopback port nothing listens on now, for a server to bind next."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


@contextmanager
def esper(history: str = "memory", *extra: str, source: Path | None = None) -> Iterator[list[int]]:
    """trio_esper as a subprocess; ``history`` is ``memory`` or ``sqlite``;
    ``source``, a directory holding another version's ``trio_esper`` package
    to run instead of the installed one."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = "memory" if history == "memory" else f"sqlite:{tmp}/history.db"
        env = {**os.environ, "ESPER_NO_AUTH": "1"}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trio_esper",
                "--port",
                str(ESPER_PORT),
                "--log-level",
                "warning",
                "--history",
                spec,
                *extra,
            ],
            env=env,
            cwd=source,
            start_new_session=True,
        )
        try:
            wait_listening(ESPER_PORT)
            yield [proc.pid]
        finally:
            stop(proc, signal.SIGINT)


@contextmanager
def esper_redis() -> Iterator[list[int]]:
    """trio_esper with the Redis backplane: a redis-server of its own (no
    persistence) on REDIS_PORT; both processes' CPU counts."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    redis = subprocess.Popen(
        ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_listening(REDIS_PORT)
        url = f"redis://127.0.0.1:{REDIS_PORT}/0"
        with esper("memory", "--backplane", url) as pids:
            yield [*pids, redis.pid]
    finally:
        stop(redis, signal.SIGTERM)


def stop(proc: subprocess.Popen[bytes], graceful: signal.Signals) -> None:
    """Ask ``proc`` to stop with ``graceful``; kill it if it takes over 20 s."""
    proc.send_signal(graceful)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ensure_nchan() -> bool:
    nchan_mod = Path("/usr/share/nginx/modules/ngx_nchan_module.so")
    if shutil.which("nginx") and nchan_mod.exists():
        return True
    if os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "nginx", "libnginx-mod-nchan"], check=True, env=env
    )
    return True


@contextmanager
def nchan(buffer_length: int | None = None, workers: int = 1) -> Iterator[list[int]]:
    """Nchan with ../shared/bench/nchan.conf, or with a copy of it that keeps
    ``buffer_length`` messages per channel (instead of 16) for an hour (for
    replaying history); ``workers`` nginx worker processes."""
    (NGINX_PREFIX / "logs").mkdir(parents=True, exist_ok=True)
    (NGINX_PREFIX / "tmp").mkdir(parents=True, exist_ok=True)
    config = SHARED_BENCH / "nchan.conf"
    if buffer_length is not None:
        text = config.read_text()
        text, found = re.subn(
            r"nchan_message_buffer_length \d+;",
            f"nchan_message_buffer_length {buffer_length};",
            text,
        )
        text, found_timeout = re.subn(
            r"nchan_message_timeout \w+;", "nchan_message_timeout 3600s;", text
        )
        if found != 1 or found_timeout != 1:
            raise RuntimeError(
                f"{config}: no single nchan_message_buffer_length/timeout to change"
            )
        config = NGINX_PREFIX / f"nchan-buffer{buffer_length}.conf"
        config.write_text(text)
    proc = subprocess.Popen(
        [
            "nginx",
            "-c",
            str(config),
            "-p",
            str(NGINX_PREFIX),
            "-g",
            f"worker_processes {workers};",
        ],
        start_new_session=True,
    )
    try:
        wait_listening(NCHAN_PORT)
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        yield [proc.pid, *map(int, children)]
    finally:
        stop(proc, signal.SIGQUIT)


def run_ssebench(
    binary: Path,
    broker: str,
    scenario: Scenario,
    pids: list[int],
    label: str,
    count: int | None,
) -> dict[str, object]:
    if broker == "nchan":  # Nchan takes the raw body as the event's data
        target = ["--port", str(NCHAN_PORT), "--body", "raw"]
    else:  # trio_esper takes SSE fields, announced as such (text/plain is one data line)
        target = ["--port", str(ESPER_PORT), "--body", "sse"]
        target += ["--pub-content-type", "text/event-stream"]
    args = list(scenario.args)
    if "--drain-max" not in args:
        args += ["--drain-max", "60"]
    if count is not None:
        args[args.index("-n") + 1] = str(count)
    cmd = [
        str(binary),
        *target,
        *args,
        "--topic-prefix",
        "benchtopic",
        "--server-pid",
        ",".join(map(str, pids)),
        "--duration",
        "400",
        "--label",
        label,
        *("--idle-wait", "15"),  # let the machine settle before each run
        "-q",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    add_cpu_per_event(result)
    result["exit_code"] = done.returncode
    result["broker"] = broker
    result["scenario"] = scenario.name
    return result


def add_cpu_per_event(result: dict[str, object]) -> None:
    """Server CPU time per delivered event, in us: the figure steal time on a
    shared VM disturbs least (a stolen vCPU charges no CPU to the broker,
    while it lowers every rate), so before/after comparisons use it. Likewise
    per admitted subscription, over the connect phase."""
    for key, cpu_key, rate_key in (
        ("server_cpu_us_per_event", "run_cpu_server_pct", "delivered_per_s"),
        ("server_cpu_us_per_connect", "connect_cpu_server_pct", "connect_per_s"),
    ):
        cpu, rate = result.get(cpu_key), result.get(rate_key)
        if isinstance(cpu, int | float) and isinstance(rate, int | float) and cpu > 0 and rate > 0:
            result[key] = cpu / 100 / rate * 1e6


def run_reconnect(
    broker: str, scenario: Scenario, pids: list[int], label: str
) -> dict[str, object]:
    """The scenario with benchmarks/reconnect.py against the running broker."""
    kind, port = ("nchan", NCHAN_PORT) if broker == "nchan" else ("esper", ESPER_PORT)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reconnect.py"), *scenario.args]
    cmd += ["--port", str(port), "--kind", kind, "--server-pid", ",".join(map(str, pids))]
    cmd += ["--label", label, "--idle-wait", "15"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    lines = done.stdout.strip().splitlines()
    result: dict[str, object] = json.loads(lines[-1]) if lines else {"error": done.stderr[-500:]}
    result.update(exit_code=done.returncode, broker=broker, scenario=scenario.name)
    return result


def start_broker(broker: str, scenario: Scenario) -> AbstractContextManager[list[int]]:
    """A fresh ``broker`` for one run of ``scenario``: for the reconnect
    scenario, Nchan keeps the history it replays (nchan.conf keeps 16
    messages; trio_esper keeps 1000 by default)."""
    if broker == "nchan" and scenario.driver == "reconnect":
        return nchan(buffer_length=int(scenario.args[scenario.args.index("--history") + 1]))
    return BROKERS[broker]()


#: The ssebench flags (each with a value) that loadgen.py understands too.
LOADGEN_FLAGS = {
    *("-s", "-t", "-c", "-n", "-r", "-z", "-d"),
    *("--connect-concurrency", "--connect-timeout"),
}


def run_loadgen(
    broker: str, scenario: Scenario, label: str, count: int | None
) -> dict[str, object]:
    """The scenario with benchmarks/loadgen.py (our own generator) instead of ssebench."""
    port = NCHAN_PORT if broker == "nchan" else ESPER_PORT
    args: list[str] = []
    pairs = list(scenario.args)
    for flag, value in zip(pairs[::2], pairs[1::2], strict=True):
        if flag in LOADGEN_FLAGS:
            args += [flag, str(count) if flag == "-n" and count is not None else value]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "--port", str(port)]
    cmd += [*args, "--body", "raw" if broker == "nchan" else "sse"]
    cmd += ["--topic-prefix", "benchtopic"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    lines = done.stdout.strip().splitlines()
    result: dict[str, object] = json.loads(lines[-1]) if lines else {"error": done.stderr[-500:]}
    result.update(exit_code=done.returncode, broker=broker, scenario=scenario.name, label=label)
    return result


def probe_latencies(samples: int = 50) -> dict[str, float]:
    """Median subscribe-to-first-byte and disconnect-cleanup times, in ms."""
    first_byte, cleanup = [], []
    for n in range(samples):
        topic = f"probetopic{n}"
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", ESPER_PORT)) as sock:
            sock.sendall(f"GET /subscribe/{topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.recv(1)
            first_byte.append((time.perf_counter() - start) * 1000)
            while b": subscribed" not in sock.recv(4096):
                pass
            closed = time.perf_counter()
        while stats()["clients"] != 0:
            if time.perf_counter() - closed > 5:
                raise RuntimeError("subscription not cleaned up within 5 s")
            time.sleep(0.001)
        cleanup.append((time.perf_counter() - closed) * 1000)
    return {
        "subscribe_first_byte_ms_p50": statistics.median(first_byte),
        "subscribe_first_byte_ms_max": max(first_byte),
        "disconnect_cleanup_ms_p50": statistics.median(cleanup),
        "disconnect_cleanup_ms_max": max(cleanup),
    }


def stats() -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ESPER_PORT}/stats", timeout=5) as reply:
        data: dict[str, int] = json.load(reply)
        return data


#: Table columns: (label, result key, format, divisor).
COLUMNS: list[tuple[str, str, str, float]] = [
    ("deliv/s", "delivered_per_s", "{:.0f}", 1),
    ("pub/s", "publish_per_s", "{:.0f}", 1),
    ("p50 ms", "lat_p50_us", "{:.2f}", 1000),
    ("p99 ms", "lat_p99_us", "{:.2f}", 1000),
    ("max ms", "lat_max_us", "{:.1f}", 1000),
    ("lost", "lost", "{}", 1),
    ("reord", "reordered", "{}", 1),
    ("srv cpu%", "run_cpu_server_pct", "{:.0f}", 1),
    ("RSS MB", "server_rss_kb_max", "{:.0f}", 1024),
    ("KB/sub", "server_bytes_per_sub", "{:.1f}", 1024),
    ("us/ev", "server_cpu_us_per_event", "{:.1f}", 1),
    ("conn/s", "connect_per_s", "{:.0f}", 1),
    ("us/conn", "server_cpu_us_per_connect", "{:.0f}", 1),
    ("other%", "run_cpu_other_pct", "{:.0f}", 1),
    ("rc", "exit_code", "{}", 1),
]

#: The reconnect scenario's table columns (reconnect.py's keys): time until
#: every subscriber had its head and all replayed events, the broker's RSS
#: before the storm and its peak during it, its CPU per replayed event.
RECONNECT_COLUMNS: list[tuple[str, str, str, float]] = [
    ("admitted s", "admit_all_s", "{:.2f}", 1),
    ("caught up s", "caught_up_all_s", "{:.2f}", 1),
    ("p50 s", "caught_up_p50_s", "{:.2f}", 1),
    ("replayed/s", "replayed_per_s", "{:.0f}", 1),
    ("verified", "subs_verified", "{}", 1),
    ("RSS0 MB", "server_rss_kb_start", "{:.1f}", 1024),
    ("peak MB", "server_rss_kb_peak", "{:.1f}", 1024),
    ("sampled MB", "server_rss_kb_max_sampled", "{:.1f}", 1024),
    ("KB/sub", "server_peak_bytes_per_sub", "{:.1f}", 1024),
    ("srv cpu%", "run_cpu_server_pct", "{:.0f}", 1),
    ("us/ev", "server_cpu_us_per_event", "{:.1f}", 1),
    ("other%", "run_cpu_other_pct", "{:.0f}", 1),
    ("rc", "exit_code", "{}", 1),
]


def cell(result: dict[str, object], key: str, fmt: str, divisor: float = 1) -> str:
    value = result.get(key)
    if value is None:
        return "-"  # not measured by this generator
    if isinstance(value, int | float) and divisor != 1:
        value = value / divisor
    return fmt.format(value)


def driver(result: dict[str, object]) -> str:
    return SCENARIOS[str(result["scenario"])].driver


def print_table(results: list[dict[str, object]]) -> None:
    """One table per kind of driver (their results have different keys)."""
    for kind, columns in (("ssebench", COLUMNS), ("reconnect", RECONNECT_COLUMNS)):
        runs = [r for r in results if driver(r) == kind]
        if not runs:
            continue
        header = ["scenario", "broker", *(c[0] for c in columns)]
        rows = [header]
        for r in runs:
            cells = (cell(r, key, fmt, divisor) for _, key, fmt, divisor in columns)
            rows.append([str(r["scenario"]), str(r["broker"]), *cells])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)))
        print()
    print_medians(results)


#: Median columns: (label, result key, divisor).
MEDIANS: list[tuple[str, str, float]] = [
    ("deliv/s", "delivered_per_s", 1),
    ("pub/s", "publish_per_s", 1),
    ("p99 ms", "lat_p99_us", 1000),
    ("KB/sub", "server_bytes_per_sub", 1024),
    ("us/ev", "server_cpu_us_per_event", 1),
    ("conn/s", "connect_per_s", 1),
    ("us/conn", "server_cpu_us_per_connect", 1),
]

#: The reconnect scenario's median columns.
RECONNECT_MEDIANS: list[tuple[str, str, float]] = [
    ("admitted s", "admit_all_s", 1),
    ("caught up s", "caught_up_all_s", 1),
    ("replayed/s", "replayed_per_s", 1),
    ("peak MB", "server_rss_kb_peak", 1024),
    ("KB/sub", "server_peak_bytes_per_sub", 1024),
    ("us/ev", "server_cpu_us_per_event", 1),
]


#: A run in which processes other than the broker and the generator (steal
#: time included) used more than this % of one core is left out of the
#: medians when quieter runs of the same broker exist
#: (../shared/bench/README.md: "discard or repeat runs with other% above about 30").
OTHER_MAX = 30


def disturbed(result: dict[str, object]) -> bool:
    other = result.get("run_cpu_other_pct")
    return isinstance(other, int | float) and other > OTHER_MAX


def print_medians(results: list[dict[str, object]]) -> None:
    """Per scenario and broker, the median of each column over the repeats,
    and each broker's ratio to its reference (RATIOS)."""
    for scenario in dict.fromkeys(str(r["scenario"]) for r in results):
        columns = RECONNECT_MEDIANS if SCENARIOS[scenario].driver == "reconnect" else MEDIANS
        medians: dict[str, dict[str, float]] = {}
        for broker in BROKERS:
            runs = [r for r in results if r["scenario"] == scenario and r["broker"] == broker]
            if not runs:
                continue
            quiet = [r for r in runs if not disturbed(r)]
            note = ""
            if quiet and len(quiet) < len(runs):
                note = f" ({len(runs) - len(quiet)} with other% > {OTHER_MAX} left out)"
                runs = quiet
            medians[broker] = {}
            for label, key, divisor in columns:
                values = [v / divisor for r in runs if isinstance(v := r.get(key), int | float)]
                if values:
                    medians[broker][label] = statistics.median(values)
            line = ", ".join(f"{label} {value:.2f}" for label, value in medians[broker].items())
            print(f"{scenario} {broker} medians of {len(runs)}{note}: {line}")
        pairs = [
            (broker, other)
            for broker, reference in RATIOS
            for other in medians
            if other == reference or (reference.endswith("*") and other.startswith(reference[:-1]))
        ]
        for broker, reference in pairs:
            if broker in medians:
                ratios = [
                    f"{label} {medians[broker][label] / medians[reference][label]:.3f}x"
                    for label, _, _ in columns
                    if medians[broker].get(label) and medians[reference].get(label)
                ]
                print(f"{scenario} {broker}/{reference}: {', '.join(ratios)}")


#: The ratios the table ends with: (broker, reference).
RATIOS = [
    ("trio_esper", "nchan"),
    ("trio_esper", "trio_esper@*"),  # now against each earlier version run
    ("trio_esper_sqlite", "nchan"),
    ("trio_esper_sqlite", "trio_esper"),
    ("trio_esper_sqlite_normal", "trio_esper"),
]


def source_at(revision: str) -> Path:
    """The ``trio_esper`` package as of git ``revision`` of this repository,
    unpacked once (``git archive``) under the temporary directory."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = Path(tempfile.gettempdir()) / "trio-esper-bench" / f"rev-{commit}"
    if not (source / "trio_esper").is_dir():
        source.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "trio_esper"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return source


def at_revision(revision: str) -> Callable[[], AbstractContextManager[list[int]]]:
    """trio_esper as of git ``revision`` of this repository (memory history),
    for before/after figures in one run: ``--brokers trio_esper@26df294,trio_esper``."""
    source = source_at(revision)
    return lambda: esper("memory", source=source)


BROKERS: dict[str, Callable[[], AbstractContextManager[list[int]]]] = {
    "trio_esper": esper,
    "trio_esper_sqlite": lambda: esper("sqlite"),
    "trio_esper_sqlite_normal": lambda: esper("sqlite", "--history-sync", "normal"),
    "trio_esper_redis": esper_redis,
    "nchan": nchan,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma list of {list(SCENARIOS)} (default: {','.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--brokers", default="trio_esper,nchan", help=f"comma list of {list(BROKERS)}"
    )
    parser.add_argument(
        "--count", type=int, help="messages per run (overrides the scenario's; not reconnect's)"
    )
    parser.add_argument("--no-probes", action="store_true", help="skip the latency probes")
    parser.add_argument(
        "--generator",
        choices=("ssebench", "loadgen"),
        default="ssebench",
        help="load generator: ../shared/bench/ssebench (C) or benchmarks/loadgen.py (ours)",
    )
    args = parser.parse_args()
    binary = build_ssebench()
    brokers = args.brokers.split(",")
    for broker in brokers:
        if broker.startswith("trio_esper@"):
            BROKERS[broker] = at_revision(broker.partition("@")[2])
    if "nchan" in brokers and not ensure_nchan():
        print("Nchan is not installed and cannot be (not root): skipped", file=sys.stderr)
        brokers.remove("nchan")
    results: list[dict[str, object]] = []
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        for n in range(args.repeat):
            for broker in brokers:  # interleaved, so drift hits every broker alike
                with start_broker(broker, scenario) as pids:
                    if scenario.driver == "reconnect":
                        result = run_reconnect(broker, scenario, pids, f"{name}#{n}")
                    elif args.generator == "loadgen":
                        result = run_loadgen(broker, scenario, f"{name}#{n}", args.count)
                    else:
                        result = run_ssebench(
                            binary, broker, scenario, pids, f"{name}#{n}", args.count
                        )
                    results.append(result)
                print(json.dumps(results[-1]), file=sys.stderr)
    probes: dict[str, float] = {}
    if not args.no_probes:
        with esper():
            probes = probe_latencies()
    OUT.mkdir(exist_ok=True)
    name = "compare.json" if args.generator == "ssebench" else "compare-loadgen.json"
    (OUT / name).write_text(json.dumps({"runs": results, "probes": probes}, indent=1))
    print_table(results)
    for key, value in probes.items():
        print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
