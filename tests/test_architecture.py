"""Promises about the package's shape: no import cycles, test-only code outside, a short loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autopipe"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """Module -> autopipe modules it imports anywhere in its code (function bodies included,
    ``if TYPE_CHECKING:`` blocks excluded: they never run)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for sub in child.orelse:
                        visit(sub)
                    continue
                if isinstance(child, ast.Import):
                    edges.update(a.name for a in child.names if a.name.startswith("autopipe"))
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1]
                                        + ([base] if base else []))
                    if base.startswith("autopipe"):
                        for a in child.names:
                            sub = f"{base}.{a.name}"
                            edges.add(sub if sub in modules else base)
                visit(child)

        visit(ast.parse(path.read_text()))
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
            strong(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 40 and "autopipe.steer.handlers.md" in graph["autopipe.steer.handlers"]
    assert cycles(graph) == []


def test_the_loop_does_not_import_replay_or_report():
    graph = import_graph()
    seen, todo = set(), ["autopipe.steer.loop"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert not seen & {"autopipe.replay", "autopipe.report"}


def test_test_only_code_stays_out_of_the_package_and_the_loop_stays_short():
    assert not (PACKAGE / "potentials" / "testing.py").exists()
    assert not (PACKAGE / "config" / "offline.py").exists()
    assert len((PACKAGE / "steer" / "loop.py").read_text().splitlines()) < 250


def test_no_two_classes_of_the_package_share_a_name():
    """A name means one thing: the carving result of steer/work.py was a second ``Candidate`` beside the
    database row built from it."""
    where: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(_module_name(path))
    assert {name: mods for name, mods in where.items() if len(mods) > 1} == {}


def test_transfer_is_below_the_potentials_package():
    """transfer.py carries bytes; how a potential ships is the potentials package's business
    (potentials.trainer imports transfer, so transfer must not import potentials back)."""
    graph = import_graph()
    assert not {m for m in graph["autopipe.transfer"] if m.startswith("autopipe.potentials")}
    assert "autopipe.transfer" in graph["autopipe.potentials.shipped"]
