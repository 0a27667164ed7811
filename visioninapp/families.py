"""Model families: which architectures each trains, what it needs, its defaults and its limits.

The one place that knows the families. The TrainingJob's architecture enum and its family CEL rules
(so the API server, `visioninapp validate` and the trainer's config check agree), the trainer's
choice of training code, the ONNX metadata the edge runtime decodes by, and the console's grouped
architecture choice (the schema's `x-families`) are all read from here. No torch: the core imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FAMILIES",
    "Family",
    "FamilyLimit",
    "FamilyName",
    "all_architectures",
    "family_of",
    "family_schema",
    "yolox_onnx_metadata",
]

FamilyName = Literal["ultralytics", "yolox"]


@dataclass(frozen=True)
class FamilyLimit:
    """A spec rule that holds for one family: a CEL condition on `spec` and what to do if it fails."""

    condition: str
    message: str


@dataclass(frozen=True)
class Family:
    name: FamilyName
    title: str
    package: str  # the PyPI package the trainer image needs for it
    architectures: tuple[str, ...]
    default_architecture: str
    # Settings of the family's own trainer that the platform fixes (not TrainingJob fields).
    defaults: tuple[tuple[str, float | int | bool], ...]
    limits: tuple[FamilyLimit, ...]


ULTRALYTICS = Family(
    name="ultralytics",
    title="Ultralytics YOLO (v5u, v8, v9, v10, 11, 12, 26)",
    package="ultralytics",
    # Built from ultralytics' packaged YAML, offline; classic YOLOv5 trains as its anchor-free `u` successor.
    architectures=(
        *(f"yolov5{s}u" for s in "nsmlx"),
        *(f"yolov8{s}" for s in "nsmlx"),
        *(f"yolov9{s}" for s in "tsmce"),
        *(f"yolov10{s}" for s in ("n", "s", "m", "b", "l", "x")),
        *(f"yolo11{s}" for s in "nsmlx"),
        *(f"yolo12{s}" for s in "nsmlx"),
        *(f"yolo26{s}" for s in "nsmlx"),
    ),
    default_architecture="yolo11n",
    defaults=(),
    limits=(
        FamilyLimit(
            "!has(self.export) || !has(self.export.decodeInGraph) || self.export.decodeInGraph",
            "export.decodeInGraph: false is for YOLOX only (ultralytics exports always decode boxes): "
            "remove it or train a yolox-* architecture",
        ),
    ),
)

YOLOX = Family(
    name="yolox",
    title="YOLOX (Megvii, through pixeltable-yolox)",
    package="pixeltable-yolox",
    architectures=tuple(f"yolox-{s}" for s in ("nano", "tiny", "s", "m", "l", "x")),
    default_architecture="yolox-s",
    # Evaluate every epoch (each epoch event carries mAP, as ultralytics' do); keep only the newest
    # checkpoint on disk (the store holds the ones that matter).
    defaults=(("eval_interval", 1), ("save_history_ckpt", False)),
    limits=(
        FamilyLimit(
            "!has(self.hyperparameters) || !has(self.hyperparameters.batch) "
            "|| self.hyperparameters.batch >= 1",
            "hyperparameters.batch: YOLOX has no automatic batch size (-1): set 1 or more",
        ),
        FamilyLimit(
            "!has(self.hyperparameters) || !has(self.hyperparameters.optimizer) "
            "|| self.hyperparameters.optimizer in ['auto', 'SGD']",
            "hyperparameters.optimizer: YOLOX trains with SGD only: use `auto` or `SGD`",
        ),
        FamilyLimit(
            "!has(self.resources) || !has(self.resources.gpu) || !has(self.resources.gpu.count) "
            "|| self.resources.gpu.count <= 1",
            "resources.gpu.count: YOLOX trains on one GPU here: set 0 or 1",
        ),
    ),
)

FAMILIES: tuple[Family, ...] = (ULTRALYTICS, YOLOX)


def all_architectures() -> tuple[str, ...]:
    return tuple(a for family in FAMILIES for a in family.architectures)


def family_of(architecture: str) -> Family:
    for family in FAMILIES:
        if architecture in family.architectures:
            return family
    known = ", ".join(f.default_architecture for f in FAMILIES)
    raise ValueError(f"unknown architecture {architecture!r} (for example {known})")


def family_schema() -> list[dict[str, object]]:
    """The families as the console shows them (an `x-families` extension of the architecture field)."""
    return [
        {"name": f.name, "title": f.title, "package": f.package, "architectures": list(f.architectures)}
        for f in FAMILIES
    ]


YOLOX_STRIDES = (8, 16, 32)  # YOLOX's head (YoloxHead's default)


def yolox_onnx_metadata(
    class_names: list[str], imgsz: int, decoded: bool, architecture: str | None = None
) -> dict[str, str]:
    """What a YOLOX ONNX export carries for the edge to decode it as YOLOX (`family: yolox`): whether
    the graph decodes the boxes, the strides to decode by when it does not, the class names, the
    input size and the preprocessing (YOLOX's ValTransform: BGR, 0..255, top-left, grey 114)."""
    return {
        "family": "yolox",
        **({"architecture": architecture} if architecture else {}),
        "decoded": str(decoded).lower(),
        "strides": json.dumps(list(YOLOX_STRIDES)),
        "names": repr(dict(enumerate(class_names))),
        "imgsz": json.dumps([imgsz, imgsz]),
        "preprocess": "bgr-0-255-topleft-114",
    }
