"""stabench's import graph: no cycle between modules, no import of a higher layer (issue 19).

Every ``.py`` under ``stabench/`` is parsed (nothing is imported); an edge is any
``import stabench.x``, ``from stabench.x import y``, ``from . import x`` or ``from .x import y``,
at the top of a module or inside a function (a lazy import still makes the lower module
depend on the higher one). Importing ``a.b`` also imports the package ``a`` (its
``__init__``), so that edge counts too. A lazy import may be exempted with a
``# layer: lazy`` comment on its line; avoid it: move the code instead.

LAYERS is the order of the code as it is: a module may import modules of its own layer or
lower ones. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stabench"
ROOT = "__init__"  # the package's own stabench/__init__.py

LAYER_NAMES = ["base", "paths", "data", "model", "methods", "ensemble", "loop parts", "loop", "evaluation",
               "whole benchmark", "cli"]
LAYERS = {
    # base: import nothing of stabench but each other
    ROOT: 0, "config": 0, "io": 0, "selection": 0, "offline": 0, "lifeline": 0, "progress": 0, "gpu_pool": 0,
    "eta": 0,
    "spikes": 0, "eigen": 0, "data.errors": 0,
    # where files lie, locks and checkpoints
    "paths": 1, "checkpoint": 1,
    # the corpus, its tokenizer and its windows
    "data": 2, "data.corpus": 2, "data.split": 2, "data.tokenizer": 2, "data.tokens": 2, "data.windows": 2,
    "data.prepare": 2,
    # the model and its loss
    "model": 3, "readout": 3,
    # the method contract, methods, probes, a resolved run
    "contract": 4, "methods": 4, "schedule": 4, "probes": 4, "curvature": 4, "runspec": 4,
    # K members as one model, the update rule, a finished run read back
    "ensemble": 5, "update": 5, "runs": 5,
    # the loop's parts: the step (hot path), validation, batches, the device, the record
    "batches": 6, "recorder": 6, "runlock": 6, "step": 6, "validation": 6, "device": 6,
    # the training loop, and the repair of what it left
    "loop": 7, "repair": 7,
    # zero-shot evaluation
    "evaluation": 8, "evaluation.templates": 8, "evaluation.tasks": 8, "evaluation.adapter": 8,
    "evaluation.runner": 8, "evaluation.lm_eval_cli": 8,
    # a finished run written as a Hugging Face model
    "export": 8,
    # a whole benchmark: loaded for use, its resources, speed, provenance and reference results
    "benchmark": 9, "resources": 9, "speed": 9, "provenance": 9, "reference": 9,
    # the command line
    "cli": 10, "__main__": 10,
}
LAZY_MARK = "# layer: lazy"


def modules(package: Path) -> dict[str, Path]:
    """Dotted name (relative to the package; ROOT for its __init__) -> file."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[0] == "shipped":  # the benchmarks and methods the package ships: data, not stabench modules
            continue
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _package_of(name: str, path: Path) -> list[str]:
    """The package a module's relative imports start from, as name parts ([] for the root)."""
    if path.name == "__init__.py":
        return [] if name == ROOT else name.split(".")
    return name.split(".")[:-1]


def _known(dotted: str, known: dict[str, Path]) -> str | None:
    """The module of ``known`` that ``dotted`` (relative) names, or its nearest package."""
    if dotted == "":
        return ROOT
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return ROOT


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_edges(package: Path, top: str = "stabench") -> list[tuple[str, str, str]]:
    """(importer, imported, 'file:line') for every import of one module of the package by another."""
    known = modules(package)
    edges = []
    for name, path in known.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _package_of(name, path)
                    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                    module = ".".join([*base, *([node.module] if node.module else [])])
                elif node.module == top or (node.module or "").startswith(top + "."):
                    module = node.module[len(top) + 1:]
                else:
                    continue
                for alias in node.names:
                    full = f"{module}.{alias.name}" if module else alias.name
                    targets.append(full if full in known else _known(module, known))
            elif isinstance(node, ast.Import):
                targets = [_known(a.name[len(top) + 1:], known) for a in node.names
                           if a.name == top or a.name.startswith(top + ".")]
            else:
                continue
            if any(LAZY_MARK in line for line in lines[node.lineno - 1:node.end_lineno]):
                continue
            where = f"{path.relative_to(package.parent)}:{node.lineno}"
            own = {name, *_parents(name)}
            for target in targets:
                for t in [*_parents(target), target]:  # importing a.b runs a/__init__.py first
                    if t not in own:
                        edges.append((name, t, where))
    return sorted(set(edges))


