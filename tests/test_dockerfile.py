"""The Dockerfile, without Docker (no image can be built on these machines).

What ``docker build`` and ``docker run`` would do is done here from the
Dockerfile's own text: the build context is what ``.dockerignore`` leaves, the
``COPY`` lines pick from it, the ``RUN``'s ``pip install`` builds the package
from that, and the ``ENTRYPOINT`` and ``CMD`` run with the ``ENV`` defaults
and ``WORKDIR``, the ``VOLUME`` being a temporary directory. The one change is
``ESPER_BIND=127.0.0.1`` and a free port in ``ESPER_PORT`` (as ``docker run -e``
would set them), since tests bind 127.0.0.1 only. The ``HEALTHCHECK`` command
runs exactly as written.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from .conftest import STEP_SECONDS, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS = ROOT / "constraints.txt"
#: Building the package from the staged context (setuptools, no network).
BUILD_SECONDS = 120
#: `docker stop` sends STOPSIGNAL, then kills after this long.
DOCKER_STOP_SECONDS = 10.0
DURATION = re.compile(r"(\d+)(ms|s|m)")


def instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction: comments dropped, lines
    continued with a trailing backslash joined, as Docker's parser does."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def exec_form(arguments: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for shell form."""
    if not arguments.startswith("["):
        return None
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), arguments
    assert all(isinstance(item, str) for item in parsed), arguments
    return parsed


def seconds(duration: str) -> float:
    match = DURATION.fullmatch(duration)
    assert match, f"unsupported duration {duration!r}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


@dataclass
class Dockerfile:
    steps: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [arguments for name, arguments in self.steps if name == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"{keyword}: expected one instruction, found {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        """Every ``ENV key=value ...``, later ones winning."""
        values: dict[str, str] = {}
        for arguments in self.all("ENV"):
            for word in shlex.split(arguments):
                key, equals, value = word.partition("=")
                assert equals, f"ENV {arguments}: use the key=value form"
                values[key] = value
        return values

    def volume(self) -> str:
        volumes = exec_form(self.one("VOLUME")) or self.one("VOLUME").split()
        assert len(volumes) == 1, volumes
        return volumes[0]

    def command(self) -> list[str]:
        """What the container runs: ENTRYPOINT then CMD, both exec form (a
        shell-form ENTRYPOINT would ignore CMD and swallow SIGTERM)."""
        entrypoint = exec_form(self.one("ENTRYPOINT"))
        assert entrypoint is not None, "ENTRYPOINT must be exec form"
        cmd = exec_form(self.one("CMD")) if self.all("CMD") else []
        assert cmd is not None, "CMD must be exec form"
        return [*entrypoint, *cmd]

    def healthcheck(self) -> tuple[dict[str, float], list[str]]:
        """The health check's timing options and its command (a shell-form
        command as ``/bin/sh -c``, as Docker runs it)."""
        match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.+)", self.one("HEALTHCHECK"))
        assert match, "HEALTHCHECK must be `[OPTIONS] CMD command`"
        options = {
            name: seconds(value)
            for name, value in re.findall(r"--([a-z-]+)=(\S+)", match.group(1))
            if name != "retries"
        }
        command = exec_form(match.group(2)) or ["/bin/sh", "-c", match.group(2)]
        return options, command


def supported_pythons() -> tuple[str, ...]:
    """noxfile.py's SUPPORTED_PYTHONS, the series ``nox -s tests_all`` runs."""
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets) == "SUPPORTED_PYTHONS":
            found = ast.literal_eval(node.value)
            assert isinstance(found, tuple), found
            return found
    raise AssertionError("noxfile.py has no SUPPORTED_PYTHONS")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(instructions(DOCKERFILE.read_text()))


