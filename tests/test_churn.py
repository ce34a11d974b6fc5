"""Subscribe/disconnect churn leaves nothing behind: no reference cycles that
only the cyclic collector could free (the broker raises its thresholds, so
those would pile up), no subscription, no task.

The long soak (100,000 cycles, RSS) is ``nox -s soak`` (benchmarks/soak.py).
"""

from __future__ import annotations

import gc
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from .conftest import Broker, start_broker
from .rawhttp import Raw, request, wait_for_clients

CYCLES = 200
#: Objects in cycles per subscribe/disconnect, at most. The edge's own forms
#: leave none; through Quart, werkzeug's router leaves one small cycle per
#: request (a recursive closure in its matcher, 3 objects and what hangs off
#: it: about 650 bytes), freed by the youngest generation's next collection.
CYCLIC_PER_CYCLE = {True: 0.05, False: 10}


@contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _cycle(broker: Broker, topic: str, *, reset: bool) -> None:
    raw = await Raw.connect(broker)
    try:
        await raw.send(request("GET", f"/subscribe/{topic}"))
        await raw.read_until(b": subscribed\n\n")
    finally:
        if reset:  # SO_LINGER 0: close with a TCP reset
            raw.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        await raw.aclose()


@pytest.mark.parametrize("fast_lane", [True, False], ids=["edge", "quart"])
async def test_churn_leaves_no_cycles_subscriptions_or_tasks(
    nursery: trio.Nursery, fast_lane: bool
) -> None:
    broker = await start_broker(nursery, fast_lane=fast_lane)
    topic = "churntopic01"
    for n in range(20):  # warm up: caches, the first topic task
        await _cycle(broker, topic, reset=n % 2 == 0)
    await wait_for_clients(broker, 0)
    tasks = len(_tasks())
    with _collector_off():
        for n in range(CYCLES):
            await _cycle(broker, topic, reset=n % 2 == 0)
        await wait_for_clients(broker, 0)
        with trio.fail_after(5):
            while len(_tasks()) > tasks:  # connection tasks end once their peer is gone
                await trio.sleep(0.01)
        cyclic = gc.collect()
    assert cyclic <= CYCLES * CYCLIC_PER_CYCLE[fast_lane], cyclic
    await broker.stop()


def _tasks() -> list[trio.lowlevel.Task]:
    """Every task of this run."""
    found: list[trio.lowlevel.Task] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        found.append(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found
