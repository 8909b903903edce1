"""The package's structure stays as docs/architecture.md draws it: checked on the source, no import run.

- No module of `hcl_array` is in an import cycle (a walk of the import graph built from the AST).
- The core (everything but the package root, `backends/`, `cli/`, `integrations/`, and the applications
  `training.py`, `reproduce/`, `analysis.py`, `embeddings_io.py`) imports no backend module and no framework.
- No function in `hcl_array/` is longer than 60 lines, and no module longer than 700 (a module that grows past
  one job becomes a folder of jobs with the same public names, as `metrics/` did).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hcl_array"
FRAMEWORKS = ("torch", "jax", "cupy", "jaxlib", "tensorflow")
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 700


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative levels resolved against `module`)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package (and every top-level external name) that `module` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            # `from package import module` imports the module; `from module import name` the module itself
            found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) & known for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child) :] + [child]
            if child not in state and (found := visit(child)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_walk_finds_a_planted_cycle():
    """The check itself can fail: a three-module cycle is reported, a chain is not."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_package_is_in_an_import_cycle():
    graph = _graph()
    assert "hcl_array.dispatch" in graph and "hcl_array.cli.app" in graph
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


# Above the core: the package root (which loads the backends so they register), the adapters themselves,
# the CLI, the framework integrations, the applications that drive a backend adapter chosen by name
# (get_backend): training.py, reproduce/ and analysis.py, and the reader of torch's .pt files.
_ABOVE_THE_CORE = (
    "hcl_array.backends",
    "hcl_array.cli",
    "hcl_array.integrations",
    "hcl_array.training",
    "hcl_array.reproduce",
    "hcl_array.analysis",
    "hcl_array.embeddings_io",
)


def _core(name: str) -> bool:
    return not name.startswith(_ABOVE_THE_CORE) and name != "hcl_array"


def test_the_core_imports_no_backend_module_and_no_framework():
    """The core reaches backends only through the dispatch table they register into (and the package root)."""
    modules = _modules()
    for name, path in modules.items():
        if not _core(name):
            continue
        imported = _imports(name, path, set(modules))
        assert not {m for m in imported if m.startswith("hcl_array.backends")}, f"{name} imports a backend module"
        assert not {m for m in imported if m.split(".")[0] in FRAMEWORKS}, f"{name} imports a framework"
        source = path.read_text()
        assert "hcl_array.backends" not in source.replace('"""', ""), f"{name} names a backend module in code"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_sixty_lines(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name} has {length} lines"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_longer_than_seven_hundred_lines(path: Path):
    length = len(path.read_text().splitlines())
    assert length <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)} has {length} lines: split it by job into a folder"
