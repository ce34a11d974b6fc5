"""The Redis backplane against one process without it (issue 24).

For each scenario, each repeat and each variant (interleaved, so drift on a
shared machine hits every variant alike) a fresh broker is started, pinned to
cpu 0 with ``taskset``, and ssebench (``../shared/bench``) runs pinned to cpu
1. Variants:

- ``memory``: one process, memory history, no backplane;
- ``redis``: the same with ``--backplane redis://...`` to a redis-server of
  its own (fresh per run, no persistence, a free port), pinned to cpu 0 with
  the broker, so broker and Redis share one core (``--redis-cpu 1``: with the
  load generator instead); the server CPU counts both;
- ``redis@REV``: the same with the package as of git commit ``REV`` (before/after
  in one run);
- ``threads2``: ``--threads 2`` with the backplane, two worker processes and
  redis-server on the whole machine, the load generator too (nothing pinned:
  read its CPU share, ``gen cpu%``); the server CPU counts the supervisor,
  both workers and Redis;
- ``nchan2``: Nchan with two nginx workers, likewise unpinned (the
  reference ``threads2`` is held to);
- ``nchan``: Nchan with one worker, pinned as ``memory`` is (the reference
  the one-process figures are held to, in the same run).

Scenarios: ``topics`` (1,000 topics x 1 subscriber, 16 publisher connections,
20,000 publishes back to back), ``latency`` (100 subscribers of one topic,
200 publishes/s) and ``fanout`` (1,000 subscribers of one topic, 2,000
publishes from one connection). Prints publishes/s, latency p50/p99, server CPU per publish
(broker + Redis, in us: steadier than rates when the machine is loaded) and
the other load on the machine; the runs go to bench-results/backplane.json.

    python3 benchmarks/backplane.py --repeat 2
    python3 benchmarks/backplane.py --variants memory,redis@d7986d0,redis --scenarios topics
    python3 benchmarks/backplane.py --variants memory,threads2,nchan2 --scenarios topics,fanout
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compare import (
    NCHAN_PORT,
    OUT,
    ROOT,
    build_ssebench,
    free_port,
    nchan,
    source_at,
    stop,
    wait_listening,
)

SCENARIOS = {
    "topics": ("-s", "1000", "-t", "1000", "-c", "16", "-n", "20000", "-z", "100"),
    "latency": (
        *("-s", "100", "-t", "1", "-c", "1", "-n", "2000", "-r", "200", "-z", "100"),
        *("-d", "15"),
    ),
    "fanout": ("-s", "1000", "-t", "1", "-c", "1", "-n", "2000", "-z", "100"),
}
#: Variants that run on the whole machine, load generator included.
UNPINNED = ("threads2", "nchan2")
BROKER_CPU = "0"
LOAD_CPU = "1"
#: Where redis-server runs (--redis-cpu): with the broker by default.
REDIS_CPU = [BROKER_CPU]


@contextmanager
def broker(variant: str, port: int) -> Iterator[list[int]]:
    """The broker of ``variant`` on ``port`` (and its redis-server): their pids."""
    name, _, revision = variant.partition("@")
    pids: list[int] = []
    redis: subprocess.Popen[bytes] | None = None
    extra: list[str] = []
    env = {**os.environ, "ESPER_NO_AUTH": "1"}
    cwd = ROOT
    if revision:
        cwd = source_at(revision)
        env["PYTHONPATH"] = str(cwd)
    unpinned = name in UNPINNED
    try:
        if name == "redis" or name == "threads2":
            if shutil.which("redis-server") is None:
                raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
            redis_port = free_port()
            redis = subprocess.Popen(
                [
                    *(() if unpinned else ("taskset", "-c", REDIS_CPU[0])),
                    *("redis-server", "--port", str(redis_port)),
                    *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                ],
                stdout=subprocess.DEVNULL,
            )
            wait_listening(redis_port)
            pids.append(redis.pid)
            extra = ["--backplane", f"redis://127.0.0.1:{redis_port}/0"]
            if name == "threads2":
                extra += ["--threads", "2"]
        proc = subprocess.Popen(
            [
                *(() if unpinned else ("taskset", "-c", BROKER_CPU)),
                *(sys.executable, "-m", "trio_esper"),
                *("--port", str(port), "--log-level", "warning", "--history", "memory", *extra),
            ],
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            wait_listening(port)
            yield [proc.pid, *_children(proc.pid), *pids]
        finally:
            stop(proc, signal.SIGINT)
    finally:
        if redis is not None:
            stop(redis, signal.SIGTERM)


def _children(pid: int) -> list[int]:
    """``pid``'s child processes (``--threads`` workers; none otherwise)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(child) for child in out.split()]


