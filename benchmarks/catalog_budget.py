"""The memory budget with many topics: does the process stay within
``--history-max-bytes`` once the topic catalog is counted in it (issue 22,
point 3)?

Each case runs in a fresh interpreter: a hub wired as the broker wires it
(a MemoryHistory with the budget, a Catalog of up to 100,000 topics holding
at most a quarter of it and charged to the history), then TOPICS topics get
one 20-byte event each, published through the hub; it reports the process's
RSS growth over the budget and what the history and the catalog count.
``--catalog-outside`` wires the catalog as before (bounded by entries only,
not counted), for comparison:

    python benchmarks/catalog_budget.py --table
    python benchmarks/catalog_budget.py --case 400000:268435456 [--catalog-outside]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import trio

from trio_esper.catalog import BUDGET_SHARE, Catalog
from trio_esper.config import DEFAULT_HISTORY_EVENTS, DEFAULT_MAX_TOPICS
from trio_esper.history.memory import MemoryHistory
from trio_esper.hub import open_hub
from trio_esper.sse import Event

MIB = 1 << 20
#: (topics, budget): the issue's two cases, and smaller budgets still.
TABLE_CASES = [
    (400_000, 256 * MIB),
    (150_000, 32 * MIB),
    (400_000, 32 * MIB),
    (200_000, 8 * MIB),
]


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def run_case(topics: int, budget: int, *, outside: bool) -> dict[str, float]:
    history = MemoryHistory(max_events_per_topic=DEFAULT_HISTORY_EVENTS, max_bytes=budget)
    if outside:
        catalog = Catalog(DEFAULT_MAX_TOPICS, durable=False)
    else:
        catalog = Catalog(DEFAULT_MAX_TOPICS, durable=False, max_bytes=budget // BUDGET_SHARE)
        catalog.count_in(history.charge)
    async with open_hub(history, catalog=catalog) as hub:
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        for n in range(topics):
            await hub.publish(f"topic{n:07d}", [Event("x" * 20)])
        seconds = time.perf_counter() - started
        gc.collect()
        growth = rss_bytes() - before
        stats = history.statistics()
        return {
            "topics": topics,
            "budget_mib": budget / MIB,
            "rss_growth_mib": growth / MIB,
            "growth_over_budget": growth / budget,
            "history_mib": stats.bytes / MIB,
            "history_topics": stats.topics,
            "catalog_mib": catalog.bytes / MIB,
            "catalog_topics": len(catalog),
            "seconds": seconds,
        }


def table(outside: bool) -> None:
    print(
        "| topics | budget | catalog | RSS growth | growth / budget | history (topics) "
        "| catalog (topics) |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|")
    for topics, budget in TABLE_CASES:
        argv = [sys.executable, __file__, "--case", f"{topics}:{budget}"]
        if outside:
            argv.append("--catalog-outside")
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout)
        print(
            f"| {topics:,} | {r['budget_mib']:.0f} MiB | {'outside' if outside else 'counted'} "
            f"| {r['rss_growth_mib']:.1f} MiB | {r['growth_over_budget']:.2f}x "
            f"| {r['history_mib']:.1f} MiB ({r['history_topics']:,}) "
            f"| {r['catalog_mib']:.1f} MiB ({r['catalog_topics']:,}) |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", metavar="TOPICS:BUDGET_BYTES")
    parser.add_argument("--table", action="store_true", help="every case, one process each")
    parser.add_argument(
        "--catalog-outside", action="store_true", help="the catalog as before: not counted"
    )
    args = parser.parse_args()
    if args.table:
        table(args.catalog_outside)
    elif args.case:
        topics, budget = (int(part) for part in args.case.split(":"))
        result = trio.run(lambda: run_case(topics, budget, outside=args.catalog_outside))
        print(json.dumps(result))
    else:
        parser.error("give --table or --case")


if __name__ == "__main__":
    main()
