"""A pytest plugin: the test run fails if it leaves a process alive.

Loaded from pyproject.toml's ``addopts`` (``-p tests.children``). At the start
of the session the pytest process becomes a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``, Linux): a process whose parent dies is
then re-parented to pytest rather than to init, so a server's worker left
behind by a killed server is still a descendant of the run and is seen. After
each test the plugin notes which descendants are alive (so a leftover can be
traced to the test after which it was first seen); at the end of the session,
once every fixture is torn down, any descendant still alive after a short
grace fails the run: its pid, process group, command line and first test are
printed, and it is killed so that it does not outlive the run.

Processes of the run that exited are reaped at the end: a re-parented orphan
that exits becomes pytest's zombie, and nothing else waits for it.

Linux only (``/proc`` and ``prctl``); elsewhere the plugin does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from contextlib import suppress
from dataclasses import dataclass

import pytest

#: prctl(2) option: orphaned descendants are re-parented to this process.
PR_SET_CHILD_SUBREAPER = 36
#: A process that was just told to stop (a browser's helpers after the driver
#: quits, a server after SIGTERM) may take a moment to exit.
GRACE_SECONDS = 5.0
#: Command lines are cut to this many characters in the report.
COMMAND_CHARS = 300


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    pgid: int
    #: True for a zombie: it has exited and waits only to be reaped.
    exited: bool
    command: str


def _read_process(pid: int) -> Process | None:
    """``/proc/PID/stat`` and ``cmdline``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:  # exited (and reaped) while we read
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    comm = text[text.index("(") + 1 : text.rindex(")")]
    state, ppid, pgid = text[text.rindex(")") + 2 :].split()[:3]
    command = " ".join(a.decode(errors="replace") for a in argv if a) or f"[{comm}]"
    return Process(pid, int(ppid), int(pgid), state in ("Z", "X"), command)


def processes() -> list[Process]:
    """Every process this user can see, zombies included."""
    found = (_read_process(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [process for process in found if process is not None]


def alive_in_group(pgid: int) -> list[Process]:
    """The processes of group ``pgid`` that have not exited (``killpg(pgid, 0)``
    counts zombies, which stay in their group until they are reaped)."""
    return [p for p in processes() if p.pgid == pgid and not p.exited]


def descendants(root: int) -> list[Process]:
    """Every process below ``root`` (children, their children, ...), zombies included."""
    by_parent: dict[int, list[Process]] = {}
    for process in processes():
        by_parent.setdefault(process.ppid, []).append(process)
    found: list[Process] = []
    pending = [root]
    while pending:
        children = by_parent.get(pending.pop(), [])
        found.extend(children)
        pending.extend(child.pid for child in children)
    return found


def _reap(children: list[Process]) -> None:
    """Reap this process's exited children (by pid: never one still running)."""
    me = os.getpid()
    for child in children:
        if child.exited and child.ppid == me:
            with suppress(ChildProcessError):  # its owner (trio, subprocess) reaped it first
                os.waitpid(child.pid, os.WNOHANG)


class ChildWatch:
    """The plugin's state for one session."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        #: The test after which each pid was first seen alive.
        self.first_seen: dict[int, str] = {}
        #: What the run left alive, for the terminal summary.
        self.left: list[Process] = []

    def alive(self, *, reap: bool) -> list[Process]:
        found = descendants(self.pid)
        if reap:
            _reap(found)
        return [p for p in found if not p.exited]

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        # No reaping here: a fixture's child that exited between tests is still
        # its owner's to wait for (a reaped pid reads as exit status 0).
        for process in self.alive(reap=False):
            self.first_seen.setdefault(process.pid, nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        deadline = time.monotonic() + GRACE_SECONDS
        while (left := self.alive(reap=True)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.left = left
        if not left:
            return
        for process in left:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.1)
        self.alive(reap=True)  # reaps those that were this process's children
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.left:
            return
        terminalreporter.section("processes left alive by the test run", red=True, bold=True)
        terminalreporter.line(
            f"{len(self.left)} process(es) outlived the tests that started them; "
            "killed now, and the run fails (tests/children.py):"
        )
        for process in self.left:
            after = self.first_seen.get(process.pid, "(first seen at the end of the session)")
            terminalreporter.line(
                f"  pid {process.pid} pgid {process.pgid}, first seen after {after}:\n"
                f"    {process.command[:COMMAND_CHARS]}"
            )


def pytest_configure(config: pytest.Config) -> None:
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    config.pluginmanager.register(ChildWatch(), "trio_esper_child_watch")
