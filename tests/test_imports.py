"""The package's modules import one another without a cycle.

Read statically (ast) from every ``trio_esper`` source file: every import
counts, at module level, under ``if TYPE_CHECKING:`` and inside functions
alike, since each is a dependency someone reading or changing the module
must follow, and a cycle means neither module can be understood (or
loaded) first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trio_esper

PACKAGE_DIR = Path(trio_esper.__file__).parent
PACKAGE = PACKAGE_DIR.name


def _module_name(path: Path) -> str:
    """``trio_esper/history/spec.py`` -> ``trio_esper.history.spec``; a
    package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` (at ``path``) imports, anywhere in it.

    ``from . import logs`` imports the module ``logs``; ``from . import
    __version__`` imports the package itself (its ``__init__``).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules.keys()
            found.update(submodules)
            if len(submodules) < len(node.names) and target in modules:
                found.add(target)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each of the package's modules, and the package's modules it imports."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one
    module (Tarjan's algorithm), each sorted: every import cycle is in one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def _described(graph: dict[str, set[str]], component: list[str]) -> str:
    edges = [f"{m} -> {i}" for m in component for i in sorted(graph[m] & set(component))]
    return "; ".join(edges)


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert found == [], "import cycles: " + " | ".join(_described(graph, c) for c in found)


def test_the_graph_sees_every_kind_of_import() -> None:
    # The check would pass vacuously if it missed imports: it must see a
    # module-level one, one under TYPE_CHECKING, one inside a function, and
    # ``from . import module``.
    graph = import_graph()
    assert f"{PACKAGE}.config" in graph[f"{PACKAGE}.logs"]  # module level
    assert f"{PACKAGE}.server" in graph[PACKAGE]  # under TYPE_CHECKING
    assert f"{PACKAGE}.server" in graph[f"{PACKAGE}.cli"]  # inside _run
    assert f"{PACKAGE}.workers" in graph[f"{PACKAGE}.cli"]  # from . import workers
    assert f"{PACKAGE}.history.spec" in graph[f"{PACKAGE}.config"]  # a subpackage's module


def test_cycles_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
