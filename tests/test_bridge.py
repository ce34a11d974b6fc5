"""The Hypercorn bridge's private names: each one the edge relies on exists,
with the shape it uses, in the installed Hypercorn and quart-trio, which are
the versions pyproject.toml pins. An upgrade fails here (and the broker
refuses to start) instead of quietly changing behaviour."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hypercorn.trio.tcp_server import TCPServer

from trio_esper.config import Config, ConfigError
from trio_esper.edge import bridge
from trio_esper.server import serve

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


@pytest.fixture(autouse=True)
def fresh_check() -> Iterator[None]:
    """Each test checks afresh, and leaves no result of its reshaped names
    cached for the brokers of later tests."""
    bridge.check_private_names.cache_clear()
    yield
    bridge.check_private_names.cache_clear()


def test_every_private_name_has_the_shape_the_bridge_uses() -> None:
    assert bridge.check_private_names() == ()


@pytest.mark.parametrize("package", ["hypercorn", "quart-trio"])
def test_the_installed_version_is_the_pinned_one(package: str) -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if re.match(rf"{package}\s*==", d)]
    assert len(pins) == 1, f"pyproject.toml pins {package} to one exact version"
    pinned = pins[0].partition("==")[2].strip()
    assert "*" not in pinned, "an exact version, not a series"
    assert importlib.metadata.version(package) == pinned


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "problem"),
    [
        (H2Protocol, "__init__", lambda self: None, "H2Protocol.streams"),
        (StreamBuffer, "complete", None, "StreamBuffer.buffer and .complete"),
        (TCPServer, "run", lambda self: None, "TCPServer.run tells TLS"),
    ],
)
def test_a_renamed_private_name_is_reported(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, replacement: object, problem: str
) -> None:
    # What an upgrade that renamed or reshaped one of them looks like.
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replacement)
    problems = bridge.check_private_names()
    assert any(p.startswith(problem) for p in problems), problems


async def test_the_broker_refuses_to_start_on_a_reshaped_hypercorn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(StreamBuffer, "complete")
    config = Config(bind="127.0.0.1", port=0)
    with pytest.raises(ConfigError, match=r"not the version trio_esper is written for"):
        await serve(config)
