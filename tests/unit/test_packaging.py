"""`operator/` maps to visioninapp.operator without ever shadowing the standard library."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def _python(code: str, cwd: Path, *flags: str, env_path: str | None = None) -> str:
    env = None if env_path is None else {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_no_init_in_operator_folder(repo: Path) -> None:
    assert not (repo / "operator" / "__init__.py").exists()
    assert not (repo / "tests" / "operator").exists()


def test_stdlib_operator_wins_from_the_repo_root(repo: Path) -> None:
    path = _python(
        "import sys; sys.path.insert(0, ''); import operator; print(operator.__file__)", repo, "-S"
    )
    assert Path(path).resolve().parent == STDLIB


def test_component_packages_import_from_the_installed_project(repo: Path) -> None:
    out = _python(
        "import operator, visioninapp.operator.names as n, visioninapp.trainer, visioninapp.edge, "
        "visioninapp.api; print(operator.__file__); print(n.job_name('tj', 1))",
        repo,
    )
    stdlib_operator, name = out.splitlines()
    assert Path(stdlib_operator).resolve().parent == STDLIB and name == "tj-1"


@pytest.mark.slow
def test_built_wheel_contains_and_imports_the_components(repo: Path, tmp_path: Path) -> None:
    # Build from a copy of the tracked files: setuptools writes build/ into the source tree.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("visioninapp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "visioninapp/operator/names.py" in names and "visioninapp/operator/__init__.py" not in names
    assert "visioninapp/trainer/__init__.py" in names and "visioninapp/cli.py" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # Only the unpacked wheel (and the venv's dependencies, not the editable install) on the path.
    deps = sysconfig.get_paths()["purelib"]
    out = _python(
        "import sys; sys.path.insert(0, ''); import operator, visioninapp.operator.names as n; "
        "print(operator.__file__); print(n.__file__)",
        tmp_path,
        "-S",
        env_path=f"{target}:{deps}",
    )
    stdlib_operator, names_file = out.splitlines()
    assert Path(stdlib_operator).resolve().parent == STDLIB
    assert names_file.startswith(str(target))
