"""import-linter's contracts (pyproject.toml, [tool.importlinter]) over the package as it installs.

import-linter builds its import graph with grimp, which finds a package's modules by walking the
package's folder: the components are top-level folders, not inside `visioninapp/`, so this lays
out the installed package under `build/importlint/` as tools/typecheck.py does for mypy and runs
`lint-imports` from there (it puts its working directory first on the path, ahead of the editable
install). grimp follows symlinked folders, but below a regular package it skips a folder without
`__init__.py`: operator/ (a namespace package on purpose) gets a folder of symlinks with an empty
`__init__.py` in that tree only.

    python tools/lint_imports.py [lint-imports arguments...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typecheck import ROOT, build_tree

TREE = ROOT / "build" / "importlint"


def main() -> int:
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print(__doc__)
        return 0
    build_tree(TREE, mark_namespace_packages=True)
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-logo", *sys.argv[1:], str(ROOT / "pyproject.toml")],
        cwd=TREE,
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
