"""examples/publish.py and examples/subscribe.py, run as a user runs them:
separate processes talking to a real broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from .conftest import STEP_SECONDS, TOPIC, Broker, make_token, start_broker, wait_for_stats

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PUBLISH = EXAMPLES / "publish.py"
SUBSCRIBE = EXAMPLES / "subscribe.py"
#: Each example is a fresh interpreter importing httpx: allow for a slow CI machine.
PROCESS_SECONDS = 30.0
#: HS256 wants a 32-byte key at least (PyJWT warns, and warnings are errors here).
SUBSCRIBER_SECRET = "subscriber-secret-for-the-examples"
PUBLISHER_SECRET = "publisher-secret-for-the-examples!"
#: An id the broker assigns to an event published without one.
ASSIGNED_ID = re.compile(r"[0-9]{16}")


def assigned_id(reply: dict[str, object]) -> str:
    """The id in a publish reply, which must be one the broker assigned."""
    event_id = reply["id"]
    assert isinstance(event_id, str), reply
    assert ASSIGNED_ID.fullmatch(event_id), reply
    return event_id


async def run_example(script: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(PROCESS_SECONDS):
        return await trio.run_process(
            [sys.executable, str(script), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


@dataclass
class Subscriber:
    """examples/subscribe.py running as a child process, its output collected."""

    process: trio.Process
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)

    async def wait(self) -> int:
        with trio.fail_after(PROCESS_SECONDS):
            return await self.process.wait()


async def _drain(stream: trio.abc.ReceiveStream | None, into: bytearray) -> None:
    assert stream is not None
    async with stream:
        while chunk := await stream.receive_some():
            into += chunk


@asynccontextmanager
async def running_subscriber(*args: str) -> AsyncIterator[Subscriber]:
    """Run examples/subscribe.py; on exit its output is complete and it is reaped
    (killed first if the body failed before it ended)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(SUBSCRIBE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    subscriber = Subscriber(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stdout, subscriber.stdout)
            nursery.start_soon(_drain, process.stderr, subscriber.stderr)
            try:
                yield subscriber
            finally:
                if process.returncode is None:
                    process.kill()  # the pipes then reach EOF, so the nursery can end
    finally:
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_publish_and_subscribe_examples(broker: Broker, client: httpx.AsyncClient) -> None:
    with trio.fail_after(4 * PROCESS_SECONDS):
        async with running_subscriber("--url", broker.url, TOPIC, "--count", "2") as subscriber:
            await wait_for_stats(client, broker, timeout=PROCESS_SECONDS, clients=1)

            first = await run_example(PUBLISH, "--url", broker.url, TOPIC, "hello")
            assert first.returncode == 0, first.stderr
            first_reply = json.loads(first.stdout)
            first_id = assigned_id(first_reply)
            assert first_reply == {"id": first_id, "events": 1, "subscribers": 1}

            second = await run_example(
                PUBLISH, "--url", broker.url, TOPIC, "line one\nline two",
                "--event", "greeting", "--id", "7",
            )  # fmt: skip
            assert second.returncode == 0, second.stderr
            assert json.loads(second.stdout) == {"id": "7", "events": 1, "subscribers": 1}

            assert await subscriber.wait() == 0, subscriber.stderr
    assert [json.loads(line) for line in subscriber.stdout.splitlines()] == [
        {"event": "message", "id": first_id, "data": "hello"},
        {"event": "greeting", "id": "7", "data": "line one\nline two"},
    ]
    # The subscriber left after its second event, and the broker noticed.
    await wait_for_stats(client, broker, clients=0)


async def test_publish_example_reports_the_broker_reason(broker: Broker) -> None:
    result = await run_example(PUBLISH, "--url", broker.url, "short", "hello")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == "publish.py: 400 topic must be 8 to 64 characters, got 5\n"


async def test_publish_example_unreachable_broker() -> None:
    sock = trio.socket.socket()
    with sock:  # a port that was free a moment ago: nothing listens there
        await sock.bind(("127.0.0.1", 0))
        _, port = sock.getsockname()
    result = await run_example(PUBLISH, "--url", f"http://127.0.0.1:{port}", TOPIC, "x")
    assert result.returncode == 2
    assert b"cannot reach" in result.stderr


async def test_examples_send_tokens(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    broker = await start_broker(
        nursery, subscriber_secret=SUBSCRIBER_SECRET, publisher_secret=PUBLISHER_SECRET
    )
    refused = await run_example(SUBSCRIBE, "--url", broker.url, TOPIC, "--count", "1")
    assert refused.returncode == 1
    assert refused.stderr.startswith(b"subscribe.py: 401 ")

    sub_token, pub_token = make_token(SUBSCRIBER_SECRET), make_token(PUBLISHER_SECRET)
    with trio.fail_after(4 * PROCESS_SECONDS):
        async with running_subscriber(
            "--url", broker.url, TOPIC, "--count", "1", "--token", sub_token
        ) as subscriber:
            stats_headers = {"Authorization": f"Bearer {pub_token}"}
            while (await client.get(f"{broker.url}/stats", headers=stats_headers)).json()[
                "clients"
            ] != 1:
                await trio.sleep(0.02)

            unauthorised = await run_example(PUBLISH, "--url", broker.url, TOPIC, "x")
            assert unauthorised.returncode == 1
            assert unauthorised.stderr.startswith(b"publish.py: 401 ")

            published = await run_example(
                PUBLISH, "--url", broker.url, TOPIC, "secret", "--token", pub_token
            )
            assert published.returncode == 0, published.stderr
            published_reply = json.loads(published.stdout)
            assert published_reply["subscribers"] == 1
            secret_id = assigned_id(published_reply)
            assert await subscriber.wait() == 0, subscriber.stderr
    assert json.loads(subscriber.stdout) == {"event": "message", "id": secret_id, "data": "secret"}
    with trio.fail_after(STEP_SECONDS):
        await broker.stop()
