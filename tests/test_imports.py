"""minisbert's import graph, read from the source (AST): every `import` and `from ... import`, at module level
and inside functions, relative and absolute. The reference path never reaches the fast path (minisbert.fast),
the deprecated aliases (minisbert.kernels, minisbert.packing) are imported by nothing in the package, they
still work with a DeprecationWarning, and the package has no import circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minisbert"
# The reference path: complete and readable without minisbert.fast (transitively).
REFERENCE = ("minisbert.bert", "minisbert.modernbert", "minisbert.pooling", "minisbert.losses", "minisbert.gradcache",
             "minisbert.backbone", "minisbert.similarity", "minisbert.sampler", "minisbert.tokenizer", "minisbert.data",
             "minisbert.checkpoint", "minisbert.run_state")
FAST = "minisbert.fast"
ALIASES = ("minisbert.kernels", "minisbert.packing")  # deprecated aliases, for users only


def modules() -> dict[str, Path]:
    """minisbert's module names -> their files."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["minisbert", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The minisbert modules that module `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from X import Y` imports X (its __init__ runs first) and X.Y where that is a module
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module reachable from `start` -> the module that imports it on one path from `start`."""
    seen, stack = {start: ""}, [start]
    while stack:
        here = stack.pop()
        for nxt in graph[here]:
            if nxt not in seen:
                seen[nxt] = here
                stack.append(nxt)
    return seen


def test_the_graph_is_read(graph):
    """The parser sees relative, absolute and function-level imports (guards the tests below)."""
    assert "minisbert.checkpoint" in graph["minisbert.bert"]  # module level, relative
    assert {"minisbert.bert", "minisbert.modernbert"} <= graph["minisbert.backbone"]  # inside load_backbone
    assert "minisbert.fast" in graph["minisbert.bi_encoder"]
    assert {"minisbert.fast.packing", "minisbert.fast.kernels", "minisbert.modernbert"} <= graph[FAST]
    assert "minisbert.bert" in graph["minisbert.fast.packing"]  # `from ..bert import`


@pytest.mark.parametrize("module", REFERENCE)
def test_the_reference_path_never_imports_the_fast_path(graph, module):
    seen = reachable(graph, module)
    for reached in seen:
        if reached == FAST or reached.startswith(FAST + "."):
            chain, here = [reached], reached
            while seen[here]:
                here = seen[here]
                chain.append(here)
            pytest.fail(f"{module} imports the fast path: {' -> '.join(reversed(chain))}")


def test_the_package_never_imports_the_deprecated_aliases(graph):
    users = {name: sorted(set(ALIASES) & targets) for name, targets in graph.items() if name not in ALIASES}
    assert {name: found for name, found in users.items() if found} == {}


def test_the_deprecated_aliases_still_work():
    """minisbert.kernels and minisbert.packing, kept for one release: the same kernels and switch, with a warning."""
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as record:\n"
            "    warnings.simplefilter('always')\n"
            "    from minisbert import kernels, packing\n"
            "import minisbert.fast\n"
            "assert kernels is minisbert.fast.kernels and packing.disabled is minisbert.fast.disabled\n"
            "assert packing.pack is minisbert.fast.packing.pack\n"
            "print(sorted(str(w.message).split()[0] for w in record if w.category is DeprecationWarning))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['minisbert.kernels',", "'minisbert.packing']"]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle(graph):
    assert circles(graph) == []
