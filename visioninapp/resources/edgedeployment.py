"""EdgeDeployment (`ed`): a staged, health-gated rollout of a ModelArtifact to Jetson edge nodes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from visioninapp.resources.base import (
    CelRule,
    Condition,
    DnsLabel,
    DnsSubdomain,
    KubeModel,
    NodeSelector,
    Quantity,
    Sha256,
    StorageUri,
    Toleration,
)

__all__ = [
    "EDGE_NODE_LABEL",
    "CameraSpec",
    "CanaryStrategy",
    "DeploymentFormat",
    "EdgeDeploymentPhase",
    "EdgeDeploymentSpec",
    "EdgeDeploymentStatus",
    "EngineRecord",
    "FeedbackSpec",
    "HealthGate",
    "ModelSelector",
    "NodeStatus",
    "RevisionRecord",
    "RolloutStrategy",
    "RuntimeSpec",
    "camera_credential_env",
    "models_in_use",
]

EDGE_NODE_LABEL = "visioninapp.io/edge"
DeploymentFormat = Literal["onnx", "onnx-int8", "tensorrt"]
EdgeDeploymentPhase = Literal["Progressing", "Healthy", "Degraded", "RolledBack", "Paused"]
MAX_CANARY_STEPS = 10


class EdgeResources(KubeModel):
    """Resources of the edge runtime container."""

    cpu: Quantity = Field("1", description="CPU request.")
    memory: Quantity = Field("1Gi", description="Memory request and limit.")
    gpu: int = Field(
        0,
        ge=0,
        le=1,
        description="`nvidia.com/gpu` limit; 0 on Jetsons, which share the iGPU via "
        "the NVIDIA container runtime.",
    )


class RuntimeSpec(KubeModel):
    """How the edge runtime serves the model."""

    image: str | None = Field(
        None, max_length=512, description="Edge runtime image; the operator's default when empty."
    )
    port: int = Field(8080, ge=1, le=65535, description="HTTP port of the runtime.")
    resources: EdgeResources = Field(default_factory=EdgeResources, description="Container resources.")
    confidence: float = Field(0.25, ge=0, le=1, description="Default confidence threshold.")
    iou: float = Field(0.45, gt=0, le=1, description="IoU threshold of non-maximum suppression.")
    precision: Literal["fp32", "fp16", "int8"] | None = Field(
        None,
        description="Precision on the GPU providers (TensorRT, CUDA); the CPU is always fp32. Unset: "
        "fp32, except for `format: tensorrt`, whose engine is FP16 on a Jetson. `int8` (tensorrt "
        "only) builds from the artifact's `onnx-int8` model, whose QDQ scales are its calibration.",
    )


class FeedbackSpec(KubeModel):
    """Hard frames sent back for the next training run."""

    cel_rules = (
        CelRule(
            rule="self.minScore < self.maxScore",
            message="feedback.minScore must be lower than feedback.maxScore",
            field_path=".minScore",
            reason="FieldValueInvalid",
        ),
    )

    enabled: bool = Field(False, description="Upload low-confidence frames.")
    min_score: float = Field(0.25, ge=0, le=1, description="Lower end of the low-confidence range.")
    max_score: float = Field(0.5, ge=0, le=1, description="Upper end of the low-confidence range.")
    sample_rate: float = Field(0.1, ge=0, le=1, description="Fraction of low-confidence frames kept.")
    max_frames_per_hour: int = Field(60, ge=0, le=36000, description="Upload budget per node and hour.")
    uri: StorageUri | None = Field(
        None,
        description="Prefix for frames (`<uri>/<deployment>/<node>/`); the operator's default when empty.",
    )


class CameraSpec(KubeModel):
    """A camera the runtime reads continuously, on the nodes it names or selects.

    The source is exactly one of an RTSP URL (credentials from a Secret, never in the URL), a V4L2
    device, a GStreamer pipeline ending in `appsink` (Jetson CSI cameras via `nvarguscamerasrc`), or a
    video file (tests and replays).
    """

    cel_rules = (
        CelRule(
            rule="(has(self.url) ? 1 : 0) + (has(self.device) ? 1 : 0) + (has(self.pipeline) ? 1 : 0)"
            " + (has(self.file) ? 1 : 0) == 1",
            message="set exactly one camera source: url (RTSP), device (V4L2), pipeline (GStreamer) or file",
        ),
        CelRule(
            rule="!has(self.credentialsSecret) || has(self.url)",
            message="credentialsSecret only applies to an RTSP url",
            field_path=".credentialsSecret",
            reason="FieldValueInvalid",
        ),
        CelRule(
            rule="!(has(self.nodes) && has(self.nodeSelector))",
            message="name the camera's nodes either by list (nodes) or by labels (nodeSelector), not both",
            field_path=".nodes",
            reason="FieldValueInvalid",
        ),
    )

    name: DnsLabel = Field(description="Camera name, unique in the deployment; used in metrics and events.")
    url: Annotated[str, Field(max_length=2048, pattern=r"^rtsps?://[^@/\s]+(/\S*)?$")] | None = Field(
        None, description="RTSP URL without credentials, e.g. rtsp://10.0.0.5:554/stream1."
    )
    credentials_secret: DnsSubdomain | None = Field(
        None, description="Secret (same namespace) with keys `username` and `password` for the RTSP url."
    )
    device: Annotated[str, Field(max_length=64, pattern=r"^/dev/video[0-9]{1,3}$")] | None = Field(
        None, description="V4L2 device, e.g. /dev/video0 (USB cameras)."
    )
    # appsink is the last element (its properties may follow): the runtime pulls frames from it
    pipeline: Annotated[str, Field(max_length=4096, pattern=r"appsink[^!]*$")] | None = Field(
        None,
        description="GStreamer pipeline ending in appsink, e.g. for CSI cameras: nvarguscamerasrc ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink",
    )
    file: Annotated[str, Field(max_length=1024, pattern=r"^/")] | None = Field(
        None, description="Absolute path of a video file on the node (tests and replays)."
    )
    loop: bool = Field(False, description="Start a file again at its end.")
    target_fps: float = Field(15, gt=0, le=120, description="Frames per second to process.")
    nodes: Annotated[list[DnsSubdomain], Field(min_length=1, max_length=1000)] | None = Field(
        None, description="Nodes that read this camera (a per-site list)."
    )
    node_selector: NodeSelector | None = Field(
        None, description="Labels of the nodes that read this camera (a node group)."
    )

    def on_node(self, node: str, labels: Mapping[str, str]) -> bool:
        """Whether `node` reads this camera; with neither nodes nor nodeSelector, every node does."""
        if self.nodes is not None:
            return node in self.nodes
        return all(labels.get(key) == value for key, value in (self.node_selector or {}).items())


def camera_credential_env(camera: str, key: str) -> str:
    """The environment variable of one key (`username`, `password`) of a camera's credentials Secret:
    the operator fills it from the Secret, the runtime reads it."""
    return f"VISIONINAPP_CAMERA_{camera.upper().replace('-', '_')}_{key.upper()}"


class CanaryStrategy(KubeModel):
    """Canary waves as percentages of the matching nodes."""

    steps: Annotated[
        list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1, max_length=MAX_CANARY_STEPS)
    ] = Field(
        default_factory=lambda: [10, 50, 100],
        description="Cumulative percentage of nodes updated after each step; strictly "
        "increasing, the last one 100.",
        json_schema_extra={
            "x-kubernetes-validations": [
                CelRule(
                    # No index loop in standard CEL: a bounded literal range stands in for one.
                    rule="[1, 2, 3, 4, 5, 6, 7, 8, 9].all(i, i >= size(self) || self[i] > self[i - 1])",
                    message="canary steps must be strictly increasing, e.g. [10, 50, 100]",
                    reason="FieldValueInvalid",
                ).to_schema(),
                CelRule(
                    rule="self[size(self) - 1] == 100",
                    message="the last canary step must be 100 (every node)",
                    reason="FieldValueInvalid",
                ).to_schema(),
            ]
        },
    )


class HealthGate(KubeModel):
    """What a step's new pods must show before the rollout goes on."""

    min_ready_seconds: int = Field(60, ge=0, le=86400, description="Pods must stay Ready this long.")
    max_restarts: int = Field(2, ge=0, le=100, description="Container restarts tolerated per pod.")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Highest tolerated error rate.")
    max_p95_latency_ms: float = Field(
        500, gt=0, le=60000, description="Highest tolerated p95 latency of `/v1/detect`, ms."
    )


