"""Every shell and Python block of README.md and the documentation (docs/, with
the files its pages include) is run or checked here, as a reader would run it.

:data:`CLAIMS` names, for each block, the test that runs it, or why it is not
run (Docker, the benchmark sessions, the test suite itself); a block that is
not claimed, or a claim that matches no block, fails
:func:`test_every_block_is_claimed`. Every shell block also passes
``bash -n`` and every Python block compiles. A block that is run, runs as
written, in bash (``-e``: a failing line fails it) or Python, against real
brokers on 127.0.0.1: port 3000 in the text becomes a free port (the same
text, so ``ESPER_PORT`` where a block gives no port), and commands that start
a server run in the background of a process group of their own, killed at the
end. The commands that use ``python3 noxfile.py`` run in a copy of the
repository, as a newcomer's checkout would.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from .conftest import STEP_SECONDS, free_port

ROOT = Path(__file__).resolve().parent.parent
#: The pages whose blocks are checked: the README, and the site's pages.
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\s`]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: pymdownx.snippets: a line that includes a file of the repository.
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)
SHELL = {"sh", "bash", "shell"}
PYTHON = {"python", "py"}
#: Long enough for pip to install the package into a fresh virtualenv.
INSTALL_SECONDS = 600.0
JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Block:
    page: str
    lang: str
    text: str

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text else ""


def _include(text: str) -> str:
    """The page as mkdocs sees it: each snippet line replaced by the file it names."""
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text().rstrip("\n"), text)


def page_blocks(page: str) -> list[Block]:
    text = _include((ROOT / page).read_text())
    return [Block(page, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in page_blocks(page)]


def checked_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.lang in SHELL | PYTHON]


# --- Which test runs each block, or why it is not run -------------------------------------

NOT_RUN = "not run: "
#: (page, the block's first line, up to its first "  #" comment) -> the test that runs it,
#: or NOT_RUN and the reason (those blocks get bash -n or compile() only).
CLAIMS: dict[tuple[str, str], str] = {
    ("README.md", "python3 noxfile.py -s serve"): "test_newcomer_commands",
    ("README.md", "python3 noxfile.py -s dev"): "test_newcomer_commands",
    ("README.md", "curl -N http://127.0.0.1:3000/subscribe/myTopic123"): "test_try_it",
    ("README.md", "printf 'event: greeting\\ndata: hello\\ndata: world\\n' |"): "test_try_it",
    ("README.md", "export ESPER_PUBLISHER_SECRET="): "test_newcomer_commands",
    (
        "README.md",
        "T=$(python3 noxfile.py -R -s run -- trio-esper token",
    ): "test_newcomer_commands",
    ("README.md", "export ESPER_SUBSCRIBER_SECRET="): "test_newcomer_commands",
    ("README.md", "curl -gN 'http://127.0.0.1:3000/.well-known/mercure"): "test_newcomer_commands",
    (
        "README.md",
        "TOKEN=$(python3 noxfile.py -R -s run -- trio-esper token",
    ): "test_newcomer_commands",
    ("docs/quickstart.md", "python3 noxfile.py -s serve"): "test_newcomer_commands",
    ("docs/quickstart.md", "python3 noxfile.py -s dev"): "test_newcomer_commands",
    ("docs/quickstart.md", "python3 noxfile.py -R -s run -- python examples/publish.py"): (
        "test_newcomer_commands"
    ),
    ("docs/quickstart.md", "export ESPER_PUBLISHER_SECRET="): "test_newcomer_commands",
    ("docs/quickstart.md", "curl -N http://127.0.0.1:3000/subscribe/myTopic123"): "test_try_it",
    ("docs/quickstart.md", "printf 'event: greeting\\ndata: hello\\ndata: world\\n' |"): (
        "test_try_it"
    ),
    ("docs/api.md", "curl -X POST -H 'Content-Type: text/plain'"): "test_plain_text_publish",
    ("docs/mercure.md", "export ESPER_PUBLISHER_SECRET="): "test_mercure_hub",
    ("docs/mercure.md", "curl -gN 'http://127.0.0.1:3000/.well-known/mercure"): "test_mercure_hub",
    ("docs/mercure.md", "TOKEN=$(python -c 'import jwt, sys;"): "test_mercure_hub",
    ("docs/client.md", "import trio"): "test_python_client",
    ("docs/embedding.md", "ESPER_HISTORY=sqlite:history.db hypercorn"): "test_under_hypercorn",
    ("docs/embedding.md", '"""trio_esper inside your own Quart-Trio application.'): (
        "test_mounted_example_imports"
    ),
    ("docs/embedding.md", "from functools import partial"): "test_in_a_trio_program",
    ("docs/topic-api.md", "B=http://127.0.0.1:3000"): "test_topic_api",
    ("docs/topic-api.md", "curl -N http://127.0.0.1:3000/api/v1/pubsubs/orders0001/events"): (
        "test_topic_api"
    ),
    ("docs/topic-api.md", 'curl -s --json \'{"event"'): "test_topic_api",
    ("docs/tokens.md", "trio-esper token --topic myTopic123 --publisher"): "test_token_command",
    ("docs/tokens.md", "python -c 'import jwt, time, sys;"): "test_token_with_pyjwt",
    ("docs/tokens.md", "unset ESPER_PUBLISHER_SECRET"): "test_key_pair",
    ("docs/tokens.md", "T=$(python -c 'import jwt, time, sys;"): "test_key_pair",
    ("docs/tls.md", "openssl req -x509 -newkey ec"): "test_tls",
    ("docs/tls.md", "curl --cacert cert.pem --http2 -N"): "test_tls",
    ("docs/scaling.md", "redis-server --port 6379"): "test_backplane",
    ("README.md", "trio-esper --acme-domain events.example.com --acme-email"): (
        NOT_RUN + "it needs a public name and ports 443 and 80 reachable from Let's Encrypt; "
        "tests/test_acme.py runs the same flags against Pebble on loopback"
    ),
    (
        "docs/acme.md",
        "trio-esper --acme-domain events.example.com --acme-email",
    ): (
        NOT_RUN + "a public name, and Let's Encrypt; tests/test_acme.py's "
        "test_the_documented_command_with_two_workers runs this line against Pebble on loopback"
    ),
    ("docs/acme.md", "trio-esper --acme-domain events.example.com \\"): (
        NOT_RUN + "a public name, and Let's Encrypt's staging directory; tests/test_acme.py "
        "gives --acme-directory (Pebble's) the same way"
    ),
    ("docs/acme.md", "docker run -d -p 443:3000 -p 80:8080"): (
        NOT_RUN + "Docker is not on this machine, nor a public name"
    ),
    ("docs/container.md", "docker build -t trio-esper ."): (
        NOT_RUN + "Docker is not on this machine; tests/test_dockerfile.py checks the image's "
        "install, ENTRYPOINT, ENV and health check without it, and test_container_page "
        "that this page names the Dockerfile's base image"
    ),
    ("docs/development.md", "python3 noxfile.py -s dev"): (
        NOT_RUN + "the sessions that run the test suite (this file among it), the linters, "
        "and rewrite or build these pages; CI runs them as sessions of their own "
        "(-s dev is run by test_newcomer_commands)"
    ),
    ("docs/development.md", "python3 noxfile.py -s bench"): (
        NOT_RUN + "measurements of minutes each on a quiet machine, some against Nchan"
    ),
    ("docs/benchmarks.md", "python3 -m nox -s bench"): (
        NOT_RUN + "BENCHMARKS.md's benchmark commands: measurements of minutes each, some "
        "against Nchan, meant for a quiet machine"
    ),
}


