"""Models a user brought (`visioninapp models import`): weights trained elsewhere, for example
ultralytics' COCO-pretrained `yolo11n.pt` downloaded by hand, registered as a ModelArtifact so that a
TrainingJob can fine-tune from it (`model.baseModel`) and an EdgeDeployment can serve it.

- an ultralytics `.pt`: class names and input size from the checkpoint, exported to ONNX beside it
  (so the version deploys as it is);
- a YOLOX checkpoint (`.pt`/`.pth`): weights only (YOLOX checkpoints carry no class names: give
  them); fine-tune it to get a deployable version;
- an `.onnx`: class names and input size from its metadata (ultralytics and our trainer write them)
  or given; it deploys, it cannot be fine-tuned. A YOLOX export made elsewhere (Megvii's own
  `export_onnx` writes no metadata) says so with `--family yolox` and whether its graph decodes the
  boxes; that is written into the file's metadata, so the edge decodes it as YOLOX, never by guess.

The files go to the artifact store, each with its sha256; the ModelArtifact is written as YAML for
`kubectl apply` or GitOps, and the operator verifies every file before it is Available.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visioninapp.backends.storage import ArtifactStore, StoredObject, join_uri
from visioninapp.resources import ModelArtifact

__all__ = [
    "ModelFacts",
    "ModelImportError",
    "build_artifact",
    "export_onnx",
    "mark_yolox_onnx",
    "read_facts",
    "upload",
]


class ModelImportError(ValueError):
    """The file cannot be imported as it is; the message says why and what to pass."""


@dataclass(frozen=True)
class ModelFacts:
    kind: str  # "ultralytics", "yolox" or "onnx"
    class_names: list[str]
    imgsz: int
    architecture: str | None = None


def _names(raw: Any) -> list[str]:
    if isinstance(raw, dict):
        return [str(raw[k]) for k in sorted(raw)]
    return [str(n) for n in raw]


def read_facts(path: Path, class_names: list[str] | None = None, imgsz: int | None = None) -> ModelFacts:
    """What the file is and what it detects; `class_names` and `imgsz` override what it says."""
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    if path.suffix == ".onnx":
        return _onnx_facts(path, class_names, imgsz)
    if path.suffix not in (".pt", ".pth"):
        raise ModelImportError(f"{path}: import a .pt/.pth (PyTorch weights) or an .onnx file")
    yolox = _yolox_architecture(path)
    if yolox is None and path.suffix == ".pth":
        raise ModelImportError(f"{path}: a .pth must hold YOLOX weights (ultralytics weights are .pt files)")
    if yolox is not None:
        if not class_names:
            raise ModelImportError(
                f"{path} holds {yolox} weights, which carry no class names: give them with "
                "--class-names (for COCO weights, the 80 COCO names in order)"
            )
        return ModelFacts("yolox", class_names, imgsz or 640, yolox)
    return _ultralytics_facts(path, class_names, imgsz)


def _onnx_facts(path: Path, class_names: list[str] | None, imgsz: int | None) -> ModelFacts:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others
        raise ModelImportError(f"{path}: not an ONNX model ({error})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    names = class_names or (_names(ast.literal_eval(meta["names"])) if "names" in meta else None)
    size = imgsz or (int(ast.literal_eval(meta["imgsz"])[0]) if "imgsz" in meta else None)
    if not names or not size:
        raise ModelImportError(
            f"{path} does not say its class names and input size in its metadata: give them with "
            "--class-names and --imgsz"
        )
    return ModelFacts("onnx", names, size)


def _ultralytics_facts(path: Path, class_names: list[str] | None, imgsz: int | None) -> ModelFacts:
    try:
        from ultralytics import YOLO
    except ImportError:
        raise ModelImportError(
            "importing .pt weights needs ultralytics: pip install 'visioninapp[trainer]'"
        ) from None
    try:
        model = YOLO(str(path), task="detect")
        names = model.names  # a state dict that is not an ultralytics model has none
    except Exception as error:  # a pickle of something else, a truncated file
        raise ModelImportError(f"{path}: not ultralytics or YOLOX detection weights ({error})") from None
    if not names:
        raise ModelImportError(f"{path}: not ultralytics detection weights (no class names in it)")
    if model.task != "detect":
        raise ModelImportError(f"{path} is a {model.task} model; only detection models are supported")
    train_args = (getattr(model, "ckpt", None) or {}).get("train_args") or {}
    size = imgsz or int(train_args.get("imgsz") or 640)
    architecture = Path(str(train_args.get("model") or "")).stem or None
    return ModelFacts("ultralytics", class_names or _names(names), size, architecture)


def _yolox_architecture(path: Path) -> str | None:
    try:
        from visioninapp.trainer.yolox_train import yolox_architecture_of
    except ImportError:  # no YOLOX support installed: whatever it is, it is not read as YOLOX
        return None
    architecture: str | None = yolox_architecture_of(path)
    # a file may name any architecture: only a YOLOX one makes it YOLOX weights
    return architecture if architecture is not None and architecture.startswith("yolox-") else None


def export_onnx(path: Path, imgsz: int) -> Path:
    """The ultralytics weights exported to ONNX (opset 17, decoding in the graph) beside them."""
    from ultralytics import YOLO

    try:
        exported = YOLO(str(path), task="detect").export(format="onnx", imgsz=imgsz, opset=17, verbose=False)
    except Exception as error:  # weights ultralytics loads but cannot run
        raise ModelImportError(
            f"{path}: cannot be exported to ONNX ({type(error).__name__}: {error})"
        ) from None
    return Path(exported)


def mark_yolox_onnx(path: Path, facts: ModelFacts, decoded: bool, out: Path) -> Path:
    """A copy of a YOLOX ONNX export with the metadata our trainer writes, so that the edge decodes
    it as YOLOX (grid/stride decoding when the graph does not, YOLOX's preprocessing)."""
    import onnx

    from visioninapp.families import yolox_onnx_metadata

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in yolox_onnx_metadata(facts.class_names, facts.imgsz, decoded).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


def upload(store: ArtifactStore, files: dict[str, Path], prefix: str) -> dict[str, StoredObject]:
    """Each file under `prefix` (`model.pt`, `model.onnx`), with its sha256 as stored."""
    return {fmt: store.put_file(path, join_uri(prefix, f"model{path.suffix}")) for fmt, path in files.items()}


def build_artifact(
    name: str, namespace: str, line: str, version: str, facts: ModelFacts, stored: dict[str, StoredObject]
) -> ModelArtifact:
    """The ModelArtifact of an import: its files, what it detects, and that it was imported."""
    return ModelArtifact.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"visioninapp.io/imported": "true"},
                "annotations": {
                    "visioninapp.io/imported-kind": facts.kind,
                    **({"visioninapp.io/architecture": facts.architecture} if facts.architecture else {}),
                },
            },
            "spec": {
                "model": line,
                "version": version,
                "formats": [
                    {"format": fmt, "uri": obj.uri, "sha256": obj.sha256, "size": obj.size}
                    for fmt, obj in stored.items()
                ],
                "classNames": facts.class_names,
                "imgsz": facts.imgsz,
            },
        }
    )
