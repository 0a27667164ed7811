"""Request and response bodies of the REST API (their JSON Schemas are the OpenAPI document's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from visioninapp.resources.edgedeployment import EdgeDeploymentSpec
from visioninapp.resources.trainingjob import TrainingJobSpec

T = TypeVar("T")

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Page(Body, Generic[T]):
    items: list[T]
    total: int = Field(description="Items matching the filters, over all pages.")
    limit: int
    offset: int


class ProjectIn(Body):
    name: str = Field(
        min_length=1, max_length=63, pattern=NAME_PATTERN, description="Also the Kubernetes namespace."
    )
    display_name: str = Field("", max_length=200)
    description: str = Field("", max_length=2000)


class ProjectOut(Body):
    name: str
    display_name: str
    description: str
    role: str = Field(description="Your role in the project.")
    created_at: datetime


class MemberIn(Body):
    role: Literal["admin", "member", "viewer"]


class MemberOut(Body):
    principal: str = Field(description="Firebase uid or email.")
    role: str


class TrainingJobIn(Body):
    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    spec: TrainingJobSpec
    labels: dict[str, str] = Field(default_factory=dict)


class EpochOut(Body):
    epoch: int
    epochs: int | None
    attempt: int
    time: datetime
    map50: float | None = Field(alias="mAP50")
    map50_95: float | None = Field(alias="mAP50_95")
    precision: float | None
    recall: float | None
    losses: dict[str, float]
    lr: float | None


class TrainingJobOut(Body):
    name: str
    project: str
    phase: str
    epoch: int | None = None
    epochs: int | None = None
    map50: float | None = Field(None, alias="mAP50")
    map50_95: float | None = Field(None, alias="mAP50_95")
    artifact: str | None = None
    message: str | None = None
    created_at: datetime | None = None
    in_cluster: bool = Field(description="False when only the history is left (the CR was deleted).")
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)


class TrainingJobDetail(TrainingJobOut):
    history: list[EpochOut] = Field(default_factory=list, description="Every epoch seen on the stream.")


class LogLineOut(Body):
    time: datetime
    attempt: int
    level: str
    message: str


class ModelOut(Body):
    name: str
    project: str
    model: str
    version: str
    stage: str
    phase: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    formats: list[dict[str, Any]] = Field(default_factory=list)
    class_names: list[str] = Field(default_factory=list)
    imgsz: int | None = None
    lineage: dict[str, Any] = Field(default_factory=dict)
    deployed_to: list[str] = Field(default_factory=list)
    created_at: datetime | None = None


class ModelPatch(Body):
    stage: Literal["candidate", "staging", "production", "archived"]


class ModelComparison(Body):
    a: ModelOut
    b: ModelOut
    metric_deltas: dict[str, float] = Field(description="b minus a, per metric both have.")
    better: str | None = Field(description="Name of the model with the higher mAP50-95, if known.")


class DeploymentIn(Body):
    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    spec: EdgeDeploymentSpec


class DeploymentPatch(Body):
    model: str | None = Field(None, max_length=253, description="Roll out another ModelArtifact.")
    paused: bool | None = None


class DeploymentOut(Body):
    name: str
    project: str
    model: str
    phase: str
    paused: bool
    current_step: int | None = None
    desired_nodes: int = 0
    updated_nodes: int = 0
    ready_nodes: int = 0
    message: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)


class NodeOut(Body):
    node: str
    model: str | None = None
    revision: str | None = None
    ready: bool | None = None
    phase: str | None = None
    last_heartbeat: datetime | None = Field(None, description="End of the newest EdgeEvent window.")
    requests: int | None = None
    errors: int | None = None
    p95_ms: float | None = None
    reason: str | None = None


class ActionOut(Body):
    name: str
    action: str
    message: str


class SearchHitOut(Body):
    collection: str
    id: str
    score: float
    project: str | None
    title: str | None
    highlight: str
    document: dict[str, Any]


class NotificationOut(Body):
    id: int
    kind: str
    subject: str
    title: str
    message: str
    created_at: datetime


class DatasetIn(Body):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    description: str = Field("", max_length=2000)


class DatasetVersionOut(Body):
    version: int
    uri: str
    data_yaml: str
    class_names: list[str]
    class_counts: dict[str, int]
    images: dict[str, int]
    preprocessing: dict[str, Any]
    sha256: str
    parent_version: int | None
    note: str
    created_by: str
    created_at: datetime


class DatasetOut(Body):
    name: str
    description: str
    created_at: datetime
    versions: list[DatasetVersionOut]


class FeedbackOut(Body):
    id: int
    deployment: str
    node: str
    image_uri: str
    model: str | None
    top_score: float | None
    detections: list[dict[str, Any]]
    captured_at: datetime
    status: str


class FeedbackAccept(Body):
    ids: list[int] = Field(min_length=1, max_length=1000)
    dataset: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    note: str = Field("", max_length=2000)


class DetectionOut(Body):
    class_id: int
    class_name: str
    score: float
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the uploaded image.")


class DetectOut(Body):
    model: str
    width: int
    height: int
    detections: list[DetectionOut]
    milliseconds: float


class SummaryOut(Body):
    training_job: str
    generator: str
    text: str
    findings: list[dict[str, Any]]
    proposal: dict[str, Any]
    created_at: datetime


class ProposalAccept(Body):
    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN, description="Name of the new run.")
