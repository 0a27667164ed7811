"""The cameras of an EdgeDeployment: the per-node ConfigMap, the pod template's part, and what rolls
out through the canary (the camera definitions) versus what the ConfigMap carries live (placement)."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.test_operator_rollout import artifact, deployment
from visioninapp.operator.cameras import (
    CAMERAS_ANNOTATION,
    cameras_configmap_name,
    plan_cameras,
    running_cameras,
)
from visioninapp.operator.daemonset import desired_daemonset
from visioninapp.resources import EdgeDeployment
from visioninapp.resources.edgedeployment import CameraSpec

DOCK = {"name": "dock-east", "url": "rtsp://10.0.0.5:554/stream1", "credentialsSecret": "dock-cam"}
GATE = {"name": "gate", "file": "/data/gate.mp4", "loop": True, "targetFps": 5, "nodes": ["n1", "n3"]}
SITE_A = {"site": "a"}
NODES = {"n0": SITE_A, "n1": {}, "n2": {"site": "b"}, "n3": SITE_A}


def ed(*cameras: dict[str, Any]) -> EdgeDeployment:
    return EdgeDeployment.model_validate(deployment(cameras=list(cameras)))


def template(deployment_: EdgeDeployment) -> tuple[dict[str, Any], str]:
    daemonset, revision = desired_daemonset(
        deployment_, "u", "v2", artifact("v2")["spec"]["formats"][0], image="edge:1"
    )
    return daemonset["spec"]["template"], revision


def assigned(configmap: dict[str, Any] | None) -> dict[str, list[str]]:
    assert configmap is not None
    return {node: [c["name"] for c in json.loads(value)] for node, value in configmap["data"].items()}


def pod(node: str, digest: str | None, name: str | None = None, **meta: Any) -> dict[str, Any]:
    annotations = {CAMERAS_ANNOTATION: digest} if digest else {}
    return {
        "metadata": {"name": name or f"{node}-pod", "annotations": annotations, **meta},
        "spec": {"nodeName": node},
    }


def test_each_node_gets_the_cameras_its_list_or_its_labels_give_it() -> None:
    deployment_ = ed({**DOCK, "nodeSelector": SITE_A}, GATE)
    configmap = plan_cameras(deployment_, "u", NODES, {}, None)
    assert assigned(configmap) == {"n0": ["dock-east"], "n1": ["gate"], "n3": ["dock-east", "gate"]}
    assert configmap is not None and configmap["metadata"]["name"] == "helmets-cameras"
    owner = configmap["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "EdgeDeployment" and owner["uid"] == "u" and owner["controller"] is True
    assert configmap["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "visioninapp-operator"
    # the runtime's contract: CameraSpec by alias, which validates back to the same cameras
    n3 = [CameraSpec.model_validate(c) for c in json.loads(configmap["data"]["n3"])]
    assert n3 == list(deployment_.spec.cameras)
    assert json.loads(configmap["data"]["n3"])[0]["credentialsSecret"] == "dock-cam"
    # without nodes or nodeSelector a camera is on every covered node; uncovered nodes get nothing
    everywhere = plan_cameras(ed(DOCK), "u", {"n0": {}, "n2": {}}, {}, None)
    assert assigned(everywhere) == {"n0": ["dock-east"], "n2": ["dock-east"]}


def test_nothing_is_written_for_a_deployment_without_cameras() -> None:
    assert plan_cameras(ed(), "u", NODES, {}, None) is None
    # cameras removed: the map is emptied for the nodes that follow the spec
    before = plan_cameras(ed(DOCK), "u", NODES, {}, None)
    assert assigned(plan_cameras(ed(), "u", NODES, {}, before)) == {}


def test_the_template_mounts_the_map_and_takes_credentials_from_the_secret() -> None:
    plain, _ = template(ed())
    assert CAMERAS_ANNOTATION not in plain["metadata"]["annotations"]  # no cameras: as before
    assert [v["name"] for v in plain["spec"]["volumes"]] == ["model-cache"]
    assert not [e for e in plain["spec"]["containers"][0]["env"] if "CAMERA" in e["name"]]
    spec, _ = template(ed({**DOCK, "nodeSelector": SITE_A}, GATE))
    container = spec["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["VISIONINAPP_EDGE_CAMERAS_DIR"]["value"] == "/etc/visioninapp/cameras"
    assert env["VISIONINAPP_CAMERA_DOCK_EAST_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "dock-cam",
        "key": "username",
        "optional": True,
    }
    assert env["VISIONINAPP_CAMERA_DOCK_EAST_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert not [name for name in env if name.startswith("VISIONINAPP_CAMERA_GATE")]  # a file: no secret
    volume = next(v for v in spec["spec"]["volumes"] if v["name"] == "cameras")
    assert volume["configMap"] == {"name": "helmets-cameras", "optional": True}
    assert {"name": "cameras", "mountPath": "/etc/visioninapp/cameras", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert cameras_configmap_name("a" * 253) == "a" * 245 + "-cameras"


def test_definitions_roll_out_as_a_new_revision_placement_does_not() -> None:
    _, base = template(ed(DOCK, GATE))
    _, moved = template(ed({**DOCK, "nodeSelector": {"site": "b"}}, {**GATE, "nodes": ["n2"]}))
    _, faster = template(ed(DOCK, {**GATE, "targetFps": 10}))
    _, other_secret = template(ed({**DOCK, "credentialsSecret": "other"}, GATE))
    _, none = template(ed())
    assert base == moved  # where cameras are read is the ConfigMap's, live
    assert len({base, faster, other_secret, none}) == 4


def test_a_node_still_on_older_cameras_keeps_its_entry_until_the_canary_replaces_it() -> None:
    old, new = ed(GATE), ed({**GATE, "targetFps": 10})
    before = plan_cameras(old, "u", NODES, {}, None)
    old_digest = template(old)[0]["metadata"]["annotations"][CAMERAS_ANNOTATION]
    new_digest = template(new)[0]["metadata"]["annotations"][CAMERAS_ANNOTATION]
    pods = [pod("n1", old_digest), pod("n3", old_digest, name="n3-old")]
    # n3's old pod is being replaced by this reconciliation: its entry is the new one already
    running = running_cameras(pods, leaving=("n3-old",))
    after = plan_cameras(new, "u", NODES, running, before)
    assert after is not None and before is not None
    assert after["data"]["n1"] == before["data"]["n1"]
    assert json.loads(after["data"]["n3"])[0]["targetFps"] == 10
    # once n1 runs the new definitions, it follows the spec too
    moved = plan_cameras(new, "u", NODES, running_cameras([pod("n1", new_digest)]), after)
    assert moved is not None and json.loads(moved["data"]["n1"])[0]["targetFps"] == 10
    # pods without cameras, deleted ones and unbound ones do not hold an entry back
    unbound = {"metadata": {"name": "p"}, "spec": {}}
    gone = pod("n2", old_digest, deletionTimestamp="2026-11-30T00:00:00Z")
    assert running_cameras([pod("n0", None), gone, unbound]) == {"n0": None}
