"""Models: ModelArtifacts (registry), stage changes, comparison and a detection preview."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile

from visioninapp.api.errors import ApiError
from visioninapp.api.preview import PREVIEW_MAX_BYTES, preview_image
from visioninapp.api.routes.common import (
    Limit,
    Offset,
    Sort,
    cached_json,
    invalidate,
    list_cache_prefix,
    page,
    sort_items,
)
from visioninapp.api.schemas import DetectOut, ModelComparison, ModelOut, ModelPatch, Page
from visioninapp.api.security import ProjectReader, ProjectWriter, ServicesDep

router = APIRouter(tags=["models"])
KIND = "ModelArtifact"
SORTABLE = ("name", "model", "version", "stage", "createdAt", "mAP50", "mAP50_95")


def model_out(obj: dict[str, Any]) -> dict[str, Any]:
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
    ).model_dump(mode="json", by_alias=True)


def _flat(item: dict[str, Any]) -> dict[str, Any]:
    """Metrics lifted to the top level so that they sort like other fields."""
    return {**item, "mAP50": item["metrics"].get("mAP50"), "mAP50_95": item["metrics"].get("mAP50_95")}


@router.get("/projects/{project}/models", response_model=Page[ModelOut], summary="The model registry")
def list_models(
    access: ProjectReader,
    services: ServicesDep,
    stage: Annotated[str | None, Query(max_length=20, description="Only this stage.")] = None,
    model: Annotated[str | None, Query(max_length=63, description="Only this model line.")] = None,
    sort: Sort = "-createdAt",
    limit: Limit = 50,
    offset: Offset = 0,
) -> Any:
    key = f"{list_cache_prefix(access.project, KIND)}{stage}:{model}:{sort}:{limit}:{offset}"

    def produce() -> dict[str, Any]:
        items = [model_out(o) for o in services.clusters.training.list(KIND, access.project)]
        if stage:
            items = [i for i in items if i["stage"] == stage]
        if model:
            items = [i for i in items if i["model"] == model]
        ordered = sort_items([_flat(i) for i in items], sort, SORTABLE)
        for item in ordered:
            item.pop("mAP50"), item.pop("mAP50_95")
        return page(ordered, limit, offset)

    return cached_json(services, key, produce)


@router.get("/projects/{project}/models/{name}", response_model=ModelOut, summary="One model version")
def get_model(name: str, access: ProjectReader, services: ServicesDep) -> Any:
    return model_out(services.clusters.training.get(KIND, access.project, name))


@router.patch(
    "/projects/{project}/models/{name}", response_model=ModelOut, summary="Promote or archive a model"
)
def patch_model(name: str, body: ModelPatch, access: ProjectWriter, services: ServicesDep) -> Any:
    updated = services.clusters.training.patch(KIND, access.project, name, {"spec": {"stage": body.stage}})
    invalidate(services, access.project, KIND)
    return model_out(updated)


@router.get(
    "/projects/{project}/model-comparison",
    response_model=ModelComparison,
    summary="Two models side by side: metrics and the deltas of b against a",
)
def compare_models(
    access: ProjectReader,
    services: ServicesDep,
    a: Annotated[str, Query(min_length=1, max_length=253)],
    b: Annotated[str, Query(min_length=1, max_length=253)],
) -> Any:
    first = model_out(services.clusters.training.get(KIND, access.project, a))
    second = model_out(services.clusters.training.get(KIND, access.project, b))
    deltas = {
        key: round(float(second["metrics"][key]) - float(first["metrics"][key]), 6)
        for key in ("mAP50", "mAP50_95", "precision", "recall")
        if isinstance(first["metrics"].get(key), (int, float))
        and isinstance(second["metrics"].get(key), (int, float))
    }
    better = None
    if "mAP50_95" in deltas and deltas["mAP50_95"] != 0:
        better = b if deltas["mAP50_95"] > 0 else a
    return {"a": first, "b": second, "metricDeltas": deltas, "better": better}


@router.post(
    "/projects/{project}/models/{name}/detect",
    response_model=DetectOut,
    summary="Run the model's ONNX on one image (the console's playground)",
)
def detect(
    name: str,
    access: ProjectReader,
    services: ServicesDep,
    image: Annotated[
        UploadFile,
        File(
            description="A JPEG, PNG, WebP, TIFF or BMP of at most 32 MiB and 8192x8192 pixels: 413 when "
            "larger (the pixel count is read from the header, before decoding), 415 when not one of those."
        ),
    ],
    confidence: Annotated[float, Query(ge=0.01, le=1.0, description="Minimum score.")] = 0.25,
    iou: Annotated[float, Query(ge=0.05, le=1.0, description="NMS IoU threshold.")] = 0.45,
) -> Any:
    artifact = services.clusters.training.get(KIND, access.project, name)
    limit = min(services.settings.api_max_upload_mb * 1024 * 1024, PREVIEW_MAX_BYTES)
    data = image.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"image larger than {limit // 2**20} MiB")
    pixels = preview_image(data)  # the header's size first: a bomb is refused before decoding
    del data
    detector = services.preview.detector(artifact, services.store_for)
    started = time.perf_counter()
    result = detector.detect(pixels, conf=confidence, iou=iou)
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
