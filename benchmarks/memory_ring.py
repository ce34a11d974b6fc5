"""Memory history under many topics and full rings: is memory bounded, and is
the accounting honest?

Fills a MemoryHistory with TOPICS x EVENTS events of SIZE bytes (published
round-robin over the topics), then reports the process RSS growth, what the
history accounts for, and the budget:

    python benchmarks/memory_ring.py --fill 10000x1000x100 --max-bytes 67108864

``--fill`` may be repeated: the fills run one after the other on the same
history (say many small topics, then a few with large events). ``--table``
runs a fixed mix of cases, each in a fresh subprocess so that one case's heap
does not inflate the next one's RSS, and prints RSS growth over the budget:

    python benchmarks/memory_ring.py --table
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence

import trio

from trio_esper.config import DEFAULT_HISTORY_MAX_BYTES
from trio_esper.history import Record
from trio_esper.history.memory import MemoryHistory
from trio_esper.sse import Event

#: The --table budget: small enough for a short run, big enough that a 1 MiB
#: pymalloc arena or malloc's trim slack is noise.
TABLE_BUDGET_BYTES = 64 << 20
#: (name, fills): each fill is "TOPICSxEVENTSxSIZE". Each case publishes
#: 1.5 to 6 times what the budget holds, so eviction runs in steady state.
TABLE_CASES: list[tuple[str, list[str]]] = [
    ("400k one-event topics, 20 B", ["400000x1x20"]),
    ("10k topics x 30 events, 100 B", ["10000x30x100"]),
    ("1k topics x 300 events, 100 B", ["1000x300x100"]),
    ("100 topics x 100 events, 10 KB", ["100x100x10000"]),
    ("10 topics x 100 events, 200 KB", ["10x100x200000"]),
    ("400k x 20 B, then 100 x 100 x 10 KB", ["400000x1x20", "100x100x10000"]),
    ("100 x 100 x 10 KB, then 400k x 20 B", ["100x100x10000", "400000x1x20"]),
]


def status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def rss_bytes() -> int:
    return status_bytes("VmRSS")


async def nowhere(topic: str, records: Sequence[Record]) -> None:
    pass


def parse_fill(fill: str) -> tuple[int, int, int]:
    topics, events, size = (int(part) for part in fill.split("x"))
    return topics, events, size


async def fill(fills: list[str], max_bytes: int, max_events: int) -> dict[str, float]:
    history = MemoryHistory(max_events_per_topic=max_events, max_bytes=max_bytes)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    appends = 0
    for number, spec in enumerate(fills):
        topics, events, size = parse_fill(spec)
        pad = "x" * max(0, size - 11)
        for n in range(events):
            for t in range(topics):
                topic = f"fill{number}t{t:07d}"
                await history.append(topic, [Event(f"{n:10d} {pad}")], nowhere)
        appends += topics * events
    elapsed = time.perf_counter() - start
    gc.collect()
    stats = history.statistics()
    grown = rss_bytes() - before
    return {
        "budget_bytes": max_bytes,
        "retained_events": stats.events,
        "retained_topics": stats.topics,
        "accounted_bytes": stats.bytes,
        "rss_growth_bytes": grown,
        "peak_rss_growth_bytes": status_bytes("VmHWM") - before,
        "rss_over_budget": grown / max_bytes,
        "rss_over_accounted": grown / max(stats.bytes, 1),
        "accounted_per_retained_event": stats.bytes / max(stats.events, 1),
        "appends_per_s": appends / elapsed,
    }


def run_case(fills: list[str], max_bytes: int, max_events: int) -> dict[str, float]:
    """One case in a fresh interpreter, so its RSS starts clean."""
    argv = [sys.executable, __file__, "--max-bytes", str(max_bytes), "--events", str(max_events)]
    for spec in fills:
        argv += ["--fill", spec]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def table(max_bytes: int, max_events: int) -> None:
    mib = 1 << 20
    python = sys.version.split()[0]
    print(f"budget {max_bytes / mib:g} MiB, --history-events {max_events}, Python {python}")
    print()
    print(
        "| case | topics kept | events kept | accounted MiB | RSS growth MiB | peak growth MiB "
        "| growth / budget | appends/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, fills in TABLE_CASES:
        r = run_case(fills, max_bytes, max_events)
        print(
            f"| {name} | {r['retained_topics']:,} | {r['retained_events']:,} "
            f"| {r['accounted_bytes'] / mib:.1f} | {r['rss_growth_bytes'] / mib:.1f} "
            f"| {r['peak_rss_growth_bytes'] / mib:.1f} | {r['rss_over_budget']:.2f} "
            f"| {r['appends_per_s']:,.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fill",
        action="append",
        metavar="TOPICSxEVENTSxSIZE",
        help="publish EVENTS events of SIZE bytes to each of TOPICS topics (repeatable)",
    )
    parser.add_argument("--events", type=int, default=1000, help="--history-events")
    parser.add_argument("--max-bytes", type=int, default=None, help="--history-max-bytes")
    parser.add_argument("--table", action="store_true", help="run the case table")
    args = parser.parse_args()
    if args.table:
        table(TABLE_BUDGET_BYTES if args.max_bytes is None else args.max_bytes, args.events)
        return
    max_bytes = DEFAULT_HISTORY_MAX_BYTES if args.max_bytes is None else args.max_bytes
    result = trio.run(fill, args.fill or ["10000x1000x100"], max_bytes, args.events)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
