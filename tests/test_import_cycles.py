"""No import cycles: between the subpackages of ``engine``, and between its modules.

Every import counts, wherever it stands: at the top of a module, inside a function (the usual way
to hide a cycle from the interpreter) or under ``TYPE_CHECKING``. Each module is parsed with
``ast``; a failure names the cycle and every import that closes it (file:line).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "engine"

Edge = tuple[str, str, str]  # (importer, imported, "file:line")


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """Every engine module ``name`` imports, at any depth, with the line of the import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # ``from engine.x import y`` imports the module engine.x.y when there is one
            targets = [
                f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import engine.x.y.name`` -> the module
                target = target.rpartition(".")[0]
            if target.startswith("engine") and target != name:
                found.append((target, node.lineno))
    return found


def _edges(root: Path = ROOT) -> list[Edge]:
    modules = _modules(root)
    return [
        (name, target, f"{path.relative_to(root.parent)}:{line}")
        for name, path in sorted(modules.items())
        for target, line in _imports(name, path, modules)
    ]


def _subpackage(module: str) -> str:
    """``engine.runtime`` for ``engine.runtime.process``; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def _cycles(nodes: set[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _report(cycles: list[list[str]], edges: list[Edge], key: object) -> str:
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines.append(f"cycle between {', '.join(cycle)}:")
        lines += [
            f"  {where}: {a} imports {b}"
            for a, b, where in edges
            if key(a) in members and key(b) in members and key(a) != key(b)  # type: ignore[operator]
        ]
    return "\n".join(lines)


def test_engine_subpackages_import_each_other_without_cycles() -> None:
    edges = _edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in edges:
        if _subpackage(a) != _subpackage(b):
            graph[_subpackage(a)].add(_subpackage(b))
    nodes = {_subpackage(m) for m in _modules()}
    cycles = _cycles(nodes, graph)
    assert not cycles, _report(cycles, edges, _subpackage)


def test_engine_modules_import_each_other_without_cycles() -> None:
    edges = _edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in edges:
        graph[a].add(b)
    cycles = _cycles(set(_modules()), graph)
    assert not cycles, _report(cycles, edges, lambda m: m)


def test_the_cycle_finder_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    """The checker itself: a cycle closed only by an in-function (or relative) import is found."""
    package = tmp_path / "engine"
    (package / "b").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import os\n\n\ndef f():\n    from engine.b.c import x\n")
    (package / "b" / "__init__.py").write_text("")
    (package / "b" / "c.py").write_text("from . import d\n")
    (package / "b" / "d.py").write_text("if False:\n    import engine.a\n")
    edges = _edges(package)
    assert {(a, b) for a, b, _ in edges} == {
        ("engine.a", "engine.b.c"),
        ("engine.b.c", "engine.b.d"),
        ("engine.b.d", "engine.a"),
    }
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in edges:
        graph[_subpackage(a)].add(_subpackage(b))
    assert _cycles({"engine.a", "engine.b"}, graph) == [["engine.a", "engine.b"]]
    assert "engine/a.py:5: engine.a imports engine.b.c" in _report(
        [["engine.a", "engine.b"]], edges, _subpackage
    )
