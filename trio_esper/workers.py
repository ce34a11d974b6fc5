"""``--threads N`` (esper's flag; ``--workers`` too): N worker processes on one
listening socket, sharing events through the backplane, and rolling restarts
that refuse no connection.

The supervisor (the process the user started) binds the listening socket
once and is the only process that accepts from it: it hands each connection
to a worker in turn (the connection's file descriptor, over a Unix socket
pair per worker), so the load is spread evenly (workers racing on one
socket are not: the one the kernel wakes first wins nearly every time), and
a connection waits in the listen queue until a worker gets it, whichever
workers come and go.

Signals to the supervisor:

- ``SIGHUP``: rolling restart. Start N fresh workers; once each says it is
  serving, stop the old ones (``SIGTERM``: they stop accepting, end their
  streams cleanly and exit within ``--shutdown-grace``). Clients reconnect,
  land on the fresh workers, and resume by ``Last-Event-ID`` from the
  backplane. Nothing is refused: the socket never closes. If the fresh
  workers fail to start, the old ones keep serving.
- ``SIGTERM`` / ``SIGINT``: stop every worker the same way, then exit.

A worker that dies unexpectedly is replaced.

Hand-offs never block the supervisor: a worker answers each hand-off, in
the order they came, with one byte back over its socket pair (:data:`TAKEN`,
or :data:`LOST`: it is out of file descriptors, and the kernel dropped the
one passed), and until then the supervisor keeps its own copy. A connection
a worker lost goes to another worker, and the one out of descriptors gets no
more for :data:`HANDOFF_FULL_SECONDS` at a time: as one process out of
descriptors waits before it accepts again, new connections wait, and the
worker keeps the clients it serves. A worker whose socket pair is full is
passed over for the next; one that has not answered a hand-off
:data:`HANDOFF_TIMEOUT_SECONDS` ago (stopped, or stuck) gets no more and is
killed and replaced. When a worker ends, however it ends, the connections
handed to it that it had not taken go to the other workers: none is lost
but those it had taken.
"""

from __future__ import annotations

import array
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from . import logs
from .accepting import ACCEPT_RETRY_SECONDS, Accepted, listening_socket
from .config import Config

log = logging.getLogger("trio_esper")

#: Where a worker finds the listening socket (for its address and options;
#: it never accepts from it), the socket pair its connections come through,
#: and the pipe it reports on.
LISTEN_FD_VARIABLE = "TRIO_ESPER_LISTEN_FD"
HANDOFF_FD_VARIABLE = "TRIO_ESPER_HANDOFF_FD"
READY_FD_VARIABLE = "TRIO_ESPER_READY_FD"
#: Old workers get this long to take the connections already handed to
#: them before they are told to stop.
HANDOFF_SETTLE_SECONDS = 0.2
#: How long fresh workers get to start serving.
START_SECONDS = 30.0
#: A worker that dies this soon after starting is not restarted at once.
RESPAWN_DELAY_SECONDS = 1.0
#: A worker that has not answered a hand-off this long ago is stalled
#: (stopped, or its event loop stuck): it gets no more, and is killed and
#: replaced. Answering is a few system calls, so this only leaves room for
#: a loaded machine.
HANDOFF_TIMEOUT_SECONDS = 2.0
#: How often the supervisor looks for stalled workers.
HANDOFF_CHECK_SECONDS = 0.1
#: How long a connection no worker can take now waits before it is offered
#: again (every worker's socket pair is full, or every worker is stalled).
HANDOFF_RETRY_SECONDS = 0.01
#: What a worker sends back for each connection it takes.
TAKEN = b"t"
#: What a worker sends back for a hand-off that brought no connection: its
#: descriptor table is full (the kernel closes a descriptor passed to a
#: process that has no room for it). Any byte back releases the
#: supervisor's copy, so a supervisor that knows only :data:`TAKEN` (a
#: rolling restart to new code) closes it.
LOST = b"l"
#: A worker that lost a connection gets no new ones for this long, then is
#: tried again: as long as one process out of descriptors waits before it
#: accepts again.
HANDOFF_FULL_SECONDS = ACCEPT_RETRY_SECONDS


def is_worker() -> bool:
    return LISTEN_FD_VARIABLE in os.environ


def inherited_listeners() -> list[HandedListener] | None:
    """A worker's listener: the connections its supervisor hands it
    (``None`` if not a worker)."""
    fd = os.environ.get(LISTEN_FD_VARIABLE)
    handoff = os.environ.get(HANDOFF_FD_VARIABLE)
    if fd is None or handoff is None:
        return None
    listening = trio.socket.from_stdlib_socket(socket.socket(fileno=int(fd)))
    channel = trio.socket.from_stdlib_socket(socket.socket(fileno=int(handoff)))
    return [HandedListener(listening, channel)]


