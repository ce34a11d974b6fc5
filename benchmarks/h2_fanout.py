"""Fan-out over HTTP/2 against HTTP/1.1, plaintext and TLS, in one run.

For each mode, a fresh broker (``python -m trio_esper``, this checkout) and
a fresh load client (this file, ``--client``, in its own process), then:

1. **publish**: ``--publishes`` publishes, one after the other on one
   keep-alive connection (or HTTP/2 stream after stream), to a topic with no
   subscriber: publishes/s and the broker's CPU per publish;
2. **admit**: ``--subscribers`` subscribers to one topic, opened at once,
   until each has its ``: subscribed``: subscribes/s, broker CPU per subscribe
   (a TLS handshake per connection included);
3. **fan-out**: ``--events`` events of ``--size`` bytes published one after
   the other to that topic; until every subscriber has every event:
   deliveries/s (subscribers x events / time) and broker CPU per delivery
   (the publishes' own CPU, as phase 1 measured it, taken out).

Modes: ``h1`` (plaintext HTTP/1.1: the edge's fast lane), ``h1-quart``
(the same with ``--no-fast-lane``: Hypercorn and Quart-Trio), ``h2c``
(HTTP/2 with prior knowledge), ``h1-tls`` and ``h2-tls`` (ALPN), against a
self-signed certificate made for the run. Over HTTP/2 the subscribers share
connections of ``--streams`` streams each (Hypercorn allows 100), as a
browser's ``EventSource``s share one. Every client speaks through the same
code (trio, the ``h2`` state machine for HTTP/2), so what differs between
rows is the broker's work; the broker's CPU per unit is the fairer figure
when the client, one Python process, is the slower side.

    python benchmarks/h2_fanout.py                     # 400 subscribers, 250 events
    python benchmarks/h2_fanout.py --subscribers 200 --repeat 3 --modes h1-tls,h2-tls

Loopback only; every phase is bounded by ``--phase-seconds``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MODES = ("h1", "h1-quart", "h2c", "h1-tls", "h2-tls")
#: What each mode's row is compared with in the ratio lines.
RATIOS = (("h2-tls", "h1-tls"), ("h2c", "h1-quart"), ("h2c", "h1"))
HOST = "127.0.0.1"
PUBLISH_TOPIC = "benchquiet01"
FANOUT_TOPIC = "benchfanout1"
#: Every event a subscriber receives has exactly one data line.
MARK = b"\ndata: "
SUBSCRIBED = b": subscribed"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- The load client (``--client``): one process, trio ---------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Counter:
    """Counts events in a subscriber's byte stream (a mark split across two
    reads is counted once)."""

    def __init__(self) -> None:
        self.events = 0
        self.live = False
        self._tail = b""

    def feed(self, data: bytes | bytearray) -> None:
        chunk = self._tail + data
        self.events += chunk.count(MARK)
        if not self.live and SUBSCRIBED in chunk:
            self.live = True
        self._tail = chunk[-len(MARK) + 1 :]


@dataclass
class Load:
    mode: str
    port: int
    broker_pid: int
    subscribers: int
    streams: int
    events: int
    size: int
    publishes: int
    phase_seconds: float
    cafile: str | None
    counters: list[Counter] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def http2(self) -> bool:
        return self.mode.startswith("h2")

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, done: object) -> None:
        assert callable(done)
        with trio.fail_after(self.phase_seconds):
            while not done():
                await self.changed.wait()

    async def connect(self) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(HOST, self.port)
        if self.cafile is None:
            return stream
        context = ssl.create_default_context(cafile=self.cafile)
        context.set_alpn_protocols(["h2"] if self.http2 else ["http/1.1"])
        tls = trio.SSLStream(stream, context, server_hostname=HOST, https_compatible=True)
        await tls.do_handshake()
        assert tls.selected_alpn_protocol() == ("h2" if self.http2 else "http/1.1")
        return tls


class H2Connection:
    """One client HTTP/2 connection: the ``h2`` state machine, a reader task
    that feeds it and acknowledges DATA, and per-stream sinks."""

    def __init__(self, stream: trio.abc.Stream, load: Load) -> None:
        self.stream = stream
        self.load = load
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.sinks: dict[int, Counter] = {}
        self.ended: dict[int, trio.Event] = {}
        self.lock = trio.Lock()

    async def flush(self) -> None:
        async with self.lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def start(self, nursery: trio.Nursery) -> None:
        self.conn.initiate_connection()
        # A large connection window: the client is not what holds the broker back.
        self.conn.increment_flow_control_window(1 << 30)
        await self.flush()
        nursery.start_soon(self.run)

    async def run(self) -> None:
        while True:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise ConnectionError("the broker closed an HTTP/2 connection")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    sink = self.sinks.get(event.stream_id)
                    if sink is not None:
                        sink.feed(event.data)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = self.ended.get(event.stream_id)
                    if ended is not None:
                        ended.set()
            await self.flush()
            self.load.notify()

    def request(self, method: str, path: str, body: bytes = b"") -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        scheme = "https" if self.load.cafile else "http"
        headers = [(":method", method), (":scheme", scheme), (":authority", HOST)]
        headers.append((":path", path))
        if body:
            headers.append(("content-length", str(len(body))))
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        return stream_id


class H1Publisher:
    """Sequential publishes on one HTTP/1.1 keep-alive connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _receive(self) -> None:
        data = await self.stream.receive_some(1 << 16)
        if not data:
            raise ConnectionError("the broker closed the publisher's connection")
        self.buffer += data

    async def publish(self, topic: str, body: bytes) -> None:
        head = f"POST /publish/{topic} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}"
        await self.stream.send_all(head.encode() + b"\r\n\r\n" + body)
        while b"\r\n\r\n" not in self.buffer:
            await self._receive()
        head_bytes, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 200"), head_bytes
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head_bytes)
        assert match, head_bytes
        length = int(match.group(1))
        while len(self.buffer) < length:
            await self._receive()
        self.buffer = self.buffer[length:]