def find_cycle(edges) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def upward(edges, layers: dict[str, int]) -> list[str]:
    """Each import of a higher layer, as one line naming the edge and both layers."""
    out = []
    for a, b, where in edges:
        if layers[b] > layers[a]:
            out.append(f"{where}: stabench.{a} (layer {layers[a]} {LAYER_NAMES[layers[a]]!r}) imports "
                       f"stabench.{b} (layer {layers[b]} {LAYER_NAMES[layers[b]]!r}), a higher layer")
    return out


def test_every_module_has_a_layer():
    found = set(modules(PACKAGE))
    missing, stale = sorted(found - set(LAYERS)), sorted(set(LAYERS) - found)
    assert not missing, f"give these modules a layer in tests/test_layers.py LAYERS: {', '.join(missing)}"
    assert not stale, f"LAYERS names modules that no longer exist: {', '.join(stale)}"


def test_no_import_cycle():
    cycle = find_cycle(import_edges(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(f"stabench.{m}" for m in cycle)


def test_no_upward_import():
    bad = upward([e for e in import_edges(PACKAGE) if e[0] in LAYERS and e[1] in LAYERS], LAYERS)
    assert not bad, "upward import(s):\n" + "\n".join(bad)


def test_config_is_a_leaf():
    edges = [e for e in import_edges(PACKAGE) if e[0] == "config"]
    assert not edges, f"stabench.config imports {edges}"


# ---- the walker itself, on a made-up package ---------------------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "stabench"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_walker_sees_every_form_of_import_and_lazy_ones(tmp_path):
    root = _package(tmp_path, {
        "low.py": "def f():\n    from .high import g\n",
        "high.py": "import stabench.low\nfrom stabench import low\nfrom . import sub\n",
        "marked.py": "def f():\n    from .high import g  # layer: lazy\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from .. import low\nfrom ..sub import other\n",
        "sub/other.py": "",
        "user.py": "from .sub.leaf import x\n",
    })
    edges = {(a, b) for a, b, _ in import_edges(root)}
    assert ("low", "high") in edges  # lazy: counted
    assert not any(a == "marked" for a, _ in edges)  # marked: not counted
    assert {("high", "low"), ("high", "sub"), ("sub.leaf", "low"), ("sub.leaf", "sub.other")} <= edges
    assert {("user", "sub"), ("user", "sub.leaf")} <= edges  # the package's __init__ runs first
    assert find_cycle(import_edges(root)) == ["high", "low", "high"]
    layers = {ROOT: 0, "low": 0, "high": 1, "marked": 0, "sub": 0, "sub.leaf": 0, "sub.other": 0, "user": 1}
    bad = upward(import_edges(root), layers)
    assert len(bad) == 1 and "stabench/low.py:2: stabench.low (layer 0 'base') imports stabench.high (layer 1" in bad[0]


@pytest.mark.parametrize("module", ["config", "paths", "offline"])
def test_low_modules_import_no_higher_layer(module):
    """The modules issue 19 named: config (a leaf), offline (no longer asks evaluation)."""
    edges = [e for e in import_edges(PACKAGE) if e[0] == module]
    assert all(LAYERS[b] <= LAYERS[module] for _, b, _ in edges), edges
