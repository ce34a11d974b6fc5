"""Test modules share helpers through support modules (``conftest``,
``rawhttp``, ``authclient``, ``h2client``, ``faults``, ...), never by importing
one another: a test module can then be read, moved or deleted alone, and
pytest never collects one module's tests twice under two names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def _is_test_module(name: str) -> bool:
    """``name`` (dotted, relative to the tests package) is a test module."""
    return name.split(".")[-1].startswith("test_")


def imported_test_modules(path: Path) -> list[str]:
    """The test modules ``path`` imports, at any depth of its code
    (``from .test_x import y``, ``from tests.test_x import y``, ``import
    tests.test_x``, ``from . import test_x``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            ours = node.level == 1 or module == "tests" or module.startswith("tests.")
            if not ours:
                continue
            module = module.removeprefix("tests").lstrip(".")
            if module and _is_test_module(module):
                found.append(module)
            elif not module:  # from . import test_x
                found += [alias.name for alias in node.names if _is_test_module(alias.name)]
        elif isinstance(node, ast.Import):
            found += [
                alias.name
                for alias in node.names
                if alias.name.startswith("tests.") and _is_test_module(alias.name)
            ]
    return found


MODULES = sorted(TESTS.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[path.name for path in MODULES])
def test_no_module_imports_a_test_module(path: Path) -> None:
    assert imported_test_modules(path) == [], f"{path.name}: import from a support module"


@pytest.mark.parametrize(
    ("source", "imported"),
    [
        pytest.param("from .test_edge import Raw\n", ["test_edge"], id="relative"),
        pytest.param("from tests.test_h2 import H2Client\n", ["test_h2"], id="absolute"),
        pytest.param("import tests.test_auth\n", ["tests.test_auth"], id="import"),
        pytest.param("from . import test_auth, rawhttp\n", ["test_auth"], id="from-package"),
        pytest.param("def f():\n    from .test_x import y\n", ["test_x"], id="in-a-function"),
        pytest.param("from .rawhttp import Raw\nfrom .conftest import TOPIC\n", [], id="support"),
        pytest.param("from trio_esper import test_thing\n", [], id="not-ours"),
    ],
)
def test_the_check_sees_every_form(tmp_path: Path, source: str, imported: list[str]) -> None:
    module = tmp_path / "test_sample.py"
    module.write_text(source)
    assert imported_test_modules(module) == imported
