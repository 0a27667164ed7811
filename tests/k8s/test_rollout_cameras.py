"""Cameras of an EdgeDeployment on the real control plane: the real operator writes the per-node
ConfigMap the runtime reads (by a per-site list and by node labels), the pod template mounts it and
takes RTSP credentials from the Secret, a relabelled node gets its cameras without a new revision,
and a changed camera definition rolls out as a new revision."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import OperatorProcess, wait_for
from tests.k8s.test_rollout import Fleet, model_artifact, status
from visioninapp.local.cluster.cluster import Cluster

pytestmark = pytest.mark.services

GROUP = "visioninapp.io"
SITES = {"jetson-0": "a", "jetson-1": "a", "jetson-2": "b", "jetson-3": "b"}
DOCK = {
    "name": "dock",
    "url": "rtsp://10.0.0.5:554/stream1",
    "credentialsSecret": "dock-cam",
    "nodeSelector": {"example.com/site": "a"},
}
REPLAY = {"name": "replay", "file": "/data/replay.mp4", "loop": True, "targetFps": 5, "nodes": ["jetson-3"]}


@pytest.fixture
def sites(cluster: Cluster, tmp_path: Path) -> Fleet:
    scripted = Fleet()
    cluster.set_script(scripted)
    for node, site in SITES.items():
        cluster.add_node(node, labels={"visioninapp.io/edge": "true", "example.com/site": site})
    cluster.create(GROUP, "modelartifacts", cluster.namespace, model_artifact(tmp_path, "v1"))
    cluster.create(
        "",
        "secrets",
        cluster.namespace,
        {"metadata": {"name": "dock-cam"}, "stringData": {"username": "viewer", "password": "s3cret"}},
    )
    return scripted


def cameras_by_node(cluster: Cluster) -> dict[str, list[str]]:
    configmap = cluster.get("", "configmaps", cluster.namespace, "helmets-cameras") or {}
    return {node: [c["name"] for c in json.loads(v)] for node, v in (configmap.get("data") or {}).items()}


def pods(cluster: Cluster) -> dict[str, str]:
    """Bound, live edge pods: node → pod uid."""
    found = cluster.list("", "pods", cluster.namespace, "visioninapp.io/edge-deployment=helmets")
    return {
        p["spec"]["nodeName"]: p["metadata"]["uid"]
        for p in found
        if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
    }


def test_cameras_reach_their_nodes_and_move_with_node_labels(
    cluster: Cluster, operator_factory: Any, sites: Fleet
) -> None:
    operator: OperatorProcess = operator_factory(cluster, VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS="0.3")
    wait_for(
        lambda: (
            (cluster.get(GROUP, "modelartifacts", cluster.namespace, "v1") or {})
            .get("status", {})
            .get("phase")
            == "Available"
        ),
        30,
        "the artifact to be verified",
        operator,
    )
    cluster.create(
        GROUP,
        "edgedeployments",
        cluster.namespace,
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "EdgeDeployment",
            "metadata": {"name": "helmets"},
            "spec": {
                "modelRef": "v1",
                "tolerations": [],
                "cameras": [DOCK, REPLAY],
                "strategy": {
                    "canary": {"steps": [100]},
                    "maxUnavailable": "100%",
                    "healthGate": {"minReadySeconds": 1},
                },
            },
        },
    )
    wait_for(lambda: status(cluster).get("phase") == "Healthy", 60, "the fleet to serve v1", operator)
    assert cameras_by_node(cluster) == {"jetson-0": ["dock"], "jetson-1": ["dock"], "jetson-3": ["replay"]}
    configmap = cluster.get("", "configmaps", cluster.namespace, "helmets-cameras")
    assert configmap is not None
    assert configmap["metadata"]["ownerReferences"][0]["kind"] == "EdgeDeployment"
    assert json.loads(configmap["data"]["jetson-0"]) == [
        {
            "name": "dock",
            "url": "rtsp://10.0.0.5:554/stream1",
            "credentialsSecret": "dock-cam",
            "loop": False,
            "targetFps": 15.0,
            "nodeSelector": {"example.com/site": "a"},
        }
    ]

    template = cluster.get("apps", "daemonsets", cluster.namespace, "helmets")["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["VISIONINAPP_EDGE_CAMERAS_DIR"]["value"] == "/etc/visioninapp/cameras"
    assert env["VISIONINAPP_CAMERA_DOCK_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dock-cam",
        "key": "password",
        "optional": True,
    }
    assert {
        "name": "cameras",
        "configMap": {"name": "helmets-cameras", "optional": True, "defaultMode": 420},
    } in (template["spec"]["volumes"])
    assert any(m["mountPath"] == "/etc/visioninapp/cameras" for m in container["volumeMounts"])

    # jetson-2 moves to site a: its entry appears, and no pod anywhere is replaced
    revision, before = status(cluster)["revision"], pods(cluster)
    assert len(before) == 4
    cluster.patch("", "nodes", None, "jetson-2", {"metadata": {"labels": {"example.com/site": "a"}}})
    wait_for(lambda: "jetson-2" in cameras_by_node(cluster), 30, "jetson-2 to get the dock camera", operator)
    assert cameras_by_node(cluster)["jetson-2"] == ["dock"]
    assert status(cluster)["revision"] == revision and pods(cluster) == before
    ds = cluster.get("apps", "daemonsets", cluster.namespace, "helmets")
    assert ds["spec"]["template"]["metadata"]["labels"]["visioninapp.io/revision"] == revision

    # a camera's definition changes: a new revision, rolled out to every node like a new model
    faster = {**REPLAY, "targetFps": 10}
    cluster.patch(
        GROUP, "edgedeployments", cluster.namespace, "helmets", {"spec": {"cameras": [DOCK, faster]}}
    )
    wait_for(
        lambda: (
            status(cluster).get("revision") not in (None, revision)
            and status(cluster).get("phase") == "Healthy"
        ),
        60,
        "the new camera definitions on the fleet",
        operator,
    )
    after = pods(cluster)
    assert len(after) == 4 and not set(after.values()) & set(before.values())
    replay = json.loads(
        cluster.get("", "configmaps", cluster.namespace, "helmets-cameras")["data"]["jetson-3"]
    )
    assert replay[0]["targetFps"] == 10

    # deleted and made again at once: the map ends up owned by the new deployment (not collected)
    body = cluster.get(GROUP, "edgedeployments", cluster.namespace, "helmets")
    cluster.delete(GROUP, "edgedeployments", cluster.namespace, "helmets")
    wait_for(
        lambda: cluster.get(GROUP, "edgedeployments", cluster.namespace, "helmets") is None, 30, "deletion"
    )
    again = cluster.create(
        GROUP,
        "edgedeployments",
        cluster.namespace,
        {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {"name": "helmets"},
            "spec": body["spec"],
        },
    )

    def owned_by_the_new_one() -> bool:
        configmap = cluster.get("", "configmaps", cluster.namespace, "helmets-cameras") or {"metadata": {}}
        owners = configmap["metadata"].get("ownerReferences") or [{}]
        return owners[0].get("uid") == again["metadata"]["uid"] and "jetson-3" in (
            configmap.get("data") or {}
        )

    wait_for(owned_by_the_new_one, 30, "the cameras map owned by the new deployment", operator)
    time.sleep(3)  # the garbage collector has had time to act on the old owner's objects
    wait_for(owned_by_the_new_one, 30, "the cameras map (made again if the collector took it)", operator)

    # deleted by hand: the operator makes it again (it reads the map now and then: no watch)
    cluster.delete("", "configmaps", cluster.namespace, "helmets-cameras")
    wait_for(owned_by_the_new_one, 60, "the cameras map made again", operator)
