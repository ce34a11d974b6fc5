"""The one entry point: ``python3 noxfile.py -s tests_all lint typing`` is what CI runs.

``-s tests`` runs the suite on the Python that runs nox; ``-s tests_all`` on every
CPython series the package supports (3.11, 3.12 and 3.13, the Dockerfile's among
them), each found on PATH or in pyenv's versions; a series the machine lacks fails.

Run as a script, this file brings nox itself (``python3 -m nox`` works too
where nox is installed): when nox cannot be imported, it is installed with
pip into ``.nox/bootstrap`` (``pip --target``, which a PEP 668 "externally
managed" system Python such as Debian's or Ubuntu's allows, unlike a plain
``pip install``), and every session then makes its own virtualenv.
"""

from __future__ import annotations

import functools
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
        # The versions of nox and virtualenv that CI tested (constraints.txt).
        pinned = ["-c", str(Path(__file__).parent / "constraints.txt")]
        steps = [
            ([*pip, "--upgrade", "--target", str(packages), "virtualenv", *pinned], {}),
            (
                [sys.executable, "-m", "virtualenv", "--quiet", str(python.parent.parent)],
                {"PYTHONPATH": str(packages)},
            ),
            ([str(python), "-m", "pip", "install", "--quiet", NOX_REQUIREMENT, *pinned], {}),
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
#: Every CPython series the package supports (pyproject's requires-python up to the newest
#: it is tested on): ``tests_all`` runs the suite on each, and fails if one is missing.
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
#: Exact versions of everything the sessions install (its header says how to regenerate
#: it); every ``session.install`` passes ``*CONSTRAINED``, as the Dockerfile's pip does.
CONSTRAINTS = "constraints.txt"
CONSTRAINED = ("-c", CONSTRAINTS)
#: The tools of the lint and typing sessions (constraints.txt pins their dependencies).
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
#: A C HTTP parser, measured against the edge's own reader (bench_cost only).
HTTPTOOLS = "httptools==0.9.0"
#: Debian packages the browser tests drive (real headless Chromium).
BROWSER_PACKAGES = ["chromium", "chromium-driver"]
#: Debian packages other tests drive: curl (the documentation's commands, TLS),
#: redis-server (the backplane's tests start their own).
TOOL_PACKAGES = ["curl", "redis-server"]
LINT_PATHS = ["trio_esper", "tests", "examples", "benchmarks", "docs/hooks", "noxfile.py"]
#: Pebble, Let's Encrypt's ACME test server, and its DNS server (tests/test_acme.py), built
#: with ``go install`` from the Go module proxy once per version into :data:`PEBBLE_BIN`; the
#: tests find them through the variable :func:`_ensure_pebble` sets.
PEBBLE_MODULE = "github.com/letsencrypt/pebble/v2"
PEBBLE_VERSION = "v2.10.3"
PEBBLE_COMMANDS = ("pebble", "pebble-challtestsrv")
PEBBLE_BIN = Path(__file__).parent / ".nox" / "pebble" / PEBBLE_VERSION


def _ensure_pebble(session: nox.Session) -> dict[str, str]:
    """Build Pebble's commands into :data:`PEBBLE_BIN` if missing; the tests' environment."""
    if not all((PEBBLE_BIN / command).exists() for command in PEBBLE_COMMANDS):
        go = shutil.which("go") or next(
            (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if Path(p).exists()), None
        )
        if go is None:
            session.error("tests/test_acme.py runs Pebble, built with Go: install Go 1.24+")
        packages = [f"{PEBBLE_MODULE}/cmd/{c}@{PEBBLE_VERSION}" for c in PEBBLE_COMMANDS]
        env = {"GOBIN": str(PEBBLE_BIN), "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}
        session.run(go, "install", *packages, external=True, env=env)
    return {"TRIO_ESPER_PEBBLE_BIN": str(PEBBLE_BIN)}


#: The npm packages tests/test_mercure_clients.py runs in Node, pinned by the lock file there.
NODE_TESTS = Path(__file__).parent / "tests" / "js"


def _ensure_node_packages(session: nox.Session) -> None:
    """Install tests/js's npm packages as its package-lock.json pins them (``npm ci``)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        session.error("tests/test_mercure_clients.py runs Node.js 20+ and npm: install them")
    session.run("npm", "ci", "--prefix", str(NODE_TESTS), "--no-audit", "--no-fund", external=True)


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
    """The whole test suite, browser tests included, on the Python that runs nox."""
    _ensure_browser(session)
    _ensure_node_packages(session)
    session.install("-e", ".[test]", *CONSTRAINED)
    session.run("pytest", *session.posargs, env=_ensure_pebble(session))


@nox.session(python=PYTHON)
def full(session: nox.Session) -> None:
    """The whole suite with every lane test on both lanes, the slow suites' quart lane
    included (TRIO_ESPER_LANES=both; the default run takes their fast lane alone:
    tests/conftest.py)."""
    _ensure_browser(session)
    _ensure_node_packages(session)
    session.install("-e", ".[test]", *CONSTRAINED)
    session.run(
        "pytest", *session.posargs, env={"TRIO_ESPER_LANES": "both", **_ensure_pebble(session)}
    )


def _pyenv_root() -> Path:
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if pyenv := shutil.which("pyenv"):
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    return Path.home() / ".pyenv"


def _release(path: Path) -> tuple[int, ...]:
    """(3, 12, 1) for pyenv's ``versions/3.12.1/bin/python3.12``; () for other names."""
    parts = path.parent.parent.name.split(".")
    return tuple(map(int, parts)) if all(p.isdigit() for p in parts) else ()


@functools.cache
def find_cpython(series: str) -> str | None:
    """The interpreter of CPython ``series`` (``"3.12"``) on this machine, or None.

    ``pythonX.Y`` on PATH if it runs, else the newest release of the series that pyenv
    has installed. pyenv's own directory is read rather than its shims on PATH, which
    run only the versions ``pyenv global`` names (here 3.11 alone, with 3.12 and 3.13
    installed beside it). Each candidate is run once to check that it is CPython
    ``series``.
    """
    root = _pyenv_root()
    candidates = [
        Path(found)
        for found in [shutil.which(f"python{series}")]
        if found and not Path(found).is_relative_to(root / "shims")
    ]
    installed = (root / "versions").glob(f"{series}.*/bin/python{series}")
    candidates += sorted((p for p in installed if _release(p)), key=_release, reverse=True)
    probe = "import platform, sys; print(platform.python_implementation(), *sys.version_info[:2])"
    for candidate in candidates:
        try:
            done = subprocess.run(
                [candidate, "-c", probe], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.stdout.split() == ["CPython", *series.split(".")]:
            return str(candidate)
    return None


def _tests_on(series: str) -> None:
    """Register ``tests-X.Y``: the suite on CPython X.Y, in its own virtualenv
    (``.nox/tests-X-Y``); where the machine has no X.Y, a session that fails saying so."""
    interpreter = find_cpython(series)

    def run_suite(session: nox.Session) -> None:
        if interpreter is None:
            session.error(
                f"no CPython {series} on this machine (looked for python{series} on PATH "
                f"and in {_pyenv_root() / 'versions'}): install it, e.g. pyenv install {series}"
            )
        tests(session)

    run_suite.__doc__ = f"The whole test suite on CPython {series} ({interpreter or 'missing'})."
    nox.session(name=f"tests-{series}", python=interpreter or False)(run_suite)


for _series in SUPPORTED_PYTHONS:
    _tests_on(_series)


@nox.session(python=False)
def tests_all(session: nox.Session) -> None:
    """The suite on every supported CPython, one session each (tests-3.11, tests-3.12,
    ...; posargs go to each pytest). A series this machine lacks fails its session:
    "supports 3.11 or newer" is checked on all of them or the run fails."""
    for series in SUPPORTED_PYTHONS:
        session.notify(f"tests-{series}", session.posargs)


#: The extras the sessions install, whose packages constraints.txt pins (typing-legacy's
#: trio-typing is installed by none).
CONSTRAINED_EXTRAS = ("test", "docs")
CONSTRAINTS_HEADER = """\
# Exact versions of every package the nox sessions and the Dockerfile install: the
# package's dependencies, its test and docs extras, ruff, mypy and nox, and what they
# depend on. pip reads it with -c, so it pins a package only when something installs it.
# pyproject.toml says which series the package works with; this file, which release of
# each was tested.
#
# Written by `python3 noxfile.py -s constraints`, in a fresh virtualenv on the oldest
# supported Python: that keeps the versions listed here and adds what pyproject.toml
# newly needs; `-s constraints -- --upgrade` takes the newest releases pyproject.toml
# allows. Then run `python3 noxfile.py -s tests_all` and commit this file.
"""


@nox.session(python=find_cpython(SUPPORTED_PYTHONS[0]), reuse_venv=False)
def constraints(session: nox.Session) -> None:
    """Rewrite constraints.txt from a fresh install (its header says when and how)."""
    if find_cpython(SUPPORTED_PYTHONS[0]) is None:
        session.error(f"the pins are made on the oldest supported Python, {SUPPORTED_PYTHONS[0]}")
    keep = CONSTRAINED if Path(CONSTRAINTS).exists() and "--upgrade" not in session.posargs else ()
    extras = ",".join(CONSTRAINED_EXTRAS)
    session.install("-e", f".[{extras}]", RUFF, MYPY, NOX_REQUIREMENT, "virtualenv", *keep)
    frozen = session.run(
        "python", "-m", "pip", "freeze", "--all", "--exclude-editable", silent=True
    )
    assert isinstance(frozen, str)
    # pip itself is the installer, which the sessions do not pin.
    pins = [line for line in frozen.splitlines() if "==" in line and not line.startswith("pip==")]
    body = "\n".join(sorted(pins, key=str.lower))
    Path(CONSTRAINTS).write_text(f"{CONSTRAINTS_HEADER}{body}\n")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install(RUFF, *CONSTRAINED)
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on the package, against trio's own (inline) annotations.

    trio-typing is deliberately not installed here: its trio-stubs shadow
    trio's annotations and report false errors on current trio (docs/development.md, Typing).
    """
    session.install("-e", ".", MYPY, *CONSTRAINED)
    session.run("mypy", "--strict")


@nox.session(python=PYTHON)
def run(session: nox.Session) -> None:
    """Run a command with the package installed: ``-s run -- trio-esper token ...``."""
    if not session.posargs:
        session.error("give the command after --, e.g. -s run -- python examples/subscribe.py T")
    session.install("-e", ".", *CONSTRAINED)
    # The command's stderr stays its own (nox merges it into stdout by default, and logs
    # on stderr), so `T=$(python3 noxfile.py -s run -- trio-esper token ...)` is the token.
    session.run(*session.posargs, stderr=None)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Rewrite docs/configuration.md's table of settings from their declaration (the Config
    fields in trio_esper/config.py); tests/test_config.py fails while the two differ."""
    session.install("-e", ".", *CONSTRAINED)
    session.run(
        "python",
        "-c",
        "from pathlib import Path; from trio_esper.config import with_settings_table; "
        "page = Path('docs/configuration.md'); "
        "page.write_text(with_settings_table(page.read_text()))",
    )


@nox.session(python=PYTHON)
def docs_site(session: nox.Session) -> None:
    """Build the documentation site (docs/, mkdocs.yml) into site/; a warning fails it
    (``mkdocs build --strict``): a broken link or anchor, a page left out of the nav."""
    session.install("-e", ".[docs]", *CONSTRAINED)
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python=PYTHON, venv_backend="none")
def dev(session: nox.Session) -> None:
    """A virtualenv to work in, ``.venv``, with the package installed editable and the
    test extra: ``source .venv/bin/activate``, then ``trio-esper``, ``pytest``. Made with
    virtualenv (nox's own dependency), which a Python without ``ensurepip`` can run."""
    python = Path(".venv", "bin", "python")
    if not python.exists():
        session.run(sys.executable, "-m", "virtualenv", "--quiet", ".venv")
    session.run(str(python), "-m", "pip", "install", "--quiet", "-e", ".[test]", *CONSTRAINED)
    session.log("ready: source .venv/bin/activate")


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the broker: ``python3 noxfile.py -s serve -- --port 3000``."""
    session.install("-e", ".", *CONSTRAINED)
    session.run("trio-esper", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The seven scenarios against trio_esper (a subprocess), one table and JSON.

    ``python3 -m nox -s bench -- --repeat 3 --scenarios fanout,latency``
    """
    session.install("-e", ".", *CONSTRAINED)
    session.run("python", "benchmarks/compare.py", "--brokers", "trio_esper", *session.posargs)


@nox.session(python=PYTHON)
def bench_compare(session: nox.Session) -> None:
    """The same scenarios against trio_esper and Nchan, interleaved in one run, with ratios.

    ``python3 -m nox -s bench_compare -- --repeat 3 --generator loadgen``
    """
    session.install("-e", ".", *CONSTRAINED)
    session.run(
        "python", "benchmarks/compare.py", "--brokers", "trio_esper,nchan", *session.posargs
    )


@nox.session(python=PYTHON)
def bench_cost(session: nox.Session) -> None:
    """Server CPU per publish request, layer by layer (h11, Hypercorn, Quart-Trio, fast lane)."""
    session.install("-e", ".", HTTPTOOLS, *CONSTRAINED)
    session.run("python", "benchmarks/request_cost.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_backplane(session: nox.Session) -> None:
    """One process against the same with the Redis backplane (``topics``,
    ``latency``), pinned, interleaved: ``-- --variants memory,redis@REV,redis``."""
    session.install("-e", ".", *CONSTRAINED)
    session.run("python", "benchmarks/backplane.py", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """tests/test_fuzz.py with many more examples than the default run's 150.

    ``TRIO_ESPER_FUZZ_EXAMPLES=20000 python3 -m nox -s fuzz -- -x``
    """
    session.install("-e", ".[test]", *CONSTRAINED)
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
    session.install("-e", ".[test]", *CONSTRAINED)
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
    session.install("-e", ".", *CONSTRAINED)
    session.run("python", "benchmarks/slow_readers.py", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Subscribe/disconnect soak (issue 10, point 8): 100,000 cycles, clean close and RST
    mixed, while publishing; must end with /stats clients and topics 0, the broker's open
    descriptors at their baseline, RSS within 10 MiB of its level after 10,000 cycles.
    Bounded: the churn stops at --cycles or --max-seconds (600), whichever comes first.

    ``python3 -m nox -s soak -- --cycles 20000 --sample-every 2000``
    """
    session.install("-e", ".", *CONSTRAINED)
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_h2(session: nox.Session) -> None:
    """Fan-out over HTTP/2 against HTTP/1.1, plaintext and over TLS, in one run
    (benchmarks/h2_fanout.py): deliveries/s and broker CPU per delivery, subscribe and
    publish.

    ``python3 -m nox -s bench_h2 -- --repeat 3 --subscribers 200 --modes h1-tls,h2-tls``
    """
    session.install("-e", ".", *CONSTRAINED)
    session.run("python", "benchmarks/h2_fanout.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_mercure(session: nox.Session) -> None:
    """The Mercure hub's figures (benchmarks/mercure.py): 1,000 URI-template subscribers
    against exact topics, memory per 10-topic subscription against single-topic ones;
    ``--scenarios fanout`` against the Mercure hub itself (../shared/bench/run_mercure.sh).

    ``python3 -m nox -s bench_mercure -- --scenarios fanout --repeat 3``
    """
    session.install("-e", ".", *CONSTRAINED)
    session.run("python", "benchmarks/mercure.py", *session.posargs)


if __name__ == "__main__":
    os.chdir(Path(__file__).parent)  # where nox looks for this file, and runs sessions
    nox.main()
