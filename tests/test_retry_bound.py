"""A publisher's ``retry`` is a reconnection time in milliseconds: the broker
takes it up to what a signed 64-bit integer holds (SQLite's INTEGER), and
refuses a larger one with 400 and the reason, on ``/publish`` and on the
Mercure hub alike. A larger one ended the process with SQLite history (its
writer could not store it). Through real broker processes, one per history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from trio_esper.sse import MAX_RETRY

from .conftest import broker_process

pytestmark = pytest.mark.slow

TOPIC = "retrytopic1"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("history", ["memory", "sqlite"])
async def test_a_retry_past_64_bits_is_refused_and_the_largest_is_kept(
    history: str, tmp_path: Path, client: httpx.AsyncClient, subscribe: Any
) -> None:
    spec = "memory" if history == "memory" else f"sqlite:{tmp_path / 'history.db'}"
    async with broker_process("--history", spec) as broker:
        for retry in (MAX_RETRY + 1, 2**64 - 1, 10**30):
            refused = await client.post(
                f"{broker.url}/publish/{TOPIC}", content=f"retry: {retry}\ndata: x\n"
            )
            assert refused.status_code == 400, refused.text
            assert str(MAX_RETRY) in refused.text, refused.text
            mercure = await client.post(
                f"{broker.url}/.well-known/mercure",
                content=f"topic=urn:{TOPIC}&data=x&retry={retry}",
                headers=FORM,
            )
            assert mercure.status_code == 400, mercure.text
            assert mercure.text.strip() == 'Invalid "retry" parameter'
        kept = await client.post(
            f"{broker.url}/publish/{TOPIC}", content=f"retry: {MAX_RETRY}\ndata: kept\n"
        )
        assert kept.status_code == 200, kept.text
        routed = await client.post(
            f"{broker.url}/.well-known/mercure",
            content=f"topic=urn:{TOPIC}&data=routed&retry={MAX_RETRY}",
            headers=FORM,
        )
        assert routed.status_code == 200, routed.text
        # Stored and read back: a resume from an id not retained replays both.
        resumed = await subscribe(
            f"{broker.url}/subscribe/{TOPIC}", headers={"Last-Event-ID": "unknown"}
        )
        assert b"event: reset\n" in await resumed.next_event()
        replayed = await resumed.next_event()
        assert f"retry: {MAX_RETRY}\ndata: kept\n".encode() in replayed, replayed
        assert broker.process.returncode is None
        assert not broker.log_lines("Traceback|Error"), broker.stderr.decode(errors="replace")
