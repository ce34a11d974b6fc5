"""The Mercure hub's own figures (issue 21, "Numbers"), each against trio_esper as a
subprocess on loopback, the broker pinned to one CPU and the load to the other.

``templates``
    1,000 subscribers, each holding a different URI template; each published topic
    matches 10 of them (100 topics: every subscriber is matched by one). Publishes/s
    and the broker's CPU per delivery, against the same load with exact topics (each
    subscriber on the one topic its template would match). The first publish to each
    topic is timed apart (``first``): it is when the hub matches the topic against
    the templates it holds; the later ones (``steady``) find the answer cached.
``memory``
    1,000 subscribers, each on 10 topics of its own, against 1,000 on one topic each:
    the broker's RSS growth from before the first subscriber to all subscribed, per
    subscription (connection) and per topic selector. Then one update to each
    subscriber checks every subscription is live.
``fanout``
    One exact topic, 1,000 subscribers, on ``/.well-known/mercure``: ssebench
    (``../shared/bench/ssebench.c``) against trio_esper and against the Mercure hub
    itself (dunglas/mercure, ``../shared/bench/run_mercure.sh``, which builds it with
    ``bash run_mercure.sh build``), one core each, interleaved run by run; with
    ``--brokers`` also trio_esper's ``/subscribe`` route for reference. Named only.

Its own load for ``templates`` and ``memory``: one ``epoll`` loop over raw sockets,
subscribers counting ``data:`` lines, publishers with one request in flight each (a
topic pinned to one connection); every loop is bounded by ``--drain`` seconds without
progress. Prints a table; the runs go to ``bench-results/mercure.json``.

    python3 -m nox -s bench_mercure                          # templates and memory
    python3 -m nox -s bench_mercure -- --repeat 3 --subscribers 1000
    python3 -m nox -s bench_mercure -- --scenarios fanout --brokers esper,mercure,subscribe
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import jwt
from compare import OUT, ROOT, SHARED_BENCH, build_ssebench, source_at, wait_listening

HUB = "/.well-known/mercure"
#: The key ../shared/bench/run_mercure.sh signs its publisher token with, so that
#: ssebench's Mercure arguments serve both hubs.
KEY = "!ChangeThisMercureHubJWTSecretKey!"
ESPER_PORT = 3093
MERCURE_PORT = 8093
#: Matching subscribers per published topic in ``templates`` (issue 21's figure).
MATCHES_PER_TOPIC = 10
#: Topics per subscriber in ``memory``.
TOPICS_PER_SUBSCRIBER = 10
READ_BYTES = 1 << 16
MARK = b"\ndata: "
#: A directory holding the ``trio_esper`` package of ``--rev``; None: the installed one.
SOURCE: Path | None = None
#: The CPUs of ``--pin``: the broker on the first, this script and ssebench on the second.
BROKER_CPU, LOAD_CPU = 0, 1


def publisher_token() -> str:
    return jwt.encode({"mercure": {"publish": ["*"]}}, KEY, algorithm="HS256")


# -- The broker's side ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of ``pid`` so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> dict[str, int]:
    """RSS (/proc/PID/status) and PSS (/proc/PID/smaps_rollup) of ``pid``, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            found["rss_kb"] = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            found["pss_kb"] = int(line.split()[1])
    return found


def pinned(cpu: int, pin: bool) -> list[str]:
    return ["taskset", "-c", str(cpu)] if pin and shutil.which("taskset") else []