class RolloutStrategy(KubeModel):
    """How the model reaches the fleet."""

    canary: CanaryStrategy = Field(default_factory=CanaryStrategy, description="Canary waves.")
    max_unavailable: (
        Annotated[int, Field(ge=1, le=10000)]
        | Annotated[str, Field(max_length=4, pattern=r"^([1-9][0-9]?|100)%$")]
    ) = Field("25%", description="Nodes updating at once: a count or a percentage of the matching nodes.")
    step_timeout_seconds: int = Field(
        900,
        ge=30,
        le=86400,
        description="A step that is not healthy in this time fails; for a node that builds an engine "
        "(`format: tensorrt`) the time counts from when its engine is ready.",
    )
    engine_build_timeout_seconds: int = Field(
        3600,
        ge=60,
        le=86400,
        description="A node whose engine is still building after this long fails the gate "
        "(TensorRT builds take minutes on a Jetson; the node's current model serves meanwhile).",
    )
    health_gate: HealthGate = Field(default_factory=HealthGate, description="Health gate of each step.")
    auto_rollback: bool = Field(
        True, description="Roll back when the gate fails; false pauses the rollout instead."
    )


class ModelSelector(KubeModel):
    """A model line's stage to follow: whichever version holds it is deployed, through the canary."""

    line: DnsLabel = Field(
        description="Model line (`spec.model` of its ModelArtifacts), e.g. `helmet-detector`."
    )
    stage: Literal["staging", "production"] = Field(
        "production", description="Stage to follow: promoting a version to it rolls that version out."
    )


