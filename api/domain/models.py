"""The model registry: ModelArtifact objects in the training cluster, stage changes, comparisons and
the detection preview (the model's ONNX run in the API process)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from visioninapp.api.container import ApiContainer
from visioninapp.api.listcache import invalidate
from visioninapp.api.paging import page, sort_items
from visioninapp.api.preview import PREVIEW_MAX_BYTES, preview_image
from visioninapp.api.schemas import ModelOut
from visioninapp.backends.storage import ChecksumMismatch, ObjectNotFound
from visioninapp.evaluation import EvaluationRecord
from visioninapp.k8s import Obj
from visioninapp.lines import promotion_blocked
from visioninapp.web.errors import ApiError

__all__ = [
    "KIND",
    "DetectOptions",
    "compare",
    "detect",
    "evaluation",
    "get_model",
    "list_models",
    "model_out",
    "set_stage",
]

KIND = "ModelArtifact"
SORTABLE = ("name", "model", "version", "stage", "createdAt", "mAP50", "mAP50_95")
COMPARED = ("mAP50", "mAP50_95", "precision", "recall")


def model_out(obj: Obj) -> dict[str, Any]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return ModelOut(
        name=meta["name"],
        project=meta["namespace"],
        model=spec.get("model", ""),
        version=spec.get("version", ""),
        stage=spec.get("stage", "candidate"),
        phase=status.get("phase"),
        metrics=spec.get("metrics") or {},
        formats=spec.get("formats") or [],
        class_names=spec.get("classNames") or [],
        imgsz=spec.get("imgsz"),
        lineage=spec.get("source") or {},
        deployed_to=status.get("deployedTo") or [],
        created_at=meta.get("creationTimestamp"),
        evaluation=spec.get("evaluation"),
        quality_gate=status.get("qualityGate"),
    ).model_dump(mode="json", by_alias=True)


def list_models(
    container: ApiContainer,
    project: str,
    stage: str | None,
    model: str | None,
    sort: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """Filtered, sorted and paged here: the list comes from the Kubernetes API."""
    items = [model_out(o) for o in container.clusters.training.list(KIND, project)]
    items = [i for i in items if (not stage or i["stage"] == stage) and (not model or i["model"] == model)]
    # metrics lifted to the top level so that they sort like other fields, then dropped again
    flat = [
        {**i, "mAP50": i["metrics"].get("mAP50"), "mAP50_95": i["metrics"].get("mAP50_95")} for i in items
    ]
    ordered = sort_items(flat, sort, SORTABLE)
    for item in ordered:
        item.pop("mAP50"), item.pop("mAP50_95")
    return page(ordered, limit, offset)


def get_model(container: ApiContainer, project: str, name: str) -> dict[str, Any]:
    return model_out(container.clusters.training.get(KIND, project, name))


def download(container: ApiContainer, project: str, name: str, fmt: str, work: Path) -> tuple[Path, str, str]:
    """One file of a model version, fetched from the store and checked against the sha256 its
    ModelArtifact records (a file that does not match is never handed out): path, download name and
    sha256."""
    artifact = get_model(container, project, name)
    entry = next((f for f in artifact["formats"] if f["format"] == fmt), None)
    if entry is None:
        have = ", ".join(f["format"] for f in artifact["formats"]) or "none"
        raise ApiError(404, f"model {name} has no {fmt} file (it has: {have})")
    suffix = Path(urlsplit(entry["uri"]).path).suffix or ".bin"
    try:
        path = container.store_for(entry["uri"]).get_file(
            entry["uri"], work / f"model{suffix}", sha256=entry["sha256"]
        )
    except ChecksumMismatch:
        raise ApiError(
            409, f"the stored {fmt} file of {name} does not match its sha256: not served"
        ) from None
    except ObjectNotFound:
        raise ApiError(404, f"the {fmt} file of {name} is gone from the artifact store") from None
    return path, f"{name}-{fmt}{suffix}", str(entry["sha256"])


def evaluation(container: ApiContainer, project: str, name: str) -> dict[str, Any]:
    """The version's evaluation record (candidate and baseline per class, the verdict), read only
    when it matches the sha256 its ModelArtifact records."""
    ref = get_model(container, project, name)["evaluation"]
    if not ref:
        raise ApiError(404, f"model {name} has no evaluation record: it was trained without a quality gate")
    try:
        data = container.store_for(ref["uri"]).get_bytes(ref["uri"])
    except ObjectNotFound:
        raise ApiError(404, f"the evaluation record of {name} is gone from the artifact store") from None
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise ApiError(409, f"the stored evaluation record of {name} does not match its sha256: not served")
    try:
        record = EvaluationRecord.model_validate_json(data)
    except ValidationError:
        raise ApiError(409, f"the evaluation record of {name} is not one this API can read") from None
    return record.wire()


def set_stage(container: ApiContainer, project: str, name: str, stage: str) -> dict[str, Any]:
    if stage in ("staging", "production"):
        blocked = promotion_blocked(container.clusters.training.get(KIND, project, name))
        if blocked:
            raise ApiError(
                409,
                f"{name} is not promoted to {stage}: {blocked}. Wait for the check, train a better "
                "candidate, or (knowing why) set spec.stage with kubectl",
            )
    updated = container.clusters.training.patch(KIND, project, name, {"spec": {"stage": stage}})
    invalidate(container, project, KIND)
    return model_out(updated)


def compare(container: ApiContainer, project: str, a: str, b: str) -> dict[str, Any]:
    """Both models, the deltas of b against a where both have a metric, and the better one by mAP50-95."""
    first, second = get_model(container, project, a), get_model(container, project, b)
    deltas = {
        key: round(float(second["metrics"][key]) - float(first["metrics"][key]), 6)
        for key in COMPARED
        if isinstance(first["metrics"].get(key), (int, float))
        and isinstance(second["metrics"].get(key), (int, float))
    }
    better = None
    if deltas.get("mAP50_95"):
        better = b if deltas["mAP50_95"] > 0 else a
    return {"a": first, "b": second, "metricDeltas": deltas, "better": better}


@dataclass(frozen=True)
class DetectOptions:
    confidence: float  # minimum score
    iou: float  # NMS IoU threshold


def detect(
    container: ApiContainer, project: str, name: str, read: Callable[[int], bytes], options: DetectOptions
) -> dict[str, Any]:
    """Detections of the model's ONNX on the image `read(size)` returns, decoded as on a device."""
    artifact = container.clusters.training.get(KIND, project, name)
    limit = min(container.settings.api_max_upload_mb * 1024 * 1024, PREVIEW_MAX_BYTES)
    data = read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"image larger than {limit // 2**20} MiB")
    pixels = preview_image(data)  # the header's size first: a bomb is refused before decoding
    del data
    detector = container.preview.detector(artifact, container.store_for)
    started = time.perf_counter()
    result = detector.detect(pixels, conf=options.confidence, iou=options.iou)
    return {
        "model": name,
        "width": result.width,
        "height": result.height,
        "milliseconds": round((time.perf_counter() - started) * 1000, 2),
        "detections": [
            {"classId": d.class_id, "className": d.class_name, "score": round(d.score, 4), "box": list(d.box)}
            for d in result.detections
        ],
    }
