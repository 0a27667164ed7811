"""Training jobs: TrainingJob CRs merged with the run history in SQL."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from visioninapp.api.db import EpochMetric, LogLine, TrainingRun
from visioninapp.api.errors import ApiError, ErrorDetail
from visioninapp.api.routes.common import (
    Limit,
    ObjectName,
    Offset,
    Sort,
    below,
    cached_json,
    check_output_uri,
    invalidate,
    list_cache_prefix,
    page,
    plain_relative_path,
    sort_items,
    store_base,
)
from visioninapp.api.schemas import (
    MAX_ANNOTATIONS_BYTES,
    EpochOut,
    LogLineOut,
    Page,
    TrainingJobDetail,
    TrainingJobIn,
    TrainingJobOut,
)
from visioninapp.api.security import Access, ProjectReader, ProjectWriter, ServicesDep
from visioninapp.api.services import Services
from visioninapp.api.sync import record_run
from visioninapp.resources import API_VERSION
from visioninapp.resources.trainingjob import TrainingJobPhase, TrainingJobSpec

router = APIRouter(tags=["training"])
KIND = "TrainingJob"
SORTABLE = ("name", "phase", "createdAt", "mAP50", "epoch")


def epoch_view(row: EpochMetric) -> dict[str, Any]:
    """One epoch as the API shows it, in the run's history and on the live stream."""
    return EpochOut(
        epoch=row.epoch,
        epochs=row.epochs,
        attempt=row.attempt,
        time=row.time,
        mAP50=row.map50,
        mAP50_95=row.map50_95,
        precision=row.precision,
        recall=row.recall,
        losses=row.losses,
        lr=row.lr,
    ).model_dump(mode="json", by_alias=True)


def from_cr(tj: dict[str, Any]) -> dict[str, Any]:
    meta, status = tj["metadata"], tj.get("status") or {}
    metrics = status.get("metrics") or {}
    return TrainingJobOut(
        name=meta["name"],
        project=meta["namespace"],
        phase=status.get("phase") or "Pending",
        epoch=status.get("epoch"),
        epochs=status.get("epochs") or (tj.get("spec") or {}).get("hyperparameters", {}).get("epochs"),
        mAP50=metrics.get("mAP50"),
        mAP50_95=metrics.get("mAP50_95"),
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
        mAP50=run.best_map50,
        artifact=run.artifact,
        message=run.message,
        created_at=run.created_at,
        in_cluster=False,
        spec=run.spec,
    ).model_dump(mode="json", by_alias=True)


def _all_jobs(services: Any, project: str) -> list[dict[str, Any]]:
    live = {tj["metadata"]["name"]: from_cr(tj) for tj in services.clusters.training.list(KIND, project)}
    with services.db.session() as session:
        history = session.scalars(select(TrainingRun).where(TrainingRun.project_name == project)).all()
        gone = [from_history(run) for run in history if run.name not in live]
    return list(live.values()) + gone


@router.get("/projects/{project}/training-jobs", response_model=Page[TrainingJobOut], summary="Training runs")
def list_training_jobs(
    access: ProjectReader,
    services: ServicesDep,
    phase: Annotated[TrainingJobPhase | None, Query(description="Only runs in this phase.")] = None,
    include_history: Annotated[bool, Query(alias="includeHistory", description="Also deleted runs.")] = True,
    sort: Sort = "-createdAt",
    limit: Limit = 50,
    offset: Offset = 0,
) -> Any:
    key = f"{list_cache_prefix(access.project, KIND)}{phase}:{include_history}:{sort}:{limit}:{offset}"

    def produce() -> dict[str, Any]:
        items = _all_jobs(services, access.project)
        if phase:
            items = [i for i in items if i["phase"] == phase]
        if not include_history:
            items = [i for i in items if i["inCluster"]]
        return page(sort_items(items, sort, SORTABLE), limit, offset)

    return cached_json(services, key, produce)


@router.post(
    "/projects/{project}/training-jobs",
    response_model=TrainingJobOut,
    status_code=201,
    summary="Start a training run (creates a TrainingJob)",
)
def create_training_job(body: TrainingJobIn, access: ProjectWriter, services: ServicesDep) -> Any:
    check_references(body.spec, access, services)
    obj = manifest(body, access.project, access.user.label)
    created = services.clusters.training.create(obj)
    with services.db.session() as session:
        record_run(session, created, created_by=access.user.label)
    invalidate(services, access.project, KIND)
    return from_cr(created)