class EdgeDeploymentSpec(KubeModel):
    """Desired state of an EdgeDeployment."""

    cel_rules = (
        CelRule(
            rule="has(self.modelRef) != has(self.model)",
            message="set exactly one of modelRef (one ModelArtifact) or model (a line's stage to follow)",
            reason="FieldValueInvalid",
        ),
    )

    model_ref: DnsSubdomain | None = Field(
        None,
        description="Name of the ModelArtifact to deploy (same namespace); or follow a line with `model`.",
    )
    model: ModelSelector | None = Field(
        None,
        description="Follow a model line's stage instead of one artifact: the version promoted to it rolls "
        "out; a version rolled back here is held back until the stage changes again.",
    )
    format: DeploymentFormat = Field(
        "onnx",
        description="`onnx`, `onnx-int8`, or `tensorrt` (an engine built on the device from `onnx`).",
    )
    node_selector: NodeSelector = Field(
        default_factory=lambda: {EDGE_NODE_LABEL: "true"}, description="Labels of the target nodes."
    )
    tolerations: Annotated[list[Toleration], Field(max_length=16)] = Field(
        default_factory=lambda: [Toleration(key=EDGE_NODE_LABEL, operator="Exists", effect="NoSchedule")],
        description="Taints the runtime tolerates (the edge taint by default).",
    )
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="Runtime settings.")
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec, description="Hard-frame feedback.")
    cameras: Annotated[list[CameraSpec], Field(max_length=64)] = Field(
        default_factory=list,
        description="Cameras read continuously by the runtime on the nodes each one names.",
        json_schema_extra={
            "x-kubernetes-validations": [
                CelRule(
                    rule="self.all(c, self.exists_one(d, d.name == c.name))",
                    message="camera names must be unique in a deployment",
                    reason="FieldValueDuplicate",
                ).to_schema()
            ]
        },
    )
    strategy: RolloutStrategy = Field(default_factory=RolloutStrategy, description="Rollout strategy.")
    paused: bool = Field(False, description="Freeze the rollout where it is.")
    revision_history_limit: int = Field(10, ge=0, le=100, description="Revisions kept in status.")


