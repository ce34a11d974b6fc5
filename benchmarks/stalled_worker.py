"""``--threads`` with a worker stopped (issue 22, point 10): how many
connections the broker answers in a fixed time with every worker running,
and with one stopped (SIGSTOP) partway.

A private redis-server (the backplane ``--threads`` needs) and a broker
(``python -m trio_esper --threads N``, this checkout) on loopback; for
``--seconds`` per phase, ``--concurrency`` clients each open a connection,
ask ``GET /health``, and close it, again and again. Phase one runs with every
worker; before phase two one worker is stopped. The report gives the answers
per phase, those that failed or were still waiting at the end, and how long
the slowest answer took.

    python benchmarks/stalled_worker.py                  # 2 workers, 10 s per phase
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from compare import free_port

LISTENING = re.compile(rb"listening on (http://[\d.]+:\d+) with")


def children(pid: int) -> list[int]:
    return sorted(
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    )


async def phase(url: str, seconds: float, concurrency: int) -> tuple[int, int, float]:
    """Answers, failures (or unanswered at the end) and the slowest answer's seconds."""
    answered = failed = 0
    slowest = 0.0

    async def client() -> None:
        nonlocal answered, failed, slowest
        # No keep-alive: each request a connection of its own, handed to a worker.
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=seconds, limits=fresh) as http:
            while True:
                await one(http)

    async def one(http: httpx.AsyncClient) -> None:
        nonlocal answered, failed, slowest
        started = time.monotonic()
        try:
            reply = await http.get(f"{url}/health")
            ok = reply.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            answered += 1
            slowest = max(slowest, time.monotonic() - started)
        else:
            failed += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client)
    return answered, failed + concurrency, slowest  # those cut off count as unanswered


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            cwd=directory,
            stdout=subprocess.DEVNULL,
        )
        broker = await trio.lowlevel.open_process(
            [
                sys.executable,
                *("-m", "trio_esper", "--port", "0", "--no-auth"),
                *("--threads", str(args.threads)),
                *("--backplane", f"redis://127.0.0.1:{redis_port}/0"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its workers are killed with it
        )
        assert broker.stderr is not None
        stopped = 0
        try:
            seen = b""
            with trio.fail_after(60):
                while (match := LISTENING.search(seen)) is None:
                    seen += await broker.stderr.receive_some()
            url = match.group(1).decode()
            async with trio.open_nursery() as nursery:

                async def drain() -> None:
                    assert broker.stderr is not None
                    while await broker.stderr.receive_some():
                        pass

                nursery.start_soon(drain)
                for name in ("every worker running", "one worker stopped"):
                    if name == "one worker stopped":
                        stopped = children(broker.pid)[0]
                        os.kill(stopped, signal.SIGSTOP)
                    answered, unanswered, slowest = await phase(
                        url, args.seconds, args.concurrency
                    )
                    print(
                        f"{args.threads} workers, {name}: {answered} connections answered in "
                        f"{args.seconds:g} s, {unanswered} failed or unanswered at the end, "
                        f"slowest answer {slowest:.2f} s",
                        flush=True,
                    )
                nursery.cancel_scope.cancel()
        finally:
            if stopped:
                with contextlib.suppress(ProcessLookupError):  # replaced already
                    os.kill(stopped, signal.SIGCONT)
            broker.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await broker.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(broker.pid, signal.SIGKILL)
            await broker.wait()
            redis.terminate()
            redis.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=20)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
