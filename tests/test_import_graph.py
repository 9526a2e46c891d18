"""The import graph of the project's packages, read from the source with `ast` (nothing is imported).

Data flows client -> protocol -> daemon -> engine, and the imports follow it (ARCHITECTURE.md):
- `protocol` imports none of the others (it is the wire format both ends share);
- `clients` import only `protocol` (a client never carries the engine or the daemon, nor torch);
- `daemon` imports `protocol` and `magnet_rt`;
- `magnet_rt` (the engine) imports none of `protocol`, `daemon`, `clients`;
- `cli` (the `magnet-rt` command) composes them all and nothing imports it.
And no module takes part in an import cycle. Every import counts, also one inside a function (it runs when
called); only those under `if TYPE_CHECKING:` do not (they never run).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "clients", "daemon", "magnet_rt", "cli")
ALLOWED = {  # package -> the other project packages it may import
    "protocol": set(),
    "clients": {"protocol"},
    "daemon": {"protocol", "magnet_rt"},
    "magnet_rt": set(),
    "cli": {"protocol", "clients", "daemon", "magnet_rt"},
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # path:line


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (package __init__ as the package)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them but those under `if TYPE_CHECKING:`."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.append(child)
            todo.append(child)
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that `name` loads (its longest known prefix), or None for a third-party one."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != mod:
                    edges.append(Edge(mod, resolved, f"{path.relative_to(REPO)}:{node.lineno}"))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (a few hundred)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges(module_files())


def test_the_graph_is_read(edges):
    """The reader sees the imports it is meant to judge (a broken reader would pass every rule)."""
    pairs = {(e.importer, e.imported) for e in edges}
    assert ("daemon.worker", "daemon.scheduler") in pairs  # relative: from .scheduler import ...
    assert ("daemon.render", "magnet_rt.jobs") in pairs  # absolute: from magnet_rt.jobs import ...
    assert ("clients.client", "protocol") in pairs  # import protocol as P
    assert ("cli.main", "daemon.keys") in pairs  # inside a function
    assert ("daemon.engine", "magnet_rt.pipeline") not in pairs  # under TYPE_CHECKING only


def test_the_cycle_finder_finds_a_cycle():
    e = [Edge("a", "b", ""), Edge("b", "c", ""), Edge("c", "a", ""), Edge("c", "d", "")]
    assert cycles(e) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_data_flow(edges, package):
    wrong = [f"{e.where}: {e.importer} imports {e.imported}" for e in edges
             if e.importer.split(".")[0] == package
             and (top := e.imported.split(".")[0]) != package and top not in ALLOWED[package]]
    assert not wrong, (f"{package} may import only {sorted(ALLOWED[package]) or 'none of the others'}:\n"
                       + "\n".join(wrong))


def test_no_import_cycles(edges):
    found = cycles(edges)
    where = {(e.importer, e.imported): e.where for e in edges}
    lines = []
    for component in found:
        members = set(component)
        lines.append(" <-> ".join(component) + ": " + ", ".join(
            f"{where[(a, b)]} ({a} -> {b})" for a in component for b in component if a != b and (a, b) in where
            and b in members))
    assert not found, "import cycles:\n" + "\n".join(lines)
