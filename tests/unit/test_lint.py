"""`make lint` as part of the suite: each of its steps is one test, running the same command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The recipe of `make lint`, line by line (test_make_lint_runs_these_steps keeps the two in step).
MAKE_LINT = {
    "ruff_check": "$(VENV)/bin/ruff check .",
    "ruff_format": "$(VENV)/bin/ruff format --check .",
    "mypy_strict_all_packages": "$(PY) tools/typecheck.py",
    "import_contracts": "$(PY) tools/lint_imports.py",
}


def _command(step: str) -> list[str]:
    line = step.replace("$(VENV)/bin/", f"{Path(sys.executable).parent}/").replace("$(PY)", sys.executable)
    return line.split()


def test_make_lint_runs_these_steps(repo: Path) -> None:
    lines = (repo / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("lint:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    assert recipe == list(MAKE_LINT.values())


@pytest.mark.parametrize("step", list(MAKE_LINT.values()), ids=list(MAKE_LINT))
def test_lint_step_passes(repo: Path, step: str) -> None:
    result = subprocess.run(_command(step), cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
