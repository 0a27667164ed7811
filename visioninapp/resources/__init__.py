"""The custom resources of group `visioninapp.io`: typed models and their Kubernetes metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from visioninapp.resources.base import API_VERSION, GROUP, VERSION, KubeModel
from visioninapp.resources.edgedeployment import EdgeDeploymentSpec, EdgeDeploymentStatus
from visioninapp.resources.modelartifact import ModelArtifactSpec, ModelArtifactStatus
from visioninapp.resources.retrainpolicy import RetrainPolicySpec, RetrainPolicyStatus
from visioninapp.resources.trainingjob import TrainingJobSpec, TrainingJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "EdgeDeployment",
    "ModelArtifact",
    "ObjectMeta",
    "PrinterColumn",
    "ResourceKind",
    "RetrainPolicy",
    "TrainingJob",
    "resource_for_kind",
]


class ObjectMeta(BaseModel):
    """The parts of `metadata` that our code reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(None, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = Field(None, alias="resourceVersion")


SpecT = TypeVar("SpecT", bound=KubeModel)
StatusT = TypeVar("StatusT", bound=KubeModel)


class CustomObject(BaseModel, Generic[SpecT, StatusT]):
    """A whole custom object: apiVersion, kind, metadata, spec and status."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class TrainingJob(CustomObject[TrainingJobSpec, TrainingJobStatus]):
    kind: str = "TrainingJob"


class ModelArtifact(CustomObject[ModelArtifactSpec, ModelArtifactStatus]):
    kind: str = "ModelArtifact"


class EdgeDeployment(CustomObject[EdgeDeploymentSpec, EdgeDeploymentStatus]):
    kind: str = "EdgeDeployment"


class RetrainPolicy(CustomObject[RetrainPolicySpec, RetrainPolicyStatus]):
    kind: str = "RetrainPolicy"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceKind:
    """Everything needed to generate a CRD and to talk to the API about one kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[KubeModel]
    status_model: type[KubeModel]
    object_model: type[CustomObject[Any, Any]]
    printer_columns: tuple[PrinterColumn, ...]
    description: str

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

RESOURCES: tuple[ResourceKind, ...] = (
    ResourceKind(
        kind="TrainingJob",
        plural="trainingjobs",
        singular="trainingjob",
        short_names=("tj",),
        spec_model=TrainingJobSpec,
        status_model=TrainingJobStatus,
        object_model=TrainingJob,
        printer_columns=(
            PrinterColumn("Phase", ".status.phase", description="Phase of the run"),
            PrinterColumn("Epoch", ".status.epoch", "integer", "Last completed epoch"),
            PrinterColumn("Epochs", ".status.epochs", "integer", "Epochs planned", priority=1),
            PrinterColumn("mAP50-95", ".status.metrics.mAP50_95", "number", "Latest mAP50-95"),
            PrinterColumn("Artifact", ".status.artifact", description="ModelArtifact produced"),
            _AGE,
        ),
        description="One YOLO training run on a GPU node pool.",
    ),
    ResourceKind(
        kind="ModelArtifact",
        plural="modelartifacts",
        singular="modelartifact",
        short_names=("ma",),
        spec_model=ModelArtifactSpec,
        status_model=ModelArtifactStatus,
        object_model=ModelArtifact,
        printer_columns=(
            PrinterColumn("Model", ".spec.model"),
            PrinterColumn("Version", ".spec.version"),
            PrinterColumn("Stage", ".spec.stage"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("mAP50-95", ".spec.metrics.mAP50_95", "number"),
            PrinterColumn(
                "Gate",
                '.status.conditions[?(@.type=="QualityGate")].reason',
                description="Quality gate: Passed, Failed (see status.qualityGate.reasons) or RecordInvalid",
            ),
            _AGE,
        ),
        description="An immutable, checksummed model version in object storage.",
    ),
    ResourceKind(
        kind="EdgeDeployment",
        plural="edgedeployments",
        singular="edgedeployment",
        short_names=("ed",),
        spec_model=EdgeDeploymentSpec,
        status_model=EdgeDeploymentStatus,
        object_model=EdgeDeployment,
        printer_columns=(
            PrinterColumn("Model", ".status.currentModel"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Step", ".status.currentStep", "integer"),
            PrinterColumn("Desired", ".status.desiredNodes", "integer"),
            PrinterColumn("Updated", ".status.updatedNodes", "integer"),
            PrinterColumn("Ready", ".status.readyNodes", "integer"),
            _AGE,
        ),
        description="A staged, health-gated rollout of a ModelArtifact to edge nodes.",
    ),
    ResourceKind(
        kind="RetrainPolicy",
        plural="retrainpolicies",
        singular="retrainpolicy",
        short_names=("rp",),
        spec_model=RetrainPolicySpec,
        status_model=RetrainPolicyStatus,
        object_model=RetrainPolicy,
        printer_columns=(
            PrinterColumn("Line", ".spec.line"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Ready", ".status.readyFrames", "integer", "Frames with labels ready"),
            PrinterColumn("Runs", ".status.runs", "integer"),
            PrinterColumn("Candidate", ".status.candidate"),
            _AGE,
        ),
        description="When and how a model line is fine-tuned on its fleet's hard frames, gated, promoted.",
    ),
)


def resource_for_kind(kind: str) -> ResourceKind | None:
    return next((r for r in RESOURCES if r.kind == kind), None)