def run(binary: Path, variant: str, scenario: str, label: str) -> dict[str, object]:
    if variant in ("nchan", "nchan2"):
        with nchan(workers=1 if variant == "nchan" else 2) as pids:
            cmd = [str(binary), "--port", str(NCHAN_PORT), "--body", "raw"]
            if variant == "nchan":  # pinned as the one-process broker is
                for pid in pids:
                    subprocess.run(
                        ["taskset", "-a", "-p", "-c", BROKER_CPU, str(pid)],
                        check=True,
                        capture_output=True,
                    )
                cmd = ["taskset", "-c", LOAD_CPU, *cmd]
            return _ssebench(cmd, pids, variant, scenario, label)
    port = free_port()
    with broker(variant, port) as pids:
        pinned = variant.partition("@")[0] not in UNPINNED
        cmd = [*(("taskset", "-c", LOAD_CPU) if pinned else ()), str(binary), "--port", str(port)]
        cmd += ["--body", "sse", "--pub-content-type", "text/event-stream"]
        return _ssebench(cmd, pids, variant, scenario, label)


def _ssebench(
    cmd: list[str], pids: list[int], variant: str, scenario: str, label: str
) -> dict[str, object]:
    """Run ssebench (``cmd``: its target) on the broker of ``pids``."""
    cmd += [*SCENARIOS[scenario], "--topic-prefix", "benchtopic", "--drain-max", "60"]
    cmd += ["--server-pid", ",".join(map(str, pids)), "--duration", "400"]
    cmd += ["--label", label, "--idle-wait", "15", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(variant=variant, scenario=scenario, exit_code=done.returncode)
    cpu, rate = result.get("run_cpu_server_pct"), result.get("publish_per_s")
    if isinstance(cpu, int | float) and isinstance(rate, int | float) and rate > 0:
        result["server_cpu_us_per_publish"] = cpu / 100 / rate * 1e6
    return result


COLUMNS = (
    ("pub/s", "publish_per_s", "{:,.0f}", 1),
    ("p50 ms", "lat_p50_us", "{:.1f}", 1000),
    ("p99 ms", "lat_p99_us", "{:.1f}", 1000),
    ("srv cpu%", "run_cpu_server_pct", "{:.0f}", 1),
    ("us/pub", "server_cpu_us_per_publish", "{:,.0f}", 1),
    ("deliv/s", "delivered_per_s", "{:,.0f}", 1),
    ("gen cpu%", "run_cpu_self_pct", "{:.0f}", 1),
    ("other%", "run_cpu_other_pct", "{:.0f}", 1),
    ("lost", "lost", "{:.0f}", 1),
    ("reord", "reordered", "{:.0f}", 1),
)


def print_table(results: list[dict[str, object]]) -> None:
    print("| scenario | variant | run | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("| --- | --- | --- |" + " ---: |" * len(COLUMNS))
    for r in results:
        cells = []
        for _, key, fmt, div in COLUMNS:
            value = r.get(key)
            cells.append(fmt.format(value / div) if isinstance(value, int | float) else "-")
        print(f"| {r['scenario']} | {r['variant']} | {r['label']} | " + " | ".join(cells) + " |")
    print()
    print("medians:")
    keys = sorted({(str(r["scenario"]), str(r["variant"])) for r in results})
    for scenario, variant in keys:
        runs = [r for r in results if r["scenario"] == scenario and r["variant"] == variant]
        cells = []
        for name, key, fmt, div in COLUMNS[:7]:
            values = [v for r in runs if isinstance(v := r.get(key), int | float)]
            cell = fmt.format(statistics.median(values) / div) if values else "-"
            cells.append(f"{name} {cell}")
        print(f"  {scenario:8} {variant:24} " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--scenarios", default="topics,latency", help=f"comma list of {list(SCENARIOS)}"
    )
    parser.add_argument(
        "--variants",
        default="memory,redis",
        help="comma list of memory, redis, redis@REV, memory@REV, threads2, nchan, nchan2",
    )
    parser.add_argument(
        "--redis-cpu", default=BROKER_CPU, help="the cpu redis-server is pinned to (default: 0)"
    )
    args = parser.parse_args()
    REDIS_CPU[0] = args.redis_cpu
    binary = build_ssebench()
    results: list[dict[str, object]] = []
    for scenario in args.scenarios.split(","):
        for n in range(args.repeat):
            for variant in args.variants.split(","):
                result = run(binary, variant, scenario, f"{scenario}#{n}")
                results.append(result)
                print(json.dumps(result), file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "backplane.json").write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
