"""Edge feedback: hard frames the edge uploaded, imported into SQL and turned into dataset versions.

Frames live under `<feedback uri>/<namespace>/<deployment>/<node>/<stem>.{jpg,json}`
(visioninapp.feedback): a project only ever lists its own namespace's prefix.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import FeedbackFrame, FrameAnnouncement
from visioninapp.api.domain.datasets import NewVersion, find_dataset, publish_version, workspace
from visioninapp.api.paging import fetch_page, page, page_of
from visioninapp.api.schemas import FeedbackOut
from visioninapp.backends.storage import ArtifactStore, ObjectNotFound
from visioninapp.datasets import fetch_dataset
from visioninapp.feedback import feedback_frame, feedback_prefix
from visioninapp.images import ImageError, read_image
from visioninapp.k8s import Obj
from visioninapp.web.errors import ApiError

__all__ = [
    "MAX_ID",
    "accept_frames",
    "feedback_out",
    "frame_image",
    "import_announced",
    "import_frames",
    "list_frames",
]

log = logging.getLogger(__name__)
MAX_ID = 2**63 - 1  # the database's BIGINT
ANNOUNCED_BATCH = 500  # announcements imported per project and sync pass
IMPORT_PAGE = 1000  # the import answers with at most this many of the frames it imported


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


def list_frames(
    container: ApiContainer, project: str, status: str | None, limit: int, offset: int
) -> dict[str, Any]:
    query = select(FeedbackFrame).where(FeedbackFrame.project_name == project)
    if status:
        query = query.where(FeedbackFrame.status == status)
    with container.db.session() as session:
        rows, total = fetch_page(session, query.order_by(FeedbackFrame.id.desc()), limit, offset)
        return page_of([feedback_out(f) for f in rows], total, limit, offset)


def frame_image(container: ApiContainer, project: str, frame_id: int) -> bytes:
    with container.db.session() as session:
        frame = session.get(FeedbackFrame, frame_id)
        if frame is None or frame.project_name != project:
            raise ApiError(404, f"feedback frame {frame_id} not found in {project!r}")
        uri = frame.image_uri
    try:
        return container.store_for(uri).get_bytes(uri)
    except ObjectNotFound:
        raise ApiError(404, f"the image of frame {frame_id} is gone from the artifact store") from None


def import_frames(container: ApiContainer, project: str) -> dict[str, Any]:
    """Import the project's new frames from where its deployments' pods write them."""
    imported: list[dict[str, Any]] = []
    for deployment in container.clusters.rollout.list("EdgeDeployment", project):
        imported += _import_deployment(container, project, deployment)
    container.search.index_many(
        "feedback", [(str(item["id"]), _document(project, item)) for item in imported]
    )
    return page(imported, IMPORT_PAGE, 0)


def _feedback_base(container: ApiContainer, deployment: Obj | None) -> str:
    """Where a deployment's pods write frames: its own feedback URI, or the platform's."""
    spec = (deployment or {}).get("spec") or {}
    return str((spec.get("feedback") or {}).get("uri") or container.settings.resolved_feedback_uri)


def import_announced(container: ApiContainer, project: str, deployments: list[Obj]) -> int:
    """Import the frames the project's runtimes announced in their EdgeEvents (no `sync` needed).

    An announcement is only a hint: its URI must be a frame record under its own deployment's and
    node's feedback prefix, or it is dropped with a warning, so a node can make the API read
    nothing but its own frames. Handled announcements are deleted; a store error leaves the rest
    for the next pass.
    """
    bases = {d["metadata"]["name"]: _feedback_base(container, d) for d in deployments}
    imported: list[dict[str, Any]] = []
    with container.db.session() as session:
        rows = session.scalars(
            select(FrameAnnouncement)
            .where(FrameAnnouncement.project_name == project)
            .order_by(FrameAnnouncement.id)
            .limit(ANNOUNCED_BATCH)
        ).all()
        for row in rows:
            base = bases.get(row.deployment) or _feedback_base(container, None)
            ref = feedback_frame(base, project, row.uri)
            if ref is None or (ref.deployment, ref.node) != (row.deployment, row.node):
                log.warning(
                    "ignoring a frame announced by %s/%s outside its prefix: %s",
                    row.deployment,
                    row.node,
                    row.uri,
                )
            else:
                frame = _import_one(session, container.store_for(base), row, project)
                if frame is not None:
                    imported.append(feedback_out(frame))
            session.delete(row)
    container.search.index_many(
        "feedback", [(str(item["id"]), _document(project, item)) for item in imported]
    )
    return len(imported)


def _import_one(
    session: Session, store: ArtifactStore, row: FrameAnnouncement, project: str
) -> FeedbackFrame | None:
    image_uri = row.uri[: -len(".json")] + ".jpg"
    if session.scalars(select(FeedbackFrame.id).where(FeedbackFrame.image_uri == image_uri)).first():
        return None  # imported already (a sync, or a resent event)
    try:
        frame = _frame(store, row.uri, project, row.deployment, row.node, image_uri)
    except ObjectNotFound:
        log.warning("announced frame %s is not in the store", row.uri)
        return None
    session.add(frame)
    session.flush()
    return frame


def _import_deployment(container: ApiContainer, project: str, deployment: Obj) -> list[dict[str, Any]]:
    name = deployment["metadata"]["name"]
    base = _feedback_base(container, deployment)
    store = container.store_for(base)
    imported = []
    for stored in store.list(feedback_prefix(base, project, name)):
        ref = feedback_frame(base, project, stored.uri)
        if ref is None or ref.deployment != name:
            continue
        image_uri = stored.uri[: -len(".json")] + ".jpg"
        with container.db.session() as session:
            if session.scalars(select(FeedbackFrame.id).where(FeedbackFrame.image_uri == image_uri)).first():
                continue
            frame = _frame(store, stored.uri, project, name, ref.node, image_uri)
            session.add(frame)
            session.flush()
            imported.append(feedback_out(frame))
    return imported


def _frame(
    store: ArtifactStore, uri: str, project: str, deployment: str, node: str, image_uri: str
) -> FeedbackFrame:
    record = json.loads(store.get_bytes(uri))
    detections = record.get("detections") or []
    return FeedbackFrame(
        project_name=project,
        deployment=deployment,
        node=node,
        image_uri=image_uri,
        model=record.get("model"),
        top_score=max((d.get("score", 0.0) for d in detections), default=None),
        detections=detections,
        captured_at=datetime.fromisoformat(record["time"]) if record.get("time") else datetime.now(UTC),
    )


def _document(project: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "project": project,
        "name": item["deployment"],
        "title": f"hard frame from {item['node']} ({item['deployment']})",
        "classes": sorted({d.get("className", "") for d in item["detections"]}),
        "model": item["model"],
        "time": item["capturedAt"],
    }


def accept_frames(
    container: ApiContainer, project: str, dataset: str, ids: list[int], note: str, creator: str
) -> dict[str, Any]:
    """A new version of `dataset`: its latest plus the frames, the edge's detections as their labels."""
    if any(not 1 <= frame_id <= MAX_ID for frame_id in ids):
        raise ApiError(422, f"feedback ids are 1 to {MAX_ID}; take them from the feedback list")
    with container.db.session() as session:
        found = find_dataset(session, project, dataset)
        if not found.versions:
            raise ApiError(409, f"{dataset} has no version yet: upload one first, then add frames to it")
        latest = found.versions[-1]
        latest_uri, latest_number, names = latest.uri, latest.version, list(latest.class_names)
        frames = session.scalars(
            select(FeedbackFrame).where(FeedbackFrame.project_name == project, FeedbackFrame.id.in_(ids))
        ).all()
        missing = sorted(set(ids) - {f.id for f in frames})
        if missing:
            raise ApiError(404, f"feedback frames {missing} not found in {project!r}")
        chosen = [(f.id, f.image_uri, f.detections) for f in frames]
    new = NewVersion(
        project,
        dataset,
        creator,
        note or f"v{latest_number} + {len(chosen)} feedback frame(s)",
        latest_number,
    )
    with workspace(container) as work:
        source = work / "source"
        fetch_dataset(
            container.store_for(latest_uri), latest_uri, "data.yaml", source
        )  # the manifest's files
        for frame_id, image_uri, detections in chosen:
            image_path = source / "images" / "train" / f"feedback_{frame_id}.jpg"
            container.store_for(image_uri).get_file(image_uri, image_path)
            write_pseudo_labels(image_path, detections, names)
        out = publish_version(container, new, source, work)
    with container.db.session() as session:
        session.execute(
            update(FeedbackFrame)
            .where(FeedbackFrame.project_name == project, FeedbackFrame.id.in_(ids))
            .values(status="accepted"),
            execution_options={"synchronize_session": False},
        )
    return out


def write_pseudo_labels(image_path: Path, detections: list[dict[str, Any]], names: list[str]) -> None:
    """The YOLO label file of a frame (in `labels/train/` beside `images/train/`), from detections."""
    try:
        pixels = read_image(image_path)
    except ImageError as error:
        raise ApiError(422, f"feedback image {image_path.name} cannot be used: {error}") from None
    height, width = pixels.shape[:2]
    lines = [line for detection in detections if (line := _yolo_line(detection, len(names), width, height))]
    label = image_path.parent.parent.parent / "labels" / "train" / f"{image_path.stem}.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("\n".join(lines) + ("\n" if lines else ""))


def _yolo_line(detection: dict[str, Any], classes: int, width: int, height: int) -> str | None:
    """`class cx cy w h` (normalised) of a pixel box clipped to the image; None for unknown classes
    and boxes that are empty once clipped."""
    class_id = detection.get("classId")
    if not isinstance(class_id, int) or not 0 <= class_id < classes:
        return None
    x1, y1, x2, y2 = (float(v) for v in detection["box"])
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    if x2 <= x1 or y2 <= y1:
        return None
    return (
        f"{class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
        f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
    )
