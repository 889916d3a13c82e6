"""The house rules of DESIGN.md's architecture, checked statically (ast: nothing is imported, optional extras need
not be installed): no import cycles, even through function-local imports; a module imports only from its own layer
or below; training and tasks stay independent; small files and a small package top level."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import encoderforge

ROOT = Path(encoderforge.__file__).parent
PACKAGE = "encoderforge"

# DESIGN.md's layers, bottom up. A module may import from its own layer or lower, never higher. pipeline runs
# recipes (so sits above them) and the CLI calls the pipeline (so sits above it).
LAYERS: dict[str, int] = {
    "": 0,
    "config": 0,
    "fileio": 0,  # "" = encoderforge/__init__.py
    "hardware": 0,  # CPU facts and the measured-kernel cache: asked by training and inference alike
    "model": 1,
    "tokenization": 2,
    "data": 3,
    "training": 4,
    "tasks": 4,
    "compression": 5,
    "inference": 5,
    "eval": 5,
    "index": 5,
    "recipes": 6,
    "serving": 6,
    "pipeline": 7,
    "search": 7,  # runs the finetune recipe, like the pipeline
    "cli": 8,
    "__main__": 8,
}
# Same-layer packages that must not import each other in this direction. training is HOW to learn, tasks WHAT:
# training imports no task (DESIGN.md); tasks implement training/task.py's protocol. inference uses compression (int8 export, fidelity), never the reverse.
FORBIDDEN = {("training", "tasks"), ("compression", "inference")}
MAX_TOP_LEVEL_MODULES = 4
MAX_LINES = 400


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package's name maps to its __init__.py)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: line of the first such import}, including imports inside
    functions (they still run, and hide cycles rather than remove them)."""
    files = module_files(root, package)
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, mod, is_pkg, files):
                if target.split(".")[0] == package and target != mod:
                    edges.setdefault(target, node.lineno)
        graph[mod] = edges
    return graph


def _targets(node: ast.AST, mod: str, is_pkg: bool, files: dict[str, Path]) -> list[str]:
    """The modules one import statement loads: `from pkg import name` loads pkg.name if that is a module."""
    if isinstance(node, ast.Import):
        return [_known(a.name, files) for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in files else _known(base, files) for a in node.names]


def _known(name: str, files: dict[str, Path]) -> str:
    """The module itself, or its nearest existing ancestor (a missing module then fails at import, not here)."""
    while name not in files and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One concrete cycle (a -> ... -> a) per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(comp, graph) for comp in sccs]


def _cycle_in(comp: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """Shortest path from comp[0] back to itself inside the component (breadth first)."""
    members, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:  # walk the parents back: v, ..., start
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp  # unreachable for a real component


def layer_of(mod: str) -> tuple[str, int | None]:
    """(top-level part after `encoderforge.`, its layer or None if LAYERS does not place it)."""
    part = mod.split(".")[1] if "." in mod else ""
    return part, LAYERS.get(part)


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)) + f" -> {cycle[-1]}"


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(ROOT, PACKAGE)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (move the shared code into the lowest layer that needs it):\n" + "\n".join(
        describe(c, graph) for c in cycles
    )


def test_every_subpackage_has_a_layer(graph):
    unplaced = sorted({layer_of(m)[0] for m in graph if layer_of(m)[1] is None})
    assert not unplaced, f"add {unplaced} to LAYERS in tests/test_imports.py (DESIGN.md's layer order)"


def test_imports_follow_the_layer_order(graph):
    bad = []
    for src, edges in sorted(graph.items()):
        (sp, sl) = layer_of(src)
        for dst, line in sorted(edges.items()):
            (dp, dl) = layer_of(dst)
            if sl is None or dl is None:
                continue  # reported by test_every_subpackage_has_a_layer
            if dl > sl:
                bad.append(f"{src}:{line} imports {dst}: layer {sp or PACKAGE} ({sl}) may not import {dp} ({dl})")
            elif (sp, dp) in FORBIDDEN:
                bad.append(f"{src}:{line} imports {dst}: {sp} must not import {dp}")
    assert not bad, "imports against the layer order (DESIGN.md):\n" + "\n".join(bad)


def test_package_top_level_stays_small():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, (
        f"encoderforge/ has {len(top)} top-level modules {top}; at most {MAX_TOP_LEVEL_MODULES} "
        "(__init__, __main__, config, fileio): put the others in a subpackage"
    )


def test_no_module_over_the_line_budget():
    long = sorted(
        (n, str(p.relative_to(ROOT.parent)))
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    )
    assert not long, f"modules over {MAX_LINES} lines (STYLE.md's soft budget; split them by job):\n" + "\n".join(
        f"{path}: {n}" for n, path in long
    )


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    """The checks above pass vacuously if the graph misses edges: build one for a small package with a cycle hidden
    in a function, a relative import and a `from pkg import submodule`."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("from toy.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from toy.sub import a\n    return a\n")
    (pkg / "c.py").write_text("import toy.b\nfrom toy import sub, missing\n")
    g = import_graph(pkg, "toy")
    assert g["toy.sub"] == {"toy.sub.a": 1}
    assert g["toy.b"] == {"toy.sub.a": 2}
    assert set(g["toy.c"]) == {"toy.b", "toy.sub", "toy"}
    assert find_cycles(g) == [["toy.b", "toy.sub.a", "toy.b"]]
    assert describe(find_cycles(g)[0], g) == "toy.b (line 2) -> toy.sub.a (line 1) -> toy.b"