class H2Publisher:
    def __init__(self, connection: H2Connection) -> None:
        self.connection = connection

    async def publish(self, topic: str, body: bytes) -> None:
        stream_id = self.connection.request("POST", f"/publish/{topic}", body)
        ended = self.connection.ended[stream_id] = trio.Event()
        await self.connection.flush()
        await ended.wait()
        del self.connection.ended[stream_id]


async def h1_subscriber(load: Load, counter: Counter) -> None:
    stream = await load.connect()
    request = f"GET /subscribe/{FANOUT_TOPIC} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
    await stream.send_all(request.encode())
    while data := await stream.receive_some(1 << 16):
        counter.feed(data)
        load.notify()
    raise ConnectionError("the broker closed a subscriber's connection")


async def run_load(load: Load) -> dict[str, float]:
    result: dict[str, float] = {}
    body = b"data: " + b"x" * load.size + b"\n"
    async with trio.open_nursery() as nursery:
        publisher: H1Publisher | H2Publisher
        if load.http2:
            publishing = H2Connection(await load.connect(), load)
            await publishing.start(nursery)
            publisher = H2Publisher(publishing)
        else:
            publisher = H1Publisher(await load.connect())

        # 1. Publishes alone.
        cpu, start = cpu_seconds(load.broker_pid), time.perf_counter()
        with trio.fail_after(load.phase_seconds):
            for _ in range(load.publishes):
                await publisher.publish(PUBLISH_TOPIC, body)
        elapsed = time.perf_counter() - start
        result["publish_per_s"] = load.publishes / elapsed
        result["publish_cpu_us"] = (cpu_seconds(load.broker_pid) - cpu) / load.publishes * 1e6

        # 2. Subscribers, all at once.
        load.counters = [Counter() for _ in range(load.subscribers)]
        cpu, start = cpu_seconds(load.broker_pid), time.perf_counter()
        if load.http2:
            for first in range(0, load.subscribers, load.streams):
                connection = H2Connection(await load.connect(), load)
                await connection.start(nursery)
                for counter in load.counters[first : first + load.streams]:
                    stream_id = connection.request("GET", f"/subscribe/{FANOUT_TOPIC}")
                    connection.sinks[stream_id] = counter
                await connection.flush()
        else:
            for counter in load.counters:
                nursery.start_soon(h1_subscriber, load, counter)
        await load.wait_until(lambda: all(c.live for c in load.counters))
        elapsed = time.perf_counter() - start
        result["admit_per_s"] = load.subscribers / elapsed
        result["admit_cpu_us"] = (cpu_seconds(load.broker_pid) - cpu) / load.subscribers * 1e6

        # 3. Fan-out.
        cpu, start = cpu_seconds(load.broker_pid), time.perf_counter()
        with trio.fail_after(load.phase_seconds):
            for _ in range(load.events):
                await publisher.publish(FANOUT_TOPIC, body)
        await load.wait_until(lambda: all(c.events >= load.events for c in load.counters))
        elapsed = time.perf_counter() - start
        deliveries = load.subscribers * load.events
        result["fanout_s"] = elapsed
        result["broker_busy_pct"] = (cpu_seconds(load.broker_pid) - cpu) / elapsed * 100
        result["deliveries_per_s"] = deliveries / elapsed
        # Less the publishes' own cost, as measured in phase 1.
        publish_cpu = load.events * result["publish_cpu_us"] / 1e6
        result["delivery_cpu_us"] = (
            (cpu_seconds(load.broker_pid) - cpu - publish_cpu) / deliveries * 1e6
        )
        result["events_received"] = sum(c.events for c in load.counters)
        nursery.cancel_scope.cancel()
    return result


