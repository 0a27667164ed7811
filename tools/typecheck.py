"""Strict mypy over the core and the four components, as the one package they install as.

The components live in top-level folders (`operator/`, `api/`, `edge/`, `trainer/`) that install as
`visioninapp.operator` and so on; `operator/` has no `__init__.py`, so that it never shadows the
standard library's `operator`. mypy maps modules to files by folder, so this builds that package's
layout out of symlinks under `build/typecheck/` and checks it there, printing the repository's own
paths in the messages. tools/lint_imports.py builds the same layout for import-linter.

    python tools/typecheck.py [mypy arguments...]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
COMPONENTS = ("operator", "api", "edge", "trainer")


def build_tree(tree: Path = TREE, *, mark_namespace_packages: bool = False) -> Path:
    """`tree/visioninapp/`: the core's entries and the components, as symlinks; returns that folder.

    The tree is brought up to date in place on every call (entries added or removed show at once;
    another run reading the tree meanwhile keeps working). With `mark_namespace_packages`, a
    component without `__init__.py` (operator/) becomes a real folder of symlinks to its entries
    plus an empty `__init__.py`: tools that only walk regular packages below a regular package
    (import-linter's grimp) then see its modules too.
    """
    package = tree / "visioninapp"
    wanted = {entry.name: entry for entry in (ROOT / "visioninapp").iterdir() if entry.name != "__pycache__"}
    wanted.update({name: ROOT / name for name in COMPONENTS})
    _sync(package, wanted, mark_namespace_packages)
    return package


def _sync(folder: Path, wanted: dict[str, Path], mark_namespace_packages: bool, marker: bool = False) -> None:
    """Make `folder` hold a symlink to each of `wanted` (a mirror for namespace packages if marked),
    plus an empty `__init__.py` if `marker`; anything else there goes."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    mirrors = {name for name, target in wanted.items() if mark_namespace_packages and _is_namespace(target)}
    for entry in folder.iterdir():
        if not _is_wanted(entry, wanted, mirrors, marker):
            _remove(entry)
    if marker and not (folder / "__init__.py").exists():
        (folder / "__init__.py").write_text("")
    for name, target in wanted.items():
        if name in mirrors:
            entries = {e.name: e for e in target.iterdir() if e.name != "__pycache__"}
            _sync(folder / name, entries, mark_namespace_packages, marker=True)
        elif not (folder / name).is_symlink():
            (folder / name).symlink_to(target)


def _is_namespace(target: Path) -> bool:
    return target.is_dir() and not (target / "__init__.py").exists()


def _is_wanted(entry: Path, wanted: dict[str, Path], mirrors: set[str], marker: bool) -> bool:
    if entry.name in mirrors:
        return True  # brought up to date by its own _sync
    if marker and entry.name == "__init__.py" and not entry.is_symlink():
        return True
    return entry.name in wanted and entry.is_symlink() and entry.readlink() == wanted[entry.name]


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def main() -> int:
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print(__doc__)
        return 0
    build_tree()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            *sys.argv[1:],
            "visioninapp",
        ],
        cwd=TREE,
        capture_output=True,
        text=True,
    )
    own_paths = re.compile(rf"^visioninapp/({'|'.join(COMPONENTS)})/", re.MULTILINE)
    sys.stdout.write(own_paths.sub(r"\1/", result.stdout))
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