class NodeStatus(KubeModel):
    """One node of the fleet, as the rollout sees it."""

    name: str = Field(max_length=253, description="Node name.")
    revision: str | None = Field(None, max_length=64, description="Template revision the node runs.")
    ready: bool = Field(False, description="The runtime serves the desired model.")
    last_heartbeat: datetime | None = Field(None, description="Last health event from the node.")
    failure_reason: str | None = Field(None, max_length=1024, description="Why the node failed.")


class RevisionRecord(KubeModel):
    """One revision in the rollout history."""

    revision: str = Field(max_length=64, description="Hash of the pod template.")
    model: DnsSubdomain = Field(description="ModelArtifact of the revision.")
    format: DeploymentFormat = Field(description="Format deployed.")
    time: datetime = Field(description="When the revision was first rolled out.")
    outcome: Literal["Progressing", "Completed", "RolledBack", "Superseded"] = Field(
        description="How the revision ended."
    )


class EngineRecord(KubeModel):
    """An engine key of the fleet (`format: tensorrt`): its designated builder and, once the operator
    has checked the upload, the engine's sha256 that every other node of that key verifies."""

    key_hash: Sha256 = Field(
        description="sha256 of the engine key (model sha256, device, L4T, TensorRT, precision)."
    )
    device: str | None = Field(None, max_length=256, description="Device model of the key.")
    precision: str | None = Field(None, max_length=16, description="Precision of the key.")
    builder: str = Field(max_length=253, description="The node designated to build and upload it.")
    phase: Literal["Building", "Available", "Failed"] = Field(
        "Building", description="Available once the uploaded engine's sha256 is checked and recorded."
    )
    sha256: Sha256 | None = Field(None, description="sha256 of the engine file, as the operator checked it.")
    message: str | None = Field(None, max_length=1024, description="Why it failed.")


class EdgeDeploymentStatus(KubeModel):
    """Observed state of an EdgeDeployment, written only by the operator."""

    observed_generation: int | None = Field(None, ge=0, description="Generation last reconciled.")
    phase: EdgeDeploymentPhase = Field("Progressing", description="Rollout phase.")
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list, description="Available, Progressing, RolledBack, ModelReady, ..."
    )
    current_model: DnsSubdomain | None = Field(None, description="Model the fleet is moving to or runs.")
    line_model: DnsSubdomain | None = Field(
        None, description="With `spec.model`: the ModelArtifact holding the followed stage of the line."
    )
    previous_model: DnsSubdomain | None = Field(None, description="Model before the current one.")
    revision: str | None = Field(None, max_length=64, description="Current template revision.")
    history: Annotated[list[RevisionRecord], Field(max_length=100)] = Field(
        default_factory=list, description="Recent revisions, newest first."
    )
    current_step: int | None = Field(None, ge=0, le=MAX_CANARY_STEPS, description="Canary step index.")
    step_start_time: datetime | None = Field(
        None, description="When the current step began (its stepTimeoutSeconds counts from here)."
    )
    desired_nodes: int = Field(0, ge=0, description="Nodes matching the selector.")
    updated_nodes: int = Field(0, ge=0, description="Nodes running the current revision.")
    ready_nodes: int = Field(0, ge=0, description="Updated nodes that are Ready.")
    failed_nodes: int = Field(0, ge=0, description="Nodes whose new pod failed the gate.")
    pending_nodes: int = Field(0, ge=0, description="Offline nodes to update when they return.")
    nodes: Annotated[list[NodeStatus], Field(max_length=100)] = Field(
        default_factory=list,
        description="Per-node detail, failing and pending nodes first, capped at 100 for large fleets.",
    )
    engines: Annotated[list[EngineRecord], Field(max_length=64)] = Field(
        default_factory=list,
        description="Engines built on the devices (`format: tensorrt`), one per engine key.",
    )


def models_in_use(deployment: Mapping[str, Any]) -> set[str]:
    """The ModelArtifacts an EdgeDeployment (as stored) needs: the one it deploys, the one its
    fleet runs, and the previous one, which a rollback (automatic or by annotation) goes back to."""
    status = deployment.get("status") or {}
    models = {deployment["spec"].get("modelRef"), status.get("currentModel"), status.get("previousModel")}
    return {model for model in models if model}
