"""Models: ModelArtifacts (registry), stage changes, comparison and a detection preview."""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from visioninapp.api.domain import models
from visioninapp.api.listcache import list_cache_prefix
from visioninapp.api.routes.common import Limit, Offset, Sort, cached_list
from visioninapp.api.schemas import DetectOut, ModelComparison, ModelOut, ModelPatch, Page
from visioninapp.api.security import Container, ProjectReader, ProjectWriter

router = APIRouter(tags=["models"])


@router.get("/projects/{project}/models", response_model=Page[ModelOut], summary="The model registry")
def list_models(
    access: ProjectReader,
    container: Container,
    stage: Annotated[str | None, Query(max_length=20, description="Only this stage.")] = None,
    model: Annotated[str | None, Query(max_length=63, description="Only this model line.")] = None,
    sort: Sort = "-createdAt",
    limit: Limit = 50,
    offset: Offset = 0,
) -> Response:
    key = f"{list_cache_prefix(access.project, models.KIND)}{stage}:{model}:{sort}:{limit}:{offset}"
    return cached_list(
        container,
        key,
        lambda: models.list_models(container, access.project, stage, model, sort, limit, offset),
    )


@router.get("/projects/{project}/models/{name}", response_model=ModelOut, summary="One model version")
def get_model(name: str, access: ProjectReader, container: Container) -> Any:
    return models.get_model(container, access.project, name)


@router.patch(
    "/projects/{project}/models/{name}", response_model=ModelOut, summary="Promote or archive a model"
)
def patch_model(name: str, body: ModelPatch, access: ProjectWriter, container: Container) -> Any:
    return models.set_stage(container, access.project, name, body.stage)


@router.get(
    "/projects/{project}/models/{name}/files/{fmt}",
    response_class=FileResponse,
    summary="Download one file of a model version (checked against its sha256 first)",
    description="Streams the `pt`, `onnx` or `onnx-int8` file from the artifact store; the `Digest` "
    "header carries its sha256. 404: no such file; 409: the stored file no longer matches its sha256.",
)
def download_file(
    name: str,
    fmt: Annotated[Literal["pt", "onnx", "onnx-int8"], PathParam(description="Format of the file.")],
    access: ProjectReader,
    container: Container,
) -> FileResponse:
    work = Path(tempfile.mkdtemp(prefix="download-"))
    try:
        path, filename, sha256 = models.download(container, access.project, name, fmt, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(
        path,
        filename=filename,
        media_type="application/octet-stream",
        headers={
            "Digest": f"sha-256={base64.b64encode(bytes.fromhex(sha256)).decode()}",
            "ETag": f'"{sha256}"',
        },
        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
    )


@router.get(
    "/projects/{project}/models/{name}/evaluation",
    summary="The version's evaluation record: candidate and baseline per class, and the gate's verdict",
    description="Read from the artifact store and checked against the sha256 the ModelArtifact records "
    "(docs/quality-gate.md has the schema). 404: trained without a gate; 409: the stored record no "
    "longer matches its sha256.",
)
def model_evaluation(name: str, access: ProjectReader, container: Container) -> Any:
    return models.evaluation(container, access.project, name)


@router.get(
    "/projects/{project}/model-comparison",
    response_model=ModelComparison,
    summary="Two models side by side: metrics and the deltas of b against a",
)
def compare_models(
    access: ProjectReader,
    container: Container,
    a: Annotated[str, Query(min_length=1, max_length=253)],
    b: Annotated[str, Query(min_length=1, max_length=253)],
) -> Any:
    return models.compare(container, access.project, a, b)


@router.post(
    "/projects/{project}/models/{name}/detect",
    response_model=DetectOut,
    summary="Run the model's ONNX on one image (the console's playground)",
)
def detect(
    name: str,
    access: ProjectReader,
    container: Container,
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
    options = models.DetectOptions(confidence, iou)
    return models.detect(container, access.project, name, image.file.read, options)
