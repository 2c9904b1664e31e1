"""The package's shape, read from its source: imports follow the one-way flow
data -> search -> eval (heal beside it) -> oracle -> controller -> pertoken, with cli on top; no folder takes a
private name from another; no circle between modules; no module over 250 lines; no file name in two folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A folder may import from its own level and the levels below.  heal sits beside eval: it may use eval, and
# eval may not use heal (a healed variant reaches eval as a folder of weights, not as code).
LEVEL = {"data": 0, "search": 1, "eval": 2, "heal": 3, "oracle": 4, "controller": 5, "pertoken": 6, "cli": 7}
MAX_LINES = 250


def _modules() -> dict[str, Path]:
    """skiporacle.FOLDER.NAME -> its file, for every module of the package."""
    return {f"skiporacle.{path.parent.name}.{path.stem}": path
            for folder in LEVEL for path in sorted((ROOT / folder).glob("*.py"))}


def _imports(path: Path) -> list[tuple[str, tuple[str, ...], bool, int]]:
    """(module, names, at module level, line) of every `skiporacle` import in `path`, function-level ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("skiporacle."):
            found.append((node.module, tuple(a.name for a in node.names), id(node) in top, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, (), id(node) in top, node.lineno) for a in node.names if a.name.startswith("skiporacle.")]
    return found


def _target(module: str, name: str, modules: dict[str, Path]) -> str:
    """The module an import reaches: `from skiporacle.cli import main` names the module skiporacle.cli.main."""
    return f"{module}.{name}" if f"{module}.{name}" in modules else module


def test_every_import_follows_the_flow():
    modules = _modules()
    against = []
    for name, path in modules.items():
        folder = name.split(".")[1]
        for module, _, _, line in _imports(path):
            other = module.split(".")[1]
            if LEVEL[other] > LEVEL[folder]:
                against.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not against, "imports against data -> search -> eval -> heal -> oracle -> controller -> pertoken -> cli:\n" + "\n".join(against)


def test_no_folder_imports_a_private_name_of_another():
    private = [f"{path.relative_to(ROOT)}:{line} takes {module}.{n}"
               for name, path in _modules().items() for module, names, _, line in _imports(path)
               for n in names if n.startswith("_") and module.split(".")[1] != name.split(".")[1]]
    assert not private, "\n".join(private)


def test_no_circle_between_modules():
    """Module-level and function-level imports alike: a circle dodged by a function-level import is a circle."""
    modules = _modules()
    graph = {name: {_target(m, n, modules) for m, names, _, _ in _imports(path) for n in (names or ("",))}
             & modules.keys() - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [node, nxt]
            if nxt not in state and (circle := visit(nxt, path + [nxt])):
                return circle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start, [start])):
            pytest.fail("import circle: " + " -> ".join(circle))


