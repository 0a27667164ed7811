"""Review of hard frames by people: the queue, one frame with its labels and history, label edits,
accept and reject. The decisions are `visioninapp.api.domain.labels`' pure functions; this module
reads and writes the rows around them.

Concurrency: every change names the frame revision the writer loaded and is applied by a
conditional UPDATE (`... WHERE revision = sent`), so of two reviewers working from the same
revision one succeeds and the other gets a 409 that tells them to reload — never a silent overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import AnnotationChange, FeedbackFrame, utcnow
from visioninapp.api.domain.deployments import deployed_model
from visioninapp.api.domain.feedback import PUBLISHING, feedback_out
from visioninapp.api.domain.labels import (
    Change,
    Edit,
    FrameFacts,
    Label,
    apply_edit,
    check_decidable,
    check_editable,
    check_revision,
    current_labels,
    edit_status,
    label_number,
    review_change,
)
from visioninapp.api.paging import fetch_page, page_of
from visioninapp.api.schemas import AnnotationOut, FrameReviewOut
from visioninapp.backends.storage import ObjectNotFound
from visioninapp.images import ImageError, image_header
from visioninapp.web.errors import ApiError

__all__ = ["decide_frame", "edit_labels", "get_frame", "history_rows", "review_queue"]

IN_A_VERSION = ("accepted", PUBLISHING)  # in a dataset version, or being added to one


def review_queue(container: ApiContainer, project: str, limit: int, offset: int) -> dict[str, Any]:
    """Frames waiting for a person: pending review and in no dataset version, oldest first."""
    query = (
        select(FeedbackFrame)
        .where(
            FeedbackFrame.project_name == project,
            FeedbackFrame.review_status == "pending",
            FeedbackFrame.status == "new",
        )
        .order_by(FeedbackFrame.captured_at, FeedbackFrame.id)
    )
    with container.db.session() as session:
        rows, total = fetch_page(session, query, limit, offset)
        return page_of([feedback_out(f) for f in rows], total, limit, offset)


def get_frame(container: ApiContainer, project: str, frame_id: int) -> dict[str, Any]:
    facts = _facts(container, project, frame_id)
    with container.db.session() as session:
        return _review_out(session, _frame(session, project, frame_id), facts)


def edit_labels(
    container: ApiContainer, project: str, frame_id: int, revision: int, edit: Edit, who: str
) -> dict[str, Any]:
    """Apply one edit (add, move/resize, relabel, delete, replace) at `revision`; one history row per
    label changed. An edit of a reviewed frame puts it back in the queue."""
    facts = _facts(container, project, frame_id)
    with container.db.session() as session:
        frame = _frame(session, project, frame_id)
        check_revision(frame_id, frame.revision, revision, _last_change(session, frame_id))
        check_editable(frame_id, frame.review_status, frame.status in IN_A_VERSION)
        issued = max((label_number(i) for i in session.scalars(_added_ids(frame_id))), default=0)
        labels, changes = apply_edit(current_labels(frame.labels, frame.detections), edit, facts, issued)
        if changes:
            status = edit_status(frame.review_status)
            cleared = status != frame.review_status
            _write(
                session,
                frame,
                revision,
                _Written(
                    labels,
                    status,
                    None if cleared else frame.reviewed_by,
                    None if cleared else frame.reviewed_at,
                    frame.status,
                ),
                changes,
                who,
                "",
            )
        return _review_out(session, frame, facts)


def decide_frame(
    container: ApiContainer,
    project: str,
    frame_id: int,
    revision: int,
    action: Literal["accept", "reject"],
    note: str,
    who: str,
) -> dict[str, Any]:
    """Accept the frame's current labels (reviewed) or reject the frame (left out of datasets)."""
    facts = _facts(container, project, frame_id)
    with container.db.session() as session:
        frame = _frame(session, project, frame_id)
        check_revision(frame_id, frame.revision, revision, _last_change(session, frame_id))
        check_decidable(frame_id, frame.status in IN_A_VERSION)
        labels = current_labels(frame.labels, frame.detections)
        status, change = review_change(action, frame.review_status, labels)
        written = _Written(labels, status, who, utcnow(), "dismissed" if action == "reject" else "new")
        _write(session, frame, revision, written, [change], who, note)
        return _review_out(session, frame, facts)


def history_rows(
    project: str, frame_id: int, revision: int, changes: list[Change], who: str, note: str
) -> list[AnnotationChange]:
    at = utcnow()
    return [
        AnnotationChange(
            project_name=project,
            frame_id=frame_id,
            revision=revision,
            action=change.action,
            label_id=change.label_id,
            label_before=change.before,
            label_after=change.after,
            note=note,
            who=who,
            at=at,
        )
        for change in changes
    ]


@dataclass(frozen=True)
class _Written:
    labels: list[Label]
    review_status: str
    reviewed_by: str | None
    reviewed_at: datetime | None
    status: str


