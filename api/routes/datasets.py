"""Datasets (immutable versions in the artifact store) and edge feedback as retraining input."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi import Path as PathParam
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from visioninapp.api.db import Dataset, DatasetVersion, FeedbackFrame
from visioninapp.api.errors import ApiError, ErrorDetail
from visioninapp.api.ingest import (
    DatasetError,
    TooLarge,
    discard_version,
    expansion_limit,
    extract_archive,
    ingest_directory,
    ingest_workspace,
    manifest_of,
    new_version_uri,
    sweep_versions,
    upload_version,
)
from visioninapp.api.routes.common import Limit, Offset, page
from visioninapp.api.schemas import (
    DatasetIn,
    DatasetOut,
    DatasetVersionOut,
    FeedbackAccept,
    FeedbackOut,
    Page,
)
from visioninapp.api.security import ProjectReader, ProjectWriter, ServicesDep
from visioninapp.api.services import Services
from visioninapp.backends.storage import ObjectNotFound, join_uri
from visioninapp.datasets import IMAGE_SUFFIXES, fetch_dataset
from visioninapp.feedback import feedback_frame, feedback_prefix
from visioninapp.images import ImageError, read_image

router = APIRouter(tags=["datasets"])

CHUNK = 1024 * 1024
MAX_ID = 2**63 - 1  # the database's BIGINT
FrameId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A feedback frame's id.")]


def version_out(version: DatasetVersion) -> dict[str, Any]:
    return DatasetVersionOut(
        version=version.version,
        uri=version.uri,
        data_yaml=version.data_yaml,
        class_names=version.class_names,
        class_counts=version.class_counts,
        images=version.images,
        preprocessing=version.preprocessing,
        sha256=version.sha256,
        parent_version=version.parent_version,
        note=version.note,
        created_by=version.created_by,
        created_at=version.created_at,
    ).model_dump(mode="json", by_alias=True)


def dataset_out(dataset: Dataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "description": dataset.description,
        "createdAt": dataset.created_at.isoformat(),
        "versions": [version_out(v) for v in dataset.versions],
    }


def _dataset(session: Session, project: str, name: str) -> Dataset:
    dataset = session.scalars(
        select(Dataset).where(Dataset.project_name == project, Dataset.name == name)
    ).first()
    if dataset is None:
        raise ApiError(404, f"dataset {name!r} not found in {project!r}")
    return dataset


@router.get(
    "/projects/{project}/datasets", response_model=Page[DatasetOut], summary="Datasets and their versions"
)
def list_datasets(access: ProjectReader, services: ServicesDep, limit: Limit = 50, offset: Offset = 0) -> Any:
    with services.db.session() as session:
        rows = session.scalars(
            select(Dataset).where(Dataset.project_name == access.project).order_by(Dataset.name)
        )
        return page([dataset_out(d) for d in rows], limit, offset)


@router.post(
    "/projects/{project}/datasets", response_model=DatasetOut, status_code=201, summary="Create a dataset"
)
def create_dataset(body: DatasetIn, access: ProjectWriter, services: ServicesDep) -> Any:
    with services.db.session() as session:
        exists = session.scalars(
            select(Dataset).where(Dataset.project_name == access.project, Dataset.name == body.name)
        ).first()
        if exists is not None:
            raise ApiError(409, f"dataset {body.name!r} already exists in {access.project!r}")
        dataset = Dataset(
            project_name=access.project,
            name=body.name,
            description=body.description,
            created_by=access.user.label,
        )
        session.add(dataset)
        session.flush()
        out = dataset_out(dataset)
    services.search.index(
        "datasets",
        f"{access.project}/{body.name}",
        {"project": access.project, "name": body.name, "title": body.name, "description": body.description},
    )
    return out


@router.get(
    "/projects/{project}/datasets/{name}", response_model=DatasetOut, summary="One dataset, every version"
)
def get_dataset(name: str, access: ProjectReader, services: ServicesDep) -> Any:
    with services.db.session() as session:
        return dataset_out(_dataset(session, access.project, name))


def _save_upload(upload: UploadFile, target: Path, limit_mb: int, budget: list[int] | None = None) -> None:
    """Stream an upload to `target`, refusing (413) past `limit_mb`, or past `budget[0]` bytes in all."""
    written = 0
    with target.open("xb") as out:
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > limit_mb * CHUNK:
                raise ApiError(413, f"upload larger than {limit_mb} MB (VISIONINAPP_API_MAX_UPLOAD_MB)")
            if budget is not None:
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise ApiError(
                        413,
                        "the files together are larger than the upload limit "
                        "(VISIONINAPP_API_MAX_UPLOAD_MB): upload the dataset in parts or as a zip",
                    )
            out.write(chunk)


def _rejected(error: DatasetError) -> ApiError:
    problems = [ErrorDetail(field=None, message=part.strip()[:500]) for part in str(error).split(";")[:50]]
    return ApiError(413 if isinstance(error, TooLarge) else 422, f"dataset rejected: {error}", problems)


def _workspace(services: Services) -> Any:
    return ingest_workspace(services.settings.data_dir / "ingest")


def _publish_version(
    services: Services,
    project: str,
    name: str,
    source: Path,
    work: Path,
    creator: str,
    note: str,
    parent: int | None,
) -> dict[str, Any]:
    """Validate and normalise `source`, upload it as the next version (manifest last), record it."""
    try:
        ingested = ingest_directory(source, work / "normalised")
    except DatasetError as error:
        raise _rejected(error) from None
    files, digest = manifest_of(ingested.root)
    with services.db.session() as session:
        dataset = _dataset(session, project, name)
        latest = dataset.versions[-1] if dataset.versions else None
        if latest is not None and latest.sha256 == digest:
            raise ApiError(409, f"identical to version {latest.version} of {name}; nothing to add")
        number = (latest.version if latest else 0) + 1
        recorded = {v.uri for v in dataset.versions}
    dataset_uri = join_uri(services.settings.resolved_artifacts_uri, "datasets", project, name)
    store = services.store_for(dataset_uri)
    sweep_versions(store, dataset_uri, recorded)  # leftovers of uploads that died midway
    uri = new_version_uri(dataset_uri, number)
    upload_version(ingested.root, files, digest, store, uri)
    try:
        with services.db.session() as session:
            dataset = _dataset(session, project, name)
            version = DatasetVersion(
                dataset_id=dataset.id,
                version=number,
                uri=uri,
                class_names=ingested.class_names,
                class_counts=ingested.class_counts,
                images=ingested.images,
                preprocessing=ingested.preprocessing,
                sha256=digest,
                parent_version=parent if parent is not None else (number - 1 or None),
                note=note,
                created_by=creator,
            )
            session.add(version)
            session.flush()
            out = version_out(version)
    except BaseException as error:
        discard_version(store, uri)
        if isinstance(error, IntegrityError):
            raise ApiError(
                409, f"another upload created version {number} of {name} at the same time; upload again"
            ) from None
        raise
    services.search.index(
        "datasets",
        f"{project}/{name}/v{number}",
        {
            "project": project,
            "name": name,
            "title": f"{name} v{number}",
            "classes": ingested.class_names,
            "note": note,
            "uri": uri,
        },
    )
    return out


@router.post(
    "/projects/{project}/datasets/{name}/versions",
    response_model=DatasetVersionOut,
    status_code=201,
    summary="Upload a new version: a zip of a YOLO dataset (data.yaml, images/, labels/)",
)
def upload_dataset_version(
    name: str,
    access: ProjectWriter,
    services: ServicesDep,
    archive: Annotated[
        UploadFile, File(description="Zip with data.yaml, images/{train,val}, labels/{train,val}.")
    ],
    note: Annotated[str, Form(max_length=2000, description="What changed in this version.")] = "",
) -> Any:
    with services.db.session() as session:
        _dataset(session, access.project, name)
    limit_mb = services.settings.api_max_upload_mb
    with _workspace(services) as work:
        _save_upload(archive, work / "upload.zip", limit_mb)
        try:
            cap = expansion_limit((work / "upload.zip").stat().st_size, limit_mb * CHUNK)
            root = extract_archive(work / "upload.zip", work / "source", cap)
        except DatasetError as error:
            raise _rejected(error) from None
        (work / "upload.zip").unlink()
        return _publish_version(services, access.project, name, root, work, access.user.label, note, None)


def _upload_stem(upload: UploadFile, kinds: set[str], what: str) -> tuple[str, str]:
    """(stem, suffix) of an uploaded file's name; 422 for names that cannot be dataset files."""
    raw = upload.filename or ""
    name = PurePosixPath(raw.replace("\\", "/")).name
    if not name or any(unicodedata.category(c) == "Cc" for c in raw) or len(name) > 200:
        shown = raw[:80].encode("unicode_escape").decode("ascii")
        raise ApiError(
            422, f"{what} file name {shown!r} is empty, too long or has control characters; rename the file"
        )
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in kinds:
        raise ApiError(422, f"{what} {name!r}: expected one of {', '.join(sorted(kinds))}")
    return PurePosixPath(name).stem, suffix


