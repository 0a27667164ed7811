"""The cameras of an EdgeDeployment as the runtime reads them: a ConfigMap with one key per node.

Two things reach a node differently, on purpose:
- what the cameras are (source, credentials Secret, FPS, loop) is part of the pod template (the
  hash `cameras_hash` and the credentials' env), so a change rolls out through the canary like a
  new model;
- where they are read (`nodes`, `nodeSelector` and the nodes' labels) is the ConfigMap, which the
  kubelet updates in place and the runtime re-reads: a node relabelled gets its cameras without a
  new revision and without restarting any pod.

A node whose pod still runs an older camera definition keeps its ConfigMap entry as it is until
the rollout replaces that pod, so the canary is not bypassed by the live file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence

from visioninapp.k8s import MANAGED_BY, Obj, controller_reference
from visioninapp.operator.names import DEPLOYMENT_LABEL
from visioninapp.resources import EdgeDeployment
from visioninapp.resources.edgedeployment import CameraSpec, camera_credential_env

__all__ = [
    "CAMERAS_ANNOTATION",
    "CAMERAS_DIR",
    "camera_env",
    "cameras_configmap_name",
    "cameras_hash",
    "plan_cameras",
    "running_cameras",
]

CAMERAS_DIR = "/etc/visioninapp/cameras"
CAMERAS_ANNOTATION = "visioninapp.io/cameras"  # on the pod template: hash of the camera definitions
PLACEMENT = {"nodes", "node_selector"}  # carried live by the ConfigMap, not by the template


def cameras_configmap_name(deployment: str) -> str:
    suffix = "-cameras"
    return deployment[: 253 - len(suffix)].rstrip(".") + suffix


def cameras_hash(cameras: Sequence[CameraSpec]) -> str | None:
    """The hash of what the cameras are, without where they are read; None without cameras."""
    if not cameras:
        return None
    definitions = [c.model_dump(mode="json", by_alias=True, exclude=PLACEMENT) for c in cameras]
    return hashlib.sha256(json.dumps(definitions, sort_keys=True).encode()).hexdigest()[:12]


def camera_env(cameras: Sequence[CameraSpec]) -> list[Obj]:
    """The credentials of the RTSP cameras, from their Secrets. `optional`: a missing Secret fails
    that camera (the runtime reports it), not the pod and every other camera of the node."""
    return [
        {
            "name": camera_credential_env(camera.name, key),
            "valueFrom": {"secretKeyRef": {"name": camera.credentials_secret, "key": key, "optional": True}},
        }
        for camera in cameras
        if camera.credentials_secret
        for key in ("username", "password")
    ]


def running_cameras(pods: Iterable[Obj], leaving: Collection[str] = ()) -> dict[str, str | None]:
    """Node → camera hash of the pod that keeps running there (pods being deleted, or named in
    `leaving` because this reconciliation deletes them, are left out)."""
    running: dict[str, str | None] = {}
    for pod in pods:
        meta, node = pod["metadata"], (pod.get("spec") or {}).get("nodeName")
        if node and not meta.get("deletionTimestamp") and meta["name"] not in leaving:
            running[node] = (meta.get("annotations") or {}).get(CAMERAS_ANNOTATION)
    return running


def plan_cameras(
    ed: EdgeDeployment,
    uid: str,
    nodes: Mapping[str, Mapping[str, str]],
    running: Mapping[str, str | None],
    current: Obj | None,
) -> Obj | None:
    """The ConfigMap `<deployment>-cameras` for the covered `nodes` (name → labels): per node that
    reads at least one camera, the JSON list of its cameras (CameraSpec by alias). `running` is
    `running_cameras`; a node whose pod runs other camera definitions keeps its `current` entry.
    None: nothing to write (no cameras, and none written before)."""
    cameras = ed.spec.cameras
    if not cameras and current is None:
        return None
    wanted = cameras_hash(cameras)
    kept = (current or {}).get("data") or {}
    data: dict[str, str] = {}
    for node in sorted(nodes):
        runs = running.get(node)
        if runs is not None and runs != wanted:  # an older revision: the canary replaces it
            if node in kept:
                data[node] = kept[node]
            continue
        mine = [c for c in cameras if c.on_node(node, nodes[node])]
        if mine:
            data[node] = json.dumps(
                [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in mine]
            )
    name = ed.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": cameras_configmap_name(name),
            "namespace": ed.metadata.namespace,
            "labels": {**MANAGED_BY, DEPLOYMENT_LABEL: name},
            "ownerReferences": [controller_reference("EdgeDeployment", name, uid)],
        },
        "data": data,
    }
