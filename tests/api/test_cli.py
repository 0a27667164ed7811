"""`visioninapp-api`: help everywhere, migrations, and one clear line on a bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visioninapp.api.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "consume"):
        assert command in result.stdout
        assert run(command, "--help").returncode == 0


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    result = run("migrate", env={"VISIONINAPP_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "visioninapp.db").exists()


def test_serve_without_kubernetes_configuration_says_what_to_set(tmp_path: Path) -> None:
    result = run(
        "serve",
        "--port",
        "1",
        env={"VISIONINAPP_DATA_DIR": str(tmp_path), "VISIONINAPP_KUBECONFIG": "/nonexistent"},
    )
    assert result.returncode == 1
    assert "VISIONINAPP_KUBECONFIG" in result.stderr
    assert "Traceback" not in result.stderr