def test_no_module_is_over_250_lines():
    long = {str(path.relative_to(ROOT)): n for path in _modules().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_file_names_are_unique_across_folders():
    """So that a newcomer knows which `candidates.py` to edit: one file of each name (package markers aside)."""
    folders: dict[str, list[str]] = {}
    for name in _modules():
        folder, stem = name.split(".")[1:]
        if stem not in ("__init__", "__main__"):
            folders.setdefault(stem, []).append(folder)
    assert {stem: f for stem, f in folders.items() if len(f) > 1} == {}


# Imports a function may make: optional or heavy outside packages that a command needs only on its own path.
LATE_IMPORTS = {
    "datasets": "data files in Arrow or parquet form only",
    "pyarrow.parquet": "parquet input only",
    "peft": "healing with LoRA only",
    "distributed": "a --scheduler run only (Dask)",
    "distributed.comm.core": "a --scheduler run only (Dask)",
    "joblib": "a --workers run only",
    "joblib.externals.loky.process_executor": "a --workers run only",
    "jinja2": "the report page only",
    "importlib.metadata": "the versions written into a summary only",
}


def _late_imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import made inside a function of `path`."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    found.append((node.module or "", node.lineno))
                elif isinstance(node, ast.Import):
                    found += [(a.name, node.lineno) for a in node.names]
    return found


def test_functions_import_only_optional_dependencies():
    late = [f"{path.relative_to(ROOT)}:{line} imports {module} inside a function"
            for path in _modules().values() for module, line in _late_imports(path) if module not in LATE_IMPORTS]
    assert not late, "\n".join(late)


def test_the_checks_can_fail(tmp_path):
    """The readers above see what they must: an upward import, a private name and a circle in small sources."""
    up = tmp_path / "up.py"
    up.write_text("def f():\n    from skiporacle.oracle.oracle_run import _record\n")
    assert _imports(up) == [("skiporacle.oracle.oracle_run", ("_record",), False, 2)]
    side = tmp_path / "side.py"
    side.write_text("from skiporacle.cli import main\nimport skiporacle.eval.model\n")
    assert [(m, top) for m, _, top, _ in _imports(side)] == [("skiporacle.cli", True), ("skiporacle.eval.model", True)]
    assert _target("skiporacle.cli", "main", _modules()) == "skiporacle.cli.main"
    late = tmp_path / "late.py"
    late.write_text("import json\ndef f():\n    import jinja2\n    from skiporacle.eval import model\n")
    assert _late_imports(late) == [("jinja2", 3), ("skiporacle.eval", 4)]


# Modules no test imports, each with the test that runs it and the text in that test that does so: the command
# line is tested as a user meets it, through `skiporacle.cli.main` (or `python -m skiporacle.cli`), and the
# figures and pages are drawn by the commands those tests run.
REACHED_THROUGH = {
    "skiporacle.cli.__main__": ("test_scale.py", '"-m", "skiporacle.cli"'),
    "skiporacle.cli.arguments": ("test_bad_input.py", "--tolerance"),
    "skiporacle.cli.controller_commands": ("test_controller.py", '"controller"'),
    "skiporacle.cli.controller_parsers": ("test_pertoken.py", '"pertoken"'),
    "skiporacle.cli.draft_command": ("test_speculative.py", '"--draft"'),
    "skiporacle.cli.generate_command": ("test_generate_command.py", '"generate"'),
    "skiporacle.cli.export_command": ("test_export.py", '"export"'),
    "skiporacle.cli.output_stream": ("test_generate_command.py", '"--out"'),
    "skiporacle.cli.heal_command": ("test_heal.py", '"heal"'),
    "skiporacle.heal.family": ("test_heal_family.py", '"heal-family"'),
    "skiporacle.cli.run_folder_commands": ("test_cli.py", '"dump"'),
    "skiporacle.cli.savings_command": ("test_savings.py", '"savings"'),
    "skiporacle.controller.evaluation_result": ("test_controller.py", "deployable controller"),
    "skiporacle.controller.plot": ("test_controller.py", "controller.png"),
    "skiporacle.data.examples": ("test_data.py", "load_task"),
    "skiporacle.eval.importance": ("test_oracle.py", '"importance"'),
    "skiporacle.eval.plausibility": ("test_controller.py", '"plausibility"'),
    "skiporacle.oracle.plausibility_file": ("test_controller.py", "plausibility.json"),
    "skiporacle.oracle.report_page": ("test_report.py", '"report"'),
    "skiporacle.pertoken.study": ("test_pertoken.py", "pertoken.json"),
    "skiporacle.pertoken.study_report": ("test_pertoken.py", "pertoken.png"),
}


def _tested_modules() -> set[str]:
    """Every package module some test imports (function-level imports too)."""
    modules, found = _modules(), set()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for module, names, _, _ in _imports(path):
            found.update(_target(module, n, modules) for n in (names or ("",)))
    return found & modules.keys()


def test_every_module_has_a_test_or_a_stated_way_in():
    """Tests mirror the package: each module is imported by a test, or `REACHED_THROUGH` names the test that
    runs it and the text in it that does; a stated way in that no longer holds fails too."""
    here = Path(__file__).parent
    untested = sorted(m for m in _modules().keys() - _tested_modules() - REACHED_THROUGH.keys()
                      if not m.endswith("__init__"))
    assert not untested, "modules no test imports and REACHED_THROUGH does not name:\n" + "\n".join(untested)
    stale = [m for m, (test, text) in REACHED_THROUGH.items()
             if m not in _modules() or not (here / test).exists() or text not in (here / test).read_text(encoding="utf-8")]
    assert not stale, f"stated ways in that do not hold: {stale}"
    assert not REACHED_THROUGH.keys() & _tested_modules(), "imported by a test now: drop it from REACHED_THROUGH"