def claim_key(block: Block) -> tuple[str, str]:
    return block.page, block.first.split("  #")[0].rstrip()


def claim_of(block: Block) -> list[tuple[str, str]]:
    page, first = claim_key(block)
    return [key for key in CLAIMS if key[0] == page and first.startswith(key[1])]


def block(page: str, prefix: str) -> Block:
    """The one checked block of ``page`` whose first line starts with ``prefix``."""
    found = [
        b for b in page_blocks(page) if b.lang in SHELL | PYTHON and b.first.startswith(prefix)
    ]
    assert len(found) == 1, f"{page}: {len(found)} blocks start with {prefix!r}"
    return found[0]


def test_every_block_is_claimed() -> None:
    tests = {name for name, value in globals().items() if name.startswith("test_")}
    for b in checked_blocks():
        claims = claim_of(b)
        assert len(claims) == 1, f"{b.page}: block {b.first!r} is claimed {len(claims)} times"
        claim = CLAIMS[claims[0]]
        assert claim.startswith(NOT_RUN) or claim in tests, claim
    for key in CLAIMS:
        matched = [b for b in checked_blocks() if key in claim_of(b)]
        assert len(matched) == 1, f"the claim {key} matches {len(matched)} blocks"


def test_every_block_says_its_language() -> None:
    for b in all_blocks():
        assert b.lang, f"{b.page}: a block without a language ({b.first!r}): sh, python, text..."