def check_references(spec: TrainingJobSpec, access: Access, services: Services) -> None:
    """What a run reads and writes stays in its project (platform admins may name any URI):

    - `spec.dataset.uri`: a dataset of the project, `datasets/<project>/...` (a key in the
      platform's artifact store, as the dataset routes store them) or the same under its full URI;
      `spec.dataset.dataYaml` a plain path inside that folder;
    - `spec.output.uri`: empty (the default, `<artifacts>/<project>/<run>/`) or under
      `<artifacts>/<project>/`;
    - `spec.model.baseModel`: a ModelArtifact of the project (for everyone: the operator looks it up
      in the run's namespace, and a name that is not there is a mistake to say now, not later).
    """
    project = access.project
    if not access.user.is_platform_admin:
        uri = spec.dataset.uri
        relative = f"datasets/{project}"
        absolute = f"{store_base(services)}/{relative}"
        if not (below(uri, relative) or below(uri, absolute)):
            message = (
                f"spec.dataset.uri: {uri!r} is not a dataset of project {project!r}; use one of its "
                f"dataset versions, {relative}/<dataset>/v<N> (or {absolute}/<dataset>/v<N>), as "
                f"GET /api/v1/projects/{project}/datasets lists them; only platform admins may train "
                "on other URIs"
            )
            raise ApiError(403, message, [ErrorDetail(field="spec.dataset.uri", message=message)])
        if not plain_relative_path(spec.dataset.data_yaml):
            message = (
                f"spec.dataset.dataYaml: {spec.dataset.data_yaml!r} must be a path inside the dataset "
                "folder (relative, no `..`), e.g. `data.yaml`"
            )
            raise ApiError(422, message, [ErrorDetail(field="spec.dataset.dataYaml", message=message)])
        check_output_uri(services, project, spec.output.uri, "spec.output.uri")
    base = spec.model.base_model
    if base is not None:
        try:
            services.clusters.training.get("ModelArtifact", project, base)
        except ApiError as error:
            if error.status != 404:
                raise
            message = (
                f"spec.model.baseModel: no ModelArtifact {base!r} in project {project!r}; fine-tune "
                f"from one of its models (GET /api/v1/projects/{project}/models)"
            )
            raise ApiError(
                422, message, [ErrorDetail(field="spec.model.baseModel", message=message)]
            ) from None


def manifest(body: TrainingJobIn, project: str, creator: str) -> dict[str, Any]:
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


@router.get(
    "/projects/{project}/training-jobs/{name}",
    response_model=TrainingJobDetail,
    summary="One run with its epoch history",
)
def get_training_job(name: ObjectName, access: ProjectReader, services: ServicesDep) -> Any:
    with services.db.session() as session:
        epochs = session.scalars(
            select(EpochMetric)
            .where(EpochMetric.project_name == access.project, EpochMetric.training_job == name)
            .order_by(EpochMetric.epoch)
        ).all()
        run = session.scalars(
            select(TrainingRun).where(TrainingRun.project_name == access.project, TrainingRun.name == name)
        ).first()
        history = [epoch_view(e) for e in epochs]
        fallback = from_history(run) if run is not None else None
    try:
        detail = from_cr(services.clusters.training.get(KIND, access.project, name))
    except ApiError as error:
        if error.status != 404 or fallback is None:
            raise
        detail = fallback
    return {**detail, "history": history}


@router.get(
    "/projects/{project}/training-jobs/{name}/logs",
    response_model=Page[LogLineOut],
    summary="Log lines of a run, oldest first; `q` filters by text",
)
def get_logs(
    name: ObjectName,
    access: ProjectReader,
    services: ServicesDep,
    q: Annotated[str | None, Query(max_length=200, description="Only lines containing this text.")] = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> Any:
    with services.db.session() as session:
        query = select(LogLine).where(LogLine.project_name == access.project, LogLine.training_job == name)
        if q:
            query = query.where(LogLine.message.contains(q, autoescape=True))
        rows = session.scalars(query.order_by(LogLine.stream_offset)).all()
        items = [
            LogLineOut(time=r.time, attempt=r.attempt, level=r.level, message=r.message).model_dump(
                mode="json", by_alias=True
            )
            for r in rows
        ]
    return page(items, limit, offset)


def _set_suspend(name: str, project: str, services: Any, suspend: bool) -> dict[str, Any]:
    updated = services.clusters.training.patch(KIND, project, name, {"spec": {"suspend": suspend}})
    invalidate(services, project, KIND)
    return from_cr(updated)


@router.post(
    "/projects/{project}/training-jobs/{name}/suspend",
    response_model=TrainingJobOut,
    summary="Suspend a run (its pod stops; resume continues from the last checkpoint)",
)
def suspend(name: ObjectName, access: ProjectWriter, services: ServicesDep) -> Any:
    return _set_suspend(name, access.project, services, True)


@router.post(
    "/projects/{project}/training-jobs/{name}/resume", response_model=TrainingJobOut, summary="Resume a run"
)
def resume(name: ObjectName, access: ProjectWriter, services: ServicesDep) -> Any:
    return _set_suspend(name, access.project, services, False)


@router.delete(
    "/projects/{project}/training-jobs/{name}",
    status_code=204,
    summary="Delete the TrainingJob (its Job and pods go with it; the history and artifacts stay)",
)
def delete_training_job(name: ObjectName, access: ProjectWriter, services: ServicesDep) -> None:
    services.clusters.training.delete(KIND, access.project, name)
    invalidate(services, access.project, KIND)