@contextmanager
def esper(pin: bool, *extra: str, no_auth: bool = False) -> Iterator[int]:
    """trio_esper as a subprocess on ESPER_PORT, the Mercure hub on, anonymous
    subscribers (or, ``no_auth``, every route open, as benchmarks/compare.py runs
    ``/subscribe``); yields its PID."""
    env = {
        **os.environ,
        "ESPER_PUBLISHER_SECRET": KEY,
        "ESPER_SUBSCRIBER_SECRET": KEY,
        "ESPER_MERCURE_ANONYMOUS": "1",
    }
    if no_auth:
        env["ESPER_NO_AUTH"] = "1"
    if SOURCE is not None:  # another version's package, ahead of the installed one
        env["PYTHONPATH"] = str(SOURCE)
    command = [*pinned(BROKER_CPU, pin), sys.executable, "-m", "trio_esper"]
    command += ["--port", str(ESPER_PORT), "--log-level", "warning", *extra]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, env=env, stderr=log, cwd=SOURCE, start_new_session=True)
        try:
            wait_listening(ESPER_PORT)
            yield proc.pid
        finally:
            stop(proc)
            if proc.returncode not in (0, -signal.SIGINT):
                log.seek(0)
                print(log.read().decode(errors="replace")[-2000:], file=sys.stderr)