def ignore_patterns() -> list[re.Pattern[str]]:
    """.dockerignore as regular expressions over context-relative paths, with
    Docker's rules: ``*`` and ``?`` stay within a path segment, ``**/`` spans
    any number of directories, and a pattern that matches a directory
    excludes everything under it. This file needs no ``!`` exceptions."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), f"exceptions are not emulated here: {line}"
        assert "[" not in line, f"character classes are not emulated here: {line}"
        text = os.path.normpath(line).lstrip("/")
        regex = re.escape(text).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append(re.compile(regex))
    return patterns


def in_context(path: str, patterns: list[re.Pattern[str]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return not any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


def context_files() -> Iterator[str]:
    """Every file of the build context, relative to the repository root."""
    patterns = ignore_patterns()
    for directory, subdirectories, files in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT)
        subdirectories[:] = [
            d for d in subdirectories if in_context((relative / d).as_posix(), patterns)
        ]
        for name in files:
            path = (relative / name).as_posix()
            if in_context(path, patterns):
                yield path


def stage_copies(dockerfile: Dockerfile, image_root: Path) -> None:
    """Do the COPY instructions into ``image_root``, from the context."""
    context = set(context_files())
    for arguments in dockerfile.all("COPY"):
        *sources, destination = exec_form(arguments) or arguments.split()
        assert not any(s.startswith("--") for s in sources), arguments
        for source in sources:
            found = [p for p in context if p == source or p.startswith(source + "/")]
            assert found, f"COPY {source}: not in the build context (.dockerignore?)"
            for path in found:
                if path == source:  # a file: into the directory, or as the name
                    into = (
                        destination + Path(path).name if destination.endswith("/") else destination
                    )
                else:  # a directory: its contents
                    into = f"{destination.rstrip('/')}/{path.removeprefix(source + '/')}"
                target = image_root / into.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / path, target)


@dataclass
class Installed:
    """The package as the image's ``RUN pip install`` builds it."""

    site: Path

    @property
    def scripts(self) -> Path:
        return self.site / "bin"


