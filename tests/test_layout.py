"""The layout rules, read from the source: imports between packages go one way, scripts import no script.

A package is a top-level folder with ``__init__.py``; ``engine.py`` is a top-level module; a script is a
top-level ``*.py`` (or ``benchmarks/*.py``, ``experiments/*.py``) run as ``__main__``. Every import counts, also
one inside a function. Below the packages, no two modules may import each other (directly or through others)
but the known cycles listed with the issue that removes each.
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
    files += sorted((ROOT / "experiments").glob("*.py"))
    for f in files:
        for name in _imports(f) & set(SCRIPTS):
            if name != f.stem:
                found.add((str(f.relative_to(ROOT)), name))
    assert found == set(KNOWN_SCRIPT_IMPORTS), f"script imports: {sorted(found)}; known: {sorted(KNOWN_SCRIPT_IMPORTS)}"


def test_the_readme_test_command_is_what_ci_runs():
    """The README's test command and `.ci/run` run the same pytest line."""
    readme = (ROOT / "README.md").read_text().splitlines()
    cmd = next(line for line in readme if "python -m pytest" in line and line.startswith("pip install"))
    pytest_line = cmd.partition(" && ")[2].strip()
    assert pytest_line == "python -m pytest --durations=20"
    assert pytest_line in (ROOT / ".ci" / "run").read_text().splitlines()


# --- import cycles between modules ------------------------------------------------------------------------
# A cycle between two modules (each imports the other, directly or through others, at any depth in the file:
# an import inside a function counts) means neither can be understood, tested or moved alone. The package
# rules above see only packages; this sees modules. Known cycles, each with the issue that removes it; the test
# fails on any other cycle, and on an entry here that no longer exists (then delete the entry).
KNOWN_CYCLES: dict[frozenset[str], str] = {}

#: folders under the root that hold no project module (tests are allowed to import anything)
_NOT_MODULES = {"tests", "runs", "outputs", "shared", "__pycache__"}


def _module_files(root: Path) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under ``root`` outside tests/ and hidden or output folders.

    ``a/b.py`` is ``a.b``, ``a/__init__.py`` is ``a``; a top-level script that a package of the same name
    shadows (``review.py`` beside ``review/``) keeps its file name, ``review.py``, as nobody can import it.
    """
    files: dict[str, Path] = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if any(p in _NOT_MODULES or p.startswith(".") for p in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            files[".".join(parts)] = f
    for name in [n for n in files if "." not in n and files[n].name != "__init__.py"]:
        if (root / name / "__init__.py").is_file():
            files[f"{name}.py"] = files.pop(name)
    return files


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file (functions, methods, branches too).

    ``from a.b import c`` counts as importing ``a.b.c`` where that is a module, else ``a.b``; ``import a.b``
    as ``a.b``; relative imports are resolved against the importing module's package. The parent packages
    that Python runs first are not counted, or every package would be a cycle with its submodules.
    """
    files = _module_files(root)

    def deepest(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, f in files.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                deps |= {deepest(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".") if package else []
                    up = up[: len(up) - (node.level - 1)] if node.level > 1 else up
                    base = ".".join([*up, *([base] if base else [])])
                for a in node.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    deps.add(sub if sub in files else deepest(base))
        graph[mod] = {d for d in deps if d and d != mod}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The modules that import each other, one set per cycle (strongly connected components, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_module_graph_sees_function_level_and_relative_imports():
    g = module_graph(ROOT)
    assert "karyotyping.image_checks" in g["karyotyping.core"]  # imported only inside functions and methods
    assert "karyotyping.core" in g["karyotyping.export"] and "karyotyping.export" not in g["karyotyping.core"]
    assert "datasets.splits" in g["datasets.synthetic"]  # from .splits import ...
    assert "karyotyping.core" in g["inference_pipeline"] or "karyotyping" in g["inference_pipeline"]
    assert not any(m.startswith("tests") for m in g)


def test_no_import_cycle_between_modules_but_the_known_ones():
    cycles = import_cycles(module_graph(ROOT))
    new = sorted(sorted(c) for c in cycles - set(KNOWN_CYCLES))
    assert not new, (
        f"import cycles between modules: {new}; break them (or, with a reason and the issue that "
        "removes it, add the cycle to KNOWN_CYCLES in tests/test_layout.py)"
    )


def test_the_known_cycles_still_exist():
    gone = sorted(sorted(c) for c in set(KNOWN_CYCLES) - import_cycles(module_graph(ROOT)))
    assert not gone, f"these cycles are gone: delete them from KNOWN_CYCLES in tests/test_layout.py: {gone}"


def test_the_cycle_check_catches_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")  # a package importing its submodule: no cycle
    (pkg / "a.py").write_text(
        "import pkg.leaf\n\ndef f():\n    from .sub import b  # inside a function\n    return b\n"
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")  # relative, two levels up
    (pkg / "leaf.py").write_text("import os\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("import pkg.leaf\nimport script\n")  # tests are left out
    (tmp_path / "script.py").write_text("import pkg.a\n")
    g = module_graph(tmp_path)
    assert g == {
        "pkg": {"pkg.a"}, "pkg.a": {"pkg.leaf", "pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a"},
        "pkg.leaf": set(), "script": {"pkg.a"},
    }  # fmt: skip
    assert import_cycles(g) == {frozenset({"pkg.a", "pkg.sub.b"})}
    (pkg / "sub" / "b.py").write_text("import pkg.leaf\n")  # the cycle broken
    assert import_cycles(module_graph(tmp_path)) == set()
    # a longer cycle, through a method's import of a script: a -> sub.b and a -> leaf -> script -> a
    (pkg / "leaf.py").write_text("class C:\n    def m(self):\n        import script\n")
    assert import_cycles(module_graph(tmp_path)) == {frozenset({"pkg.a", "pkg.sub.b", "pkg.leaf", "script"})}
