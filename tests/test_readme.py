"""The README's commands, run as a new user would: the "Try it" publish under
a POSIX /bin/sh, repeated, against memory and SQLite history; and the two
commands' bootstrap on a PEP 668 "externally managed" Python."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import STEP_SECONDS, start_broker

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _try_it_publish() -> str:
    """The shell block after "and in another shell" in the Try it section."""
    section = README.split("## Try it", 1)[1]
    match = re.search(r"and in another shell.*?```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the Try it section lost its publish command"
    return match.group(1)


@pytest.mark.parametrize("history", ["memory", "sqlite"])
async def test_try_it_publish_is_repeatable_under_posix_sh(
    nursery: trio.Nursery, client: httpx.AsyncClient, subscribe: Any, history: str, tmp_path: Path
) -> None:
    spec = "memory" if history == "memory" else f"sqlite:{tmp_path / 'history.db'}"
    command = _try_it_publish()
    assert "$'" not in command  # bash-only quoting
    for _restart in range(2):  # the same command, also after a restart
        broker = await start_broker(nursery, history=spec)
        stream = await subscribe(f"{broker.url}/subscribe/myTopic123")
        for _ in range(2):
            local = command.replace("http://127.0.0.1:3000", broker.url)
            result = await trio.run_process(
                ["/bin/sh", "-c", local], capture_stdout=True, capture_stderr=True, check=False
            )
            assert result.returncode == 0, result.stderr
            answer = json.loads(result.stdout)
            assert answer == {"id": answer["id"], "events": 1, "subscribers": 1}
            frame = await stream.next_event()
            assert frame == (
                f"id: {answer['id']}\nevent: greeting\ndata: hello\ndata: world\n\n".encode()
            )
        await broker.stop()


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
    for session in ("serve", "tests", "lint", "typing", "run"):
        assert re.search(rf"^[*-] {session}\b", listed.stdout, re.MULTILINE), listed.stdout
    assert (tmp_path / "bootstrap" / "venv" / "bin" / "python").exists()
