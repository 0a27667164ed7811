"""Training runs: TrainingJob objects in the training cluster, merged with the run history in SQL
(which keeps runs whose object was deleted)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import EpochMetric, LogLine, TrainingRun
from visioninapp.api.domain.scopes import check_dataset_ref, check_output_uri
from visioninapp.api.listcache import invalidate
from visioninapp.api.paging import fetch_page, page, page_of, sort_items
from visioninapp.api.schemas import (
    MAX_ANNOTATIONS_BYTES,
    EpochOut,
    LogLineOut,
    TrainingJobIn,
    TrainingJobOut,
)
from visioninapp.api.security import Access
from visioninapp.api.sync import record_run
from visioninapp.k8s import Obj
from visioninapp.resources import API_VERSION
from visioninapp.resources.trainingjob import TrainingJobSpec
from visioninapp.web.errors import ApiError, ErrorDetail

__all__ = [
    "KIND",
    "create_job",
    "delete_job",
    "epoch_view",
    "from_cr",
    "get_job",
    "list_jobs",
    "log_lines",
    "set_suspend",
]

KIND = "TrainingJob"
SORTABLE = ("name", "phase", "createdAt", "mAP50", "epoch")


def epoch_view(row: EpochMetric) -> dict[str, Any]:
    """One epoch as the API shows it, in the run's history and on the live stream."""
    return EpochOut(
        epoch=row.epoch,
        epochs=row.epochs,
        attempt=row.attempt,
        time=row.time,
        map50=row.map50,
        map50_95=row.map50_95,
        precision=row.precision,
        recall=row.recall,
        losses=row.losses,
        lr=row.lr,
    ).model_dump(mode="json", by_alias=True)


def from_cr(tj: Obj) -> dict[str, Any]:
    meta, status = tj["metadata"], tj.get("status") or {}
    metrics = status.get("metrics") or {}
    return TrainingJobOut(
        name=meta["name"],
        project=meta["namespace"],
        phase=status.get("phase") or "Pending",
        epoch=status.get("epoch"),
        epochs=status.get("epochs") or (tj.get("spec") or {}).get("hyperparameters", {}).get("epochs"),
        map50=metrics.get("mAP50"),
        map50_95=metrics.get("mAP50_95"),
        artifact=status.get("artifact"),
        message=status.get("message"),
        created_at=meta.get("creationTimestamp"),
        in_cluster=True,
        spec=tj.get("spec") or {},
        status=status,
    ).model_dump(mode="json", by_alias=True)


def from_history(run: TrainingRun) -> dict[str, Any]:
    return TrainingJobOut(
        name=run.name,
        project=run.project_name,
        phase=run.phase,
        epoch=run.epochs_seen or None,
        epochs=(run.spec.get("hyperparameters") or {}).get("epochs"),
        map50=run.best_map50,
        artifact=run.artifact,
        message=run.message,
        created_at=run.created_at,
        in_cluster=False,
        spec=run.spec,
    ).model_dump(mode="json", by_alias=True)


