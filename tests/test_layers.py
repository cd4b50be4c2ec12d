"""The house's floors, read from the code's own import statements (nothing is imported).

Top to bottom: the app (`siliconflow_proxy.py`); `api/`, the surfaces, the only importers of Flask;
`drawing/`, jobs to events and words; the card's modules `uploaders.py`, `parsing.py` and
`config.py`; `siliconflow/`, the client, the key pool and its state; `storage/`, what is kept;
`core/`, what every floor may use. A floor imports only floors below it (and itself), no module
imports itself through others, and imports under TYPE_CHECKING count too: a cycle for the type
checker is a cycle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ["siliconflow_proxy", "api", "drawing", "card", "siliconflow", "storage", "core"]
CARD = {"uploaders", "parsing", "config"}  # top-level modules the user's card names, above SiliconFlow
PACKAGES = ("api", "drawing", "siliconflow", "storage", "core")


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of ours (tests, bench and tools are not the service)."""
    found = {path.stem: path for path in ROOT.glob("*.py") if path.stem != "gunicorn.conf"}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            found[f"{package}.{path.stem}" if path.stem != "__init__" else package] = path
    return found


MODULES = _modules()


def _floor(module: str) -> str:
    head = module.split(".")[0]
    return "card" if head in CARD else head


def _imports(path: Path, *, with_type_checking: bool = True) -> set[str]:
    """The modules of ours `path` imports, at module level (and under TYPE_CHECKING)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    nodes = list(tree.body)
    for node in tree.body:
        if with_type_checking and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes += node.body
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_module_lives_on_a_floor():
    assert {_floor(name) for name in MODULES} <= set(FLOORS), sorted(MODULES)
    assert set(MODULES) - {"siliconflow_proxy", *CARD} == {n for n in MODULES if n.split(".")[0] in PACKAGES}


def test_no_floor_imports_one_above_it():
    upward = sorted(
        f"{name} -> {other}"
        for name, imported in GRAPH.items()
        for other in imported
        if FLOORS.index(_floor(other)) < FLOORS.index(_floor(name))
    )
    assert upward == [], upward


def test_no_module_imports_itself_through_others_type_checking_included():
    cycles = sorted(name for name in GRAPH if name in _reaches(name))
    assert cycles == [], cycles


def test_only_the_surfaces_know_flask():
    for name, path in MODULES.items():
        if _floor(name) not in ("api", "siliconflow_proxy"):
            assert "flask" not in path.read_text(), name


def test_no_module_is_longer_than_one_sitting():
    long = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: lines for name, lines in long.items() if lines > 600} == {}


# A module tested only through others, and where. Everything else with a function in it has its own
# test file beside the others of its floor: `drawing/pipeline.py` -> `tests/drawing/test_pipeline.py`.
TESTED_THROUGH = {
    "api.site": "the routes table: every test over HTTP goes through it",
}


def _test_file(module: str) -> Path:
    *package, name = module.split(".")
    return ROOT.joinpath("tests", *package, f"test_{name}.py")


def _has_logic(path: Path) -> bool:
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(ast.parse(path.read_text())))


def test_every_module_with_logic_has_its_own_test_file():
    with_logic = {name for name, path in MODULES.items() if _has_logic(path)}
    missing = sorted(name for name in with_logic - set(TESTED_THROUGH) if not _test_file(name).exists())
    assert missing == [], f"write {', '.join(str(_test_file(n).relative_to(ROOT)) for n in missing)}"
    strays = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / "tests" / package).glob("test_*.py")
        if f"{package}.{path.stem.removeprefix('test_')}" not in MODULES
    )
    assert strays == [], f"{strays} name no module: a test beside a floor's modules is named after one of them"
