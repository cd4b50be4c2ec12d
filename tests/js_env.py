"""Node.js packages for the tests (tests/js): installed by .ci/run, or here on first use.

Outside CI a machine without Node.js skips these tests; in CI (CI=true) a missing tool fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import one_at_a_time

JS_DIR = Path(__file__).resolve().parent / "js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def require(tool: str | None, what: str) -> None:
    if tool:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; .ci/run installs it")
    pytest.skip(f"{what} is not installed")


def node_modules(package: str) -> Path:
    """tests/js/node_modules/<package>, running `npm ci` once when it is not there yet."""
    require(shutil.which("node") and shutil.which("npm"), "Node.js and npm")
    path = JS_DIR / "node_modules" / package
    with one_at_a_time("npm-ci"):
        if not path.exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=600, capture_output=True)
    return path
