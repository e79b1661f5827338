"""The layout rules, read from the source: imports between packages go one way, scripts import no script.

A package is a top-level folder with ``__init__.py``; ``engine.py`` is a top-level module; a script is a
top-level ``*.py`` (or ``benchmarks/*.py``) run as ``__main__``. Every import counts, also one inside a
function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")
MODULES = sorted(p.stem for p in ROOT.glob("*.py") if "__main__" not in p.read_text() and p.stem != "conftest")
#: (a script named like a package, e.g. review.py beside review/, is imported as the package: left out)
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py") if "__main__" in p.read_text() and p.stem not in PACKAGES)

#: script -> script imports not yet removed, each with its reason; the test fails when this list is out of date
KNOWN_SCRIPT_IMPORTS: dict[tuple[str, str], str] = {}


def _imports(path: Path) -> set[str]:
    """First-party top-level names imported anywhere in ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES + MODULES + SCRIPTS)


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        deps = set().union(*(_imports(f) for f in (ROOT / pkg).rglob("*.py")))
        g[pkg] = deps - {pkg}
    for mod in MODULES:
        g[mod] = _imports(ROOT / f"{mod}.py") - {mod}
    return g


def test_the_rules_see_the_project():
    assert {"datasets", "models", "features", "karyogram", "metrics", "karyotyping", "fileio"} <= set(PACKAGES)
    assert {"train_segmentation", "train_classification", "inference_pipeline", "evaluate"} <= set(SCRIPTS)
    assert "engine" in MODULES
    assert _graph()["karyotyping"] >= {"datasets", "models", "karyogram"}  # the walk finds function-level imports


def test_package_imports_go_one_way():
    g = _graph()
    for node, deps in g.items():
        assert not deps & set(SCRIPTS), f"{node} imports a script: {sorted(deps & set(SCRIPTS))}"
    # no cycle: a package never imports one that (directly or through others) imports it back
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(g.get(n, ())):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path, n, d])
            if d not in state:
                visit(d, [*path, n])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [])


def test_rendering_imports_no_loader_and_labels_sit_below_the_loaders():
    g = _graph()
    assert "datasets" not in g["karyogram"] and "karyogram" in g["datasets"]
    assert "karyotyping" not in g["models"] | g["datasets"] | g["metrics"] | g["karyogram"]


def test_no_script_imports_a_script():
    found = set()
    files = [ROOT / f"{s}.py" for s in SCRIPTS] + sorted((ROOT / "benchmarks").glob("*.py"))
    for f in files:
        for name in _imports(f) & set(SCRIPTS):
            if name != f.stem:
                found.add((str(f.relative_to(ROOT)), name))
    assert found == set(KNOWN_SCRIPT_IMPORTS), f"script imports: {sorted(found)}; known: {sorted(KNOWN_SCRIPT_IMPORTS)}"
