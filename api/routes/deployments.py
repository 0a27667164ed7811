"""Edge deployments: EdgeDeployment CRs, rollout actions and the fleet's per-node state."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import Response

from visioninapp.api.domain import deployments
from visioninapp.api.listcache import list_cache_prefix
from visioninapp.api.routes.common import Limit, ObjectName, Offset, Sort, cached_list
from visioninapp.api.schemas import ActionOut, DeploymentIn, DeploymentOut, DeploymentPatch, NodeOut, Page
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