@pytest.mark.parametrize("b", checked_blocks(), ids=lambda b: f"{b.page}:{b.first[:40]}")
def test_block_parses(b: Block) -> None:
    if b.lang in PYTHON:
        compile(b.text, f"{b.page}:{b.first}", "exec", flags=ast.PyCF_ONLY_AST)
        return
    checked = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
    assert checked.returncode == 0, f"{b.page}: {checked.stderr}"


# --- Running blocks -----------------------------------------------------------------------


def base_env(*, with_package: bool = True, **extra: str) -> dict[str, str]:
    """This environment without any ``ESPER_*`` setting; ``trio-esper`` and ``python``
    on PATH (this test run's virtualenv) unless ``with_package`` is false."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    here = str(Path(sys.executable).parent)
    paths = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != here]
    env["PATH"] = os.pathsep.join([here, *paths] if with_package else paths)
    if not with_package:
        env.pop("VIRTUAL_ENV", None)
    return {**env, **extra}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def localise(text: str, port: int) -> str:
    """The block with port 3000 (the docs' broker) made ``port``."""
    for host in ("127.0.0.1", "localhost"):
        text = text.replace(f"{host}:3000", f"{host}:{port}")
    return text.replace("--port 3000", f"--port {port}").replace(":3000/", f":{port}/")


def run_bash(
    script: str, cwd: Path, env: Mapping[str, str], timeout: float = STEP_SECONDS * 3
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{script}\nexit {done.returncode}\n{done.stderr}"
    return done


@dataclass
class Background:
    process: subprocess.Popen[bytes]
    output: Path
    errors: Path

    def text(self) -> str:
        """What it wrote on standard output so far."""
        return self.output.read_text(errors="replace")

    def log(self) -> str:
        """Both streams, for a failure's message."""
        return f"{self.text()}\n--- stderr ---\n{self.errors.read_text(errors='replace')}"

    def wait_for(self, needle: str, timeout: float = STEP_SECONDS) -> str:
        """Until the output holds ``needle``; fails if the process ends first, or at
        ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None
            text = self.text()
            if needle in text:
                return text
            assert not exited, f"exited {self.process.returncode} before {needle!r}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.log()}"
            time.sleep(0.05)


@contextmanager
def background(
    script: str, cwd: Path, env: Mapping[str, str], name: str = "background"
) -> Iterator[Background]:
    """``script`` in bash, in a process group of its own, its standard output and error
    in two files; the group gets SIGINT on exit, then SIGKILL if it is still there."""
    stem = cwd / f".{name}-{time.monotonic_ns()}"
    output, errors = stem.with_suffix(".out"), stem.with_suffix(".err")
    with output.open("wb") as sink, errors.open("wb") as errors_sink:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=errors_sink,
            start_new_session=True,
        )
    try:
        yield Background(process, output, errors)
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGINT, STEP_SECONDS), (signal.SIGKILL, STEP_SECONDS)):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The shell is gone; its group may still hold children.
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
    os.killpg(process.pid, signal.SIGKILL)


def wait_until_serving(
    url: str, server: Background, timeout: float = STEP_SECONDS * 3, **client: object
) -> None:
    """Until ``url``/health answers 200 (the server's output if it exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, f"the server exited:\n{server.log()}"
        try:
            if httpx.get(f"{url}/health", timeout=1, **client).status_code == 200:  # type: ignore[arg-type]
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never served:\n{server.log()}"
        time.sleep(0.1)


def split_server(text: str) -> tuple[str, str]:
    """A block that ends by starting a server: (the lines before, the server's line)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:-1]) + "\n", lines[-1]


def shell_after(setup: str, cwd: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The environment a shell has after running ``setup`` (its exports)."""
    done = subprocess.run(
        ["bash", "-e", "-c", setup + "\nenv -0"],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        timeout=STEP_SECONDS * 3,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{setup}\n{done.stderr.decode(errors='replace')}"
    pairs = (item.partition(b"=") for item in done.stdout.split(b"\0") if item)
    return {k.decode(): v.decode() for k, _, v in pairs}


@contextmanager
def serving_block(
    server_block: Block, cwd: Path, env: dict[str, str], port: int
) -> Iterator[tuple[Background, dict[str, str]]]:
    """Run a block whose last line starts a server, its other lines first in the same
    shell, as a reader would; yield it and that shell's environment (what "another shell
    with the same variables" has) once it has started."""
    setup, server = split_server(localise(server_block.text, port))
    shell = shell_after(setup, cwd, {**env, "ESPER_PORT": str(port)})
    with background(server, cwd, shell, "server") as b:
        yield b, shell


# --- The newcomer's commands, in a copy of the repository -----------------------------------

#: What a checkout needs for the package to install (and the examples to run).
CHECKOUT = [
    "noxfile.py",
    "pyproject.toml",
    "README.md",
    "constraints.txt",
    "trio_esper",
    "examples",
]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's checkout, without any virtualenv of ours."""
    copy = tmp_path_factory.mktemp("checkout")
    for name in CHECKOUT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, copy / name)
    return copy


def newcomer_env(**extra: str) -> dict[str, str]:
    """No package on PATH; nox from the repository's bootstrap (made once, shared)."""
    bootstrap = os.environ.get("TRIO_ESPER_NOX_BOOTSTRAP", str(ROOT / ".nox" / "bootstrap"))
    return base_env(with_package=False, TRIO_ESPER_NOX_BOOTSTRAP=bootstrap, **extra)


def publish_json(url: str, topic: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/publish/{topic}", content=b"data: checked\n", headers=headers, timeout=STEP_SECONDS
    )


@pytest.mark.slow
def test_newcomer_commands(checkout: Path) -> None:
    """README's and Getting started's commands, in order, in a fresh checkout: the
    token a `-s run` prints (while it installs) is all its standard output; the broker
    of `-s serve` serves; `-s dev` leaves `.venv` with `trio-esper`; a token minted by
    `-R -s run` publishes to a broker with the same secret, and without it, 401."""
    secret = "s" * 32
    # 1. `-s run`'s standard output is the command's alone, while nox installs first.
    minted = subprocess.run(
        [
            "bash",
            "-c",
            "python3 noxfile.py -s run -- trio-esper token --topic myTopic123 --publisher",
        ],
        cwd=checkout,
        env=newcomer_env(ESPER_PUBLISHER_SECRET=secret),
        capture_output=True,
        text=True,
        timeout=INSTALL_SECONDS,
    )
    assert minted.returncode == 0, minted.stderr
    assert JWT.fullmatch(minted.stdout.rstrip("\n")), repr(minted.stdout)
    assert minted.stdout.count("\n") == 1
    assert "nox > " in minted.stderr  # nox's own lines went to standard error
    claims = jwt.decode(minted.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "mytopic123"

    # 2. The two commands: the first serves (the second is the suite running this test).
    for page in ("README.md", "docs/quickstart.md"):
        two = block(page, "python3 noxfile.py -s serve")
        lines = [line.split("#")[0].strip() for line in two.text.strip().splitlines()]
        assert lines == ["python3 noxfile.py -s serve", "python3 noxfile.py -s tests"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = newcomer_env(ESPER_PORT=str(port))
    with background("python3 noxfile.py -s serve", checkout, env, "serve") as served:
        wait_until_serving(url, served, timeout=INSTALL_SECONDS)
        assert publish_json(url, "myTopic123").json()["events"] == 1

    # 3. The project's virtualenv, activated: trio-esper on PATH.
    for page in ("README.md", "docs/quickstart.md"):
        dev = block(page, "python3 noxfile.py -s dev")
        done = run_bash(dev.text, checkout, newcomer_env(), timeout=INSTALL_SECONDS)
        assert re.search(r"^trio-esper \S+$", done.stdout, re.MULTILINE), done.stdout
        assert (checkout / ".venv" / "bin" / "trio-esper").exists()
    assert "--topic" in done.stdout  # docs/quickstart.md: python -m trio_esper token --help

    # 4. Tokens: the broker of one shell, the token and publish of another.
    server_block = block("README.md", "export ESPER_PUBLISHER_SECRET=")
    client_block = block("README.md", "T=$(python3 noxfile.py -R -s run -- trio-esper token")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving_block(server_block, checkout, newcomer_env(), port) as (served, shell):
        wait_until_serving(url, served, timeout=INSTALL_SECONDS)
        assert publish_json(url, "myTopic123").status_code == 401  # "without the token: 401"
        done = run_bash(localise(client_block.text, port), checkout, shell, INSTALL_SECONDS)
        answer = json.loads(done.stdout)
        assert answer["events"] == 1, done.stdout

    # 5. The Mercure hub: its broker, a subscriber, and a form published with a minted token.
    server_block = block("README.md", "export ESPER_SUBSCRIBER_SECRET=")
    subscribe = block("README.md", "curl -gN 'http://127.0.0.1:3000/.well-known/mercure")
    publish = block("README.md", "TOKEN=$(python3 noxfile.py -R -s run -- trio-esper token")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving_block(server_block, checkout, newcomer_env(), port) as (served, shell):
        wait_until_serving(url, served, timeout=INSTALL_SECONDS)
        with listening(localise(subscribe.text, port), checkout, base_env()) as stream:
            done = run_bash(localise(publish.text, port), checkout, shell, INSTALL_SECONDS)
            update_id = done.stdout.strip()
            assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", update_id), done.stdout
            stream.wait_for(f'id: {update_id}\ndata: {{"title": "Dune"}}\n\n')

    # 6. Getting started: one command at a time, and the token captured alone.
    captured = block("docs/quickstart.md", "export ESPER_PUBLISHER_SECRET=")
    done = run_bash(captured.text, checkout, newcomer_env(), INSTALL_SECONDS)
    assert JWT.fullmatch(done.stdout.rstrip("\n")), repr(done.stdout)
    one_at_a_time = block("docs/quickstart.md", "python3 noxfile.py -R -s run -- python examples")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with background("trio-esper", checkout, base_env(ESPER_PORT=str(port)), "broker") as b:
        wait_until_serving(url, b)
        done = run_bash(
            localise(one_at_a_time.text, port), checkout, newcomer_env(), INSTALL_SECONDS
        )
    lines = done.stdout.splitlines()
    assert json.loads(lines[0])["events"] == 1, done.stdout
    assert "usage: trio-esper" in done.stdout


# --- Blocks against a broker of this test run --------------------------------------------


@contextmanager
def broker(
    tmp_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, Background]]:
    """``trio-esper ARGS`` on a free port of 127.0.0.1; yields its URL once it serves."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = " ".join(["trio-esper", "--port", str(port), *args])
    with background(command, tmp_path, env or base_env(), "broker") as b:
        wait_until_serving(url, b)
        yield url, b


@contextmanager
def listening(script: str, cwd: Path, env: Mapping[str, str]) -> Iterator[Background]:
    """A block that streams (``curl -N``), in the background, once it is subscribed."""
    with background(script, cwd, env, "stream") as stream:
        stream.wait_for(": subscribed")
        yield stream


@pytest.mark.parametrize("history", ["memory", "sqlite"])
def test_try_it(tmp_path: Path, history: str) -> None:
    """The subscribe and the publish, as README and Getting started write them, under a
    POSIX /bin/sh; the publish repeated, also after a restart (ids are the broker's)."""
    for page in ("README.md", "docs/quickstart.md"):
        subscribe = block(page, "curl -N http://127.0.0.1:3000/subscribe/myTopic123").text
        publish = block(page, "printf 'event: greeting").text
        assert "$'" not in publish  # bash-only quoting
        spec = "memory" if history == "memory" else f"sqlite:{tmp_path / 'history.db'}"
        for _restart in range(2):
            with broker(tmp_path, "--history", spec) as (url, _):
                port = port_of(url)
                with listening(localise(subscribe, port), tmp_path, base_env()) as stream:
                    for _ in range(2):
                        done = subprocess.run(
                            ["/bin/sh", "-c", localise(publish, port)],
                            capture_output=True,
                            text=True,
                            timeout=STEP_SECONDS,
                        )
                        assert done.returncode == 0, done.stderr
                        answer = json.loads(done.stdout)
                        assert answer == {"id": answer["id"], "events": 1, "subscribers": 1}
                        frame = (
                            f"id: {answer['id']}\nevent: greeting\ndata: hello\ndata: world\n\n"
                        )
                        stream.wait_for(frame)
                    assert stream.text().startswith(": subscribed\n\n")


def test_plain_text_publish(tmp_path: Path) -> None:
    with broker(tmp_path) as (url, _):
        port = port_of(url)
        subscribe = f"curl -sN {url}/subscribe/myTopic123"
        with listening(subscribe, tmp_path, base_env()) as stream:
            done = run_bash(
                localise(block("docs/api.md", "curl -X POST").text, port), tmp_path, base_env()
            )
            assert json.loads(done.stdout)["id"] == "n1"
            stream.wait_for("id: n1\nevent: note\ndata: first line\ndata: second line\n\n")


def test_mercure_hub(tmp_path: Path) -> None:
    """The Mercure page's hub, its subscribe and its publish, as written."""
    port = free_port()
    server = block("docs/mercure.md", "export ESPER_PUBLISHER_SECRET=")
    with serving_block(server, tmp_path, base_env(), port) as (served, env):
        wait_until_serving(f"http://127.0.0.1:{port}", served)
        subscribe = localise(
            block("docs/mercure.md", "curl -gN 'http://127.0.0.1:3000").text, port
        )
        with listening(subscribe, tmp_path, base_env()) as stream:
            publish = localise(block("docs/mercure.md", "TOKEN=$(python -c").text, port)
            done = run_bash(publish, tmp_path, env)
            update_id = done.stdout.strip()
            assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", update_id), done.stdout
            stream.wait_for(f'id: {update_id}\ndata: {{"title": "Dune"}}\n\n')


def test_python_client(tmp_path: Path) -> None:
    with broker(tmp_path) as (url, _):
        code = localise(block("docs/client.md", "import trio").text, port_of(url))
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=STEP_SECONDS * 3
        )
    assert done.returncode == 0, done.stderr
    answer, received = done.stdout.splitlines()
    assert ast.literal_eval(answer)["events"] == 1
    assert received.split(" ", 1)[1] == "greeting hello"


def test_under_hypercorn(tmp_path: Path) -> None:
    port = free_port()
    script = localise(block("docs/embedding.md", "ESPER_HISTORY=sqlite:").text, port)
    with background(script, tmp_path, base_env(), "hypercorn") as served:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, served)
        assert publish_json(url, "myTopic123").json()["events"] == 1
    assert (tmp_path / "history.db").exists()


def test_mounted_example_imports() -> None:
    """The page includes examples/mounted.py whole; it imports and builds its app here
    (tests/test_asgi.py serves it with Hypercorn and places an order)."""
    mounted = block("docs/embedding.md", '"""trio_esper inside')
    assert mounted.text.rstrip("\n") == (ROOT / "examples" / "mounted.py").read_text().rstrip("\n")
    namespace: dict[str, object] = {"__name__": "mounted"}
    exec(compile(mounted.text, "examples/mounted.py", "exec"), namespace)
    assert callable(namespace["app"])


def test_in_a_trio_program() -> None:
    code = block("docs/embedding.md", "from functools import partial").text
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=STEP_SECONDS * 3,
        env=base_env(),
    )
    assert done.returncode == 0, done.stderr
    address, event_id = done.stdout.splitlines()
    assert re.fullmatch(r"listening on http://127\.0\.0\.1:\d+", address)
    assert re.fullmatch(r"\d{16}", event_id)


def test_topic_api(tmp_path: Path) -> None:
    create = block("docs/topic-api.md", "B=http://127.0.0.1:3000")
    subscribe = block("docs/topic-api.md", "curl -N http://127.0.0.1:3000/api/v1/pubsubs/")
    manage = block("docs/topic-api.md", 'curl -s --json \'{"event"')
    with broker(tmp_path) as (url, _):
        port = port_of(url)
        created = json.loads(run_bash(localise(create.text, port), tmp_path, base_env()).stdout)
        shown = json.loads(
            next(b for b in page_blocks("docs/topic-api.md") if b.lang == "json").text
        )
        assert created.keys() == shown.keys()
        assert created["pubsub"].keys() == shown["pubsub"].keys()
        for name in ("id", "persist", "managed", "subscribers", "published", "access_token"):
            assert created["pubsub"][name] == shown["pubsub"][name], name
        with listening(localise(subscribe.text, port), tmp_path, base_env()) as stream:
            setup = localise(create.text.splitlines()[0], port) + "\n"
            done = run_bash(setup + localise(manage.text, port), tmp_path, base_env())
            answers = [json.loads(line) for line in done.stdout.splitlines()]
            assert answers[0] == {"id": "o-1", "events": 1, "subscribers": 1}
            assert [p["id"] for p in answers[1]["pubsubs"]] == ["orders0001"]
            assert answers[2]["pubsub"]["id"] == "orders0001"
            assert answers[3]["deleted"] is True
            stream.wait_for('id: o-1\nevent: order\ndata: {"qty": 2}\n\n')
            stream.wait_for("event: deleted\n")
            stream.process.wait(timeout=STEP_SECONDS)  # the stream ended


def test_token_command(tmp_path: Path) -> None:
    secrets = {"ESPER_PUBLISHER_SECRET": "p" * 32, "ESPER_SUBSCRIBER_SECRET": "q" * 32}
    env = base_env(**secrets)
    with broker(tmp_path, env=env) as (url, _):
        script = localise(block("docs/tokens.md", "trio-esper token --topic").text, port_of(url))
        with listening(script, tmp_path, env) as stream:
            publisher, subscriber = stream.text().splitlines()[:2]
            stream.wait_for(": subscribed\n\n")
    claims = jwt.decode(publisher, secrets["ESPER_PUBLISHER_SECRET"], algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600
    claims = jwt.decode(subscriber, secrets["ESPER_SUBSCRIBER_SECRET"], algorithms=["HS256"])
    assert (claims["sub"], claims["exp"] - claims["iat"]) == ("mytopic123", 600)


def test_token_with_pyjwt(tmp_path: Path) -> None:
    env = base_env(ESPER_PUBLISHER_SECRET="p" * 32)
    with broker(tmp_path, env=env) as (url, _):
        done = run_bash(block("docs/tokens.md", "python -c 'import jwt").text, tmp_path, env)
        token = done.stdout.strip()
        assert publish_json(url, "myTopic123", authorization=f"Bearer {token}").status_code == 200


def test_key_pair(tmp_path: Path) -> None:
    """The walk-through as written: the key pair, the broker with the public half and
    ``ESPER_JWT_ALGORITHMS=ES256`` (a variable left from the README is unset first), and
    a token signed with the private half publishing, in another shell."""
    server = block("docs/tokens.md", "unset ESPER_PUBLISHER_SECRET")
    client = block("docs/tokens.md", "T=$(python -c 'import jwt")
    port = free_port()
    env = base_env(ESPER_PUBLISHER_SECRET="left over from the README's shell")
    with serving_block(server, tmp_path, env, port) as (served, _):
        wait_until_serving(f"http://127.0.0.1:{port}", served)
        assert publish_json(f"http://127.0.0.1:{port}", "myTopic123").status_code == 401
        done = run_bash(localise(client.text, port), tmp_path, base_env())
    assert json.loads(done.stdout)["events"] == 1
    assert "PRIVATE" not in (tmp_path / "publisher.pem").read_text()


def test_a_stream_ends_when_its_token_expires(tmp_path: Path) -> None:
    """docs/tokens.md: a stream lasts no longer than its token: at its exp the last event
    is `event: expired` as the page shows it, the stream ends, and a reconnection with
    the expired token is refused (403)."""
    secret = "q" * 32
    with broker(tmp_path, env=base_env(ESPER_SUBSCRIBER_SECRET=secret)) as (url, _):
        token = jwt.encode({"sub": "mytopic123", "exp": int(time.time()) + 2}, secret)
        script = f"curl -sN '{url}/subscribe/myTopic123?token={token}'"
        with listening(script, tmp_path, base_env()) as stream:
            assert publish_json(url, "myTopic123").json()["subscribers"] == 1
            stream.wait_for("data: checked\n\n")
            text = (ROOT / "docs" / "tokens.md").read_text()
            last = re.search(r"```text\n(event: expired\n.*?\n\n)```", text, re.DOTALL)
            assert last is not None, "docs/tokens.md shows no expired event"
            stream.wait_for(last.group(1))
        again = httpx.get(f"{url}/subscribe/myTopic123?token={token}", timeout=STEP_SECONDS)
        assert again.status_code == 403
        assert "expired" in again.text


def test_tls(tmp_path: Path) -> None:
    server = block("docs/tls.md", "openssl req -x509")
    client = block("docs/tls.md", "curl --cacert cert.pem")
    port = free_port()
    with serving_block(server, tmp_path, base_env(), port) as (served, _):
        # Serving (the certificate is made first), then trusted as the page says.
        wait_until_serving(f"https://127.0.0.1:{port}", served, verify=False)
        trusted = ssl.create_default_context(cafile=tmp_path / "cert.pem")
        assert httpx.get(f"https://localhost:{port}/health", verify=trusted).status_code == 200
        with listening(localise(client.text, port), tmp_path, base_env()) as stream:
            with httpx.Client(verify=trusted) as https:
                https.post(f"https://localhost:{port}/publish/myTopic123", content=b"data: x\n")
            stream.wait_for("data: x\n\n")


REDIS = shutil.which("redis-server")


def test_backplane(tmp_path: Path) -> None:
    """Beyond one process: Redis, two workers on one port, another node; each line a
    process of its own (the block's own `&`, and "another node" in another shell), on
    free ports. An event published to one node reaches a subscriber of the other."""
    assert REDIS, "redis-server is needed (Debian: apt-get install redis-server)"
    text = block("docs/scaling.md", "redis-server --port 6379").text
    redis_port, port_a, port_b = free_port(), free_port(), free_port()
    text = text.replace("6379", str(redis_port)).replace("--port 3001", f"--port {port_b}")
    lines = [line.split("  #")[0].rstrip(" &") for line in localise(text, port_a).splitlines()]
    with ExitStack() as stack:
        redis, node_a, node_b = (
            stack.enter_context(background(line, tmp_path, base_env(), f"line{i}"))
            for i, line in enumerate(lines)
        )
        wait_until_serving(f"http://127.0.0.1:{port_a}", node_a)
        wait_until_serving(f"http://127.0.0.1:{port_b}", node_b)
        assert redis.process.poll() is None
        subscribe = f"curl -sN http://127.0.0.1:{port_b}/subscribe/myTopic123"
        with listening(subscribe, tmp_path, base_env()) as stream:
            answer = publish_json(f"http://127.0.0.1:{port_a}", "myTopic123").json()
            stream.wait_for(f"id: {answer['id']}\ndata: checked\n\n")


def test_container_page() -> None:
    """The page names the image the Dockerfile starts from."""
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    assert f"`{base.group(1)}`" in (ROOT / "docs" / "container.md").read_text()


# --- Links from the README into the docs -----------------------------------------------------


def test_readme_links_exist() -> None:
    """Every relative link of the README names a file of the repository (GitHub shows
    the README, not the site)."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    for target in targets:
        if re.match(r"[a-z]+://", target):
            continue
        assert (ROOT / target).exists(), target


def test_pages_are_all_in_the_nav() -> None:
    """mkdocs build --strict refuses a page left out of the nav; this says which, without
    mkdocs installed."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES[1:]:
        assert f": {page.removeprefix('docs/')}" in nav, page


# --- The two commands on a PEP 668 Python -------------------------------------------------


def _externally_managed_python() -> str | None:
    """A Python on this machine that refuses `pip install` (PEP 668), if any."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate or not os.path.exists(candidate):
            continue
        stdlib = subprocess.run(
            [candidate, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if stdlib and Path(stdlib, "EXTERNALLY-MANAGED").exists():
            return candidate
    return None


@pytest.mark.slow
def test_noxfile_brings_nox_on_an_externally_managed_python(tmp_path: Path) -> None:
    python = _externally_managed_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail("CI machines have Debian's python3, which is externally managed")
        pytest.skip(f"no PEP 668 Python here (this one: {sysconfig.get_path('stdlib')})")
    # What the README's old commands ran into.
    refused = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "nox"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "externally-managed-environment" in refused.stderr
    env = {**os.environ, "TRIO_ESPER_NOX_BOOTSTRAP": str(tmp_path / "bootstrap")}
    env.pop("PYTHONPATH", None)
    listed = subprocess.run(
        [python, str(ROOT / "noxfile.py"), "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # anywhere: the file finds its own directory
        timeout=STEP_SECONDS * 30,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    for session in ("serve", "tests", "lint", "typing", "run", "dev", "docs_site"):
        assert re.search(rf"^[*-] {session}\b", listed.stdout, re.MULTILINE), listed.stdout
    assert (tmp_path / "bootstrap" / "venv" / "bin" / "python").exists()


def test_the_readme_bounds_are_the_defaults() -> None:
    """README's "Bounded" section names each bound with its default, `--flag` (value):
    each value is the setting's default (MiB as 2**20 bytes)."""
    from trio_esper.config import SETTINGS

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Bounded, and honest about faults") :]
    section = section[: section.index("\n## ")]
    named = re.findall(r"`(--[a-z0-9-]+)`\s+\(([0-9]+)(\s+MiB)?\)", section)
    assert len(named) >= 5, named
    defaults = {flag: s.default for s in SETTINGS for flag in s.flags}
    for flag, number, mib in named:
        assert defaults[flag] == int(number) * (2**20 if mib else 1), flag
