"""Edge feedback: hard frames the edge uploaded, imported into SQL and turned into dataset versions.

Frames live under `<feedback uri>/<namespace>/<deployment>/<node>/<stem>.{jpg,json}`
(visioninapp.feedback): a project only ever lists its own namespace's prefix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import (
    AnnotationChange,
    Dataset,
    DatasetVersion,
    FeedbackFrame,
    FrameAnnouncement,
    utcnow,
)
from visioninapp.api.domain.datasets import NewVersion, find_dataset, publish_version, workspace
from visioninapp.api.domain.labels import (
    Included,
    current_labels,
    decide,
    frame_id_of_image,
    provenance_summary,
    review_change,
)
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
    "PUBLISHING",
    "accept_frames",
    "feedback_out",
    "frame_image",
    "import_announced",
    "import_frames",
    "list_frames",
]

log = logging.getLogger(__name__)
MAX_ID = 2**63 - 1  # the database's BIGINT
PUBLISHING = "publishing"  # a frame's status while the dataset version taking it is published
ANNOUNCED_BATCH = 500  # announcements imported per project and sync pass
IMPORT_PAGE = 1000  # the import answers with at most this many of the frames it imported
PROVENANCE = "provenance.json"  # in a dataset version: where each feedback image's labels came from


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
        review_status=frame.review_status or "pending",
        revision=frame.revision or 0,
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


@dataclass(frozen=True)
class _Chosen:
    """A frame a new dataset version takes, with the labels it takes and their provenance."""

    frame_id: int
    image_uri: str
    included: Included
    entry: dict[str, Any]  # its provenance record, less the image path


def accept_frames(
    container: ApiContainer,
    project: str,
    dataset: str,
    ids: list[int],
    note: str,
    creator: str,
    auto_accept_min_score: float | None = None,
) -> dict[str, Any]:
    """A new version of `dataset`: its latest plus the frames' reviewed labels.

    Frames pending review are left out unless `auto_accept_min_score` is given: then the model's
    proposals scoring at least that are their labels, and the frames are marked `auto-accepted`.
    Rejected frames are always left out. The version's provenance.json names, per feedback image,
    the frame, who reviewed it and when (or the threshold that auto-accepted it) and each label's
    source; its counts are on the version's row."""
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
        chosen, excluded = _choose(frames, auto_accept_min_score, creator)
        seen = {f.id: f.revision for f in frames}
    if not chosen:
        reasons = "; ".join(f"frame {e['frame']}: {e['reason']}" for e in excluded[:20])
        raise ApiError(
            409,
            f"none of the frames can join {dataset}: {reasons}. Review them first (the console's Review "
            "page, or POST .../feedback/{id}/accept), or give autoAcceptMinScore to take the model's "
            "proposals scoring at least that",
        )
    new = NewVersion(
        project,
        dataset,
        creator,
        note or f"v{latest_number} + {len(chosen)} feedback frame(s)",
        latest_number,
    )
    _reserve(container, [(f.frame_id, seen[f.frame_id]) for f in chosen])
    try:
        with workspace(container) as work:
            source = work / "source"
            fetch_dataset(
                container.store_for(latest_uri), latest_uri, "data.yaml", source
            )  # the manifest's files
            for frame in chosen:
                image_path = source / "images" / "train" / f"feedback_{frame.frame_id}.jpg"
                container.store_for(frame.image_uri).get_file(frame.image_uri, image_path)
                write_pseudo_labels(image_path, _dataset_labels(frame, names, dataset), names)
            earlier = _earlier_provenance(source)

            def finish(root: Path) -> dict[str, Any]:
                return _write_provenance(root, earlier, chosen, excluded, auto_accept_min_score)

            out = publish_version(container, new, source, work, finish)
    except BaseException:
        _release(container, [f.frame_id for f in chosen])
        raise
    _mark_included(container, project, dataset, out["version"], chosen, creator, auto_accept_min_score)
    return out


