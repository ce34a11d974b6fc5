"""The pure modules (sse, topics, auth, config, logs, h1) import neither trio nor quart
nor hypercorn.

Checked in a fresh interpreter, since this one has long since imported all three.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import trio_esper

PACKAGE_DIR = Path(trio_esper.__file__).parent
PURE_MODULES = (
    "sse",
    "topics",
    "auth",
    "config",
    "logs",
    "h1",
    "selectors",
    "routing",
    "mercure.claims",
    "mercure.forms",
)
FORBIDDEN = ("trio", "quart", "quart_trio", "hypercorn")

# Prints the forbidden top-level packages found in sys.modules, one a line.
_REPORT = f"""
import sys
roots = {{name.partition(".")[0] for name in sys.modules}}
print("\\n".join(sorted(roots & {set(FORBIDDEN)!r})))
"""

# trio_esper/__init__.py re-exports Hub, so importing any submodule the normal
# way runs it and imports trio. A bare package object with the right __path__
# lets the submodules be imported without running __init__.py.
_STUB_PACKAGE = """
import sys, types
package = types.ModuleType("trio_esper")
package.__path__ = [sys.argv[1]]
sys.modules["trio_esper"] = package
"""


def _forbidden_after(code: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code + _REPORT, str(PACKAGE_DIR)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_event_loop(module: str) -> None:
    code = _STUB_PACKAGE + f"import trio_esper.{module}\n"
    assert _forbidden_after(code) == []


def test_all_pure_modules_together() -> None:
    imports = "".join(f"import trio_esper.{m}\n" for m in PURE_MODULES)
    assert _forbidden_after(_STUB_PACKAGE + imports) == []


def test_check_detects_trio() -> None:
    # The same check on a module that does use trio must notice it.
    assert "trio" in _forbidden_after(_STUB_PACKAGE + "import trio_esper.hub\n")


def test_the_package_loads_no_server_until_a_server_name_is_used() -> None:
    # `trio-esper --help` and `import trio_esper` stay quick: quart and
    # hypercorn load with the first server-side name (trio_esper.serve...).
    assert _forbidden_after("import trio_esper\n") == ["trio"]
    assert {"quart", "hypercorn"} <= set(_forbidden_after("from trio_esper import serve\n"))


def test_every_public_name_is_importable() -> None:
    for name in trio_esper.__all__:
        assert getattr(trio_esper, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = trio_esper.nothing  # type: ignore[attr-defined]
