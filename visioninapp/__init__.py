"""VisionInApp: train, register, roll out and observe YOLO detectors on Kubernetes."""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

# The largest image any of our processes decodes (a 64-megapixel frame: 192 MiB as BGR). OpenCV
# reads its own limit once, when its library loads; every program of ours imports this package
# before anything (ultralytics, ingest) imports cv2, so the limit holds everywhere
# (visioninapp.images checks image headers against the same figure first).
MAX_IMAGE_PIXELS = 8192 * 8192
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))


class _SourceOperatorFinder:
    """Finds `visioninapp.operator` in the repository's `operator/` folder in an editable install.

    `operator/` has no `__init__.py`, so that it never shadows the standard library's `operator`: with
    the repository root on the path (tests, scripts), a regular package there would win over it, while
    a namespace package loses to any module of that name. A wheel installs it at
    `visioninapp/operator/`, where the normal import system finds it; setuptools' editable finder maps
    the folder but cannot load a package without `__init__.py` below a mapped package, so this finder
    returns the namespace spec for it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != f"{__name__}.operator":
            return None
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(self.folder)]
        return spec


def _install_source_operator_finder() -> None:
    here = Path(__file__).resolve().parent
    folder = here.parent / "operator"
    if not (here / "operator").is_dir() and folder.is_dir() and (here.parent / "pyproject.toml").is_file():
        sys.meta_path.append(_SourceOperatorFinder(folder))


_install_source_operator_finder()
