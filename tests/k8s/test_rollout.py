"""EdgeDeployment rollouts: the real operator, the real DaemonSet controller and 20 Jetsons of the
node agent (Leases, Ready condition; offline when their heartbeats stop).

Edge pods run from scripts: healthy (Ready), or broken (crash-looping) for a given model.
"""

from __future__ import annotations

import math
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import OperatorProcess, onnx_artifact, wait_for
from tests.services import free_port
from visioninapp.backends.events import LocalEventLog
from visioninapp.events import EdgeEvent
from visioninapp.local.cluster.agent import Outcome
from visioninapp.local.cluster.cluster import Cluster

GROUP = "visioninapp.io"
NODES = 20


def model_artifact(tmp_path: Path, name: str) -> dict[str, Any]:
    path = tmp_path / "models" / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"onnx bytes of {name}".encode())
    return onnx_artifact(name, path)


class Fleet:
    """Scripted edge pods: a model listed in `broken` crash-loops, the others serve."""

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.started: Counter[tuple[str, str]] = Counter()  # (node, model) → pods started

    def __call__(self, pod: dict[str, Any]) -> Outcome:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        model = env["VISIONINAPP_EDGE_MODEL_VERSION"]
        self.started[(pod["spec"]["nodeName"], model)] += 1
        if model in self.broken:
            return Outcome(seconds=math.inf, ready=False, restarts=5)
        return Outcome(seconds=math.inf, ready=True)


@pytest.fixture
def fleet(cluster: Cluster, tmp_path: Path) -> Fleet:
    scripted = Fleet()
    cluster.set_script(scripted)
    for index in range(NODES):
        cluster.add_node(
            f"jetson-{index:02d}",
            labels={"visioninapp.io/edge": "true"},
            taints=[{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}],
        )
    for name in ("v1", "v2"):
        cluster.create(GROUP, "modelartifacts", cluster.namespace, model_artifact(tmp_path, name))
    return scripted


@pytest.fixture
def operator(cluster: Cluster, operator_factory: Any, fleet: Fleet) -> OperatorProcess:
    return operator_factory(
        cluster,
        VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS="0.3",
        VISIONINAPP_OPERATOR_METRICS_PORT=str(free_port()),
    )


def rollout_plans(operator: OperatorProcess) -> int:
    """How many times the operator has planned an EdgeDeployment so far (its own metrics)."""
    port = operator.env["VISIONINAPP_OPERATOR_METRICS_PORT"]
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return 0
    wanted = 'visioninapp_operator_reconciles_total{kind="EdgeDeployment",result="ok"}'
    return next((int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(wanted)), 0)


def deployment(**strategy: Any) -> dict[str, Any]:
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "EdgeDeployment",
        "metadata": {"name": "helmets"},
        "spec": {
            "modelRef": "v1",
            "strategy": {
                "canary": {"steps": [10, 50, 100]},
                "maxUnavailable": "50%",
                "healthGate": {"minReadySeconds": 1},
                **strategy,
            },
        },
    }


def status(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get(GROUP, "edgedeployments", cluster.namespace, "helmets") or {}).get("status") or {}


def reasons(cluster: Cluster) -> set[str]:
    """Reasons of the Events about the deployment (posted right after its status writes)."""
    return {
        e["reason"]
        for e in cluster.list("", "events", cluster.namespace)
        if e["involvedObject"]["name"] == "helmets"
    }


def serving(cluster: Cluster, model: str) -> bool:
    """Healthy on `model`, from one read of the status (two reads may straddle a status write)."""
    current = status(cluster)
    return current.get("phase") == "Healthy" and current.get("currentModel") == model


