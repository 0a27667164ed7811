"""Which nodes an EdgeDeployment covers: its node selector and tolerations, by Kubernetes' rules."""

from __future__ import annotations

from visioninapp.k8s import Obj

__all__ = ["fits", "matches_selector", "tolerates", "untolerated_taints"]

SCHEDULING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule never keeps a pod off


def tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        if toleration.get("operator") == "Exists" and toleration.get("key") in (None, "", taint.get("key")):
            return True
        if toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
            "value", ""
        ):
            return True
    return False


def untolerated_taints(node: Obj, tolerations: list[Obj]) -> list[Obj]:
    taints = (node.get("spec") or {}).get("taints") or []
    return [t for t in taints if t.get("effect") in SCHEDULING_EFFECTS and not tolerates(tolerations, t)]


def matches_selector(node: Obj, node_selector: dict[str, str]) -> bool:
    labels = node["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in node_selector.items())


# Taints the node lifecycle controller puts on a node and takes off again by its condition
# (not-ready, unreachable, pressure, cordoned): a node under them still belongs to a deployment
# (offline: pending until it is back), and the DaemonSet controller keeps its pods there.
CONDITION_TAINTS = "node.kubernetes.io/"


def fits(node: Obj, node_selector: dict[str, str], tolerations: list[Obj]) -> bool:
    """The node's labels match the selector and every taint of its own (not of its condition) that
    repels pods is tolerated."""
    repelling = [
        t for t in untolerated_taints(node, tolerations) if not t["key"].startswith(CONDITION_TAINTS)
    ]
    return matches_selector(node, node_selector) and not repelling
