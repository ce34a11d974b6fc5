"""The one entry point: ``python3 -m nox -s tests lint typing`` is what CI runs."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True
# A session that cannot find its interpreter fails; it never skips with exit 0.
nox.options.error_on_missing_interpreters = True

#: Sessions run on the Python that runs nox (any the package supports, 3.11+),
#: not a pinned version a machine may not have.
PYTHON = None
#: Debian packages the browser tests drive (real headless Chromium).
BROWSER_PACKAGES = ["chromium", "chromium-driver"]
LINT_PATHS = ["trio_esper", "tests", "examples", "benchmarks", "noxfile.py"]


def _ensure_browser(session: nox.Session) -> None:
    """Install Chromium and ChromeDriver from Debian if they are missing."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.geteuid() != 0:
        session.error(
            "the browser tests need chromium and chromedriver: "
            "sudo apt-get install chromium chromium-driver"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", *BROWSER_PACKAGES, external=True, env=env)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, browser tests included."""
    _ensure_browser(session)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on the package, against trio's own (inline) annotations.

    trio-typing is deliberately not installed here: its trio-stubs shadow
    trio's annotations and report false errors on current trio (README).
    """
    session.install("-e", ".", "mypy==2.4.1")
    session.run("mypy", "--strict")


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the broker: ``python3 -m nox -s serve -- --port 3000``."""
    session.install("-e", ".")
    session.run("trio-esper", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The four scenarios against trio_esper (a subprocess), one table and JSON.

    ``python3 -m nox -s bench -- --repeat 3 --scenarios fanout,latency``
    """
    session.install("-e", ".")
    session.run("python", "benchmarks/compare.py", "--brokers", "trio_esper", *session.posargs)


@nox.session(python=PYTHON)
def bench_compare(session: nox.Session) -> None:
    """The same scenarios against trio_esper and Nchan, interleaved in one run, with ratios.

    ``python3 -m nox -s bench_compare -- --repeat 3 --generator loadgen``
    """
    session.install("-e", ".")
    session.run(
        "python", "benchmarks/compare.py", "--brokers", "trio_esper,nchan", *session.posargs
    )


@nox.session(python=PYTHON)
def bench_cost(session: nox.Session) -> None:
    """Server CPU per publish request, layer by layer (h11, Hypercorn, Quart-Trio, fast lane)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/request_cost.py", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """tests/test_fuzz.py with many more examples than the default run's 150.

    ``TRIO_ESPER_FUZZ_EXAMPLES=20000 python3 -m nox -s fuzz -- -x``
    """
    session.install("-e", ".[test]")
    examples = os.environ.get("TRIO_ESPER_FUZZ_EXAMPLES", "5000")
    session.run(
        "pytest",
        "tests/test_fuzz.py",
        *session.posargs,
        env={"TRIO_ESPER_FUZZ_EXAMPLES": examples},
    )


@nox.session(python=PYTHON)
def bench_slow(session: nox.Session) -> None:
    """Slow readers (issue 10, point 10): 1000 readers' latency with and without 100 stalled
    subscribers on their topic, the stalled ones dropped per --queue, the broker's memory.

    ``python3 -m nox -s bench_slow -- --repeat 3``
    """
    session.install("-e", ".")
    session.run("python", "benchmarks/slow_readers.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Subscribe/disconnect soak (issue 10, point 8): 100,000 cycles, clean close and RST
    mixed, while publishing; must end with /stats clients and topics 0, the broker's open
    descriptors at their baseline, RSS within 10 MiB of its level after 10,000 cycles.
    Bounded: the churn stops at --cycles or --max-seconds (600), whichever comes first.

    ``python3 -m nox -s soak -- --cycles 20000 --sample-every 2000``
    """
    session.install("-e", ".")
    session.run("python", "benchmarks/soak.py", *session.posargs)