@router.post(
    "/projects/{project}/datasets/{name}/versions/files",
    response_model=DatasetVersionOut,
    status_code=201,
    summary="Upload a new version as loose files: images, their YOLO label .txt files, class names",
)
def upload_dataset_files(
    name: str,
    access: ProjectWriter,
    services: ServicesDep,
    images: Annotated[list[UploadFile], File(description="JPEG/PNG/WebP images.")],
    labels: Annotated[list[UploadFile], File(description="One `<image stem>.txt` per labelled image.")],
    class_names: Annotated[
        str,
        Form(alias="classNames", min_length=1, max_length=20000, description="Comma-separated, in id order."),
    ],
    val_fraction: Annotated[
        float, Form(alias="valFraction", ge=0.05, le=0.5, description="Share of images kept for validation.")
    ] = 0.2,
    note: Annotated[str, Form(max_length=2000)] = "",
) -> Any:
    names = [n.strip() for n in class_names.split(",") if n.strip()]
    if not names:
        raise ApiError(422, "classNames must list at least one class, comma-separated in id order")
    with services.db.session() as session:
        _dataset(session, access.project, name)
    limit_mb = services.settings.api_max_upload_mb
    budget = [limit_mb * CHUNK]  # all files together stay within the upload limit
    label_texts: dict[str, UploadFile] = {}
    for upload in labels:
        stem, _ = _upload_stem(upload, {".txt"}, "label")
        if stem in label_texts:
            raise ApiError(422, f"two label files named {stem}.txt; one per image")
        label_texts[stem] = upload
    named = [(*_upload_stem(image, IMAGE_SUFFIXES, "image"), image) for image in images]
    stems = [stem for stem, _, _ in named]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})[:10]
        raise ApiError(422, f"images share a name (without extension): {', '.join(twice)}; rename them")
    orphans = sorted(set(label_texts) - set(stems))
    if orphans:
        raise ApiError(422, f"labels without an image: {', '.join(orphans[:10])}")
    with _workspace(services) as work:
        root = work / "source"
        every = max(2, round(1 / val_fraction))  # every n-th image validates: a stable, spread-out split
        for number, (stem, suffix, image) in enumerate(sorted(named, key=lambda item: item[0])):
            split = "val" if number % every == every - 1 else "train"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            _save_upload(image, root / "images" / split / f"{stem}{suffix}", limit_mb, budget)
            if stem in label_texts:
                _save_upload(label_texts[stem], root / "labels" / split / f"{stem}.txt", 1, budget)
        data = {"path": ".", "train": "images/train", "val": "images/val", "names": names}
        (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return _publish_version(services, access.project, name, root, work, access.user.label, note, None)


@router.get(
    "/projects/{project}/datasets/{name}/versions/{version}",
    response_model=DatasetVersionOut,
    summary="One version",
)
def get_dataset_version(name: str, version: int, access: ProjectReader, services: ServicesDep) -> Any:
    with services.db.session() as session:
        dataset = _dataset(session, access.project, name)
        for candidate in dataset.versions:
            if candidate.version == version:
                return version_out(candidate)
    raise ApiError(404, f"{name} has no version {version}")


# Feedback: hard frames the edge uploaded under
# <feedback uri>/<namespace>/<deployment>/<node>/<stem>.{jpg,json} (visioninapp.feedback): a project
# only ever lists its own namespace's prefix.


def feedback_out(frame: FeedbackFrame) -> dict[str, Any]:
    return FeedbackOut(
        id=frame.id,
        deployment=frame.deployment,
        node=frame.node,
        image_uri=frame.image_uri,
        model=frame.model,
        top_score=frame.top_score,
        detections=frame.detections,
        captured_at=frame.captured_at,
        status=frame.status,
    ).model_dump(mode="json", by_alias=True)


@router.post(
    "/projects/{project}/feedback/sync",
    response_model=Page[FeedbackOut],
    summary="Import new hard frames of the project's deployments from the artifact store",
)
def sync_feedback(access: ProjectWriter, services: ServicesDep) -> Any:
    imported = []
    for deployment in services.clusters.rollout.list("EdgeDeployment", access.project):
        name = deployment["metadata"]["name"]
        # where its pods write: the deployment's own feedback URI, or the platform's
        base = (deployment.get("spec", {}).get("feedback") or {}).get("uri") or (
            services.settings.resolved_feedback_uri
        )
        store = services.store_for(base)
        for stored in store.list(feedback_prefix(base, access.project, name)):
            ref = feedback_frame(base, access.project, stored.uri)
            if ref is None or ref.deployment != name:
                continue
            image_uri = stored.uri[: -len(".json")] + ".jpg"
            node = ref.node
            with services.db.session() as session:
                if session.scalars(
                    select(FeedbackFrame.id).where(FeedbackFrame.image_uri == image_uri)
                ).first():
                    continue
                record = json.loads(store.get_bytes(stored.uri))
                detections = record.get("detections") or []
                frame = FeedbackFrame(
                    project_name=access.project,
                    deployment=name,
                    node=node,
                    image_uri=image_uri,
                    model=record.get("model"),
                    top_score=max((d.get("score", 0.0) for d in detections), default=None),
                    detections=detections,
                    captured_at=datetime.fromisoformat(record["time"])
                    if record.get("time")
                    else datetime.now(UTC),
                )
                session.add(frame)
                session.flush()
                imported.append(feedback_out(frame))
    services.search.index_many(
        "feedback",
        [
            (
                str(item["id"]),
                {
                    "project": access.project,
                    "name": item["deployment"],
                    "title": f"hard frame from {item['node']} ({item['deployment']})",
                    "classes": sorted({d.get("className", "") for d in item["detections"]}),
                    "model": item["model"],
                    "time": item["capturedAt"],
                },
            )
            for item in imported
        ],
    )
    return page(imported, 1000, 0)


@router.get(
    "/projects/{project}/feedback", response_model=Page[FeedbackOut], summary="Hard frames from the edge"
)
def list_feedback(
    access: ProjectReader,
    services: ServicesDep,
    status: str | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Any:
    with services.db.session() as session:
        query = select(FeedbackFrame).where(FeedbackFrame.project_name == access.project)
        if status:
            query = query.where(FeedbackFrame.status == status)
        rows = session.scalars(query.order_by(FeedbackFrame.id.desc())).all()
        return page([feedback_out(f) for f in rows], limit, offset)


@router.get(
    "/projects/{project}/feedback/{frame_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
    summary="The frame's JPEG",
)
def feedback_image(frame_id: FrameId, access: ProjectReader, services: ServicesDep) -> Response:
    with services.db.session() as session:
        frame = session.get(FeedbackFrame, frame_id)
        if frame is None or frame.project_name != access.project:
            raise ApiError(404, f"feedback frame {frame_id} not found in {access.project!r}")
        uri = frame.image_uri
    try:
        data = services.store_for(uri).get_bytes(uri)
    except ObjectNotFound:
        raise ApiError(404, f"the image of frame {frame_id} is gone from the artifact store") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.post(
    "/projects/{project}/feedback/accept",
    response_model=DatasetVersionOut,
    status_code=201,
    summary="Add frames to a new dataset version (the edge's detections become their starting labels)",
)
def accept_feedback(body: FeedbackAccept, access: ProjectWriter, services: ServicesDep) -> Any:
    if any(not 1 <= frame_id <= MAX_ID for frame_id in body.ids):
        raise ApiError(422, f"feedback ids are 1 to {MAX_ID}; take them from the feedback list")
    with services.db.session() as session:
        dataset = _dataset(session, access.project, body.dataset)
        if not dataset.versions:
            raise ApiError(409, f"{body.dataset} has no version yet: upload one first, then add frames to it")
        latest = dataset.versions[-1]
        latest_uri, latest_number, names = latest.uri, latest.version, list(latest.class_names)
        frames = session.scalars(
            select(FeedbackFrame).where(
                FeedbackFrame.project_name == access.project, FeedbackFrame.id.in_(body.ids)
            )
        ).all()
        missing = sorted(set(body.ids) - {f.id for f in frames})
        if missing:
            raise ApiError(404, f"feedback frames {missing} not found in {access.project!r}")
        chosen = [(f.id, f.image_uri, f.detections) for f in frames]
    with _workspace(services) as work:
        source = work / "source"
        fetch_dataset(services.store_for(latest_uri), latest_uri, "data.yaml", source)  # the manifest's files
        for frame_id, image_uri, detections in chosen:
            image_path = source / "images" / "train" / f"feedback_{frame_id}.jpg"
            services.store_for(image_uri).get_file(image_uri, image_path)
            _write_pseudo_labels(image_path, detections, names)
        out = _publish_version(
            services,
            access.project,
            body.dataset,
            source,
            work,
            access.user.label,
            body.note or f"v{latest_number} + {len(chosen)} feedback frame(s)",
            latest_number,
        )
    with services.db.session() as session:
        for frame in session.scalars(select(FeedbackFrame).where(FeedbackFrame.id.in_(body.ids))):
            frame.status = "accepted"
    return out


def _write_pseudo_labels(image_path: Path, detections: list[dict[str, Any]], names: list[str]) -> None:
    try:
        pixels = read_image(image_path)
    except ImageError as error:
        raise ApiError(422, f"feedback image {image_path.name} cannot be used: {error}") from None
    height, width = pixels.shape[:2]
    lines = []
    for detection in detections:
        class_id = detection.get("classId")
        if not isinstance(class_id, int) or not 0 <= class_id < len(names):
            continue
        x1, y1, x2, y2 = (float(v) for v in detection["box"])
        x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
        y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
        if x2 <= x1 or y2 <= y1:
            continue
        lines.append(
            f"{class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
        )
    label = image_path.parent.parent.parent / "labels" / "train" / f"{image_path.stem}.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("\n".join(lines) + ("\n" if lines else ""))
