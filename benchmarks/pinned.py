"""Before/after of one change, pinned: trio_esper at two (or more) revisions,
one scenario at a time, runs interleaved, each broker on cpu 0 and ssebench
on cpu 1 (``taskset``), medians of the repeats (issue 24's per-change figures).

compare.py runs brokers unpinned, to compare with Nchan as
../shared/bench/run_nchan.sh does; this keeps the scheduler from moving
broker and load generator onto one core, which is most of the noise between
two runs of the same code. The figures: publishes/s, deliveries/s,
subscriptions admitted/s, and the broker's CPU per delivered event
(``us/ev``, over the run) and per admitted subscriber (``us/conn``, over
the connect phase), the steadier of them on a shared machine.

    python benchmarks/pinned.py --revisions c8aa03b,HEAD --scenarios topics,admission --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from compare import SCENARIOS, build_ssebench, source_at, stop, wait_listening

PORT = 3094
BROKER_CPU, LOAD_CPU = "0", "1"


def run(binary: Path, source: Path, scenario: str) -> dict[str, float]:
    """One run of ``scenario`` against the package in ``source``."""
    env = {**os.environ, "ESPER_NO_AUTH": "1", "PYTHONPATH": str(source)}
    broker = subprocess.Popen(
        [
            *("taskset", "-c", BROKER_CPU, sys.executable, "-m", "trio_esper"),
            *("--port", str(PORT), "--log-level", "warning", "--history", "memory"),
        ],
        env=env,
        cwd=source,
        start_new_session=True,
    )
    try:
        wait_listening(PORT)
        done = subprocess.run(
            [
                *("taskset", "-c", LOAD_CPU, str(binary), "--port", str(PORT)),
                *("--body", "sse", "--pub-content-type", "text/event-stream"),
                *SCENARIOS[scenario].args,
                *("--topic-prefix", "benchtopic", "--drain-max", "60", "--duration", "400"),
                *("--server-pid", str(broker.pid), "--idle-wait", "15", "-q"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop(broker, signal.SIGINT)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    events = max(1, r["events_delivered"])
    return {
        "pub/s": r["publish_per_s"],
        "deliv/s": r["delivered_per_s"],
        "conn/s": r["connect_per_s"],
        "us/ev": r["run_cpu_server_pct"] / 100 * r["delivery_s"] * 1e6 / events,
        "us/conn": r["connect_cpu_server_pct"]
        / 100
        * r["connect_s"]
        * 1e6
        / max(1, r["subs_connected"]),
        "lost": r["lost"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revisions", required=True, help="comma list of git revisions")
    parser.add_argument("--scenarios", default="topics", help=f"comma list of {list(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    binary = build_ssebench()
    revisions = args.revisions.split(",")
    sources = {revision: source_at(revision) for revision in revisions}
    for scenario in args.scenarios.split(","):
        if SCENARIOS[scenario].driver != "ssebench":
            raise SystemExit(f"{scenario}: not an ssebench scenario")
        runs: dict[str, list[dict[str, float]]] = {revision: [] for revision in revisions}
        for _ in range(args.repeat):
            for revision in revisions:
                result = run(binary, sources[revision], scenario)
                runs[revision].append(result)
                print(scenario, revision, json.dumps(result), file=sys.stderr)
        for revision in revisions:
            medians = {
                key: statistics.median(r[key] for r in runs[revision]) for key in runs[revision][0]
            }
            cells = ", ".join(f"{key} {value:,.1f}" for key, value in medians.items())
            print(f"{scenario} {revision} (median of {args.repeat}): {cells}")


if __name__ == "__main__":
    main()
