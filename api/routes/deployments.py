"""Edge deployments: EdgeDeployment CRs, rollout actions and the fleet's per-node state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from sqlalchemy import func, select

from visioninapp.api.db import EdgeWindow
from visioninapp.api.routes.common import (
    Limit,
    ObjectName,
    Offset,
    Sort,
    cached_json,
    check_output_uri,
    invalidate,
    list_cache_prefix,
    page,
    sort_items,
)
from visioninapp.api.schemas import ActionOut, DeploymentIn, DeploymentOut, DeploymentPatch, NodeOut, Page
from visioninapp.api.security import ProjectReader, ProjectWriter, ServicesDep
from visioninapp.resources import API_VERSION

router = APIRouter(tags=["deployments"])
KIND = "EdgeDeployment"
ACTION_ANNOTATION = "visioninapp.io/rollout-action"  # read by the operator's rollout controller
SORTABLE = ("name", "phase", "model", "createdAt")


def deployment_out(obj: dict[str, Any]) -> dict[str, Any]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return {
        **DeploymentOut(
            name=meta["name"],
            project=meta["namespace"],
            model=spec.get("modelRef", ""),
            phase=status.get("phase") or "Progressing",
            paused=bool(spec.get("paused")),
            current_step=status.get("currentStep"),
            desired_nodes=status.get("desiredNodes", 0),
            updated_nodes=status.get("updatedNodes", 0),
            ready_nodes=status.get("readyNodes", 0),
            message=status.get("message"),
            spec=spec,
            status=status,
        ).model_dump(mode="json", by_alias=True),
        "createdAt": meta.get("creationTimestamp"),
    }


@router.get("/projects/{project}/deployments", response_model=Page[DeploymentOut], summary="Edge deployments")
def list_deployments(
    access: ProjectReader, services: ServicesDep, sort: Sort = "name", limit: Limit = 50, offset: Offset = 0
) -> Any:
    key = f"{list_cache_prefix(access.project, KIND)}{sort}:{limit}:{offset}"

    def produce() -> dict[str, Any]:
        items = [deployment_out(o) for o in services.clusters.rollout.list(KIND, access.project)]
        ordered = sort_items(items, sort, SORTABLE)
        for item in ordered:
            item.pop("createdAt")
        return page(ordered, limit, offset)

    return cached_json(services, key, produce)


@router.post(
    "/projects/{project}/deployments",
    response_model=DeploymentOut,
    status_code=201,
    summary="Roll a model out to edge nodes (creates an EdgeDeployment)",
)
def create_deployment(body: DeploymentIn, access: ProjectWriter, services: ServicesDep) -> Any:
    if not access.user.is_platform_admin:  # edge pods write hard frames there: the project's prefix only
        check_output_uri(services, access.project, body.spec.feedback.uri, "spec.feedback.uri")
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": body.name,
            "namespace": access.project,
            "annotations": {"visioninapp.io/created-by": access.user.label},
        },
        "spec": body.spec.wire(),
    }
    created = services.clusters.rollout.create(obj)
    invalidate(services, access.project, KIND, "ModelArtifact")
    return _strip(deployment_out(created))


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    item.pop("createdAt", None)
    return item


@router.get("/projects/{project}/deployments/{name}", response_model=DeploymentOut, summary="One deployment")
def get_deployment(name: ObjectName, access: ProjectReader, services: ServicesDep) -> Any:
    return _strip(deployment_out(services.clusters.rollout.get(KIND, access.project, name)))


@router.patch(
    "/projects/{project}/deployments/{name}",
    response_model=DeploymentOut,
    summary="Change the model (a new rollout) or pause/resume",
)
def patch_deployment(
    name: ObjectName, body: DeploymentPatch, access: ProjectWriter, services: ServicesDep
) -> Any:
    spec: dict[str, Any] = {}
    if body.model is not None:
        spec["modelRef"] = body.model
    if body.paused is not None:
        spec["paused"] = body.paused
    if not spec:
        return get_deployment(name, access, services)
    updated = services.clusters.rollout.patch(KIND, access.project, name, {"spec": spec})
    invalidate(services, access.project, KIND)
    return _strip(deployment_out(updated))


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
    services: ServicesDep,
) -> Any:
    services.clusters.rollout.patch(
        KIND, access.project, name, {"metadata": {"annotations": {ACTION_ANNOTATION: action}}}
    )
    invalidate(services, access.project, KIND)
    return {
        "name": name,
        "action": action,
        "message": f"{action} requested; the operator acts on its next pass",
    }


@router.delete("/projects/{project}/deployments/{name}", status_code=204, summary="Delete a deployment")
def delete_deployment(name: ObjectName, access: ProjectWriter, services: ServicesDep) -> None:
    services.clusters.rollout.delete(KIND, access.project, name)
    invalidate(services, access.project, KIND, "ModelArtifact")


@router.get(
    "/projects/{project}/deployments/{name}/nodes",
    response_model=list[NodeOut],
    summary="Per-node model, readiness and heartbeat (operator status + the newest EdgeEvent)",
)
def deployment_nodes(name: ObjectName, access: ProjectReader, services: ServicesDep) -> Any:
    obj = services.clusters.rollout.get(KIND, access.project, name)
    status = obj.get("status") or {}
    nodes: dict[str, dict[str, Any]] = {
        n["name"]: {
            "node": n["name"],
            "revision": n.get("revision"),
            "ready": n.get("ready"),
            "phase": n.get("phase"),
            "lastHeartbeat": n.get("lastHeartbeat"),
            "reason": n.get("failureReason"),
        }
        for n in status.get("nodes") or []
    }
    with services.db.session() as session:
        newest = (
            select(EdgeWindow.node, func.max(EdgeWindow.id).label("id"))
            .where(EdgeWindow.project_name == access.project, EdgeWindow.deployment == name)
            .group_by(EdgeWindow.node)
            .subquery()
        )
        for window in session.scalars(select(EdgeWindow).join(newest, EdgeWindow.id == newest.c.id)):
            entry = nodes.setdefault(window.node, {"node": window.node})
            entry.update(
                model=window.model_version,
                requests=window.requests,
                errors=window.errors,
                p95Ms=window.p95_ms,
                lastHeartbeat=_newest(entry.get("lastHeartbeat"), window.window_end),
            )
            entry.setdefault("revision", window.revision)
            if entry.get("ready") is None:
                entry["ready"] = window.ready
            if not window.ready and window.reason:
                entry["reason"] = window.reason
    return sorted(nodes.values(), key=lambda n: n["node"])


def _newest(reported: str | None, window_end: datetime) -> datetime:
    if not reported:
        return window_end
    return max(datetime.fromisoformat(reported.replace("Z", "+00:00")), window_end)