@contextmanager
def mercure_hub(pin: bool) -> Iterator[int]:
    """The Mercure hub (../shared/bench/run_mercure.sh serve) on MERCURE_PORT; its PID."""
    script = SHARED_BENCH / "run_mercure.sh"
    env = {**os.environ, "PORT": str(MERCURE_PORT), "PIN": "1" if pin else "0"}
    env["BASE"] = str(Path(tempfile.gettempdir()) / "trio-esper-bench-mercure")
    proc = subprocess.Popen(
        ["bash", str(script), "serve"], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(
                f"{script} serve did not start the hub (build it: bash {script} build)"
            )
        wait_listening(MERCURE_PORT)
        yield int(line)
    finally:
        stop(proc)  # the script's trap stops the hub by its PID


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (trio_esper's graceful stop; the run_mercure.sh trap), then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- The load: subscribers and publishers over raw sockets --------------------------


@dataclass
class Subscriber:
    sock: socket.socket
    events: int = 0
    tail: bytes = b""

    def feed(self, data: bytes) -> int:
        """Count the events ``data`` completes (by their first ``data:`` line)."""
        joined = self.tail + data
        counted = joined.count(MARK) - self.tail.count(MARK)
        self.events += counted
        self.tail = joined[-(len(MARK) - 1) :]
        return counted


@dataclass
class Publisher:
    sock: socket.socket
    requests: list[bytes]
    sent: int = 0
    answered: int = 0
    accepted: int = 0
    buffer: bytes = b""
    in_flight: bool = False
    statuses: dict[int, int] = field(default_factory=dict)

    def send_next(self) -> bool:
        if self.sent >= len(self.requests):
            return False
        self.sock.sendall(self.requests[self.sent])
        self.sent += 1
        self.in_flight = True
        return True

    def feed(self, data: bytes) -> int:
        """Take answers out of ``data``; how many completed (each with Content-Length)."""
        self.buffer += data
        done = 0
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    raise RuntimeError("a publish answer without Content-Length")
            if len(rest) < length:
                break
            self.buffer = rest[length:]
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.answered += 1
            self.accepted += 200 <= status < 300
            self.in_flight = False
            done += 1
        return done


def subscribe_request(selectors: Sequence[str]) -> bytes:
    query = urlencode([("topic", s) for s in selectors], quote_via=quote)
    return (
        f"GET {HUB}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


def publish_request(topic: str, data: str, token: str) -> bytes:
    body = urlencode([("topic", topic), ("data", data)], quote_via=quote).encode()
    head = (
        f"POST {HUB} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def open_subscribers(port: int, selectors: list[list[str]], timeout_s: float) -> list[Subscriber]:
    """One connection per entry of ``selectors``, each answered 200 and subscribed."""
    subscribers = []
    for chosen in selectors:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        sock.sendall(subscribe_request(chosen))
        subscribers.append(Subscriber(sock))
    for subscriber in subscribers:
        head = b""
        while b"\r\n\r\n" not in head or b"\n\n" not in head.partition(b"\r\n\r\n")[2]:
            chunk = subscriber.sock.recv(READ_BYTES)
            if not chunk:
                raise RuntimeError(f"a subscriber's stream closed: {head[:200]!r}")
            head += chunk
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"subscribe answered {head[:300]!r}")
        subscriber.feed(head.partition(b"\r\n\r\n")[2])
        subscriber.sock.setblocking(False)
    return subscribers


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()


@dataclass
class Phase:
    """What one publishing phase measured."""

    publishes: int
    accepted: int
    deliveries: int
    expected: int
    publish_s: float
    delivery_s: float
    broker_cpu_s: float

    def summary(self) -> dict[str, float]:
        return {
            "publishes": self.publishes,
            "accepted": self.accepted,
            "deliveries": self.deliveries,
            "expected": self.expected,
            "publish_per_s": self.accepted / self.publish_s if self.publish_s else 0.0,
            "delivered_per_s": self.deliveries / self.delivery_s if self.delivery_s else 0.0,
            "cpu_us_per_delivery": 1e6 * self.broker_cpu_s / max(self.deliveries, 1),
            "cpu_us_per_publish": 1e6 * self.broker_cpu_s / max(self.accepted, 1),
        }


def publish_phase(
    pid: int,
    port: int,
    subscribers: list[Subscriber],
    messages: list[tuple[str, str]],
    per_message: int,
    connections: int,
    drain_s: float,
) -> Phase:
    """Publish ``messages`` (topic, data) over ``connections`` keep-alive connections,
    a topic always on the same one, one request in flight on each; wait until every
    accepted one reached ``per_message`` subscribers, or ``drain_s`` passes without
    progress. The broker's CPU is taken from the first request to the last delivery."""
    token = publisher_token()
    topics = sorted({topic for topic, _ in messages})
    lane = {topic: n % connections for n, topic in enumerate(topics)}
    queues: list[list[bytes]] = [[] for _ in range(connections)]
    for topic, data in messages:
        queues[lane[topic]].append(publish_request(topic, data, token))
    publishers = []
    for queue in queues:
        if queue:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            publishers.append(Publisher(sock, queue))
    poller = select.epoll()
    owners: dict[int, Subscriber | Publisher] = {}
    for subscriber in subscribers:
        poller.register(subscriber.sock.fileno(), select.EPOLLIN)
        owners[subscriber.sock.fileno()] = subscriber
    for publisher in publishers:
        publisher.sock.setblocking(False)
        poller.register(publisher.sock.fileno(), select.EPOLLIN)
        owners[publisher.sock.fileno()] = publisher
    cpu0 = cpu_seconds(pid)
    start = time.perf_counter()
    for publisher in publishers:
        publisher.send_next()
    last_answer = last_event = last_progress = start
    delivered = 0
    try:
        while True:
            answered = sum(p.answered for p in publishers)
            accepted = sum(p.accepted for p in publishers)
            if answered == len(messages) and delivered >= accepted * per_message:
                break
            now = time.perf_counter()
            if now - last_progress > drain_s:
                break
            for fd, _ in poller.poll(0.05):
                owner = owners[fd]
                while True:
                    try:
                        chunk = owner.sock.recv(READ_BYTES)
                    except BlockingIOError:
                        break
                    except OSError as error:
                        if error.errno == errno.EAGAIN:
                            break
                        raise
                    if not chunk:
                        poller.unregister(fd)
                        if isinstance(owner, Publisher):
                            raise RuntimeError("the broker closed a publisher connection")
                        break
                    now = time.perf_counter()
                    last_progress = now
                    if isinstance(owner, Subscriber):
                        if counted := owner.feed(chunk):
                            last_event = now
                            delivered += counted
                    elif owner.feed(chunk):
                        last_answer = now
                        if not owner.in_flight:
                            owner.send_next()
        cpu = cpu_seconds(pid) - cpu0
    finally:
        poller.close()
        close_all([p.sock for p in publishers])
    statuses: dict[int, int] = {}
    for publisher in publishers:
        for status, count in publisher.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    if set(statuses) - {200}:
        print(f"publish answers: {statuses}", file=sys.stderr)
    accepted = sum(p.accepted for p in publishers)
    return Phase(
        publishes=len(messages),
        accepted=accepted,
        deliveries=delivered,
        expected=accepted * per_message,
        publish_s=last_answer - start,
        delivery_s=last_event - start,
        broker_cpu_s=cpu,
    )


# -- The scenarios -------------------------------------------------------------------


def group_topic(group: int) -> str:
    """The topic published in ``templates``: ten path segments, one group number."""
    return f"https://example.com/users/{group}/items/" + "/".join(
        f"s{n}" for n in range(MATCHES_PER_TOPIC)
    )


def group_template(group: int, member: int) -> str:
    """Member ``member``'s template of ``group``: its topic with segment ``member`` a
    variable. All ten of a group match its topic, and no other group's."""
    segments = [f"s{n}" for n in range(MATCHES_PER_TOPIC)]
    segments[member] = "{part}"
    return f"https://example.com/users/{group}/items/" + "/".join(segments)


def run_templates(args: argparse.Namespace, exact: bool) -> dict[str, object]:
    groups = args.subscribers // MATCHES_PER_TOPIC
    selectors = [
        [group_topic(g) if exact else group_template(g, m)]
        for g in range(groups)
        for m in range(MATCHES_PER_TOPIC)
    ]
    assert exact or len({s[0] for s in selectors}) == len(selectors)
    published = min(args.published_topics or groups, groups)
    first = [(group_topic(g), f"first {g}") for g in range(published)]
    steady = [(group_topic(n % published), f"{n}") for n in range(args.publishes)]
    with esper(args.pin) as pid:
        subscribers = open_subscribers(ESPER_PORT, selectors, args.drain)
        try:
            time.sleep(args.settle)
            phases = {}
            for name, messages in (("first", first), ("steady", steady)):
                phase = publish_phase(
                    pid,
                    ESPER_PORT,
                    subscribers,
                    messages,
                    MATCHES_PER_TOPIC,
                    args.connections,
                    args.drain,
                )
                phases[name] = phase.summary()
            memory = memory_kb(pid)
        finally:
            close_all([s.sock for s in subscribers])
    return {
        "scenario": "templates",
        "selectors": "exact" if exact else "templates",
        "subscribers": len(selectors),
        "topics": groups,
        "published_topics": published,
        **{f"{name}_{k}": v for name, summary in phases.items() for k, v in summary.items()},
        **memory,
    }


def warm_up(pid: int, per_subscriber: int, args: argparse.Namespace) -> None:
    """Ten subscriptions of the measured shape, one update each, closed: what the
    first subscription and publish cost once (imports, caches) is then not counted."""
    selectors = [
        [f"https://example.com/warm/{k}/{n}" for n in range(per_subscriber)] for k in range(10)
    ]
    subscribers = open_subscribers(ESPER_PORT, selectors, args.drain)
    try:
        check = [(chosen[-1], "warm") for chosen in selectors]
        publish_phase(pid, ESPER_PORT, subscribers, check, 1, args.connections, args.drain)
    finally:
        close_all([s.sock for s in subscribers])


def run_memory(args: argparse.Namespace, per_subscriber: int) -> dict[str, object]:
    selectors = [
        [f"https://example.com/items/{k}/{n}" for n in range(per_subscriber)]
        for k in range(args.subscribers)
    ]
    with esper(args.pin) as pid:
        warm_up(pid, per_subscriber, args)
        time.sleep(args.settle)
        before = memory_kb(pid)
        subscribers = open_subscribers(ESPER_PORT, selectors, args.drain)
        try:
            time.sleep(args.settle)
            after = memory_kb(pid)
            check = [(chosen[-1], "live") for chosen in selectors]
            live = publish_phase(
                pid, ESPER_PORT, subscribers, check, 1, args.connections, args.drain
            )
        finally:
            close_all([s.sock for s in subscribers])
    grown_kb = after["rss_kb"] - before["rss_kb"]
    return {
        "scenario": "memory",
        "topics_per_subscriber": per_subscriber,
        "subscribers": len(selectors),
        "rss_kb_before": before["rss_kb"],
        "rss_kb_after": after["rss_kb"],
        "pss_kb_before": before["pss_kb"],
        "pss_kb_after": after["pss_kb"],
        "rss_bytes_per_subscription": grown_kb * 1024 / len(selectors),
        "rss_bytes_per_selector": grown_kb * 1024 / (len(selectors) * per_subscriber),
        "pss_bytes_per_subscription": (after["pss_kb"] - before["pss_kb"]) * 1024 / len(selectors),
        "live_checked": live.deliveries,
        "live_expected": live.expected,
    }


def run_fanout(args: argparse.Namespace, broker: str, binary: Path) -> dict[str, object]:
    """ssebench's fan-out (one topic, ``--subscribers``, ``--publishes`` events of 100
    bytes, one publisher connection) against ``broker``: ``esper`` (the Mercure route),
    ``subscribe`` (trio_esper's /subscribe, for reference) or ``mercure`` (the hub)."""
    load = ["-s", str(args.subscribers), "-t", "1", "-c", "1", "-n", str(args.publishes)]
    load += ["-z", "100", "--strict", "--drain-max", "60", "--duration", "120", "-q"]
    load += ["--idle-wait", str(args.idle_wait), "--label", f"fanout/{broker}"]
    load += ["--topic-prefix", "benchtopic"]  # /subscribe's topics are alphanumeric
    if broker == "subscribe":
        route = ["--body", "sse", "--pub-content-type", "text/event-stream"]
    else:
        route = ["--sub-path", f"{HUB}?topic=%s", "--pub-path", HUB]
        route += ["--pub-content-type", "application/x-www-form-urlencoded"]
        route += ["--body-template", "topic={topic}&data={seq}+{ts}+{pad}"]
        route += ["--pub-header", f"Authorization: Bearer {publisher_token()}"]
    port = MERCURE_PORT if broker == "mercure" else ESPER_PORT
    if broker == "mercure":
        started = mercure_hub(args.pin)
    else:
        started = esper(args.pin, no_auth=broker == "subscribe")
    with started as pid:
        command = [*pinned(LOAD_CPU, args.pin), str(binary), "--port", str(port), *route]
        command += [*load, "--server-pid", str(pid)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    result: dict[str, object] = json.loads(lines[-1]) if lines else {"error": done.stderr[-500:]}
    cpu, rate = result.get("run_cpu_server_pct"), result.get("delivered_per_s")
    if isinstance(cpu, int | float) and isinstance(rate, int | float) and rate > 0:
        result["cpu_us_per_delivery"] = cpu / 100 / rate * 1e6
    result.update(scenario="fanout", broker=broker, exit_code=done.returncode)
    return result


# -- Reporting -----------------------------------------------------------------------

TEMPLATE_COLUMNS = (
    ("first pub/s", "first_publish_per_s", "{:.0f}"),
    ("first us/deliv", "first_cpu_us_per_delivery", "{:.1f}"),
    ("pub/s", "steady_publish_per_s", "{:.0f}"),
    ("deliv/s", "steady_delivered_per_s", "{:.0f}"),
    ("us/deliv", "steady_cpu_us_per_delivery", "{:.1f}"),
    ("us/pub", "steady_cpu_us_per_publish", "{:.0f}"),
    ("deliv/expected", "steady_deliveries", "{}"),
)
MEMORY_COLUMNS = (
    ("RSS before MB", "rss_kb_before", "{:.1f}"),
    ("RSS after MB", "rss_kb_after", "{:.1f}"),
    ("B/subscription", "rss_bytes_per_subscription", "{:.0f}"),
    ("B/selector", "rss_bytes_per_selector", "{:.0f}"),
    ("PSS B/subscription", "pss_bytes_per_subscription", "{:.0f}"),
    ("live", "live_checked", "{}"),
)
FANOUT_COLUMNS = (
    ("deliv/s", "delivered_per_s", "{:.0f}"),
    ("pub/s", "publish_per_s", "{:.0f}"),
    ("p99 ms", "lat_p99_us", "{:.1f}"),
    ("us/deliv", "cpu_us_per_delivery", "{:.2f}"),
    ("lost", "lost", "{}"),
    ("other%", "run_cpu_other_pct", "{:.0f}"),
    ("rc", "exit_code", "{}"),
)


def cell(result: dict[str, object], key: str, form: str) -> str:
    value = result.get(key)
    if not isinstance(value, int | float):
        return "-"
    if key.endswith(("_kb_before", "_kb_after")):
        value = value / 1024
    elif key.startswith("lat_"):
        value = value / 1000
    text = form.format(value)
    if key == "steady_deliveries":
        text += f"/{result.get('steady_expected')}"
    return text


def print_table(results: list[dict[str, object]]) -> None:
    for scenario, label, columns in (
        ("templates", "selectors", (("topics", "published_topics", "{}"), *TEMPLATE_COLUMNS)),
        ("memory", "topics_per_subscriber", MEMORY_COLUMNS),
        ("fanout", "broker", FANOUT_COLUMNS),
    ):
        rows = [r for r in results if r["scenario"] == scenario]
        if not rows:
            continue
        print(f"\n{scenario}")
        print(" | ".join([label, *(name for name, _, _ in columns)]))
        for row in rows:
            cells = [cell(row, key, form) for _, key, form in columns]
            print(" | ".join([str(row[label]), *cells]))
        by: dict[str, list[dict[str, object]]] = {}
        for row in rows:
            by.setdefault(str(row[label]), []).append(row)
        if len(rows) > len(by):
            print("medians:")
            for name, group in by.items():
                medians = []
                for _, key, form in columns:
                    values = [v for r in group if isinstance(v := r.get(key), int | float)]
                    medians.append(form.format(statistics.median(values)) if values else "-")
                print(" | ".join([name, *medians]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="templates,memory", help="templates,memory,fanout")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument(
        "--publishes", type=int, default=2000, help="steady publishes / fan-out events"
    )
    parser.add_argument("--connections", type=int, default=4, help="publisher connections")
    parser.add_argument(
        "--published-topics",
        type=int,
        default=0,
        help="templates: publish to this many of the topics only (0: all, one per 10 subscribers)",
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--brokers", default="esper,mercure", help="fanout: esper,mercure,subscribe"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="no taskset")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds without progress")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before sampling")
    parser.add_argument("--idle-wait", type=float, default=15.0, help="ssebench --idle-wait")
    parser.add_argument("--out", type=Path, default=OUT / "mercure.json")
    parser.add_argument("--rev", help="run trio_esper as of this commit (git archive)")
    args = parser.parse_args()
    global SOURCE
    if args.rev:
        args.rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.rev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        SOURCE = source_at(args.rev)
    if args.subscribers % MATCHES_PER_TOPIC:
        parser.error(f"--subscribers must be a multiple of {MATCHES_PER_TOPIC}")
    if args.pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    scenarios = args.scenarios.split(",")
    binary = build_ssebench() if "fanout" in scenarios else None
    results: list[dict[str, object]] = []
    for repeat in range(args.repeat):
        for scenario in scenarios:
            if scenario == "templates":
                runs = [run_templates(args, exact=True), run_templates(args, exact=False)]
            elif scenario == "memory":
                runs = [run_memory(args, 1), run_memory(args, TOPICS_PER_SUBSCRIBER)]
            elif scenario == "fanout" and binary is not None:
                runs = [run_fanout(args, b, binary) for b in args.brokers.split(",")]
            else:
                parser.error(f"unknown scenario {scenario}")
            for run in runs:
                run["repeat"] = repeat
                run["rev"] = args.rev or "installed"
                print(json.dumps(run), file=sys.stderr)
            results += runs
    if SOURCE is not None:
        shutil.rmtree(SOURCE)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