def models_by_node(cluster: Cluster) -> dict[str, str]:
    pods = cluster.list("", "pods", cluster.namespace, "visioninapp.io/edge-deployment=helmets")
    return {
        p["spec"]["nodeName"]: p["metadata"]["annotations"]["visioninapp.io/model"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName")  # bound ones
    }


def deploy_v1(cluster: Cluster, operator: OperatorProcess, **strategy: Any) -> None:
    wait_for(
        lambda: (
            ((cluster.get(GROUP, "modelartifacts", cluster.namespace, "v2") or {}).get("status") or {}).get(
                "phase"
            )
            == "Available"
        ),
        30,
        "the artifacts to be verified",
        operator,
    )
    cluster.create(GROUP, "edgedeployments", cluster.namespace, deployment(**strategy))
    wait_for(lambda: status(cluster).get("phase") == "Healthy", 30, "v1 on the fleet", operator)
    assert set(models_by_node(cluster).values()) == {"v1"} and len(models_by_node(cluster)) == NODES


def roll_out_v2(cluster: Cluster) -> None:
    cluster.patch(GROUP, "edgedeployments", cluster.namespace, "helmets", {"spec": {"modelRef": "v2"}})


def test_canary_waves_reach_every_node(cluster: Cluster, operator: OperatorProcess, fleet: Fleet) -> None:
    deploy_v1(cluster, operator)
    ds = cluster.get("apps", "daemonsets", cluster.namespace, "helmets")
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert ds["metadata"]["ownerReferences"][0]["kind"] == "EdgeDeployment"
    roll_out_v2(cluster)
    seen: dict[int, int] = {}

    def done() -> bool:
        current = status(cluster)
        if (
            current.get("revision")
            and current.get("currentModel") == "v2"
            and current.get("phase") == "Progressing"
        ):
            step = current.get("currentStep", 0)
            updated = sum(1 for m in models_by_node(cluster).values() if m == "v2")
            seen[step] = max(seen.get(step, 0), updated)
        return current.get("phase") == "Healthy" and current.get("currentModel") == "v2"

    wait_for(done, 60, "v2 everywhere", operator)
    assert set(models_by_node(cluster).values()) == {"v2"}
    assert seen.get(0, 0) <= 2, seen  # step 0: 10% of 20 nodes
    assert seen.get(1, 0) <= 10, seen  # step 1: 50%
    final = status(cluster)
    assert (final["desiredNodes"], final["updatedNodes"], final["readyNodes"]) == (NODES, NODES, NODES)
    assert final["previousModel"] == "v1" and final["history"][0]["outcome"] == "Completed"
    assert all(count == 1 for (node, model), count in fleet.started.items() if model == "v2")  # no node twice
    artifact = cluster.get(GROUP, "modelartifacts", cluster.namespace, "v2")
    assert artifact["status"]["deployedTo"] == ["helmets"]
    assert "visioninapp.io/in-use" in artifact["metadata"]["finalizers"]
    wanted = {"RolloutStarted", "StepStarted", "RolloutComplete"}
    wait_for(lambda: wanted <= reasons(cluster), 10, "the rollout's Events", operator)


def test_a_failing_model_rolls_back_every_node(
    cluster: Cluster, operator: OperatorProcess, fleet: Fleet
) -> None:
    deploy_v1(cluster, operator)
    fleet.broken.add("v2")
    roll_out_v2(cluster)
    wait_for(lambda: status(cluster).get("phase") == "RolledBack", 60, "the rollback", operator)
    wait_for(lambda: set(models_by_node(cluster).values()) == {"v1"}, 30, "every node back on v1", operator)
    final = status(cluster)
    assert final["currentModel"] == "v1" and final["previousModel"] == "v2"
    rolled_back = next(c for c in final["conditions"] if c["type"] == "RolledBack")
    assert rolled_back["status"] == "True" and "restarted 5 times" in rolled_back["message"]
    assert final["history"][0]["outcome"] == "RolledBack"
    assert sum(1 for (_, model) in fleet.started if model == "v2") <= 2  # only the first canary wave
    wait_for(lambda: "RolledBack" in reasons(cluster), 10, "the RolledBack Event", operator)


def test_bad_health_events_roll_back(cluster: Cluster, operator: OperatorProcess, fleet: Fleet) -> None:
    deploy_v1(cluster, operator, healthGate={"minReadySeconds": 5, "maxErrorRate": 0.1})
    roll_out_v2(cluster)
    wait_for(lambda: "v2" in models_by_node(cluster).values(), 30, "the first canary", operator)
    revision = status(cluster)["revision"]
    log = LocalEventLog(Path(operator.env["VISIONINAPP_DATA_DIR"]) / "events")
    now = datetime.now(UTC)
    for node, model in models_by_node(cluster).items():
        if model == "v2":
            event = EdgeEvent(
                namespace=cluster.namespace,
                deployment="helmets",
                node=node,
                revision=revision,
                window_start=now - timedelta(seconds=15),
                window_end=now,
                requests=100,
                errors=40,
                p95_ms=30,
            )
            log.publish("edge-events", f"edge.{node}", [(1, event.to_bytes())])
    wait_for(lambda: status(cluster).get("phase") == "RolledBack", 30, "the rollback", operator)
    message = next(c["message"] for c in status(cluster)["conditions"] if c["type"] == "RolledBack")
    assert "error rate 40.0%" in message


def test_offline_nodes_are_skipped_then_updated_when_back(
    cluster: Cluster, operator: OperatorProcess, fleet: Fleet
) -> None:
    deploy_v1(cluster, operator)
    offline = ["jetson-03", "jetson-11", "jetson-17"]
    for node in offline:
        cluster.set_online(node, False)  # no more Lease renewals: the node controller notices

    def unreachable() -> bool:
        nodes = {n["metadata"]["name"]: n for n in cluster.list("", "nodes")}
        return all(
            any(c["type"] == "Ready" and c["status"] != "True" for c in nodes[name]["status"]["conditions"])
            for name in offline
        )

    wait_for(unreachable, 60, "the node lifecycle controller to mark the nodes unreachable", operator)
    roll_out_v2(cluster)
    wait_for(
        lambda: serving(cluster, "v2"),
        60,
        "the rollout without the offline nodes",
        operator,
    )
    final = status(cluster)
    assert (final["updatedNodes"], final["pendingNodes"], final["failedNodes"]) == (NODES - 3, 3, 0), {
        k: v for k, v in final.items() if k not in ("conditions", "history")
    }
    assert [n["name"] for n in final["nodes"][:3]] == offline  # pending nodes listed first
    assert all(models_by_node(cluster)[node] == "v1" for node in offline)
    for node in offline:
        cluster.set_online(node, True)
    wait_for(
        lambda: set(models_by_node(cluster).values()) == {"v2"}, 30, "the returning nodes to update", operator
    )
    wait_for(lambda: status(cluster).get("pendingNodes") == 0, 30, "no pending nodes", operator)


def test_pause_freezes_and_resume_completes(
    cluster: Cluster, operator: OperatorProcess, fleet: Fleet
) -> None:
    deploy_v1(cluster, operator, healthGate={"minReadySeconds": 2})
    roll_out_v2(cluster)
    wait_for(lambda: "v2" in models_by_node(cluster).values(), 30, "the first canary", operator)
    cluster.patch(GROUP, "edgedeployments", cluster.namespace, "helmets", {"spec": {"paused": True}})
    wait_for(lambda: status(cluster).get("phase") == "Paused", 30, "the pause", operator)
    frozen = models_by_node(cluster)
    # Paused means the operator keeps planning and changes nothing: five more plans of its own
    # (it re-plans every 0.3 s and on every event), and nothing moved.
    planned = rollout_plans(operator)
    wait_for(lambda: rollout_plans(operator) >= planned + 5, 30, "five plans while paused", operator)
    assert models_by_node(cluster) == frozen and list(frozen.values()).count("v2") <= 2
    cluster.patch(GROUP, "edgedeployments", cluster.namespace, "helmets", {"spec": {"paused": False}})
    wait_for(lambda: status(cluster).get("phase") == "Healthy", 60, "the resumed rollout", operator)
    assert set(models_by_node(cluster).values()) == {"v2"}


def test_operator_killed_mid_rollout_resumes_without_updating_a_node_twice(
    cluster: Cluster, operator: OperatorProcess, fleet: Fleet
) -> None:
    deploy_v1(cluster, operator, healthGate={"minReadySeconds": 2})
    roll_out_v2(cluster)
    wait_for(lambda: status(cluster).get("currentStep") == 1, 30, "step 1", operator)
    step = status(cluster)["currentStep"]
    operator.kill()
    operator.start()
    wait_for(lambda: status(cluster).get("phase") == "Healthy", 60, "the rollout to finish", operator)
    assert status(cluster)["currentStep"] >= step
    assert set(models_by_node(cluster).values()) == {"v2"}
    assert all(count == 1 for (_, model), count in fleet.started.items() if model == "v2"), fleet.started


def test_manual_rollback_and_the_in_use_finalizer(
    cluster: Cluster, operator: OperatorProcess, fleet: Fleet
) -> None:
    deploy_v1(cluster, operator)
    roll_out_v2(cluster)
    wait_for(
        lambda: serving(cluster, "v2"),
        60,
        "v2",
        operator,
    )
    cluster.patch(
        GROUP,
        "edgedeployments",
        cluster.namespace,
        "helmets",
        {"metadata": {"annotations": {"visioninapp.io/rollout-action": "rollback"}}},
    )
    wait_for(lambda: set(models_by_node(cluster).values()) == {"v1"}, 30, "the manual rollback", operator)
    assert status(cluster)["phase"] == "RolledBack"

    def action_consumed() -> bool:
        meta = cluster.get(GROUP, "edgedeployments", cluster.namespace, "helmets")["metadata"]
        return "visioninapp.io/rollout-action" not in (meta.get("annotations") or {})

    wait_for(action_consumed, 10, "the annotation to be cleared", operator)
    cluster.delete(GROUP, "modelartifacts", cluster.namespace, "v1")  # in use: held by the finalizer
    held = cluster.get(GROUP, "modelartifacts", cluster.namespace, "v1")
    assert held is not None and held["metadata"].get("deletionTimestamp")
    cluster.delete(GROUP, "edgedeployments", cluster.namespace, "helmets")
    wait_for(
        lambda: cluster.get(GROUP, "modelartifacts", cluster.namespace, "v1") is None,
        30,
        "the release",
        operator,
    )


def test_a_deployment_waits_for_a_usable_artifact(
    cluster: Cluster, operator: OperatorProcess, fleet: Fleet
) -> None:
    body = deployment()
    body["spec"]["modelRef"] = "missing"
    cluster.create(GROUP, "edgedeployments", cluster.namespace, body)

    def waiting() -> Any:
        conditions = {c["type"]: c for c in status(cluster).get("conditions", [])}
        return conditions.get("ModelReady", {}).get("status") == "False" and conditions["ModelReady"]

    condition = wait_for(waiting, 30, "ModelReady=False", operator)
    assert "not found" in condition["message"]
    assert cluster.get("apps", "daemonsets", cluster.namespace, "helmets") is None
