"""Shared test helpers: a real broker on 127.0.0.1:0 and a real streaming client.

Lanes: a broker serves a request either through the edge's fast HTTP/1.1
forms (``fast``, the default) or, with ``--no-fast-lane``
(``Config(fast_lane=False)``), through Hypercorn and the Quart-Trio routes
(``quart``, the design card's path). A test that takes the ``broker`` or the
``fast_lane`` fixture runs once per lane, with ids ``[fast]`` and ``[quart]``.
``TRIO_ESPER_LANES`` chooses what runs (:data:`LANES_VARIABLE`); two marks
narrow it for a test or a module:

- ``@pytest.mark.fast_lane_only("why")``: the test is about the fast forms
  themselves, so it runs on the fast lane alone, whatever is chosen;
- ``@pytest.mark.both_lanes_in_full``: a slow suite; the default run takes its
  fast lane only, and ``nox -s full`` (``TRIO_ESPER_LANES=both``) both.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio

from trio_esper.config import DEFAULT_KEEP_ALIVE_SECONDS, Config
from trio_esper.hub import Hub, Subscription
from trio_esper.server import Listening, serve

TOPIC = "testtopic01"
#: Generous bound for anything that should take milliseconds; a hang fails, not stalls CI.
STEP_SECONDS = 10.0


@dataclass
class Broker:
    """A broker served in-process for one test."""

    url: str
    config: Config
    shutdown: trio.Event
    hub: Hub
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("http://").partition(":")
        return host, int(port)

    async def stop(self) -> None:
        self.shutdown.set()
        with trio.fail_after(STEP_SECONDS):
            await self.done.wait()


async def start_broker(nursery: trio.Nursery, **overrides: Any) -> Broker:
    """Start ``serve`` on 127.0.0.1:0 with ``overrides`` and return its handle."""
    config = Config(**{"bind": "127.0.0.1", "port": 0, **overrides})
    shutdown = trio.Event()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[Listening]) -> None:
        try:
            await serve(config, shutdown=shutdown, task_status=task_status)
        finally:
            done.set()

    listening = await nursery.start(run)
    return Broker(
        f"http://{listening.host}:{listening.port}", config, shutdown, listening.hub, done
    )


async def start_from_config(nursery: trio.Nursery, config: Config, **overrides: Any) -> Broker:
    """Serve ``config`` (as built by ``Config.from_env``), with ``overrides``, on 127.0.0.1:0."""
    settings = {f.name: getattr(config, f.name) for f in fields(config)}
    return await start_broker(nursery, **{**settings, **overrides, "bind": "127.0.0.1", "port": 0})


@dataclass
class BrokerProcess:
    """A broker in a child process, listening; its stderr collected as it runs."""

    process: trio.Process
    url: str
    stderr: bytearray = field(default_factory=bytearray)
    #: Set once stderr is read to its end (the process has exited).
    stderr_closed: trio.Event = field(default_factory=trio.Event)

    def log_lines(self, pattern: str) -> list[str]:
        lines = self.stderr.decode(errors="replace").splitlines()
        return [line for line in lines if re.search(pattern, line)]

    async def stop(self, timeout: float = STEP_SECONDS) -> int:
        """SIGTERM, then wait for the exit and the end of stderr; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout):
            status = await self.process.wait()
            await self.stderr_closed.wait()
        return status


#: How a broker says where it listens: ``trio-esper``, and Hypercorn's own line.
LISTENING = rb"(?:listening|Running) on (http://[\d.]+:\d+)"


