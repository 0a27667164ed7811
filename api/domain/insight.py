"""Why things happen: the Kubernetes Events of a run or a deployment, and what the training
cluster's nodes offer a trainer pod (the console's new-run form takes its defaults from it)."""

from __future__ import annotations

from typing import Any

from visioninapp.api.container import ApiContainer
from visioninapp.api.kube import KubeCluster
from visioninapp.api.schemas import KubeEventOut, NodeCapacityOut, TrainingCapacityOut
from visioninapp.k8s import Obj, parse_time

__all__ = ["deployment_events", "node_capacity", "training_capacity", "training_events"]

GPU = "nvidia.com/gpu"
GPU_PRODUCT = "nvidia.com/gpu.product"
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


def _event_out(event: Obj) -> dict[str, Any]:
    source = event.get("source") or {}
    first = parse_time(event.get("firstTimestamp") or event.get("eventTime"))
    last = parse_time(event.get("lastTimestamp") or event.get("eventTime")) or first
    return KubeEventOut(
        type=event.get("type") or "Normal",
        reason=event.get("reason") or "",
        message=event.get("message") or "",
        count=int(event.get("count") or 1),
        first_time=first,
        last_time=last,
        source=source.get("component") or event.get("reportingComponent") or None,
    ).model_dump(mode="json", by_alias=True)


def _events(cluster: KubeCluster, project: str, kind: str, name: str) -> list[dict[str, Any]]:
    cluster.get(kind, project, name)  # a 404 names the object, not an empty list
    events = [_event_out(e) for e in cluster.events(project, kind, name)]
    return sorted(events, key=lambda e: e["lastTime"] or "", reverse=True)


def training_events(container: ApiContainer, project: str, name: str) -> list[dict[str, Any]]:
    """Newest first."""
    return _events(container.clusters.training, project, "TrainingJob", name)


def deployment_events(container: ApiContainer, project: str, name: str) -> list[dict[str, Any]]:
    """Newest first."""
    return _events(container.clusters.rollout, project, "EdgeDeployment", name)


def node_capacity(node: Obj) -> dict[str, Any]:
    """One node as a trainer pod sees it: schedulable or not (and why), GPUs, CPU, memory."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    allocatable = status.get("allocatable") or {}
    taints = [t for t in spec.get("taints") or [] if t.get("effect") in BLOCKING_EFFECTS]
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    try:
        gpus = int(str(allocatable.get(GPU, "0")))
    except ValueError:
        gpus = 0
    return NodeCapacityOut(
        name=meta.get("name", ""),
        schedulable=ready and not spec.get("unschedulable") and not taints,
        gpus=gpus,
        gpu_product=(meta.get("labels") or {}).get(GPU_PRODUCT),
        cpu=allocatable.get("cpu"),
        memory=allocatable.get("memory"),
        taints=[f"{t.get('key')}={t.get('value', '')}:{t.get('effect')}" for t in taints],
    ).model_dump(mode="json", by_alias=True)


def training_capacity(container: ApiContainer) -> dict[str, Any]:
    """The training cluster's nodes; a run asking for more GPUs than `maxGpus` stays Pending."""
    nodes = sorted((node_capacity(n) for n in container.clusters.training.nodes()), key=lambda n: n["name"])
    usable = [n for n in nodes if n["schedulable"]]
    return TrainingCapacityOut.model_validate(
        {
            "nodes": nodes,
            "maxGpus": max((n["gpus"] for n in usable), default=0),
            "gpuProducts": sorted({n["gpuProduct"] for n in usable if n["gpus"] and n["gpuProduct"]}),
        }
    ).model_dump(mode="json", by_alias=True)
