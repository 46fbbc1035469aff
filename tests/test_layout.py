"""The layout holds: one-way imports, no cycles, small modules, one home for each concern.

Everything here is drawn from the code's own source (its ``import`` statements, every one
of them, also those inside functions), so a change that breaks the layout fails here.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("alearn", "labelstudio", "workers")
MAX_LINES = 300

# Inside alearn/: a part may import only parts of a lower layer (or its own part).
# "base" is the top-level modules: config, store, project, exceptions and their helpers.
ALEARN_LAYERS = {
    "base": 0,
    "stats": 1,
    "ingestion": 2, "features": 2,
    "model": 3,
    "query": 4,
    "rounds": 5,
    "export": 6, "report": 6,
    "cli": 7,
}
# the top-level modules of alearn/ that are not "base" code
BASE_EXEMPT = {"alearn"}  # alearn/__init__.py: the public API, loaded lazily


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """First-party modules that ``name`` imports, at any depth of its code."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import name": the submodule pkg.name if there is one, else pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        for target in targets:
            # the longest first-party module the dotted name starts with
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in MODULES:
                    if candidate != name:
                        out.add(candidate)
                    break
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "alearn" or len(parts) == 1:
        return parts[0]
    if (ROOT / "alearn" / parts[1]).is_dir():
        return parts[1]
    return "base"


def test_the_three_packages_import_one_way() -> None:
    order = {"alearn": 0, "labelstudio": 1, "workers": 2}
    wrong = [f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
             if order[b.split(".")[0]] > order[a.split(".")[0]]
             and not a.startswith("alearn.cli")]  # the CLI is the composition root
    assert not wrong, wrong


def test_alearn_parts_import_only_downwards() -> None:
    wrong = []
    for a, deps in GRAPH.items():
        if not a.startswith("alearn") or a in BASE_EXEMPT:
            continue
        pa = _part(a)
        for b in deps:
            if not b.startswith("alearn") or b in BASE_EXEMPT and pa == "cli":
                continue
            pb = _part(b)
            if b in BASE_EXEMPT or (pa != pb and ALEARN_LAYERS[pb] >= ALEARN_LAYERS[pa]):
                wrong.append(f"{a} ({pa}) -> {b} ({pb})")
    assert not wrong, wrong


def test_every_alearn_part_has_a_layer() -> None:
    parts = {_part(m) for m in MODULES if m.startswith("alearn.")}
    assert parts <= set(ALEARN_LAYERS), parts - set(ALEARN_LAYERS)


def test_stats_is_pure() -> None:
    # statistics on arrays: nothing of the store, the project, the config or files
    allowed = {"alearn.exceptions"}
    wrong = {a: sorted(d - allowed) for a, d in GRAPH.items()
             if a.startswith("alearn.stats") and
             {b for b in d - allowed if not b.startswith("alearn.stats")}}
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the whole graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
            # a package importing its own submodules is not a cycle of code
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name: str) -> None:
    n = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {n} lines"


def _grep(pattern: str) -> dict[str, list[int]]:
    rx = re.compile(pattern)
    hits: dict[str, list[int]] = defaultdict(list)
    for path in MODULES.values():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if rx.search(line):
                hits[str(path.relative_to(ROOT))].append(i)
    return dict(hits)


def test_round_metrics_are_read_and_written_in_one_module() -> None:
    # the Round.metrics column is touched only by the typed record's module (and declared
    # in the store)
    # (module paths alearn.rounds.metrics and sklearn.metrics are not the column)
    hits = _grep(r"(?<!sklearn)(?<!rounds)\.metrics\b(?![.\w])")
    assert set(hits) <= {"alearn/rounds/metrics.py", "alearn/tables.py"}, hits


def test_heads_are_fitted_in_one_module() -> None:
    # building a head, fitting one, or cross-validating one: alearn/model/ only
    hits = _grep(r"\b(make_head|cv_accuracy|cross_val_predict|cross_val_score)\(|"
                 r"EmbeddingClassifier\(")
    places = {p for p in hits if not p.startswith("alearn/model/")}
    assert not places, hits


def test_cli_has_a_module_per_command_group() -> None:
    import click

    from alearn.cli import main as entry  # noqa: F401
    from alearn.cli.app import cli

    groups = [n for n, c in cli.commands.items() if isinstance(c, click.Group)]
    assert groups
    for name in groups:
        module = cli.commands[name].callback.__module__
        assert module.startswith("alearn.cli."), (name, module)
    modules = {cli.commands[n].callback.__module__ for n in groups}
    assert len(modules) == len(groups), "each command group in its own module"
