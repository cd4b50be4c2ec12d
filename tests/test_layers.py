"""The layers have no import cycle, and the core imports no web framework.

Read from the modules' own import statements (those run at import time; imports under
TYPE_CHECKING are for annotations and are left out), so a cycle is found without importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {path.stem for path in ROOT.glob("*.py")} - {"gunicorn.conf"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only: what runs at import
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


GRAPH = {name: _imports(ROOT / f"{name}.py") for name in OURS}


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_itself_through_others():
    cycles = sorted(name for name in GRAPH if name in _reaches(name))
    assert cycles == [], cycles


def test_events_import_nothing_of_ours_and_text_helpers_are_the_bottom():
    assert GRAPH["events"] == set()
    assert GRAPH["text"] == set()


def test_the_core_needs_no_web_framework():
    core = ("pipeline", "housekeeping", "followups", "conversation", "wording", "upstream", "keypool", "failover")
    for name in core:
        flask_free = all("flask" not in (ROOT / f"{module}.py").read_text() for module in {name, *_reaches(name)})
        assert flask_free, name
