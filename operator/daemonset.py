"""The DaemonSet of an EdgeDeployment: one pod template per model revision, replaced node by node
(updateStrategy OnDelete) by the rollout (rollout.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from visioninapp.k8s import MANAGED_BY, Obj, controller_reference
from visioninapp.operator.cameras import (
    CAMERAS_ANNOTATION,
    CAMERAS_DIR,
    camera_env,
    cameras_configmap_name,
    cameras_hash,
)
from visioninapp.operator.edge_identity import AUDIENCE
from visioninapp.operator.names import DEPLOYMENT_LABEL
from visioninapp.resources import EdgeDeployment

__all__ = [
    "DEPLOYMENT_LABEL",
    "REVISION_LABEL",
    "EdgeTemplate",
    "desired_daemonset",
    "template_revision",
]

REVISION_LABEL = "visioninapp.io/revision"
TOKEN_FILE = "/var/run/secrets/visioninapp/edge/token"


def template_revision(template: Obj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


def desired_daemonset(
    ed: EdgeDeployment,
    uid: str,
    artifact: str,
    model: Obj,
    *,
    image: str,
    env: dict[str, str] | None = None,
    cache_path: str = "/var/lib/visioninapp/models",
    runtime_class: str | None = None,
    identity_url: str | None = None,
    env_secret: str | None = None,
) -> tuple[Obj, str]:
    """The DaemonSet (updateStrategy OnDelete) serving `model` (a format entry of `artifact`).

    With `identity_url` the pods get no S3 keys at all: a projected token (audience
    `visioninapp-edge`, bound to the pod and so to its node) that the runtime trades at that URL for
    its node's own credentials (operator/edge_identity.py). Otherwise credentials come from
    `env_secret` (a Secret of the namespace, as envFrom), never from the plain `env`."""
    spec, name = ed.spec, ed.metadata.name
    runtime = spec.runtime
    feedback = spec.feedback
    node_dir = f"{cache_path}/$(VISIONINAPP_NODE_NAME)"  # hostPath: survives the pods on the node
    values = {
        "VISIONINAPP_EDGE_MODEL_URI": model["uri"],
        "VISIONINAPP_EDGE_MODEL_SHA256": model["sha256"],
        "VISIONINAPP_EDGE_MODEL_FORMAT": spec.format,
        "VISIONINAPP_EDGE_MODEL_VERSION": artifact,
        "VISIONINAPP_DEPLOYMENT": name,
        "VISIONINAPP_EDGE_PORT": str(runtime.port),
        "VISIONINAPP_EDGE_CONFIDENCE": str(runtime.confidence),
        "VISIONINAPP_EDGE_IOU": str(runtime.iou),
        # unset: `auto` for engines (FP16 on a Jetson), fp32 otherwise, as before (same revisions)
        "VISIONINAPP_EDGE_PRECISION": runtime.precision or ("auto" if spec.format == "tensorrt" else "fp32"),
        "VISIONINAPP_EDGE_CACHE_DIR": node_dir,
        # the event and feedback spools on the node too, one per deployment: what a replaced pod
        # had not sent yet, its successor sends (the container's own disk goes with it)
        "VISIONINAPP_EDGE_STATE_DIR": f"{node_dir}/state/{ed.metadata.namespace}.{name}",
        "VISIONINAPP_FEEDBACK_ENABLED": str(feedback.enabled).lower(),
        "VISIONINAPP_FEEDBACK_MIN_SCORE": str(feedback.min_score),
        "VISIONINAPP_FEEDBACK_MAX_SCORE": str(feedback.max_score),
        "VISIONINAPP_FEEDBACK_SAMPLE_RATE": str(feedback.sample_rate),
        "VISIONINAPP_FEEDBACK_MAX_FRAMES_PER_HOUR": str(feedback.max_frames_per_hour),
        **({"VISIONINAPP_FEEDBACK_URI": feedback.uri} if feedback.uri else {}),
        **(env or {}),
        **(
            {
                "VISIONINAPP_EDGE_IDENTITY_URL": identity_url,
                "VISIONINAPP_EDGE_IDENTITY_TOKEN_FILE": TOKEN_FILE,
            }
            if identity_url
            else {}
        ),
    }
    downward = [
        {"name": "VISIONINAPP_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "VISIONINAPP_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    resources: Obj = {
        "requests": {"cpu": runtime.resources.cpu, "memory": runtime.resources.memory},
        "limits": {"memory": runtime.resources.memory},
    }
    if runtime.resources.gpu:
        resources["limits"]["nvidia.com/gpu"] = str(runtime.resources.gpu)
    labels = {**MANAGED_BY, "app.kubernetes.io/component": "edge-runtime", DEPLOYMENT_LABEL: name}
    template: Obj = {
        "metadata": {"labels": labels, "annotations": {"visioninapp.io/model": artifact}},
        "spec": {
            "nodeSelector": dict(spec.node_selector),
            "tolerations": [
                t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations
            ],
            "containers": [
                {
                    "name": "runtime",
                    "image": runtime.image or image,
                    "command": ["visioninapp-edge", "--host", "$(POD_IP)"],
                    "ports": [{"name": "http", "containerPort": runtime.port}],
                    "env": [*downward, *({"name": k, "value": v} for k, v in values.items())],
                    **({"envFrom": [{"secretRef": {"name": env_secret}}]} if env_secret else {}),
                    "resources": resources,
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                    "volumeMounts": [{"name": "model-cache", "mountPath": cache_path}],
                }
            ],
            "volumes": [
                {"name": "model-cache", "hostPath": {"path": cache_path, "type": "DirectoryOrCreate"}}
            ],
        },
    }
    if runtime_class:
        template["spec"]["runtimeClassName"] = runtime_class
    _add_cameras(template, ed)
    if identity_url:
        token = {"audience": AUDIENCE, "expirationSeconds": 3600, "path": "token"}
        template["spec"]["automountServiceAccountToken"] = False  # the exchange token only, no API access
        template["spec"]["volumes"].append(
            {"name": "edge-identity", "projected": {"sources": [{"serviceAccountToken": token}]}}
        )
        template["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "edge-identity", "mountPath": TOKEN_FILE.rsplit("/", 1)[0], "readOnly": True}
        )
    revision = template_revision(template)
    template["metadata"]["labels"][REVISION_LABEL] = revision
    template["spec"]["containers"][0]["env"].append({"name": "VISIONINAPP_REVISION", "value": revision})
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": name,
            "namespace": ed.metadata.namespace,
            "labels": {**MANAGED_BY, DEPLOYMENT_LABEL: name},
            "ownerReferences": [controller_reference("EdgeDeployment", name, uid)],
        },
        "spec": {
            "selector": {"matchLabels": {DEPLOYMENT_LABEL: name}},
            "updateStrategy": {"type": "OnDelete"},
            "template": template,
        },
    }
    return daemonset, revision


def _add_cameras(template: Obj, ed: EdgeDeployment) -> None:
    """The cameras' ConfigMap, their credentials and the hash of their definitions; nothing without
    cameras, so deployments without any keep their revision."""
    digest = cameras_hash(ed.spec.cameras)
    if digest is None:
        return
    container = template["spec"]["containers"][0]
    template["metadata"]["annotations"][CAMERAS_ANNOTATION] = digest
    container["env"] += [
        {"name": "VISIONINAPP_EDGE_CAMERAS_DIR", "value": CAMERAS_DIR},
        *camera_env(ed.spec.cameras),
    ]
    container["volumeMounts"].append({"name": "cameras", "mountPath": CAMERAS_DIR, "readOnly": True})
    # optional: the pod starts without the map (a failed write, a restored cluster); a node that
    # reads no camera has no key in it, so no file
    configmap = {"name": cameras_configmap_name(ed.metadata.name), "optional": True}
    template["spec"]["volumes"].append({"name": "cameras", "configMap": configmap})


@dataclass(frozen=True)
class EdgeTemplate:
    """The operator's settings that go into every edge DaemonSet (the planner's typed input)."""

    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    cache_path: str = "/var/lib/visioninapp/models"
    runtime_class: str | None = None
    identity_url: str | None = None
    env_secret: str | None = None

    def daemonset(self, ed: EdgeDeployment, uid: str, artifact: str, model: Obj) -> tuple[Obj, str]:
        """The DaemonSet serving `model` (a format entry of ModelArtifact `artifact`), and its revision."""
        return desired_daemonset(
            ed,
            uid,
            artifact,
            model,
            image=self.image,
            env=dict(self.env),
            cache_path=self.cache_path,
            runtime_class=self.runtime_class,
            identity_url=self.identity_url,
            env_secret=self.env_secret,
        )
