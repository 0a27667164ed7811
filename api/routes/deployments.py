"""Edge deployments: EdgeDeployment CRs, rollout actions and the fleet's per-node state."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from visioninapp.api.domain import deployments, insight, ledger
from visioninapp.api.listcache import list_cache_prefix
from visioninapp.api.routes.common import Limit, ObjectName, Offset, Sort, cached_list
from visioninapp.api.schemas import (
    ActionOut,
    DeploymentIn,
    DeploymentOut,
    DeploymentPatch,
    FleetHistoryOut,
    KubeEventOut,
    LedgerEntryOut,
    NodeOut,
    Page,
)
from visioninapp.api.security import Container, ProjectReader, ProjectWriter

router = APIRouter(tags=["deployments"])


@router.get("/projects/{project}/deployments", response_model=Page[DeploymentOut], summary="Edge deployments")
def list_deployments(
    access: ProjectReader, container: Container, sort: Sort = "name", limit: Limit = 50, offset: Offset = 0
) -> Response:
    key = f"{list_cache_prefix(access.project, deployments.KIND)}{sort}:{limit}:{offset}"
    return cached_list(
        container, key, lambda: deployments.list_deployments(container, access.project, sort, limit, offset)
    )


@router.post(
    "/projects/{project}/deployments",
    response_model=DeploymentOut,
    status_code=201,
    summary="Roll a model out to edge nodes (creates an EdgeDeployment)",
)
def create_deployment(body: DeploymentIn, access: ProjectWriter, container: Container) -> Any:
    return deployments.create_deployment(container, body, access)


@router.get("/projects/{project}/deployments/{name}", response_model=DeploymentOut, summary="One deployment")
def get_deployment(name: ObjectName, access: ProjectReader, container: Container) -> Any:
    return deployments.get_deployment(container, access.project, name)


@router.patch(
    "/projects/{project}/deployments/{name}",
    response_model=DeploymentOut,
    summary="Change the model (a new rollout) or pause/resume",
)
def patch_deployment(
    name: ObjectName, body: DeploymentPatch, access: ProjectWriter, container: Container
) -> Any:
    return deployments.patch_deployment(container, access.project, name, body)


@router.post(
    "/projects/{project}/deployments/{name}/{action}",
    response_model=ActionOut,
    status_code=202,
    summary="promote (finish the canary now), rollback (to the previous model), "
    "or retry a rolled-back revision",
)
def rollout_action(
    name: ObjectName,
    action: Annotated[
        Literal["promote", "rollback", "retry"], Path(description="What the operator should do.")
    ],
    access: ProjectWriter,
    container: Container,
) -> Any:
    return deployments.request_action(container, access.project, name, action)


@router.delete("/projects/{project}/deployments/{name}", status_code=204, summary="Delete a deployment")
def delete_deployment(name: ObjectName, access: ProjectWriter, container: Container) -> None:
    deployments.delete_deployment(container, access.project, name)


@router.get(
    "/projects/{project}/deployments/{name}/nodes",
    response_model=list[NodeOut],
    summary="Per-node model, readiness and heartbeat (operator status + the newest EdgeEvent)",
)
def deployment_nodes(name: ObjectName, access: ProjectReader, container: Container) -> Any:
    return deployments.node_states(container, access.project, name)


@router.get(
    "/projects/{project}/deployments/{name}/ledger",
    response_model=Page[LedgerEntryOut],
    summary="Which model each node served, from when to when (kept after the deployment changes)",
)
def deployment_ledger(
    name: ObjectName,
    access: ProjectReader,
    container: Container,
    node: Annotated[str | None, Query(max_length=253, description="Only this node's entries.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    return ledger.ledger_page(container, access.project, name, node, limit, offset)


@router.get(
    "/projects/{project}/deployments/{name}/events",
    response_model=list[KubeEventOut],
    summary="The deployment's Kubernetes Events (rollout steps, gates, rollbacks), newest first",
)
def deployment_events(name: ObjectName, access: ProjectReader, container: Container) -> Any:
    return insight.deployment_events(container, access.project, name)


@router.get(
    "/projects/{project}/deployments/{name}/history",
    response_model=FleetHistoryOut,
    summary="Requests, errors and p95 over time, per node and for the deployment (EdgeEvent windows)",
)
def deployment_history(
    name: ObjectName,
    access: ProjectReader,
    container: Container,
    seconds: Annotated[
        int, Query(ge=60, le=7 * 86400, description="How far back: 3600 for an hour, 86400 for a day.")
    ] = 3600,
    buckets: Annotated[
        int, Query(ge=1, le=deployments.MAX_BUCKETS, description="Equal time buckets to sum windows into.")
    ] = 60,
) -> Any:
    return deployments.fleet_history(container, access.project, name, seconds, buckets)
