"""Lint, strict typing and the layering contract run with the tests, so CI enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    done = run(sys.executable, "-m", "ruff", "check", "daemon", "tests")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_passes_on_the_daemon() -> None:
    done = run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_core_stays_pure_and_layers_point_down() -> None:
    lint_imports = shutil.which("lint-imports")
    assert lint_imports, "import-linter is not installed (pip install -e '.[test]')"
    done = run(lint_imports)
    assert done.returncode == 0, done.stdout + done.stderr
