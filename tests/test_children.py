"""tests/children.py, the plugin that fails a run which leaves a process alive:
run on a small test file of its own in a child pytest, as the suite runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from .children import processes

ROOT = Path(__file__).resolve().parent.parent
#: A child pytest with a few tests, the plugin's grace period included.
RUN_SECONDS = 60.0

LEAKY = """
import subprocess

def test_leaves_its_child_running():
    subprocess.Popen(["sleep", "3141"])  # never waited for

def test_leaves_an_orphan():
    # The shell exits at once; its own child is re-parented, no longer a child of ours.
    subprocess.run(["sh", "-c", "sleep 2718 & exit 0"], check=True)

def test_waits_for_its_child():
    subprocess.run(["sleep", "0"], check=True)
"""

TIDY = """
import subprocess

def test_waits_for_its_children():
    subprocess.run(["sh", "-c", "sleep 0.1 & wait"], check=True)
    with subprocess.Popen(["sleep", "0"]) as child:
        child.wait()
"""


async def run_pytest(tmp_path: Path, tests: str) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "test_it.py").write_text(tests)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's options
    plugins = ["-p", "tests.children", "-p", "no:cacheprovider"]
    config = ["-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path)]
    with trio.fail_after(RUN_SECONDS):
        return await trio.run_process(
            [sys.executable, "-m", "pytest", *plugins, *config, str(tmp_path)],
            cwd=ROOT,  # `python -m` puts it on sys.path: tests.children imports
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def sleeping(seconds: str) -> list[int]:
    return [p.pid for p in processes() if p.command == f"sleep {seconds}" and not p.exited]


async def test_a_run_that_leaves_processes_fails_naming_them(tmp_path: Path) -> None:
    done = await run_pytest(tmp_path, LEAKY)
    output = done.stdout.decode()
    assert done.returncode == 1, output
    assert "3 passed" in output, "the tests themselves passed"
    assert "processes left alive by the test run" in output
    assert "2 process(es) outlived the tests that started them" in output
    assert "test_it.py::test_leaves_its_child_running:\n    sleep 3141" in output
    # The orphan is found although its parent is gone: pytest is its subreaper.
    assert "test_it.py::test_leaves_an_orphan:\n    sleep 2718" in output
    assert "test_waits_for_its_child" not in output.partition("left alive")[2]
    # And they were killed: nothing outlives the run.
    assert sleeping("3141") == sleeping("2718") == []


async def test_a_run_that_waits_for_its_children_passes(tmp_path: Path) -> None:
    done = await run_pytest(tmp_path, TIDY)
    output = done.stdout.decode()
    assert done.returncode == 0, output
    assert "left alive" not in output
