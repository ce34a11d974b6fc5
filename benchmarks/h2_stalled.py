"""A soak of HTTP/2 clients that never read (issue 22, point 1): how much memory
a broker holds for them, and whether it lets them go.

A fresh broker (``python -m trio_esper``, this checkout, h2c on loopback);
``--connections`` clients each open ``--streams`` subscriber streams to one
topic with their flow-control windows shut (SETTINGS_INITIAL_WINDOW_SIZE 0,
never a WINDOW_UPDATE); ``--events`` events of ``--size`` bytes are published
to that topic one after the other. The broker's resident memory (VmRSS) is
sampled throughout; the report gives it at the start, its peak and at the
end, and how many streams the broker reset. Before the bound, the peak grew
with events x size x streams; with it, a stalled stream is reset at the
subscriber's queue bound.

    python benchmarks/h2_stalled.py                        # 10 streams, 1,500 events of 16 KiB
    python benchmarks/h2_stalled.py --streams 100 --events 1500 --size 65000

Loopback only; bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import trio

LISTENING = re.compile(rb"listening on http://([\d.]+):(\d+)")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class StalledClient:
    """An h2c connection whose streams never open their window."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        )
        self.reset = 0
        self.ready = 0

    async def run(self, topic: str, streams: int, host: str) -> None:
        self.conn.initiate_connection()
        for _ in range(streams):
            stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(
                stream_id,
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", host),
                    (":path", f"/subscribe/{topic}"),
                ],
                end_stream=True,
            )
        await self.stream.send_all(self.conn.data_to_send())
        while data := await self.stream.receive_some(65536):
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.ready += 1
                elif isinstance(event, h2.events.StreamReset):
                    self.reset += 1
            if pending := self.conn.data_to_send():
                await self.stream.send_all(pending)


async def soak(args: argparse.Namespace) -> None:
    broker = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_esper", "--port", "0", "--no-auth", *args.broker_args],
        stderr=subprocess.PIPE,
    )
    assert broker.stderr is not None
    try:
        seen = b""
        with trio.fail_after(30):
            while (match := LISTENING.search(seen)) is None:
                seen += await broker.stderr.receive_some()
        host, port = match.group(1).decode(), int(match.group(2))
        drain = trio.CancelScope()

        async def drain_stderr() -> None:  # its log must never block the broker
            assert broker.stderr is not None
            with drain:
                while await broker.stderr.receive_some():
                    pass

        url = f"http://{host}:{port}"
        topic = "stalledsoak1"
        clients: list[StalledClient] = []
        samples: list[int] = []
        with trio.fail_after(args.seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_stderr)
                for _ in range(args.connections):
                    client = StalledClient(await trio.open_tcp_stream(host, port))
                    clients.append(client)
                    nursery.start_soon(client.run, topic, args.streams, host)
                total = args.connections * args.streams
                while sum(c.ready for c in clients) < total:
                    await trio.sleep(0.05)
                start_rss = rss_bytes(broker.pid)
                started = time.monotonic()
                data = "x" * args.size
                async with httpx.AsyncClient(timeout=30) as http:
                    for n in range(args.events):
                        answer = await http.post(
                            f"{url}/publish/{topic}", content=f"data: {n} {data}\n"
                        )
                        answer.raise_for_status()
                        if n % 10 == 0:
                            samples.append(rss_bytes(broker.pid))
                await trio.sleep(1)
                end_rss = rss_bytes(broker.pid)
                nursery.cancel_scope.cancel()
        mib = 1024 * 1024
        print(
            f"{args.connections} connection(s) x {args.streams} stalled streams, "
            f"{args.events} events of {args.size} bytes in {time.monotonic() - started:.1f} s: "
            f"broker RSS {start_rss / mib:.0f} MiB at the start, peak "
            f"{max([*samples, end_rss]) / mib:.0f} MiB, {end_rss / mib:.0f} MiB at the end; "
            f"{sum(c.reset for c in clients)} of {total} streams reset by the broker"
        )
    finally:
        broker.kill()
        await broker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--streams", type=int, default=10, help="per connection")
    parser.add_argument("--events", type=int, default=1500)
    parser.add_argument("--size", type=int, default=16 * 1024, help="bytes of data per event")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("broker_args", nargs="*", help="more broker flags, after --")
    trio.run(soak, parser.parse_args())


if __name__ == "__main__":
    main()
