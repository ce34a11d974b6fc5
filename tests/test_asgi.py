"""The broker as an ASGI application under the stock ``hypercorn`` command,
and mounted in a user's own Quart-Trio application (examples/mounted.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import trio

from .children import alive_in_group
from .conftest import STEP_SECONDS, broker_process, make_token, open_sse

ROOT = Path(__file__).resolve().parent.parent
HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))
SECRET = "publisher-secret-for-the-asgi-tests"


def hypercorn(app: str, *options: str) -> list[str]:
    return [HYPERCORN, "-k", "trio", "-b", "127.0.0.1:0", *options, app]


def environment(**variables: str) -> dict[str, str]:
    return {**os.environ, **variables}


async def stop_gracefully(process: trio.Process) -> None:
    """SIGTERM, as a supervisor stops hypercorn: it exits 0, and its process group
    (``broker_process`` makes one) ends with it: the worker it spawned and
    multiprocessing's resource tracker are gone too, none left orphaned."""
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(STEP_SECONDS):
        assert await process.wait() == 0
        while alive_in_group(process.pid):
            await trio.sleep(0.02)


async def test_stock_hypercorn_serves_the_broker_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    env = environment(ESPER_HISTORY=f"sqlite:{path}", ESPER_PUBLISHER_SECRET=SECRET)
    async with (
        broker_process(argv=hypercorn("trio_esper.asgi:app"), env=env) as running,
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
    ):
        stream, ctx = await open_sse(client, f"{running.url}/subscribe/asgitopic1")
        assert stream.response.status_code == 200
        assert await stream.next_frame() == b": subscribed\n\n"
        url = f"{running.url}/publish/asgitopic1"
        assert (await client.post(url, content=b"data: open?\n")).status_code == 401
        token = make_token(SECRET, "asgitopic1")
        reply = await client.post(
            url, content=b"id: a1\ndata: hello\n", headers={"Authorization": f"Bearer {token}"}
        )
        assert reply.json() == {"id": "a1", "events": 1, "subscribers": 1}
        assert await stream.next_event() == b"id: a1\ndata: hello\n\n"
        assert (await client.get(f"{running.url}/ready")).json() == {"status": "ready"}
        api = await client.get(f"{running.url}/api/v1/pubsubs/asgitopic1")
        assert api.status_code == 401  # the API takes a credential too
        # SIGTERM: the lifespan closes the hub and the store; hypercorn exits 0.
        await stop_gracefully(running.process)
        await stream.aclose()
        await ctx.__aexit__(None, None, None)
    assert not running.log_lines(r"Traceback|Error")
    # closing(): a connection's own `with` ends a transaction but leaves it open, and
    # Python 3.13 warns (ResourceWarning, an error here) when an open one is collected.
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT id, data FROM events").fetchall() == [("a1", "hello")]


async def test_a_bad_setting_or_worker_fails_the_lifespan_with_its_reason() -> None:
    for argv, env, reason in [
        (
            hypercorn("trio_esper.asgi:app"),
            environment(ESPER_HISTORY_EVENTS="many"),
            "ESPER_HISTORY_EVENTS='many' is not a number",
        ),
        (
            [HYPERCORN, "-k", "asyncio", "-b", "127.0.0.1:0", "trio_esper.asgi:app"],
            environment(),
            "start the server with its Trio worker (hypercorn -k trio)",
        ),
    ]:
        with trio.fail_after(STEP_SECONDS * 2):
            result = await trio.run_process(argv, env=env, capture_stderr=True, check=False)
        assert reason in result.stderr.decode()


async def test_mounted_in_a_quart_trio_app_with_in_process_publishing() -> None:
    argv = hypercorn("examples/mounted:app")
    async with (
        broker_process(argv=argv, env=environment(PYTHONPATH=str(ROOT))) as running,
        httpx.AsyncClient(timeout=STEP_SECONDS) as client,
    ):
        stream, ctx = await open_sse(client, f"{running.url}/events/subscribe/orders0001")
        assert await stream.next_frame() == b": subscribed\n\n"
        order: dict[str, Any] = {"item": "tea", "qty": 2}
        reply = await client.post(f"{running.url}/orders", json=order)
        assert reply.status_code == 200
        event_id = reply.json()["event_id"]
        frame = await stream.next_event()
        assert frame == f"id: {event_id}\nevent: order\ndata: {json.dumps(order)}\n\n".encode()
        # The broker's other routes live under the mount too.
        assert (await client.get(f"{running.url}/events/health")).status_code == 200
        history = await client.get(f"{running.url}/events/history/orders0001")
        assert json.loads(history.text)["id"] == event_id
        await stream.aclose()
        await ctx.__aexit__(None, None, None)
        await stop_gracefully(running.process)
    assert not running.log_lines(r"Traceback|Error")