def _reserve(container: ApiContainer, frames: list[tuple[int, int]]) -> None:
    """The frames, as they were read (by revision), taken out of review while their version is
    published: a review or another publish meanwhile would otherwise be lost or doubled. 409 (and
    nothing reserved) when one changed since it was read."""
    with container.db.session() as session:
        for frame_id, revision in frames:
            taken = session.execute(
                update(FeedbackFrame)
                .where(
                    FeedbackFrame.id == frame_id,
                    FeedbackFrame.revision == revision,
                    FeedbackFrame.status == "new",
                )
                .values(status=PUBLISHING),
                execution_options={"synchronize_session": False},
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                raise ApiError(
                    409,
                    f"frame {frame_id} changed while its dataset version was being prepared (reviewed, "
                    "edited or added to another version): try again",
                )


def _release(container: ApiContainer, frame_ids: list[int]) -> None:
    """The version was not published: its frames go back to review as they were."""
    with container.db.session() as session:
        session.execute(
            update(FeedbackFrame)
            .where(FeedbackFrame.id.in_(frame_ids), FeedbackFrame.status == PUBLISHING)
            .values(status="new"),
            execution_options={"synchronize_session": False},
        )


def _choose(
    frames: Sequence[FeedbackFrame], min_score: float | None, creator: str
) -> tuple[list[_Chosen], list[dict[str, Any]]]:
    chosen: list[_Chosen] = []
    excluded: list[dict[str, Any]] = []
    now = utcnow().isoformat()
    for frame in sorted(frames, key=lambda f: f.id):
        labels = current_labels(frame.labels, frame.detections)
        decision = decide(frame.id, frame.review_status, labels, frame.detections, min_score)
        if isinstance(decision, str):
            excluded.append({"frame": frame.id, "reason": decision})
            continue
        auto = decision.review == "auto-accepted"
        entry = {
            "frame": frame.id,
            "deployment": frame.deployment,
            "node": frame.node,
            "model": frame.model,
            "capturedAt": frame.captured_at.isoformat(),
            "review": decision.review,
            "reviewer": None if auto else frame.reviewed_by,
            "reviewedAt": None
            if decision.newly_auto_accepted or frame.reviewed_at is None
            else frame.reviewed_at.isoformat(),
            "acceptedBy": creator,
            "acceptedAt": now,
            "autoAcceptMinScore": min_score if decision.newly_auto_accepted else None,
            "labels": [{**label.to_json(), "provenance": decision.review} for label in decision.labels],
        }
        chosen.append(_Chosen(frame.id, frame.image_uri, decision, entry))
    return chosen, excluded


def _dataset_labels(frame: _Chosen, names: list[str], dataset: str) -> list[dict[str, Any]]:
    """The frame's labels with the dataset's class ids (matched by class name)."""
    out = []
    for label in frame.included.labels:
        if label.class_name in names:
            class_id = names.index(label.class_name)
        elif not label.class_name and 0 <= label.class_id < len(names):
            class_id = label.class_id
        else:
            raise ApiError(
                422,
                f"frame {frame.frame_id}: label {label.id}'s class {label.class_name!r} is not a class of "
                f"{dataset} ({', '.join(names)}); change the label's class, or add the frames to a "
                "dataset with that class",
            )
        out.append({"classId": class_id, "box": list(label.box)})
    return out


def _earlier_provenance(source: Path) -> dict[int, dict[str, Any]]:
    """The provenance of the feedback images the latest version has already, by frame id."""
    path = source / PROVENANCE
    if not path.is_file():
        return {}
    try:
        images = json.loads(path.read_text()).get("images") or {}
    except (ValueError, AttributeError):
        log.warning("ignoring an unreadable %s in %s", PROVENANCE, source)
        return {}
    return {int(e["frame"]): e for e in images.values() if isinstance(e, dict) and "frame" in e}


def _write_provenance(
    root: Path,
    earlier: dict[int, dict[str, Any]],
    chosen: list[_Chosen],
    excluded: list[dict[str, Any]],
    min_score: float | None,
) -> dict[str, Any]:
    """provenance.json in the normalised version: every feedback image, by its path in the version."""
    entries = {**earlier, **{frame.frame_id: frame.entry for frame in chosen}}
    images: dict[str, dict[str, Any]] = {}
    for path in sorted((root / "images").rglob("*.jpg")):
        frame_id = frame_id_of_image(path.name)
        if frame_id is not None and frame_id in entries:
            images[path.relative_to(root).as_posix()] = entries[frame_id]
    present = {e["frame"] for e in images.values()}
    dropped = [
        {"frame": f.frame_id, "reason": "a duplicate of an image the dataset has already"}
        for f in chosen
        if f.frame_id not in present
    ]
    added = [f.frame_id for f in chosen if f.frame_id in present]
    (root / PROVENANCE).write_text(json.dumps({"format": 1, "images": images}, indent=1, sort_keys=True))
    return provenance_summary(images, added, [*excluded, *dropped], min_score)


def _mark_included(
    container: ApiContainer,
    project: str,
    dataset: str,
    number: int,
    chosen: list[_Chosen],
    creator: str,
    min_score: float | None,
) -> None:
    """The frames are in the version now; those its threshold accepted are marked so, with a
    history row each."""
    with container.db.session() as session:
        version_id = session.scalars(
            select(DatasetVersion.id)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(Dataset.project_name == project, Dataset.name == dataset, DatasetVersion.version == number)
        ).first()
        for frame in chosen:
            values: dict[str, Any] = {"status": "accepted", "dataset_version_id": version_id}
            row = session.get(FeedbackFrame, frame.frame_id)
            if row is None:
                continue
            if frame.included.newly_auto_accepted:
                status, change = review_change("auto-accept", row.review_status, frame.included.labels)
                values.update(
                    review_status=status,
                    labels=[label.to_json() for label in frame.included.labels],
                    revision=row.revision + 1,
                )
                session.add(
                    AnnotationChange(
                        project_name=project,
                        frame_id=row.id,
                        revision=row.revision + 1,
                        action=change.action,
                        label_id=None,
                        label_before=change.before,
                        label_after=change.after,
                        note=f"model proposals scoring at least {min_score}, taken into {dataset} v{number}",
                        who=creator,
                        at=utcnow(),
                    )
                )
            session.execute(
                update(FeedbackFrame).where(FeedbackFrame.id == row.id).values(**values),
                execution_options={"synchronize_session": False},
            )


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