@pytest.fixture(scope="module")
def installed(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    image_root = tmp_path_factory.mktemp("image")
    stage_copies(dockerfile, image_root)
    runs = " ".join(dockerfile.all("RUN"))
    match = re.search(r"pip install --no-cache-dir -c (/\S+) (/\S+)", runs)
    assert match, f"no `pip install --no-cache-dir -c CONSTRAINTS PATH` in RUN: {runs}"
    constraints, source = (image_root / path.lstrip("/") for path in match.groups())
    # The image installs the releases CI tested: the repository's constraints.txt.
    assert constraints.read_bytes() == CONSTRAINTS.read_bytes()
    site = tmp_path_factory.mktemp("site-packages")
    # Dependencies come from this test environment (installed with the same
    # constraints); the build backend too (--no-build-isolation): the build
    # machine has no network.
    pip = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps"]
    done = subprocess.run(
        [*pip, "-c", str(constraints), "--no-build-isolation", "--target", str(site), str(source)],
        capture_output=True,
        timeout=BUILD_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return Installed(site)


def test_declared_facts(dockerfile: Dockerfile) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = dockerfile.one("FROM")
    match = re.fullmatch(r"python:(3\.\d+)-slim", base)
    assert match, f"FROM {base}: expected an official slim Python image"
    minimum = re.fullmatch(r">=(3\.\d+)", project["requires-python"])
    assert minimum
    assert tuple(map(int, match[1].split("."))) >= tuple(map(int, minimum[1].split(".")))
    assert match[1] in supported_pythons(), "CI's tests_all runs the image's Python series"

    user = dockerfile.one("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "USER by number: runAsNonRoot can only check a numeric uid"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    runs = " ".join(dockerfile.all("RUN"))
    assert f"--uid {uid}" in runs, "the user is created with the uid USER names"
    assert f"--gid {gid}" in runs

    env = dockerfile.env()
    assert dockerfile.one("EXPOSE") == "3000" == env["ESPER_PORT"]
    assert env["ESPER_BIND"] == "0.0.0.0", "reachable from outside the container"
    volume = dockerfile.volume()
    assert env["ESPER_HISTORY"] == f"sqlite:{volume}/history.db", "history in the volume"
    assert re.search(rf"chown \S+ {re.escape(volume)}\b", runs), "the user owns the volume"
    assert dockerfile.one("WORKDIR") == volume
    assert dockerfile.one("STOPSIGNAL") == "SIGTERM"

    command = dockerfile.command()
    assert command[0] in project["scripts"], "ENTRYPOINT is the package's console script"
    options, health = dockerfile.healthcheck()
    assert health[0] == "python", "slim images have no curl"
    assert options["timeout"] <= options["interval"]


def test_context_has_the_package_and_nothing_generated(installed: Installed) -> None:
    files = set(context_files())
    assert {"pyproject.toml", "README.md", "trio_esper/__init__.py"} <= files
    assert not [f for f in files if f.startswith((".git/", ".nox/", "tests/"))]
    assert not [f for f in files if "__pycache__" in f or ".egg-info/" in f]
    # The build took the dashboard's static files along (package data).
    assert (installed.site / "trio_esper" / "dashboard" / "index.html").is_file()
    assert (installed.scripts / "trio-esper").is_file()
    # What the entry command runs below is this build, not the checkout.
    where = subprocess.run(
        [sys.executable, "-c", "import trio_esper; print(trio_esper.__file__)"],
        env={**os.environ, "PYTHONPATH": str(installed.site)},
        cwd=installed.site,
        capture_output=True,
        check=True,
    )
    assert Path(where.stdout.decode().strip()).is_relative_to(installed.site)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
async def test_entry_command_serves_and_the_health_check_follows_it(
    dockerfile: Dockerfile, installed: Installed, tmp_path: Path, tls: bool
) -> None:
    volume = dockerfile.volume()
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    # The container's environment: the image's ENV with the volume here, then
    # what `docker run -e` would add. Nothing of this shell's ESPER_* leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    env |= {k: v.replace(volume, str(data)) for k, v in dockerfile.env().items()}
    env |= {"ESPER_BIND": "127.0.0.1", "ESPER_PORT": str(port)}
    # Docker passes the client's proxy settings in; the check must not use them.
    env |= {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env |= {"NO_PROXY": "127.0.0.0/8,localhost"}
    scheme = "http"
    if tls:  # the port speaks TLS only (as with ACME): the check must follow it there
        ca = trustme.CA()
        cert = ca.issue_cert("events.example.com")
        cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "cert.pem")
        env |= {"ESPER_CERTFILE": str(tmp_path / "cert.pem")}
        env |= {"ESPER_KEYFILE": str(tmp_path / "cert.pem")}
        scheme = "https"
    env["PYTHONPATH"] = str(installed.site)
    # `trio-esper` is the built package's script; `python`, this interpreter.
    env["PATH"] = os.pathsep.join(
        [str(installed.scripts), str(Path(sys.executable).parent), env.get("PATH", "")]
    )
    options, health_check = dockerfile.healthcheck()

    async def check_health() -> int:
        with trio.fail_after(options["timeout"] + STEP_SECONDS):
            done = await trio.run_process(
                health_check, env=env, capture_stdout=True, capture_stderr=True, check=False
            )
        return done.returncode

    command = dockerfile.command()
    # A session of its own, as the container's processes are: all of them end with it.
    broker = await trio.lowlevel.open_process(
        command,
        env=env,
        cwd=str(data),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert broker.stderr is not None
    try:
        # Docker's start period: failures do not count until the first success.
        with trio.move_on_after(options["start-period"]) as waiting:
            while await check_health() != 0:
                assert broker.poll() is None, "the broker exited"
                await trio.sleep(0.1)
        assert not waiting.cancelled_caught, "never healthy within the start period"
        async with httpx.AsyncClient(timeout=STEP_SECONDS, verify=False) as client:
            health = await client.get(f"{scheme}://127.0.0.1:{port}/health")
            assert health.json()["status"] == "ok"
            ready = await client.get(f"{scheme}://127.0.0.1:{port}/ready")
            assert ready.json() == {"status": "ready"}
        assert (data / "history.db").is_file(), "the SQLite history lives in the volume"
        logged = await broker.stderr.receive_some()
        assert f"listening on {scheme}://127.0.0.1:{port}".encode() in logged

        broker.send_signal(signal.Signals[dockerfile.one("STOPSIGNAL")])
        with trio.fail_after(DOCKER_STOP_SECONDS):
            assert await broker.wait() == 0, "a clean exit before docker stop kills"
        assert await check_health() == 1, "1 is Docker's 'unhealthy'"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group has ended
            os.killpg(broker.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await broker.wait()
            await broker.stderr.aclose()
