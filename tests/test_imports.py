"""The package's import graph: no circle and no upward arrow, counting imports inside functions as well as at
module level (read from the source with :mod:`ast`, nothing imported).

Floors, lowest first: a module may import from its own floor or any floor below, never from one above.  A
module on no floor fails the test: put a new module on the floor it belongs to.
"""
from __future__ import annotations

import ast
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "fastism_torch"

FLOORS = [
    ("ground: shared words, errors, enums, range arithmetic, input checks, global settings",
     ["errors", "common", "kinds", "ranges", "validate", "precision", "deferred_dynamo"]),
    ("kernels: the edit graph's custom ops (plain torch)", ["kernels", "kernels.*"]),
    ("the engines' front end and the oracle (naive ISM); double mutants and edits of several windows over any "
     "engine", ["base", "naive", "pairwise", "multi"]),
    ("graph capture and the per-op rules", ["functional", "shapes", "capture", "rules", "rules.*"]),
    ("analysis and the plan; far pairs' head and tail", ["analysis", "plan", "macs", "sizing", "costs",
                                                         "static_batches", "far_pairs"]),
    ("the edit graph and its executor", ["rewrite", "execute", "static_macs"]),
    ("the fast engine", ["fast", "routing", "selfcheck"]),
    ("the public API and the importers",
     ["", "compat", "engine_cache", "dependency", "importers", "importers.*"]),
    ("files, scores and models around the API",
     ["loading", "inputs", "outputs", "scores", "models", "plot", "distributed", "formats", "plot_pairwise"]),
    ("the pipeline and the command line", ["pipeline", "runner", "cli", "cli_pairwise", "__main__"]),
]


def _modules(root: str) -> dict:
    """Module name -> (path, is_package) for every .py file of the package under ``root``."""
    out = {}
    for d, _, files in os.walk(os.path.join(root, PKG)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                pkg = rel[-1] == "__init__"
                out[".".join(rel[:-1] if pkg else rel)] = (os.path.join(d, f), pkg)
    return out


def import_graph(root: str = ROOT) -> dict:
    """Module -> {imported module of the package: line numbers}, for every import statement anywhere in the
    module (module level, functions, classes, ``if`` blocks).  ``from .a import b`` is an import of ``a.b`` when
    ``b`` is a module, else of ``a``; a package's ``__init__`` run implicitly by importing its submodules is not
    counted (it is not a choice of the importing module)."""
    mods = _modules(root)
    graph = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        with open(path) as fh:
            tree = ast.parse(fh.read(), path)
        edges = {}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                    if node.level else node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and t.startswith(PKG + "."):       # import a.b.c where c is a name
                    t = t.rpartition(".")[0]
                if t in mods and t != name:
                    edges.setdefault(t, []).append(node.lineno)
        graph[name] = edges
    return graph


def floor_of(module: str) -> int | None:
    rel = module[len(PKG) + 1:] if module != PKG else ""
    for i, (_, names) in enumerate(FLOORS):
        for pat in names:
            if rel == pat or (pat.endswith(".*") and rel.startswith(pat[:-1])):
                return i
    return None


def cycles(graph: dict) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path_in(graph: dict, comp: list[str]) -> str:
    """One circle through the component, as ``a -> b -> ... -> a`` with line numbers."""
    start, members = comp[0], set(comp)
    prev, todo = {start: None}, [start]
    while todo:                                    # breadth-first back to start
        v = todo.pop(0)
        for w in graph[v]:
            if w == start:
                chain, u = [start], v
                while u is not None:
                    chain.append(u)
                    u = prev[u]
                chain.reverse()
                return " -> ".join(f"{a} (line {graph[a][b][0]})" for a, b in zip(chain, chain[1:])) + f" -> {start}"
            if w in members and w not in prev:
                prev[w] = v
                todo.append(w)
    return ", ".join(comp)


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_is_on_a_floor(graph):
    lost = [m for m in sorted(graph) if floor_of(m) is None]
    assert not lost, f"modules on no floor: {lost}; add each to FLOORS in {os.path.basename(__file__)}"


def upward(graph: dict) -> list[str]:
    """Every import of a module on a higher floor, described."""
    return [f"{a} (floor {floor_of(a)}, line {lines[0]}) imports {b} (floor {floor_of(b)}: {FLOORS[floor_of(b)][0]})"
            for a, edges in sorted(graph.items()) for b, lines in sorted(edges.items())
            if None not in (floor_of(a), floor_of(b)) and floor_of(b) > floor_of(a)]


def test_no_import_circle(graph):
    found = cycles(graph)
    assert not found, "import circles (module or function level):\n" + "\n".join(_path_in(graph, c) for c in found)


def test_no_upward_import(graph):
    up = upward(graph)
    assert not up, "imports from a higher floor:\n" + "\n".join(up)


def test_the_oracle_does_not_import_the_fast_path(graph):
    """Naive ISM (and everything it imports) reaches no module of the fast path."""
    seen, todo = set(), [f"{PKG}.naive"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    fast_path = {m for m in graph if floor_of(m) is not None and floor_of(m) >= floor_of(f"{PKG}.capture")}
    assert not seen & fast_path, f"naive ISM imports the fast path: {sorted(seen & fast_path)}"


def test_the_checks_can_fail(tmp_path):
    """On a small package: imports inside functions and ``from . import name`` count; the circle and the upward
    arrow they make are found."""
    files = {
        "__init__.py": "from .naive import NaiveISM\n__version__ = '0'\n",
        "errors.py": "class E(Exception):\n    pass\n",
        "naive.py": "from .errors import E\nfrom .common import as_output_list\n",
        "common.py": "def as_output_list(x):\n    from .naive import NaiveISM  # circle and upward\n    return [x]\n",
        "cli.py": "def main():\n    from . import __version__\n    import fastism_torch.errors\n",
        "rules/__init__.py": "",
        "rules/reduce.py": "from ..errors import E\n",
    }
    for f, code in files.items():
        os.makedirs(os.path.dirname(tmp_path / PKG / f), exist_ok=True)
        (tmp_path / PKG / f).write_text(code)
    g = import_graph(str(tmp_path))
    assert g[f"{PKG}.cli"] == {PKG: [2], f"{PKG}.errors": [3]}
    assert g[f"{PKG}.rules.reduce"] == {f"{PKG}.errors": [1]}
    assert cycles(g) == [[f"{PKG}.common", f"{PKG}.naive"]]
    assert _path_in(g, cycles(g)[0]) == f"{PKG}.common (line 2) -> {PKG}.naive (line 2) -> {PKG}.common"
    assert upward(g) == [f"{PKG}.common (floor 0, line 2) imports {PKG}.naive (floor 2: {FLOORS[2][0]})"]
