"""Edge deployments: EdgeDeployment objects in the rollout cluster, rollout actions, and each node's
state from the operator's status and the newest window the node reported on `edge-events`."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import EdgeWindow
from visioninapp.api.domain.scopes import check_output_uri
from visioninapp.api.listcache import invalidate
from visioninapp.api.paging import page, sort_items
from visioninapp.api.schemas import DeploymentIn, DeploymentOut, DeploymentPatch
from visioninapp.api.security import Access
from visioninapp.events import CameraWindow
from visioninapp.k8s import Obj, parse_time
from visioninapp.resources import API_VERSION

__all__ = [
    "KIND",
    "create_deployment",
    "delete_deployment",
    "deployed_model",
    "deployment_out",
    "fleet_history",
    "get_deployment",
    "list_deployments",
    "node_states",
    "patch_deployment",
    "request_action",
]

KIND = "EdgeDeployment"
ACTION_ANNOTATION = "visioninapp.io/rollout-action"  # read by the operator's rollout controller
SORTABLE = ("name", "phase", "model", "createdAt")


def deployed_model(obj: Obj) -> str:
    """The ModelArtifact a deployment names, or, when it follows a line's stage, the one its fleet
    is moving to or runs ("" before its first rollout)."""
    return str((obj.get("spec") or {}).get("modelRef") or (obj.get("status") or {}).get("currentModel") or "")


def deployment_out(obj: Obj) -> dict[str, Any]:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return DeploymentOut(
        name=meta["name"],
        project=meta["namespace"],
        model=deployed_model(obj),
        phase=status.get("phase") or "Progressing",
        paused=bool(spec.get("paused")),
        current_step=status.get("currentStep"),
        desired_nodes=status.get("desiredNodes", 0),
        updated_nodes=status.get("updatedNodes", 0),
        ready_nodes=status.get("readyNodes", 0),
        message=status.get("message"),
        spec=spec,
        status=status,
    ).model_dump(mode="json", by_alias=True)


def list_deployments(
    container: ApiContainer, project: str, sort: str | None, limit: int, offset: int
) -> dict[str, Any]:
    """Sorted and paged here: the list comes from the Kubernetes API."""
    objs = container.clusters.rollout.list(KIND, project)
    # createdAt only to sort by: it is not part of a deployment's view
    items = [{**deployment_out(o), "createdAt": o["metadata"].get("creationTimestamp")} for o in objs]
    ordered = sort_items(items, sort, SORTABLE)
    for item in ordered:
        item.pop("createdAt")
    return page(ordered, limit, offset)


def create_deployment(container: ApiContainer, body: DeploymentIn, access: Access) -> dict[str, Any]:
    if not access.user.is_platform_admin:  # edge pods write hard frames there: the project's prefix only
        check_output_uri(container, access.project, body.spec.feedback.uri, "spec.feedback.uri")
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
    created = container.clusters.rollout.create(obj)
    invalidate(container, access.project, KIND, "ModelArtifact")  # a model's deployedTo changes
    return deployment_out(created)


def get_deployment(container: ApiContainer, project: str, name: str) -> dict[str, Any]:
    return deployment_out(container.clusters.rollout.get(KIND, project, name))


def patch_deployment(
    container: ApiContainer, project: str, name: str, body: DeploymentPatch
) -> dict[str, Any]:
    """A new model starts a new rollout; `paused` holds or continues the current one."""
    spec: dict[str, Any] = {}
    if body.model is not None:  # pinned to one artifact: no longer following a line's stage
        spec.update(modelRef=body.model, model=None)
    if body.paused is not None:
        spec["paused"] = body.paused
    if not spec:
        return get_deployment(container, project, name)
    updated = container.clusters.rollout.patch(KIND, project, name, {"spec": spec})
    invalidate(container, project, KIND)
    return deployment_out(updated)


def request_action(container: ApiContainer, project: str, name: str, action: str) -> dict[str, Any]:
    """Ask the operator to promote, roll back or retry: an annotation it acts on in its next pass."""
    container.clusters.rollout.patch(
        KIND, project, name, {"metadata": {"annotations": {ACTION_ANNOTATION: action}}}
    )
    invalidate(container, project, KIND)
    return {
        "name": name,
        "action": action,
        "message": f"{action} requested; the operator acts on its next pass",
    }


def delete_deployment(container: ApiContainer, project: str, name: str) -> None:
    container.clusters.rollout.delete(KIND, project, name)
    invalidate(container, project, KIND, "ModelArtifact")


def node_states(container: ApiContainer, project: str, name: str) -> list[dict[str, Any]]:
    """Per node: the operator's view (revision, readiness, phase), completed by its newest EdgeWindow
    (model, traffic, latency); sorted by node name."""
    status = container.clusters.rollout.get(KIND, project, name).get("status") or {}
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
    with container.db.session() as session:
        newest = (
            select(EdgeWindow.node, func.max(EdgeWindow.id).label("id"))
            .where(EdgeWindow.project_name == project, EdgeWindow.deployment == name)
            .group_by(EdgeWindow.node)
            .subquery()
        )
        for window in session.scalars(select(EdgeWindow).join(newest, EdgeWindow.id == newest.c.id)):
            _add_window(nodes.setdefault(window.node, {"node": window.node}), window)
    return sorted(nodes.values(), key=lambda n: n["node"])


def _add_window(entry: dict[str, Any], window: EdgeWindow) -> None:
    entry.update(
        model=window.model_version,
        requests=window.requests,
        errors=window.errors,
        p95Ms=window.p95_ms,
        lastHeartbeat=_newest(entry.get("lastHeartbeat"), window.window_end),
        # Validated through the event's own model: the API shows what the runtime reported, no more.
        cameras=[
            CameraWindow.model_validate(camera).model_dump(by_alias=True) for camera in window.cameras or []
        ],
    )
    entry.setdefault("revision", window.revision)
    if entry.get("ready") is None:
        entry["ready"] = window.ready
    if not window.ready and window.reason:
        entry["reason"] = window.reason


def _newest(reported: str | None, window_end: datetime) -> datetime:
    heartbeat = parse_time(reported)
    return window_end if heartbeat is None else max(heartbeat, window_end)


MAX_WINDOWS = 50_000  # windows read for one history (a day of 15 s windows from ~9 nodes)
MAX_BUCKETS = 240


def fleet_history(
    container: ApiContainer, project: str, name: str, seconds: int, buckets: int, now: datetime | None = None
) -> dict[str, Any]:
    """Requests, errors, error rate and p95 of the deployment and of each node over the last
    `seconds`, in `buckets` equal buckets, from the stored EdgeEvent windows (a window counts in the
    bucket its end falls in; p95 is the worst window's, an upper bound of the bucket's)."""
    container.clusters.rollout.get(KIND, project, name)  # a 404 names the deployment
    until = now or datetime.now(UTC)
    step = max(1, -(-seconds // max(1, min(buckets, MAX_BUCKETS))))
    count = -(-seconds // step)
    since = until - timedelta(seconds=step * count)
    query = (
        select(
            EdgeWindow.node, EdgeWindow.window_end, EdgeWindow.requests, EdgeWindow.errors, EdgeWindow.p95_ms
        )
        .where(
            EdgeWindow.project_name == project,
            EdgeWindow.deployment == name,
            EdgeWindow.window_end > since,
            EdgeWindow.window_end <= until,
        )
        .order_by(EdgeWindow.window_end.desc())
        .limit(MAX_WINDOWS)
    )
    totals: dict[str | None, dict[int, list[Any]]] = defaultdict(dict)
    with container.db.session() as session:
        for node, end, requests, errors, p95 in session.execute(query):
            index = min(count - 1, int((end - since).total_seconds() // step))
            for key in (None, node):
                bucket = totals[key].setdefault(index, [0, 0, None])
                bucket[0] += requests
                bucket[1] += errors
                if p95 is not None:
                    bucket[2] = p95 if bucket[2] is None else max(bucket[2], p95)
    totals.setdefault(None, {})

    def points(buckets_of: dict[int, list[Any]]) -> list[dict[str, Any]]:
        out = []
        for index in range(count):
            requests, errors, p95 = buckets_of.get(index, [0, 0, None])
            out.append(
                {
                    "time": (since + timedelta(seconds=step * index)).isoformat(),
                    "requests": requests,
                    "errors": errors,
                    "errorRate": errors / requests if requests else None,
                    "p95Ms": p95,
                }
            )
        return out

    series: list[dict[str, Any]] = [{"node": None, "points": points(totals[None])}]
    series += [{"node": node, "points": points(totals[node])} for node in sorted(k for k in totals if k)]
    return {"since": since.isoformat(), "until": until.isoformat(), "stepSeconds": step, "series": series}
