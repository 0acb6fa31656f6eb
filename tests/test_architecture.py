"""The package's structure: no import circles, imports at the top, modules and functions a reader can hold.

Read from the source with `ast` (nothing is imported), so a violation names the file and line.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "kdkit"
MODULE_LINES = 520  # "about 500"
FUNCTION_LINES = 100
# Imports that may stay inside a function: optional libraries, loaded only when asked for.
OPTIONAL = {"matplotlib", "matplotlib.pyplot", "tensorboardX", "onnx", "onnxruntime", "torch_pruning"}
OPTIONAL_KDKIT = {"kdkit.compress"}  # needs the optional onnx / onnxruntime / torch-pruning


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Return the kdkit modules an import statement loads (a `from m import name` may name a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "kdkit"]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    if base.split(".")[0] != "kdkit":
        return []
    out = [base]
    out += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return out


def _top_level_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in tree.body:  # module level only; `if TYPE_CHECKING:` blocks count too
            nodes = [node] + (list(ast.walk(node)) if isinstance(node, ast.If) else [])
            for n in nodes:
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    deps |= {d for d in _imported(n, name, path.name == "__init__.py") if d in MODULES}
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph = _top_level_imports()
    # A package's __init__ re-exporting its submodules is not a circle of the code: leave those edges out.
    graph = {
        m: {d for d in deps if not (m.startswith(d + ".") and MODULES[d].name == "__init__.py")}
        for m, deps in graph.items()
    }
    assert _cycles(graph) == []


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_inside_functions_are_for_optional_libraries_only():
    bad = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(fn):
                if isinstance(n, ast.Import):
                    names = [a.name for a in n.names]
                elif isinstance(n, ast.ImportFrom):
                    names = [n.module or ""]
                else:
                    continue
                if any(x not in OPTIONAL and x not in OPTIONAL_KDKIT for x in names):
                    bad.append(f"{path.relative_to(SRC)}:{n.lineno} imports {names} inside {fn.name}()")
    assert bad == []


@pytest.mark.parametrize("limit", [MODULE_LINES])
def test_modules_stay_readable(limit):
    long = {
        str(p.relative_to(SRC)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > limit
    }
    assert long == {}


def test_functions_stay_readable():
    long = []
    for path in MODULES.values():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = fn.end_lineno - fn.lineno + 1
                if n > FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{fn.lineno} {fn.name}() has {n} lines")
    assert long == []
