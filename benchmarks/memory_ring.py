"""Memory history under 10k topics x full rings: is memory bounded, and is
the accounting honest?

Fills a MemoryHistory with TOPICS x EVENTS events of SIZE bytes, then reports
the process RSS growth, what the history accounts for, and the budget.

    python benchmarks/memory_ring.py --topics 10000 --events 1000 --size 100
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Sequence

import trio

from trio_esper.config import DEFAULT_HISTORY_MAX_BYTES
from trio_esper.history import Record
from trio_esper.history.memory import MemoryHistory
from trio_esper.sse import Event


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def nowhere(topic: str, records: Sequence[Record]) -> None:
    pass


async def fill(topics: int, events: int, size: int, max_bytes: int) -> dict[str, float]:
    history = MemoryHistory(max_events_per_topic=events, max_bytes=max_bytes)
    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    pad = "x" * max(0, size - 12)
    for n in range(events):
        for t in range(topics):
            await history.append(f"topic{t:07d}", [Event(f"{n:10d} {pad}")], nowhere)
    elapsed = time.perf_counter() - start
    gc.collect()
    stats = history.statistics()
    grown = rss_bytes() - before
    return {
        "topics": topics,
        "events_per_topic": events,
        "size": size,
        "budget_bytes": max_bytes,
        "retained_events": stats.events,
        "retained_topics": stats.topics,
        "accounted_bytes": stats.bytes,
        "rss_growth_bytes": grown,
        "rss_per_retained_event": grown / max(stats.events, 1),
        "rss_over_accounted": grown / max(stats.bytes, 1),
        "appends_per_s": topics * events / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_HISTORY_MAX_BYTES)
    args = parser.parse_args()
    result = trio.run(fill, args.topics, args.events, args.size, args.max_bytes)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