def list_jobs(
    container: ApiContainer,
    project: str,
    phase: str | None,
    include_history: bool,
    sort: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """Live runs and (with `include_history`) deleted ones; sorted and paged here, since the live
    ones come from the Kubernetes API."""
    live = {tj["metadata"]["name"]: from_cr(tj) for tj in container.clusters.training.list(KIND, project)}
    items = list(live.values())
    if include_history:
        with container.db.session() as session:
            history = session.scalars(
                select(TrainingRun).where(
                    TrainingRun.project_name == project, TrainingRun.name.not_in(list(live))
                )
            ).all()
            items += [from_history(run) for run in history]
    if phase:
        items = [i for i in items if i["phase"] == phase]
    return page(sort_items(items, sort, SORTABLE), limit, offset)


def create_job(container: ApiContainer, body: TrainingJobIn, access: Access) -> dict[str, Any]:
    check_references(container, body.spec, access)
    created = container.clusters.training.create(manifest(body, access.project, access.user.label))
    with container.db.session() as session:
        record_run(session, created, created_by=access.user.label)
    invalidate(container, access.project, KIND)
    return from_cr(created)


def check_references(container: ApiContainer, spec: TrainingJobSpec, access: Access) -> None:
    """What a run reads and writes stays in its project (platform admins may name any URI):

    - `spec.dataset.uri` and the gate's `spec.evaluation.heldOut.uri` / `newFrames.uri`: datasets of
      the project, `datasets/<project>/...` (a key in the platform's artifact store, as the dataset
      routes store them) or the same under its full URI; their `dataYaml` a plain path inside;
    - `spec.output.uri`: empty (the default, `<artifacts>/<project>/<run>/`) or under
      `<artifacts>/<project>/`;
    - `spec.model.baseModel` and `spec.evaluation.baseline`: ModelArtifacts of the project (for
      everyone: the operator looks them up in the run's namespace, and a name that is not there is
      a mistake to say now, not later).
    """
    evaluation = spec.evaluation
    if not access.user.is_platform_admin:
        check_dataset_ref(container, spec.dataset, access.project, "spec.dataset")
        if evaluation is not None:
            check_dataset_ref(container, evaluation.held_out, access.project, "spec.evaluation.heldOut")
            if evaluation.new_frames is not None:
                check_dataset_ref(
                    container, evaluation.new_frames, access.project, "spec.evaluation.newFrames"
                )
        check_output_uri(container, access.project, spec.output.uri, "spec.output.uri")
    if spec.model.base_model is not None:
        _check_base_model(container, spec.model.base_model, access.project, "spec.model.baseModel")
    if evaluation is not None and evaluation.baseline is not None:
        _check_base_model(container, evaluation.baseline, access.project, "spec.evaluation.baseline")


def _check_base_model(container: ApiContainer, base: str, project: str, field: str) -> None:
    if container.clusters.training.find("ModelArtifact", project, base) is None:
        message = (
            f"{field}: no ModelArtifact {base!r} in project {project!r}; name one of its "
            f"models (GET /api/v1/projects/{project}/models)"
        )
        raise ApiError(422, message, [ErrorDetail(field=field, message=message)])


def manifest(body: TrainingJobIn, project: str, creator: str) -> Obj:
    annotations = {"visioninapp.io/created-by": creator}
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:  # the API server's limit; no field of the body can reach it today
        raise ApiError(422, f"metadata.annotations: {size} bytes, at most {MAX_ANNOTATIONS_BYTES}")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": body.name,
            "namespace": project,
            "labels": body.labels,
            "annotations": annotations,
        },
        "spec": body.spec.wire(),
    }


def epoch_rows(session: Session, project: str, name: str) -> Sequence[EpochMetric]:
    """A run's recorded epochs, first to last."""
    return session.scalars(
        select(EpochMetric)
        .where(EpochMetric.project_name == project, EpochMetric.training_job == name)
        .order_by(EpochMetric.epoch)
    ).all()


def history_row(session: Session, project: str, name: str) -> TrainingRun | None:
    """A run's row in the history (kept after its TrainingJob is deleted)."""
    return session.scalars(
        select(TrainingRun).where(TrainingRun.project_name == project, TrainingRun.name == name)
    ).first()


def get_job(container: ApiContainer, project: str, name: str) -> dict[str, Any]:
    """The run (live, else from the history) with its epochs."""
    with container.db.session() as session:
        history = [epoch_view(e) for e in epoch_rows(session, project, name)]
        run = history_row(session, project, name)
        fallback = from_history(run) if run is not None else None
    try:
        detail = from_cr(container.clusters.training.get(KIND, project, name))
    except ApiError as error:
        if error.status != 404 or fallback is None:
            raise
        detail = fallback
    return {**detail, "history": history}


def log_lines(
    container: ApiContainer, project: str, name: str, text: str | None, limit: int, offset: int
) -> dict[str, Any]:
    """A page of a run's log lines, oldest first; `text` keeps the lines that contain it."""
    query = select(LogLine).where(LogLine.project_name == project, LogLine.training_job == name)
    if text:
        query = query.where(LogLine.message.contains(text, autoescape=True))
    with container.db.session() as session:
        rows, total = fetch_page(session, query.order_by(LogLine.stream_offset), limit, offset)
        items = [
            LogLineOut(time=r.time, attempt=r.attempt, level=r.level, message=r.message).model_dump(
                mode="json", by_alias=True
            )
            for r in rows
        ]
    return page_of(items, total, limit, offset)


def set_suspend(container: ApiContainer, project: str, name: str, suspend: bool) -> dict[str, Any]:
    updated = container.clusters.training.patch(KIND, project, name, {"spec": {"suspend": suspend}})
    invalidate(container, project, KIND)
    return from_cr(updated)


def delete_job(container: ApiContainer, project: str, name: str) -> None:
    """The TrainingJob goes (its Job and pods with it); the history and artifacts stay."""
    container.clusters.training.delete(KIND, project, name)
    invalidate(container, project, KIND)