def client_main(args: argparse.Namespace) -> None:
    load = Load(
        mode=args.mode,
        port=args.port,
        broker_pid=args.broker_pid,
        subscribers=args.subscribers,
        streams=args.streams,
        events=args.events,
        size=args.size,
        publishes=args.publishes,
        phase_seconds=args.phase_seconds,
        cafile=args.cafile,
    )
    print(json.dumps(trio.run(run_load, load)))


# --- The driver ----------------------------------------------------------------------


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1: (certfile, keyfile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trio_esper bench")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


@contextmanager
def broker(mode: str, certfile: Path, keyfile: Path, log: Path) -> Iterator[tuple[int, int]]:
    """A fresh broker for ``mode``: (its pid, its port)."""
    args = [sys.executable, "-m", "trio_esper", "--port", "0", "--no-auth"]
    # No subscriber is dropped for lagging behind the client, and the
    # publisher's connection stays open while the subscribers connect.
    args += ["--log-level", "info", "--queue", "100000", "--keep-alive", "3600"]
    args += ["--queue-bytes", str(1 << 40), "--queue-total-bytes", str(1 << 40)]
    if mode.endswith("-tls"):
        args += ["--certfile", str(certfile), "--keyfile", str(keyfile)]
    if mode == "h1-quart":
        args.append("--no-fast-lane")
    with log.open("wb") as sink:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"listening on https?://[\d.]+:(\d+)", log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start: {log.read_text()}")
            time.sleep(0.05)
        yield process.pid, int(match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_mode(
    mode: str, args: argparse.Namespace, certfile: Path, keyfile: Path
) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        broker(mode, certfile, keyfile, Path(tmp) / "broker.log") as (pid, port),
    ):
        command = [
            sys.executable,
            __file__,
            "--client",
            *("--mode", mode, "--port", str(port), "--broker-pid", str(pid)),
            *("--subscribers", str(args.subscribers), "--streams", str(args.streams)),
            *("--events", str(args.events), "--size", str(args.size)),
            *("--publishes", str(args.publishes), "--phase-seconds", str(args.phase_seconds)),
        ]
        if mode.endswith("-tls"):
            command += ["--cafile", str(certfile)]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=4 * args.phase_seconds, check=False
        )
    if done.returncode != 0:
        # The exception's own line(s): a trio traceback ends in group frames.
        raised = [line.strip(" |+") for line in done.stderr.splitlines()]
        raised = [line for line in raised if re.match(r"\w+(\.\w+)*(Error|Exception)\b", line)]
        return {"mode": mode, "error": raised or done.stderr.splitlines()[-5:]}
    result: dict[str, object] = {"mode": mode, **json.loads(done.stdout)}
    return result


COLUMNS = (
    ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("delivery_cpu_us", "CPU us/delivery", "{:.1f}"),
    ("fanout_s", "fan-out s", "{:.2f}"),
    ("broker_busy_pct", "broker busy %", "{:.0f}"),
    ("admit_per_s", "subscribes/s", "{:,.0f}"),
    ("admit_cpu_us", "CPU us/subscribe", "{:,.0f}"),
    ("publish_per_s", "publishes/s", "{:,.0f}"),
    ("publish_cpu_us", "CPU us/publish", "{:,.0f}"),
)


def medians(results: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(str(r["mode"]) for r in results):
        runs = [r for r in results if r["mode"] == mode and "error" not in r]
        if runs:
            table[mode] = {
                key: statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]
                for key, _, _ in COLUMNS
            }
    return table


def print_table(table: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.subscribers} subscribers (HTTP/2: {args.streams} streams per connection), "
        f"{args.events} events of {args.size} bytes; medians of {args.repeat} run(s)\n"
    )
    header = ["mode", *(title for _, title, _ in COLUMNS)]
    rows = [
        [mode, *(fmt.format(values[key]) for key, _, fmt in COLUMNS)]
        for mode, values in table.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print()
    for better, base in RATIOS:
        if better in table and base in table:
            speed = table[better]["deliveries_per_s"] / table[base]["deliveries_per_s"]
            cost = table[better]["delivery_cpu_us"] / table[base]["delivery_cpu_us"]
            print(
                f"{better} / {base}: deliveries/s x{speed:.2f}, "
                f"broker CPU per delivery x{cost:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--subscribers", type=int, default=400)
    parser.add_argument("--streams", type=int, default=100, help="HTTP/2 streams per connection")
    parser.add_argument("--events", type=int, default=250)
    parser.add_argument("--size", type=int, default=100, help="bytes of data per event")
    parser.add_argument("--publishes", type=int, default=500, help="publish phase")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--phase-seconds", type=float, default=300.0)
    parser.add_argument("--json", type=Path, help="write every run here")
    # The load client, run by the driver in a process of its own.
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--broker-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile = make_certificate(Path(tmp))
        for repeat in range(args.repeat):
            for mode in modes:  # interleaved: machine noise spreads over every mode
                result = run_mode(mode, args, certfile, keyfile)
                result["repeat"] = repeat
                print(json.dumps(result), flush=True)
                results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print_table(medians(results), args)
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
