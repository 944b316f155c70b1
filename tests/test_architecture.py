"""The house rules, checked on the source: imports flow one way, no cycles, small modules,
no laboratory notebook in the product."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

import phys_bids

PACKAGE = Path(phys_bids.__file__).parent
REPO = PACKAGE.parent

#: Each unit of the package (a subpackage or a top-level module) and its layer. A unit
#: may import units of its own layer or below, never above; and the graph of units has
#: no cycle. physics -> synth/qmri/preproc/bids -> models -> tasks -> workflows -> group -> cli
LAYERS = {
    "__init__": 0, "errors": 0, "io": 0, "intensity": 0, "threads": 0, "progress": 0,
    "physics": 0,
    "synth": 1, "qmri": 1, "preproc": 1, "bids": 1,
    "models": 2, "config": 2,
    "tasks": 3,
    "workflows": 4,
    "group": 5,
    "cli": 6, "demo": 6, "__main__": 6,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel).is_dir()


def _imports(path: Path) -> set[str]:
    """Every phys_bids module a file imports, relative imports resolved (function-level
    imports included: a lazy import is still a dependency)."""
    mod = _module_name(path)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                # "from . import x": x may be a submodule
                names = [f"{name}.{a.name}" for a in node.names
                         if not node.module and _is_module(f"{name}.{a.name}")]
            else:
                name, names = node.module or "", []
            found.update(n for n in [name, *names] if n.startswith("phys_bids"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("phys_bids"))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(_module_name(f))
        deps = {_unit(m) for m in _imports(f)} - {unit}
        # "from phys_bids import __version__" is the root package, layer 0
        graph.setdefault(unit, set()).update(deps)
    return graph


def test_every_unit_has_a_layer():
    assert set(_graph()) <= set(LAYERS), set(_graph()) - set(LAYERS)


@pytest.mark.parametrize("unit", sorted(LAYERS))
def test_imports_flow_down(unit):
    graph = _graph()
    if unit not in graph:
        pytest.skip(f"{unit} is not in this checkout")
    upward = sorted(d for d in graph[unit] if LAYERS.get(d, 99) > LAYERS[unit])
    assert not upward, f"phys_bids.{unit} (layer {LAYERS[unit]}) imports {upward} from above"


def test_units_have_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(u, path):
        state[u] = 1
        for d in sorted(graph.get(u, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, u, d]))
            if d not in state:
                visit(d, [*path, u])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [])


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a physics module importing the CLI is reported."""
    f = PACKAGE / "physics" / "_upward_probe.py"
    assert not f.exists()
    try:
        f.write_text("from ..cli import main\n")
        assert "cli" in _graph()["physics"]
    finally:
        f.unlink()


#: modules allowed past ~400 lines, and why (a long module must say why here)
LONG_MODULES = {
    "phys_bids/models/training.py": "one resumable training loop (segmentation and qMRI "
    "share the checkpointing, validation and manifest code)",
    "phys_bids/synth/generator.py": "the synthetic-data generator's augmentation chain, "
    "one pass per realisation",
    "phys_bids/physics/sequences.py": "one signal equation per sequence, each with its "
    "units and reference",
    "phys_bids/cli.py": "the argument parser (about half the module) and the run loop",
}


def test_modules_are_small_or_say_why():
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(REPO).as_posix()
        n = len(f.read_text().splitlines())
        if n > 420:
            assert rel in LONG_MODULES, f"{rel} has {n} lines; split it or say why here"


def test_participant_workflow_module_is_the_graph_only():
    n = len((PACKAGE / "workflows" / "participant.py").read_text().splitlines())
    assert n <= 250


NOTEBOOK = re.compile(r"session [0-9]|stop [0-9]|the issue", re.I)


def test_no_development_diary_in_the_product():
    """No numbered development sessions or stops, no "the issue", in what users and
    readers see (history goes in CHANGELOG.md)."""
    roots = [REPO / p for p in ("README.md", "docs", "phys_bids", "bench", "tests")
             if (REPO / p).exists()]
    if not (REPO / "docs").exists():
        pytest.skip("an installed package only: no docs to check")
    hits = []
    for root in roots:
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix in
            (".py", ".md", ".json", ".txt", ".tsv", ".html"))
        for f in files:
            if f == Path(__file__):
                continue
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if NOTEBOOK.search(line):
                    hits.append(f"{f.relative_to(REPO)}:{i}: {line.strip()[:80]}")
    assert not hits, f"{len(hits)} lines, first: " + "\n".join(hits[:10])


def test_help_texts_carry_no_benchmark_figures():
    out = subprocess.run(["phys-bids", "--help"], capture_output=True, text=True).stdout
    if not out:
        pytest.skip("phys-bids is not on PATH")
    for pattern in (r"\d+ of \d+ columns", r"s per 1 mm scan", r"[Ss]ession [0-9]", r"Dice"):
        assert not re.search(pattern, out), pattern


def test_every_phys_bids_import_names_an_existing_module():
    """Relative imports (lazy ones included, which only run when their function does)
    resolve to a module of the package: a module moved between layers cannot keep a
    stale ``from ..x import y``."""
    bad = []
    for f in sorted(PACKAGE.rglob("*.py")):
        mod = _module_name(f)
        package = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level > len(package):
                    bad.append(f"{f.relative_to(REPO)}:{node.lineno}: beyond the package")
                    continue
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                if name != "phys_bids" and not _is_module(name):
                    bad.append(f"{f.relative_to(REPO)}:{node.lineno}: no module {name}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("phys_bids."):
                if not _is_module(node.module):
                    bad.append(f"{f.relative_to(REPO)}:{node.lineno}: no module {node.module}")
    assert not bad, "\n".join(bad)
