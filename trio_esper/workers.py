"""``--threads N`` (esper's flag; ``--workers`` too): N worker processes on one
listening socket, sharing events through the backplane, and rolling restarts
that refuse no connection.

The supervisor (the process the user started) binds the listening socket
once and hands it to each worker (an inherited file descriptor), so every
worker accepts from the one queue the kernel keeps: a connection waits there
until some worker takes it, whichever workers come and go.

Signals to the supervisor:

- ``SIGHUP``: rolling restart. Start N fresh workers; once each says it is
  serving, stop the old ones (``SIGTERM``: they stop accepting, end their
  streams cleanly and exit within ``--shutdown-grace``). Clients reconnect,
  land on the fresh workers, and resume by ``Last-Event-ID`` from the
  backplane. Nothing is refused: the socket never closes. If the fresh
  workers fail to start, the old ones keep serving.
- ``SIGTERM`` / ``SIGINT``: stop every worker the same way, then exit.

A worker that dies unexpectedly is replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import trio

from .config import Config

log = logging.getLogger("trio_esper")

#: Where a worker finds its listening socket and the pipe it reports on.
LISTEN_FD_VARIABLE = "TRIO_ESPER_LISTEN_FD"
READY_FD_VARIABLE = "TRIO_ESPER_READY_FD"
#: How long fresh workers get to start serving.
START_SECONDS = 30.0
#: A worker that dies this soon after starting is not restarted at once.
RESPAWN_DELAY_SECONDS = 1.0
LISTEN_BACKLOG = 4096


def is_worker() -> bool:
    return LISTEN_FD_VARIABLE in os.environ


def inherited_listeners() -> list[trio.SocketListener] | None:
    """A worker's listening socket, from its supervisor (``None`` if not a worker)."""
    fd = os.environ.get(LISTEN_FD_VARIABLE)
    if fd is None:
        return None
    sock = socket.socket(fileno=int(fd))
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]


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
    listener = socket.create_server(
        (config.bind, config.port), family=family, backlog=LISTEN_BACKLOG
    )
    listener.set_inheritable(True)
    host, port = listener.getsockname()[:2]
    try:
        return trio.run(_Supervisor(config, list(argv), listener, f"{host}:{port}").run)
    finally:
        listener.close()


class _Supervisor:
    def __init__(
        self, config: Config, argv: list[str], listener: socket.socket, address: str
    ) -> None:
        self._config = config
        self._argv = argv
        self._listener = listener
        self._address = address
        #: The generation serving now.
        self._workers: list[trio.Process] = []
        self._stopping = False

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if not await self._start_generation():
                log.error("workers did not start; exiting", extra={"event": "workers_failed"})
                await self._stop(self._workers)
                return 1
            log.info(
                "listening on http://%s with %d workers (SIGHUP: rolling restart)",
                self._address,
                len(self._workers),
                extra={"event": "start"},
            )
            with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
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
        await self._stop(old)

    async def _start_generation(self) -> bool:
        """Start a full set of workers; once all report ready, they replace
        the current set (returns True). Otherwise they are stopped (False)."""
        fresh: list[trio.Process] = []
        with trio.move_on_after(START_SECONDS) as waited:
            async with trio.open_nursery() as starting:
                for _ in range(self._config.threads):
                    starting.start_soon(self._start_one, fresh)
        if waited.cancelled_caught or len(fresh) < self._config.threads:
            await self._stop(fresh)
            return False
        self._workers = fresh
        for process in fresh:
            self._nursery.start_soon(self._watch, process)
        return True

    async def _start_one(self, into: list[trio.Process]) -> None:
        """Start one worker and wait until it reports that it serves."""
        read_end, write_end = os.pipe()
        fd = self._listener.fileno()
        env = {**os.environ, LISTEN_FD_VARIABLE: str(fd), READY_FD_VARIABLE: str(write_end)}
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trio_esper", *self._argv],
                env=env,
                pass_fds=(fd, write_end),
            )
        finally:
            os.close(write_end)
        into.append(process)
        ready = trio.lowlevel.FdStream(read_end)
        async with ready:
            if await ready.receive_some() == b"ready\n":
                return
        # The pipe closed without a word: the worker failed to start.
        into.remove(process)
        await process.wait()

    async def _watch(self, process: trio.Process) -> None:
        """Replace ``process`` if it dies while it is in the serving set."""
        status = await process.wait()
        if self._stopping or process not in self._workers:
            return
        log.error(
            "worker %d exited with status %d; starting another",
            process.pid,
            status,
            extra={"event": "worker_died", "pid": process.pid, "status": status},
        )
        self._workers.remove(process)
        await trio.sleep(RESPAWN_DELAY_SECONDS)
        replacement: list[trio.Process] = []
        with trio.move_on_after(START_SECONDS):
            await self._start_one(replacement)
        for started in replacement:
            self._workers.append(started)
            self._nursery.start_soon(self._watch, started)

    async def _stop(self, processes: list[trio.Process]) -> None:
        """SIGTERM each; SIGKILL what is left after the grace period."""
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self._config.shutdown_grace_seconds + 5):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