class HandedListener:
    """The connections a worker's supervisor accepted and handed over.

    :attr:`socket` is the listening socket they came from (its address and
    options; this worker never accepts from it); connections arrive over
    ``channel`` (``SCM_RIGHTS``).
    """

    def __init__(self, listening: trio.socket.SocketType, channel: trio.socket.SocketType) -> None:
        self.socket = listening
        self._channel = channel

    async def accept_batch(self) -> list[Accepted]:
        """The next connection handed over, as a batch of one (the
        supervisor accepts; see :class:`~trio_esper.accepting.ConnectionSource`).
        Each hand-off is answered at once, also one whose descriptor this
        process had no room for (:data:`LOST`: the supervisor hands that
        connection to another worker, and waits before it hands this one
        more).

        Raises:
            ConnectionError: the supervisor is gone (the worker then stops).
        """
        size = array.array("i").itemsize
        while True:
            data, ancillary, _flags, _address = await self._channel.recvmsg(
                1, socket.CMSG_SPACE(size)
            )
            if not data:
                raise ConnectionError("the supervisor closed the hand-off socket")
            taken = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % size])
                    for fd in fds:  # one is sent; more would be a bug, not a leak
                        if taken is None:
                            taken = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
                        else:
                            os.close(fd)
            # Taken: from now on the supervisor lets its copy go, and would
            # not hand it to another worker if this one ended. Lost (the
            # kernel found no room for it here, MSG_CTRUNC): its copy goes to
            # another worker.
            try:
                await self._channel.send(LOST if taken is None else TAKEN)
            except OSError as error:
                if taken is not None:
                    taken.close()
                raise ConnectionError("the supervisor is gone") from error
            if taken is not None:
                return [(taken, None)]

    async def aclose(self) -> None:
        self._channel.close()
        self.socket.close()
        await trio.lowlevel.checkpoint()


