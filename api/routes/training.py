"""Training jobs: TrainingJob CRs merged with the run history in SQL."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from visioninapp.api.domain import insight, training
from visioninapp.api.listcache import list_cache_prefix
from visioninapp.api.routes.common import Limit, ObjectName, Offset, Sort, cached_list
from visioninapp.api.schemas import (
    KubeEventOut,
    LogLineOut,
    Page,
    TrainingCapacityOut,
    TrainingJobDetail,
    TrainingJobIn,
    TrainingJobOut,
)
from visioninapp.api.security import Container, ProjectReader, ProjectWriter
from visioninapp.resources.trainingjob import TrainingJobPhase

router = APIRouter(tags=["training"])


@router.get("/projects/{project}/training-jobs", response_model=Page[TrainingJobOut], summary="Training runs")
def list_training_jobs(
    access: ProjectReader,
    container: Container,
    phase: Annotated[TrainingJobPhase | None, Query(description="Only runs in this phase.")] = None,
    include_history: Annotated[bool, Query(alias="includeHistory", description="Also deleted runs.")] = True,
    sort: Sort = "-createdAt",
    limit: Limit = 50,
    offset: Offset = 0,
) -> Response:
    key = (
        f"{list_cache_prefix(access.project, training.KIND)}{phase}:{include_history}:{sort}:{limit}:{offset}"
    )
    return cached_list(
        container,
        key,
        lambda: training.list_jobs(container, access.project, phase, include_history, sort, limit, offset),
    )


@router.post(
    "/projects/{project}/training-jobs",
    response_model=TrainingJobOut,
    status_code=201,
    summary="Start a training run (creates a TrainingJob)",
)
def create_training_job(body: TrainingJobIn, access: ProjectWriter, container: Container) -> Any:
    return training.create_job(container, body, access)


@router.get(
    "/projects/{project}/training-jobs/{name}",
    response_model=TrainingJobDetail,
    summary="One run with its epoch history",
)
def get_training_job(name: ObjectName, access: ProjectReader, container: Container) -> Any:
    return training.get_job(container, access.project, name)


@router.get(
    "/projects/{project}/training-jobs/{name}/logs",
    response_model=Page[LogLineOut],
    summary="Log lines of a run, oldest first; `q` filters by text",
)
def get_logs(
    name: ObjectName,
    access: ProjectReader,
    container: Container,
    q: Annotated[str | None, Query(max_length=200, description="Only lines containing this text.")] = None,
    limit: Limit = 200,
    offset: Offset = 0,
) -> Any:
    return training.log_lines(container, access.project, name, q, limit, offset)


@router.post(
    "/projects/{project}/training-jobs/{name}/suspend",
    response_model=TrainingJobOut,
    summary="Suspend a run (its pod stops; resume continues from the last checkpoint)",
)
def suspend(name: ObjectName, access: ProjectWriter, container: Container) -> Any:
    return training.set_suspend(container, access.project, name, True)


@router.post(
    "/projects/{project}/training-jobs/{name}/resume", response_model=TrainingJobOut, summary="Resume a run"
)
def resume(name: ObjectName, access: ProjectWriter, container: Container) -> Any:
    return training.set_suspend(container, access.project, name, False)


@router.delete(
    "/projects/{project}/training-jobs/{name}",
    status_code=204,
    summary="Delete the TrainingJob (its Job and pods go with it; the history and artifacts stay)",
)
def delete_training_job(name: ObjectName, access: ProjectWriter, container: Container) -> None:
    training.delete_job(container, access.project, name)


@router.get(
    "/projects/{project}/training-jobs/{name}/events",
    response_model=list[KubeEventOut],
    summary="The run's Kubernetes Events (scheduling, attempts, failures), newest first",
)
def training_events(name: ObjectName, access: ProjectReader, container: Container) -> Any:
    return insight.training_events(container, access.project, name)


@router.get(
    "/projects/{project}/training-capacity",
    response_model=TrainingCapacityOut,
    summary="What the training cluster's nodes offer a trainer pod (GPUs, CPU, taints)",
)
def training_capacity(access: ProjectReader, container: Container) -> Any:
    return insight.training_capacity(container)
