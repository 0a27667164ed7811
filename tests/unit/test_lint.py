"""ruff over the tree and strict mypy over the shared core, as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_ruff_is_clean(repo: Path) -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_the_core(repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=repo, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