def become_worker() -> None:
    """In a worker: leave SIGHUP to the supervisor (a terminal hangup or a
    ``kill -HUP`` of the process group must not end the workers)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def report_ready() -> None:
    """A worker serves: tell the supervisor (once)."""
    fd = os.environ.pop(READY_FD_VARIABLE, None)
    if fd is not None:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))


def supervise(config: Config, argv: Sequence[str]) -> int:
    """Run ``config.threads`` workers (``python -m trio_esper ARGV``) on one
    socket until SIGTERM or SIGINT; the exit status."""
    family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
    # Tuned before it listens: the connections it queues while the workers
    # start inherit the options too (see accepting.listening_socket).
    listener = listening_socket(
        family, (config.bind, config.port), write_timeout_seconds=config.write_timeout_seconds
    )
    listener.set_inheritable(True)
    host, port = listener.getsockname()[:2]
    try:
        url = logs.url(host, port, tls=config.certfile is not None or bool(config.acme_domains))
        return trio.run(_Supervisor(config, list(argv), listener, url).run)
    finally:
        listener.close()


@dataclass
class _Worker:
    process: trio.Process
    #: The supervisor's end of the socket pair connections are handed over,
    #: as trio's socket (to read acknowledgements) and as the standard one
    #: it wraps, non-blocking (a hand-off never waits).
    channel: trio.socket.SocketType
    handoff: socket.socket
    #: The connections handed over that the worker has not taken yet, oldest
    #: first, each with when it was handed: the supervisor's copies.
    untaken: deque[tuple[float, trio.socket.SocketType]] = field(default_factory=deque)
    #: It did not answer a hand-off in time: it gets no more.
    stalled: bool = False
    #: It lost the last connection handed to it (out of file descriptors):
    #: it gets no more until :attr:`full_until`.
    full: bool = False
    full_until: float = -float("inf")
    #: Set once its watcher has read its last acknowledgement and closed
    #: its socket pair (see :meth:`_Supervisor._watch`).
    done: trio.Event = field(default_factory=trio.Event)
    watched: bool = False


class _Supervisor:
    def __init__(self, config: Config, argv: list[str], listener: socket.socket, url: str) -> None:
        self._config = config
        self._argv = argv
        self._listener = listener
        self._url = url
        #: The generation serving now: new connections go to these, in turn.
        self._workers: list[_Worker] = []
        self._next = 0
        self._stopping = False

    async def run(self) -> int:
        # Signals are taken from before the workers start: one that arrives
        # while they start (or just after the start line) waits its turn
        # instead of ending the supervisor by the default action.
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if not await self._start_generation():
                    log.error("workers did not start; exiting", extra={"event": "workers_failed"})
                    await self._stop(self._workers)
                    return 1
                nursery.start_soon(self._hand_out)
                nursery.start_soon(self._find_stalled)
                log.info(
                    "listening on %s with %d workers (SIGHUP: rolling restart)",
                    self._url,
                    len(self._workers),
                    extra={"event": "start"},
                )
                async for signum in sigs:
                    if signum == signal.SIGHUP:
                        await self._rolling_restart()
                        continue
                    name = signal.Signals(signum).name
                    log.info(
                        "%s received, stopping the workers",
                        name,
                        extra={"event": "signal", "signal": name},
                    )
                    self._stopping = True
                    await self._stop(self._workers)
                    break
                nursery.cancel_scope.cancel()
        return 0

    async def _hand_out(self) -> None:
        """Accept every connection and hand it to the serving workers in turn."""
        listener = trio.socket.from_stdlib_socket(self._listener)
        while True:
            try:
                connection, _ = await listener.accept()
            except OSError as exc:  # out of file descriptors, for a while
                log.warning("accept failed (%s); retrying", exc, extra={"event": "accept_failed"})
                await trio.sleep(0.1)
                continue
            await self._hand(connection)

    async def _hand(self, *connections: trio.socket.SocketType) -> None:
        """Hand each of ``connections`` to a worker (the supervisor's copy is
        the worker's to release, :attr:`_Worker.untaken`). One no worker can
        take now waits, as it would in the listen queue, and is offered again."""
        for connection in connections:
            # Polled: what frees room is any of the workers' socket pairs
            # draining, or a fresh worker joining.
            while not self._hand_nowait(connection):  # noqa: ASYNC110
                await trio.sleep(HANDOFF_RETRY_SECONDS)

    def _hand_nowait(self, connection: trio.socket.SocketType) -> bool:
        """Give ``connection`` to the next serving worker that can take it
        now; False if none can (never waits on a worker)."""
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [connection.fileno()]))]
        for _ in range(len(self._workers)):
            worker = self._workers[self._next % len(self._workers)]
            self._next += 1
            if worker.stalled or worker.full_until > trio.current_time():
                continue
            try:
                worker.handoff.sendmsg([b"c"], fds)
            except OSError:
                continue  # its socket pair is full, or it is gone: the next one
            worker.untaken.append((trio.current_time(), connection))
            return True
        return False

    async def _find_stalled(self) -> None:
        """Kill each serving worker that has not answered a hand-off in
        :data:`HANDOFF_TIMEOUT_SECONDS` (its watcher replaces it)."""
        while True:
            await trio.sleep(HANDOFF_CHECK_SECONDS)
            now = trio.current_time()
            for worker in self._workers:
                if worker.stalled or not worker.untaken:
                    continue
                waited = now - worker.untaken[0][0]
                if waited < HANDOFF_TIMEOUT_SECONDS:
                    continue
                worker.stalled = True
                log.error(
                    "worker %d took no connection for %.1f s (%d waiting); restarting it",
                    worker.process.pid,
                    waited,
                    len(worker.untaken),
                    extra={
                        "event": "worker_stalled",
                        "pid": worker.process.pid,
                        "waiting": len(worker.untaken),
                    },
                )
                worker.process.kill()

    async def _take_acknowledgements(self, worker: _Worker) -> None:
        """Release the supervisor's copy of each connection ``worker`` takes,
        and hand on each it lost, until its end of the socket pair closes (it
        has exited). Answers come one byte per hand-off, in the order of the
        hand-offs (one stream, read in order at both ends)."""
        while True:
            try:
                data = await worker.channel.recv(4096)
            except OSError:
                return
            if not data:
                return
            answers = data[: len(worker.untaken)]
            lost: list[trio.socket.SocketType] = []
            for answer in answers:
                connection = worker.untaken.popleft()[1]
                if answer == LOST[0]:
                    lost.append(connection)
                else:
                    connection.close()
            if answers:
                self._note_room(worker, full=answers[-1:] == LOST)
            if lost:
                worker.full_until = trio.current_time() + HANDOFF_FULL_SECONDS
                if self._stopping:
                    for connection in lost:
                        connection.close()
                else:
                    self._nursery.start_soon(self._hand, *lost)

    def _note_room(self, worker: _Worker, *, full: bool) -> None:
        """Log when ``worker`` runs out of file descriptors (its last answer
        was :data:`LOST`), and when it has room again."""
        if full == worker.full:
            return
        worker.full = full
        if full:
            log.warning(
                "worker %d is out of file descriptors: new connections go to the others, "
                "or wait, until it has room (the clients it serves stay)",
                worker.process.pid,
                extra={"event": "worker_full", "pid": worker.process.pid},
            )
        else:
            log.info(
                "worker %d takes connections again",
                worker.process.pid,
                extra={"event": "worker_has_room", "pid": worker.process.pid},
            )

    async def _rolling_restart(self) -> None:
        old = self._workers
        log.info(
            "rolling restart: starting %d fresh workers",
            self._config.threads,
            extra={"event": "rolling_restart"},
        )
        if not await self._start_generation():
            log.error(
                "rolling restart failed: the fresh workers did not start; keeping the old",
                extra={"event": "rolling_restart_failed"},
            )
            return
        log.info(
            "rolling restart: fresh workers serve; stopping %d old ones",
            len(old),
            extra={"event": "rolling_restart_done"},
        )
        # New connections go to the fresh workers now; the old ones take
        # what was handed to them before they are told to stop.
        await trio.sleep(HANDOFF_SETTLE_SECONDS)
        await self._stop(old)

    async def _start_generation(self) -> bool:
        """Start a full set of workers; once all report ready, they replace
        the current set (returns True). Otherwise they are stopped (False)."""
        fresh: list[_Worker] = []
        with trio.move_on_after(START_SECONDS) as waited:
            async with trio.open_nursery() as starting:
                for _ in range(self._config.threads):
                    starting.start_soon(self._start_one, fresh)
        if waited.cancelled_caught or len(fresh) < self._config.threads:
            await self._stop(fresh)
            return False
        self._workers = fresh
        for worker in fresh:
            worker.watched = True
            self._nursery.start_soon(self._watch, worker)
        return True

    async def _start_one(self, into: list[_Worker]) -> None:
        """Start one worker and wait until it reports that it serves."""
        read_end, write_end = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listening = self._listener.fileno()
        env = {
            **os.environ,
            LISTEN_FD_VARIABLE: str(listening),
            HANDOFF_FD_VARIABLE: str(theirs.fileno()),
            READY_FD_VARIABLE: str(write_end),
        }
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trio_esper", *self._argv],
                env=env,
                pass_fds=(listening, theirs.fileno(), write_end),
            )
        finally:
            os.close(write_end)
            theirs.close()
        worker = _Worker(process, trio.socket.from_stdlib_socket(ours), ours)
        into.append(worker)
        ready = trio.lowlevel.FdStream(read_end)
        async with ready:
            if await ready.receive_some() == b"ready\n":
                return
        # The pipe closed without a word: the worker failed to start.
        into.remove(worker)
        worker.channel.close()
        await process.wait()

    async def _watch(self, worker: _Worker) -> None:
        """Take ``worker``'s acknowledgements while it runs; once it has
        exited and the last is read, hand the connections it had not taken
        to the serving workers, and replace it if it was one of them."""
        try:
            async with trio.open_nursery() as reading:
                reading.start_soon(self._take_acknowledgements, worker)
                status = await worker.process.wait()
        finally:
            worker.channel.close()
            untaken = [connection for _, connection in worker.untaken]
            worker.untaken.clear()
            worker.done.set()
        if self._stopping:
            for connection in untaken:
                connection.close()
            return
        if untaken:
            self._nursery.start_soon(self._hand, *untaken)
        if worker not in self._workers:
            return
        log.error(
            "worker %d exited with status %d (%d connections handed to it and not taken "
            "go to the others); starting another",
            worker.process.pid,
            status,
            len(untaken),
            extra={
                "event": "worker_died",
                "pid": worker.process.pid,
                "status": status,
                "handed_on": len(untaken),
            },
        )
        self._workers.remove(worker)
        await trio.sleep(RESPAWN_DELAY_SECONDS)
        replacement: list[_Worker] = []
        with trio.move_on_after(START_SECONDS):
            await self._start_one(replacement)
        for started in replacement:
            self._workers.append(started)
            started.watched = True
            self._nursery.start_soon(self._watch, started)

    async def _stop(self, workers: list[_Worker]) -> None:
        """SIGTERM each; SIGKILL what is left after the grace period."""
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self._config.shutdown_grace_seconds + 5):
            for worker in workers:
                await worker.process.wait()
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
        with trio.move_on_after(HANDOFF_TIMEOUT_SECONDS):
            for worker in workers:
                if worker.watched:
                    await worker.done.wait()  # its watcher closes its socket pair
        for worker in workers:
            worker.channel.close()
