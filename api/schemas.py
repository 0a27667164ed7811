"""Request and response bodies of the REST API (their JSON Schemas are the OpenAPI document's)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from visioninapp.events import CameraWindow
from visioninapp.resources.edgedeployment import EdgeDeploymentSpec
from visioninapp.resources.retrainpolicy import RetrainPolicySpec
from visioninapp.resources.trainingjob import TrainingJobSpec

T = TypeVar("T")

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Top-level folders of the platform's artifact store: a project of that name would have its runs'
# outputs (`<artifacts>/<project>/`) among the platform's datasets, feedback frames or log archive.
RESERVED_PROJECT_NAMES = frozenset({"datasets", "feedback", "logs"})

# Control characters (C0, DEL, C1) and the bidirectional overrides that make text read otherwise
# than it is stored: never in a name shown to people. Free text may keep tab and line breaks.
_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _display_name(value: str) -> str:
    found = _NAME_FORBIDDEN.search(value)
    if found:
        raise ValueError(f"control or bidi-override character U+{ord(found.group()):04X} is not allowed")
    return value


def _free_text(value: str) -> str:
    found = _TEXT_FORBIDDEN.search(value)
    if found:
        raise ValueError(
            f"control character U+{ord(found.group()):04X} is not allowed (tab and line breaks are)"
        )
    return value


DisplayName = Annotated[str, AfterValidator(_display_name)]
FreeText = Annotated[str, AfterValidator(_free_text)]

# Kubernetes label syntax (k8s.io/apimachinery/pkg/util/validation): a key is `[prefix/]name`, the
# name 1-63 characters [A-Za-z0-9] with `-_.` inside, the prefix a DNS subdomain of at most 253; a
# value is empty or 1-63 characters of the name's alphabet. The platform's own prefixes are reserved.
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_RESERVED_LABEL_PREFIXES = ("kubernetes.io", "k8s.io", "visioninapp.io")
MAX_LABELS = 64
MAX_ANNOTATIONS_BYTES = 256 * 1024  # the API server's limit on all annotations of an object together


def label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix):
            return "the prefix must be a lowercase DNS subdomain of at most 253 characters, e.g. example.com"
        if any(prefix == r or prefix.endswith("." + r) for r in _RESERVED_LABEL_PREFIXES):
            return f"the prefix {prefix!r} is reserved for the platform"
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (
            "the name must be 1 to 63 characters: letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        return (
            "a value is empty or 1 to 63 characters: letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit"
        )
    return None


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
    display_name: DisplayName = Field("", max_length=200, description="No control characters.")
    description: FreeText = Field("", max_length=2000)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_PROJECT_NAMES:
            raise ValueError(
                f"{name!r} is reserved (a folder of the platform's artifact store); choose another name"
            )
        return name


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
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description=f"Kubernetes labels of the TrainingJob (at most {MAX_LABELS}): keys `[prefix/]name` "
        "(name 1-63 of `[A-Za-z0-9]` with `-_.` inside; prefix a DNS subdomain of at most 253, "
        "not `kubernetes.io`, `k8s.io` or `visioninapp.io`), values empty or 1-63 of the same.",
    )

    @field_validator("labels")
    @classmethod
    def _kubernetes_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            problem = label_key_problem(key)
            if problem:
                raise ValueError(f"label key {key!r}: {problem}")
            problem = label_value_problem(value)
            if problem:
                raise ValueError(f"label value {value!r} (key {key!r}): {problem}")
        return labels


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
    evaluation: dict[str, Any] | None = Field(None, description="The evaluation record's URI and sha256.")
    quality_gate: dict[str, Any] | None = Field(
        None, description="The gate's verdict in short, once the operator checked the record."
    )


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
    cameras: list[CameraWindow] = Field(
        default_factory=list, description="Each camera's state and numbers in the newest EdgeEvent window."
    )


class LedgerEntryOut(Body):
    node: str
    model: str = Field(description="ModelArtifact the node served.")
    sha256: str | None = Field(None, description="sha256 of the model file served.")
    revision: str = Field(description="Pod template revision of the runtime.")
    since: datetime = Field(description="Start of the first window that reported it.")
    until: datetime | None = Field(None, description="End of the last one; absent while it still serves.")
    last_seen: datetime = Field(description="End of the newest window that reported it.")
    current: bool = Field(description="The node's newest stretch, reported within the last 5 minutes.")


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
    description: FreeText = Field("", max_length=2000)


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
    provenance: dict[str, Any] | None = Field(
        None,
        description="Where the labels of its feedback frames came from: reviewedFrames, reviewedLabels, "
        "autoAcceptedFrames, autoAcceptedLabels (over every feedback image in it), addedFrames, "
        "excluded (frames left out and why), autoAcceptMinScore; per image in its provenance.json.",
    )


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
    status: str = Field(description="`new`, `accepted` (in a dataset version) or `dismissed` (rejected).")
    review_status: str = Field(
        "pending", description="`pending`, `reviewed` (accepted by a person), `rejected` or `auto-accepted`."
    )
    revision: int = Field(0, description="Raised by every change; send it back with the next change.")


class FeedbackAccept(Body):
    ids: list[int] = Field(min_length=1, max_length=1000)
    dataset: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    note: FreeText = Field("", max_length=2000)
    auto_accept_min_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Also take frames still pending review, labelled with the model's proposals that "
        "score at least this (marked `auto-accepted`). Without it only reviewed frames are taken.",
    )


# A box: x1, y1, x2, y2 in pixels of the frame's image, finite numbers.
Box = Annotated[
    list[Annotated[float, Field(allow_inf_nan=False)]],
    Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels of the frame's image."),
]
Revision = Annotated[
    int,
    Field(ge=0, le=2**31 - 1, description="The frame's revision you loaded; a stale one is a 409."),
]
LABEL_ID_PATTERN = r"^b[0-9]{1,9}$"


class LabelOut(Body):
    id: str
    class_id: int
    class_name: str
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the frame's image.")
    source: Literal["model", "person"] = Field(
        description="`model`: the model's proposal as it was; `person`: drawn or changed by a person."
    )
    score: float | None = Field(None, description="The model's score of a proposal.")


class AnnotationOut(Body):
    id: int
    revision: int = Field(description="The frame's revision this change made.")
    action: str = Field(
        description="add, move (moved or resized), relabel, edit (both), delete, accept, reject, auto-accept."
    )
    label_id: str | None
    before: dict[str, Any] | None = Field(description="The label (or the review state) before.")
    after: dict[str, Any] | None = Field(description="The label (or the review state) after.")
    note: str
    who: str
    at: datetime


class FrameReviewOut(FeedbackOut):
    width: int
    height: int
    class_names: list[str] = Field(description="The frame's model's classes: class ids index this list.")
    reviewed_by: str | None
    reviewed_at: datetime | None
    labels: list[LabelOut]
    history: list[AnnotationOut] = Field(description="Every change, oldest first.")


class LabelAdd(Body):
    revision: Revision
    class_id: int = Field(ge=0, le=100_000)
    box: Box


class LabelPatch(Body):
    revision: Revision
    class_id: int | None = Field(None, ge=0, le=100_000, description="Change the class.")
    box: Box | None = Field(None, description="Move or resize.")


class LabelReplacement(Body):
    id: str | None = Field(
        None,
        pattern=LABEL_ID_PATTERN,
        description="A label of the frame to keep (changed or not); none: add.",
    )
    class_id: int = Field(ge=0, le=100_000)
    box: Box


class LabelsReplace(Body):
    revision: Revision
    labels: list[LabelReplacement] = Field(max_length=300)


class ReviewDecision(Body):
    revision: Revision
    note: FreeText = Field(
        "", max_length=2000, description="Why, for the history (e.g. a rejection's reason)."
    )


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


class KubeEventOut(Body):
    """A Kubernetes Event about a resource: what the operator or Kubernetes did, and why."""

    type: str = Field(description="`Normal` or `Warning`.")
    reason: str
    message: str
    count: int = Field(description="How often it happened (Kubernetes folds repeats into one Event).")
    first_time: datetime | None = None
    last_time: datetime | None = None
    source: str | None = Field(None, description="Who reported it (e.g. the operator).")


class NodeCapacityOut(Body):
    name: str
    schedulable: bool = Field(description="Ready, not cordoned, and without NoSchedule/NoExecute taints.")
    gpus: int = Field(description="Allocatable `nvidia.com/gpu`.")
    gpu_product: str | None = Field(None, description="The node's `nvidia.com/gpu.product` label.")
    cpu: str | None = None
    memory: str | None = None
    taints: list[str] = Field(default_factory=list)


class TrainingCapacityOut(Body):
    """What a trainer pod can get in the training cluster: the new-run form's defaults follow it."""

    nodes: list[NodeCapacityOut]
    max_gpus: int = Field(description="The most GPUs one schedulable node offers (0: train on the CPU).")
    gpu_products: list[str] = Field(description="GPU models of the schedulable nodes.")


class FleetPointOut(Body):
    time: datetime = Field(description="Start of the bucket.")
    requests: int
    errors: int
    error_rate: float | None = Field(description="errors / requests; None without requests.")
    p95_ms: float | None = Field(description="The worst window p95 in the bucket (ms).")


class FleetSeriesOut(Body):
    node: str | None = Field(description="The node; None for the whole deployment.")
    points: list[FleetPointOut]


class FleetHistoryOut(Body):
    """Requests, errors and p95 over time, from the stored EdgeEvent windows, in equal buckets."""

    since: datetime
    until: datetime
    step_seconds: int
    series: list[FleetSeriesOut]


class RetrainPolicyIn(Body):
    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    spec: RetrainPolicySpec


class RetrainPolicyOut(Body):
    name: str
    project: str
    line: str
    phase: str
    message: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    status: dict[str, Any] = Field(default_factory=dict)