@asynccontextmanager
async def broker_process(
    *args: str,
    command: Sequence[str] = (),
    argv: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> AsyncIterator[BrokerProcess]:
    """Run ``python -m trio_esper --port 0 --no-auth ARGS`` (``command`` in place
    of ``python -m trio_esper``; or ``argv`` as it is, e.g. ``hypercorn``);
    yield it once it listens. Killed on exit."""
    if not argv:
        argv = [*(command or (sys.executable, "-m", "trio_esper")), "--port", "0", "--no-auth"]
        argv += args
    # A process group of its own, killed whole on exit: hypercorn's workers and
    # multiprocessing's resource tracker go with it (tests/children.py).
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert process.stderr is not None
    try:
        running = BrokerProcess(process, "")
        with trio.fail_after(20):
            while (match := re.search(LISTENING, running.stderr)) is None:
                chunk = await process.stderr.receive_some()
                if not chunk:
                    pytest.fail(f"broker exited before listening: {running.stderr.decode()}")
                running.stderr += chunk
        running.url = match.group(1).decode()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, process.stderr, running)
            yield running
            nursery.cancel_scope.cancel()
    finally:
        with suppress(ProcessLookupError):  # the group has ended
            os.killpg(process.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()
        await process.stderr.aclose()


async def _collect(stream: trio.abc.ReceiveStream, running: BrokerProcess) -> None:
    while chunk := await stream.receive_some():
        running.stderr += chunk
    running.stderr_closed.set()


#: Lane id -> ``Config.fast_lane``.
LANES = {"fast": True, "quart": False}
#: The environment variable that chooses lanes: unset (or ``default``) runs
#: both, but the fast lane alone where ``both_lanes_in_full`` marks a slow
#: suite; ``both`` runs both everywhere (``nox -s full``); ``fast`` or
#: ``quart`` runs that lane alone (``fast_lane_only`` tests stay on theirs).
LANES_VARIABLE = "TRIO_ESPER_LANES"


def pytest_configure(config: pytest.Config) -> None:
    _chosen_lanes()  # a typo stops the run at once, not at every test's collection
    # Registered here, beside the hook that reads them (--strict-markers).
    config.addinivalue_line(
        "markers",
        "fast_lane_only(reason): about the edge's fast forms; runs on the fast lane alone",
    )
    config.addinivalue_line(
        "markers",
        "both_lanes_in_full: slow; the fast lane in the default run, both lanes in "
        f"nox -s full ({LANES_VARIABLE}=both)",
    )


def _chosen_lanes() -> str:
    chosen = os.environ.get(LANES_VARIABLE, "default") or "default"
    if chosen not in ("default", "both", *LANES):
        raise pytest.UsageError(
            f"{LANES_VARIABLE}={chosen!r}: expected default, both, {' or '.join(LANES)}"
        )
    return chosen


def lanes_for(item: pytest.Function | pytest.FunctionDefinition) -> list[str]:
    """The lanes a test that takes ``fast_lane`` runs on, by its marks and the
    environment (:data:`LANES_VARIABLE`)."""
    chosen = _chosen_lanes()
    only = item.get_closest_marker("fast_lane_only")
    if only is not None:
        if not only.args or not str(only.args[0]).strip():
            raise pytest.UsageError(f"{item.nodeid}: fast_lane_only needs a reason")
        return ["fast"]
    if chosen in LANES:
        return [chosen]
    if chosen == "default" and item.get_closest_marker("both_lanes_in_full") is not None:
        return ["fast"]
    return list(LANES)


def _parametrised_directly(metafunc: pytest.Metafunc, name: str) -> bool:
    """The test parametrises ``name`` itself (``@pytest.mark.parametrize``)."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs["argnames"]
        if isinstance(names, str):
            names = names.split(",")
        if name in (n.strip() for n in names):
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fast_lane" in metafunc.fixturenames and not _parametrised_directly(metafunc, "fast_lane"):
        lanes = lanes_for(metafunc.definition)
        metafunc.parametrize(
            "fast_lane", [LANES[lane] for lane in lanes], ids=lanes, indirect=True
        )


@pytest.fixture
def fast_lane(request: pytest.FixtureRequest) -> bool:
    """``Config.fast_lane`` for the lane this test runs on (``[fast]`` or ``[quart]``)."""
    lane: bool = request.param
    return lane


@pytest.fixture
async def broker(nursery: trio.Nursery, fast_lane: bool) -> AsyncIterator[Broker]:
    """A broker with the default settings, on the test's lane."""
    b = await start_broker(nursery, fast_lane=fast_lane)
    yield b
    await b.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A pooled client that drops an idle connection well before the broker's
    keep-alive closes it. At httpx's default (5 s, the broker's too) a request
    after 5 s of quiet could go out on a connection the broker was closing that
    instant, and fail unanswered: a race of the test's client, not the broker's."""
    limits = httpx.Limits(keepalive_expiry=DEFAULT_KEEP_ALIVE_SECONDS / 2)
    async with httpx.AsyncClient(timeout=STEP_SECONDS, limits=limits) as c:
        yield c


class SSEStream:
    """Reads a ``text/event-stream`` response frame by frame (a frame ends at a
    blank line), keeping the raw bytes so tests can compare them exactly."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_raw()
        self._buffer = b""
        self.raw = b""

    async def next_frame(self, timeout: float = STEP_SECONDS) -> bytes:
        with trio.fail_after(timeout):
            while b"\n\n" not in self._buffer:
                chunk = await self._chunks.__anext__()
                self._buffer += chunk
                self.raw += chunk
        frame, _, self._buffer = self._buffer.partition(b"\n\n")
        return frame + b"\n\n"

    async def next_event(self, timeout: float = STEP_SECONDS) -> bytes:
        """The next frame that is not a comment, within ``timeout`` in all
        (heartbeats, which are comments, do not restart it)."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.next_frame(timeout)
                if not frame.startswith(b":"):
                    return frame

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]

    async def read_to_end(self, timeout: float = STEP_SECONDS) -> bytes:
        """Everything until the server ends the stream."""
        with trio.fail_after(timeout):
            async for chunk in self._chunks:
                self._buffer += chunk
                self.raw += chunk
        rest, self._buffer = self._buffer, b""
        return rest


async def open_sse(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[SSEStream, Any]:
    """Start streaming ``url``; return the stream and the context to exit."""
    ctx = client.stream("GET", url, **kwargs)
    response = await ctx.__aenter__()
    return SSEStream(response), ctx


@pytest.fixture
async def subscribe(
    client: httpx.AsyncClient,
) -> AsyncIterator[Any]:
    """``await subscribe(url)`` opens a stream, waits for ``: subscribed``, and
    closes it when the test ends."""
    contexts: list[Any] = []
    streams: list[SSEStream] = []

    async def _subscribe(url: str, *, expect_live: bool = True, **kwargs: Any) -> SSEStream:
        stream, ctx = await open_sse(client, url, **kwargs)
        contexts.append(ctx)
        streams.append(stream)
        if expect_live:
            assert stream.response.status_code == 200
            assert await stream.next_frame() == b": subscribed\n\n"
        return stream

    yield _subscribe
    with trio.CancelScope(shield=True):
        for stream in streams:
            await stream.aclose()
        for ctx in reversed(contexts):
            await ctx.__aexit__(None, None, None)


async def hold_subscription(
    hub: Hub, topic: str, into: list[Subscription], task_status: trio.TaskStatus[None]
) -> None:
    """Subscribe to ``topic`` in process and never read (for
    ``nursery.start``): the subscription goes into ``into`` once open."""
    async with hub.subscribe(topic) as subscription:
        into.append(subscription)
        task_status.started()
        await trio.sleep_forever()


def make_token(
    secret: str, sub: str | None = TOPIC, *, exp_in: float = 60, alg: str = "HS256", **extra: Any
) -> str:
    claims: dict[str, Any] = dict(extra)
    if sub is not None:
        claims["sub"] = sub
    if exp_in is not None:
        claims["exp"] = int(time.time() + exp_in)
    return jwt.encode(claims, secret, algorithm=alg)


async def wait_for_stats(
    client: httpx.AsyncClient, broker: Broker, timeout: float = STEP_SECONDS, **expected: int
) -> dict[str, Any]:
    """Poll /stats until it shows ``expected``; fail after ``timeout``."""
    stats: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            stats = (await client.get(f"{broker.url}/stats")).json()
            if all(stats[k] == v for k, v in expected.items()):
                return stats
            await trio.sleep(0.02)
    pytest.fail(f"stats never reached {expected}: {stats}")


__all__ = ["STEP_SECONDS", "TOPIC", "Broker", "SSEStream", "make_token", "partial", "start_broker"]


#: Where free_port looks: below Linux's ephemeral range (32768-60999), which
#: outgoing connections take their ports from (a broker that binds a chosen
#: port later must not find a client's connection on it), and above the
#: well-known ports.
FREE_PORTS = range(10_000, 32_768)
#: Ports free_port has handed out in this run: each goes to one caller only.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, for a server to bind later:
    outside the range outgoing connections take ports from, and never one
    handed out before in this run (two chosen for one test stay apart)."""
    for _ in range(1000):
        port = random.choice(FREE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as free:
            try:
                free.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {FREE_PORTS}")


@dataclass
class RedisServer:
    """A redis-server of the test's own on a free loopback port (with
    ``password``: it asks for it, and :attr:`url` carries it)."""

    port: int
    directory: str
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    #: More redis-server options (``--maxmemory-policy allkeys-lru``).
    options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        credentials = "" if self.password is None else f":{self.password}@"
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) it; append-only file on, so a restart keeps the streams."""
        guard = () if self.password is None else ("--requirepass", self.password)
        self.process = subprocess.Popen(
            [
                REDIS_SERVER or "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always", "--dir", self.directory),
                *guard,
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = (
            b"PING\r\n"
            if self.password is None
            else b"AUTH %s\r\nPING\r\n" % (self.password.encode())
        )
        deadline = time.monotonic() + STEP_SECONDS
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(probe)
                    answer = b""
                    while b"+PONG" not in answer and (chunk := sock.recv(64)):
                        answer += chunk
                    if b"+PONG" in answer:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: Redis goes away at once, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=STEP_SECONDS)
            self.process = None


REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    if REDIS_SERVER is None:
        pytest.fail("redis-server is needed (Debian: apt-get install redis-server)")
    return tmp_path


@contextmanager
def running_redis(directory: Path, *options: str) -> Iterator[RedisServer]:
    """A redis-server of the test's own, with ``options``; SIGCONT and SIGKILL at the end."""
    server = RedisServer(free_port(), str(directory), options=options)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.kill()


@contextmanager
def stalled(server: RedisServer) -> Iterator[None]:
    """Redis stops (SIGSTOP) for the block: connections stay open, nothing is answered."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """redis-server (Debian's package) for the session's backplane tests.
    Missing: the tests skip with a reason, but in CI (CI=true) they fail."""
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is missing: .ci/run installs it (apt-get install redis-server)"
            )
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port(), str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.kill()