def _write(
    session: Session,
    frame: FeedbackFrame,
    sent: int,
    written: _Written,
    changes: list[Change],
    who: str,
    note: str,
) -> None:
    """The new state at revision `sent + 1`, only if the frame is still at `sent`; its history rows."""
    result = session.execute(
        update(FeedbackFrame)
        .where(FeedbackFrame.id == frame.id, FeedbackFrame.revision == sent)
        .values(
            revision=sent + 1,
            labels=[label.to_json() for label in written.labels],
            review_status=written.review_status,
            reviewed_by=written.reviewed_by,
            reviewed_at=written.reviewed_at,
            status=written.status,
        ),
        execution_options={"synchronize_session": False},
    )
    if getattr(result, "rowcount", 0) != 1:  # another writer got there between our read and write
        raise ApiError(
            409,
            f"frame {frame.id} changed while your change was applied: another change based on "
            f"revision {sent} landed first. Reload the frame (GET .../feedback/{frame.id}) and apply "
            "your change again",
        )
    session.add_all(history_rows(frame.project_name, frame.id, sent + 1, changes, who, note))
    session.flush()
    session.refresh(frame)


def _frame(session: Session, project: str, frame_id: int) -> FeedbackFrame:
    frame = session.get(FeedbackFrame, frame_id)
    if frame is None or frame.project_name != project:
        raise ApiError(404, f"feedback frame {frame_id} not found in {project!r}")
    return frame


def _added_ids(frame_id: int) -> Select[str | None]:
    """The ids of the boxes people added to the frame (deleted ones too)."""
    return select(AnnotationChange.label_id).where(
        AnnotationChange.frame_id == frame_id, AnnotationChange.action == "add"
    )


def _last_change(session: Session, frame_id: int) -> str | None:
    row = session.scalars(
        select(AnnotationChange)
        .where(AnnotationChange.frame_id == frame_id)
        .order_by(AnnotationChange.id.desc())
        .limit(1)
    ).first()
    return f"{row.action} by {row.who} at {row.at:%Y-%m-%d %H:%M:%S} UTC" if row else None


def _facts(container: ApiContainer, project: str, frame_id: int) -> FrameFacts:
    """The frame's image size and its model's class names, looked up once and kept on the frame."""
    with container.db.session() as session:
        frame = _frame(session, project, frame_id)
        known = (frame.width, frame.height, frame.class_names)
        image_uri, model, deployment = frame.image_uri, frame.model, frame.deployment
    width, height, names = known
    if width is None or height is None or names is None:
        width, height = _image_size(container, frame_id, image_uri)
        names = _class_names(container, project, frame_id, model, deployment)
        with container.db.session() as session:
            session.execute(
                update(FeedbackFrame)
                .where(FeedbackFrame.id == frame_id)
                .values(width=width, height=height, class_names=names),
                execution_options={"synchronize_session": False},
            )
    return FrameFacts(frame_id, width, height, tuple(str(n) for n in names))


def _image_size(container: ApiContainer, frame_id: int, uri: str) -> tuple[int, int]:
    try:
        _, width, height = image_header(container.store_for(uri).get_bytes(uri))
    except ObjectNotFound:
        raise ApiError(404, f"the image of frame {frame_id} is gone from the artifact store") from None
    except ImageError as error:
        raise ApiError(422, f"the image of frame {frame_id} cannot be reviewed: {error}") from None
    return width, height


def _class_names(
    container: ApiContainer, project: str, frame_id: int, model: str | None, deployment: str
) -> list[str]:
    """The classes of the model that made the frame's proposals, else of the deployment's model now."""
    candidates = [model] if model else []
    ed = container.clusters.rollout.find("EdgeDeployment", project, deployment)
    if ed is not None:
        candidates.append(deployed_model(ed))
    for name in filter(None, candidates):
        artifact = container.clusters.training.find("ModelArtifact", project, name)
        if artifact is None:
            continue
        names = (artifact.get("spec") or {}).get("classNames")
        if names:
            return [str(n) for n in names]
    raise ApiError(
        409,
        f"frame {frame_id}'s class names are unknown: neither its model {model!r} nor deployment "
        f"{deployment!r}'s model is a ModelArtifact of {project!r} with classNames; register the model "
        "again (or restore the deployment) to review this frame",
    )


def _review_out(session: Session, frame: FeedbackFrame, facts: FrameFacts) -> dict[str, Any]:
    history = session.scalars(
        select(AnnotationChange).where(AnnotationChange.frame_id == frame.id).order_by(AnnotationChange.id)
    ).all()
    base = feedback_out(frame)
    return FrameReviewOut.model_validate(
        {
            **base,
            "width": facts.width,
            "height": facts.height,
            "classNames": list(facts.class_names),
            "reviewedBy": frame.reviewed_by,
            "reviewedAt": frame.reviewed_at,
            "labels": [label.to_json() for label in current_labels(frame.labels, frame.detections)],
            "history": [
                AnnotationOut(
                    id=row.id,
                    revision=row.revision,
                    action=row.action,
                    label_id=row.label_id,
                    before=row.label_before,
                    after=row.label_after,
                    note=row.note,
                    who=row.who,
                    at=row.at,
                ).model_dump(mode="json", by_alias=True)
                for row in history
            ],
        }
    ).model_dump(mode="json", by_alias=True)
