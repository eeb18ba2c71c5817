"""House rules a reader relies on: imports go one way (no circle between stlm's modules) and no module
takes another's private names. The layering itself is import-linter's contracts in pyproject.toml
(`lint-imports`, run by .ci/run beside ruff)."""

from __future__ import annotations

import ast
from pathlib import Path

STLM = Path(__file__).resolve().parents[1] / "stlm"


def import_graph() -> dict[str, set[str]]:
    """module -> the stlm modules it imports (at any level: a function-level import is an edge too)."""
    import grimp

    graph = grimp.build_graph("stlm")
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_stlm():
    graph = import_graph()
    # a package's __init__ importing its own submodules is how a package exposes its names, not a circle
    graph = {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}
    assert cycles(graph) == []


def test_no_module_imports_a_private_name():
    offenders = []
    for path in STLM.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(
                        f"{path.relative_to(STLM.parent)}:{node.lineno} from {node.module} import {private}"
                    )
    assert offenders == []
