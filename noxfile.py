"""The one entry point: ``python3 -m nox -s tests lint typing`` is what CI runs."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
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
