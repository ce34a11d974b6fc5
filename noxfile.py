"""The one entry point: ``python3 noxfile.py -s tests lint typing`` is what CI runs.

Run as a script, this file brings nox itself (``python3 -m nox`` works too
where nox is installed): when nox cannot be imported, it is installed with
pip into ``.nox/bootstrap`` (``pip --target``, which a PEP 668 "externally
managed" system Python such as Debian's or Ubuntu's allows, unlike a plain
``pip install``), and every session then makes its own virtualenv.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: Where ``python3 noxfile.py`` puts nox when this Python has none.
BOOTSTRAP = Path(
    os.environ.get("TRIO_ESPER_NOX_BOOTSTRAP", Path(__file__).parent / ".nox" / "bootstrap")
)
#: The nox series this file is written for.
NOX_REQUIREMENT = "nox>=2025.5"


def _bootstrap_nox() -> None:
    """Make sure nox runs this file: in this interpreter if it has nox, else
    in a virtualenv of its own (made once, then reused), re-executing there.

    The virtualenv is made with ``virtualenv`` installed by ``pip --target``,
    which a PEP 668 "externally managed" system Python (Debian's, Ubuntu's)
    allows, and which needs neither ``python3-venv`` nor ``ensurepip``.
    """
    if importlib.util.find_spec("nox") is not None:
        return
    python = BOOTSTRAP / "venv" / "bin" / "python"
    if not python.exists():
        print(f"noxfile.py: installing nox into {BOOTSTRAP}", file=sys.stderr)
        packages = BOOTSTRAP / "virtualenv"
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
        steps = [
            ([*pip, "--upgrade", "--target", str(packages), "virtualenv"], {}),
            (
                [sys.executable, "-m", "virtualenv", "--quiet", str(python.parent.parent)],
                {"PYTHONPATH": str(packages)},
            ),
            ([str(python), "-m", "pip", "install", "--quiet", NOX_REQUIREMENT], {}),
        ]
        for command, env in steps:
            if subprocess.run(command, env={**os.environ, **env}, check=False).returncode:
                sys.exit(
                    f"noxfile.py: cannot install nox ({' '.join(command[:4])} failed); "
                    "install pip first (Debian/Ubuntu: apt-get install python3-pip), or nox"
                )
    os.execv(python, [str(python), __file__, *sys.argv[1:]])


if __name__ == "__main__":
    _bootstrap_nox()

import nox  # noqa: E402

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True
# A session that cannot find its interpreter fails; it never skips with exit 0.
nox.options.error_on_missing_interpreters = True

#: Sessions run on the Python that runs nox (any the package supports, 3.11+),
#: not a pinned version a machine may not have.
PYTHON = None
#: Debian packages the browser tests drive (real headless Chromium).
BROWSER_PACKAGES = ["chromium", "chromium-driver"]
#: Debian packages other tests drive: curl (the README's commands, TLS),
#: redis-server (the backplane's tests start their own).
TOOL_PACKAGES = ["curl", "redis-server"]
LINT_PATHS = ["trio_esper", "tests", "examples", "benchmarks", "noxfile.py"]


def _ensure_browser(session: nox.Session) -> None:
    """Install Chromium, ChromeDriver, curl and redis-server from Debian if missing."""
    tools = ("chromium", "chromedriver", "curl", "redis-server")
    if all(shutil.which(tool) for tool in tools):
        return
    if os.geteuid() != 0:
        session.error(
            "the tests need chromium, chromedriver, curl and redis-server: "
            "sudo apt-get install chromium chromium-driver curl redis-server"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    packages = [*BROWSER_PACKAGES, *TOOL_PACKAGES]
    session.run("apt-get", "install", "-y", "-qq", *packages, external=True, env=env)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite, browser tests included."""
    _ensure_browser(session)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def full(session: nox.Session) -> None:
    """The whole suite with every lane test on both lanes, the slow suites' quart lane
    included (TRIO_ESPER_LANES=both; the default run takes their fast lane alone:
    tests/conftest.py)."""
    _ensure_browser(session)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"TRIO_ESPER_LANES": "both"})


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
def run(session: nox.Session) -> None:
    """Run a command with the package installed: ``-s run -- trio-esper token ...``."""
    if not session.posargs:
        session.error("give the command after --, e.g. -s run -- python examples/subscribe.py T")
    session.install("-e", ".")
    # The command's stderr stays its own (nox merges it into stdout by default, and logs
    # on stderr), so `T=$(python3 noxfile.py -s run -- trio-esper token ...)` is the token.
    session.run(*session.posargs, stderr=None)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Rewrite docs/configuration.md's table of settings from their declaration (the Config
    fields in trio_esper/config.py); tests/test_config.py fails while the two differ."""
    session.install("-e", ".")
    session.run(
        "python",
        "-c",
        "from pathlib import Path; from trio_esper.config import with_readme_table; "
        "page = Path('docs/configuration.md'); "
        "page.write_text(with_readme_table(page.read_text()))",
    )


@nox.session(python=PYTHON)
def docs_site(session: nox.Session) -> None:
    """Build the documentation site (docs/, mkdocs.yml) into site/; a warning fails it
    (``mkdocs build --strict``): a broken link or anchor, a page left out of the nav."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python=PYTHON, venv_backend="none")
def dev(session: nox.Session) -> None:
    """A virtualenv to work in, ``.venv``, with the package installed editable and the
    test extra: ``source .venv/bin/activate``, then ``trio-esper``, ``pytest``. Made with
    virtualenv (nox's own dependency), which a Python without ``ensurepip`` can run."""
    python = Path(".venv", "bin", "python")
    if not python.exists():
        session.run(sys.executable, "-m", "virtualenv", "--quiet", ".venv")
    session.run(str(python), "-m", "pip", "install", "--quiet", "-e", ".[test]")
    session.log("ready: source .venv/bin/activate")


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the broker: ``python3 noxfile.py -s serve -- --port 3000``."""
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
def schemathesis(session: nox.Session) -> None:
    """tests/test_openapi.py with 1000 examples an operation and schemathesis's coverage
    phase (boundary values), which the default run leaves out to stay under a minute.

    ``SCHEMATHESIS_EXAMPLES=5000 python3 -m nox -s schemathesis -- -x``
    """
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "tests/test_openapi.py",
        *session.posargs,
        env={
            "SCHEMATHESIS_EXAMPLES": os.environ.get("SCHEMATHESIS_EXAMPLES", "1000"),
            "SCHEMATHESIS_PHASES": "examples,coverage,fuzzing",
        },
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


@nox.session(python=PYTHON)
def bench_h2(session: nox.Session) -> None:
    """Fan-out over HTTP/2 against HTTP/1.1, plaintext and over TLS, in one run
    (benchmarks/h2_fanout.py): deliveries/s and broker CPU per delivery, subscribe and
    publish.

    ``python3 -m nox -s bench_h2 -- --repeat 3 --subscribers 200 --modes h1-tls,h2-tls``
    """
    session.install("-e", ".")
    session.run("python", "benchmarks/h2_fanout.py", *session.posargs)


if __name__ == "__main__":
    os.chdir(Path(__file__).parent)  # where nox looks for this file, and runs sessions
    nox.main()
