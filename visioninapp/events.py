"""Event schemas carried by the streams `training-events` and `edge-events`, and the trainer result.

Producers and consumers share these typed models; an event is one JSON object per stream message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from visioninapp.evaluation import GateOutcome
from visioninapp.resources.modelartifact import ArtifactFormat
from visioninapp.resources.trainingjob import TrainingMetrics

__all__ = [
    "EXIT_CONFIGURATION",
    "MAX_ANNOUNCED",
    "TERMINATION_MESSAGE_LIMIT",
    "CameraState",
    "CameraWindow",
    "EdgeEvent",
    "TrainerResult",
    "TrainingEvent",
]

TERMINATION_MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a container's termination message
MAX_ANNOUNCED = 500  # frame records one EdgeEvent announces; more wait for the next window


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str) -> _Event:
        return cls.model_validate_json(data)


class TrainingEvent(_Event):
    """One epoch of a training run (`type: epoch`) or one log line (`type: log`)."""

    type: Literal["epoch", "log"] = Field(description="Epoch metrics or a log line.")
    namespace: str = Field(description="Namespace of the TrainingJob.")
    training_job: str = Field(description="Name of the TrainingJob.")
    attempt: int = Field(ge=1, description="Attempt (Job) that produced the event.")
    time: AwareDatetime = Field(default_factory=_now, description="When the event happened (UTC).")
    epoch: int | None = Field(None, ge=0, description="Completed epoch (1-based).")
    epochs: int | None = Field(None, ge=0, description="Epochs planned.")
    losses: dict[str, float] = Field(default_factory=dict, description="Training losses by name.")
    map50: float | None = Field(None, alias="mAP50")
    map50_95: float | None = Field(None, alias="mAP50_95")
    precision: float | None = None
    recall: float | None = None
    lr: float | None = Field(None, description="Learning rate of the first parameter group.")
    images_per_second: float | None = Field(None, description="Training throughput of the epoch.")
    gpu_memory_gb: float | None = Field(None, description="Peak GPU memory of the epoch, GB.")
    level: str | None = Field(None, description="Log level of a log line.")
    message: str | None = Field(None, max_length=8192, description="The log line.")

    @property
    def key(self) -> str:
        """Identity for deduplication: one epoch event per job and epoch, whatever the attempt."""
        if self.type == "epoch":
            return f"{self.namespace}/{self.training_job}/epoch/{self.epoch}"
        return f"{self.namespace}/{self.training_job}/{self.attempt}/log/{self.time.isoformat()}"

    def metrics(self) -> TrainingMetrics:
        return TrainingMetrics(
            map50=self.map50,
            map50_95=self.map50_95,
            precision=self.precision,
            recall=self.recall,
            losses=self.losses,
        )


CameraState = Literal["connecting", "streaming", "reconnecting", "failed", "stopped"]


class CameraWindow(_Event):
    """One camera of an edge runtime over an EdgeEvent's window (counters are the window's own)."""

    name: str = Field(description="Camera name from the EdgeDeployment.")
    state: CameraState = Field(description="State at the end of the window.")
    target_fps: float = Field(ge=0, description="Frames per second the camera should be processed at.")
    fps: float = Field(0, ge=0, description="Frames processed per second over the window.")
    frames_read: int = Field(0, ge=0, description="Frames read from the source.")
    frames_processed: int = Field(0, ge=0, description="Frames whose detections were published.")
    frames_dropped: int = Field(0, ge=0, description="Frames replaced by a newer one before inference.")
    p50_ms: float | None = Field(None, ge=0, description="Median latency frame read → published, ms.")
    p99_ms: float | None = Field(None, ge=0, description="99th percentile latency, ms.")
    reconnects: int = Field(0, ge=0, description="Reconnections to the source.")
    error: str | None = Field(None, max_length=1024, description="Last error opening or reading the source.")


EngineState = Literal["building", "ready", "failed"]


class EngineReport(_Event):
    """The engine (TensorRT, or its CPU stand-in) a runtime builds or serves for the desired model."""

    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the engine key's canonical JSON.")
    key: dict[str, str] = Field(default_factory=dict, description="The engine key's fields.")
    state: EngineState = Field(description="building, ready (built or downloaded, self-tested) or failed.")
    since: AwareDatetime = Field(description="When the engine entered this state (UTC).")
    sha256: str | None = Field(None, description="sha256 of the engine file, once built or downloaded.")
    source: Literal["built", "cache", "shared"] | None = Field(
        None, description="Where the ready engine came from: built here, the node's cache, the fleet's."
    )
    uploaded: bool = Field(False, description="This node uploaded the engine to the shared engine cache.")
    message: str | None = Field(None, max_length=1024, description="Progress, or why it failed.")


class EdgeEvent(_Event):
    """A health and detection summary of one edge runtime over a time window."""

    namespace: str = Field(description="Namespace of the EdgeDeployment.")
    deployment: str = Field(description="EdgeDeployment name.")
    node: str = Field(description="Node the runtime runs on.")
    revision: str = Field(description="Pod template revision of the runtime.")
    model_sha256: str | None = Field(None, description="sha256 of the model being served.")
    model_version: str | None = Field(None, description="ModelArtifact being served.")
    window_start: AwareDatetime = Field(description="Start of the window (UTC).")
    window_end: AwareDatetime = Field(description="End of the window (UTC).")
    requests: int = Field(0, ge=0, description="Detect requests in the window.")
    errors: int = Field(0, ge=0, description="Failed requests in the window.")
    p50_ms: float | None = Field(None, ge=0, description="Median latency, ms.")
    p95_ms: float | None = Field(None, ge=0, description="95th percentile latency, ms.")
    detections_per_class: dict[str, int] = Field(
        default_factory=dict, description="Detections by class, of requests and camera frames."
    )
    mean_confidence: float | None = Field(
        None, ge=0, le=1, description="Mean score of those detections (a RetrainPolicy's confidence trigger)."
    )
    low_confidence: int = Field(
        0, ge=0, description="Requests with a detection scored in the feedback range."
    )
    provider: str | None = Field(None, description="onnxruntime execution provider in use.")
    ready: bool = Field(True, description="Whether the desired model was being served.")
    reason: str | None = Field(None, description="Why the desired model is not served, if not.")
    cameras: list[CameraWindow] = Field(default_factory=list, description="Per-camera numbers.")
    frames: Annotated[list[str], Field(max_length=MAX_ANNOUNCED)] = Field(
        default_factory=list,
        description="Hard frames uploaded since the previous window: the URIs of their records, which "
        "the API imports (each checked to lie under this node's own feedback prefix).",
    )
    engine: EngineReport | None = Field(None, description="The desired model's engine, for engine formats.")

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


EXIT_CONFIGURATION = 3  # the trainer's exit code for a failure no retry fixes: the Job fails at once


class TrainerResult(BaseModel):
    """What the trainer writes to its termination message on success (at most 4096 bytes)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    formats: Annotated[list[ArtifactFormat], Field(min_length=1)] = Field(description="Stored files.")
    manifest_uri: str = Field(description="URI of the manifest JSON with every detail.")
    metrics: TrainingMetrics = Field(default_factory=TrainingMetrics, description="Final metrics.")
    class_names: list[str] | None = Field(
        None, description="Class names; left out when they do not fit (read the manifest then)."
    )
    imgsz: int = Field(description="Input size of the exported model.")
    epochs_run: int = Field(ge=0, description="Epochs completed.")
    attempt: int = Field(ge=1, description="Attempt that produced the result.")
    evaluation: GateOutcome | None = Field(
        None, description="The quality gate's record (URI, sha256) and verdict, when the spec asks for one."
    )

    def to_termination_message(self) -> str:
        """Serialise within Kubernetes' limit, dropping class names if they do not fit."""
        for candidate in (self, self.model_copy(update={"class_names": None})):
            text = candidate.model_dump_json(by_alias=True, exclude_none=True)
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                return text
        raise ValueError("trainer result does not fit the 4096-byte termination message")

    @classmethod
    def from_termination_message(cls, text: str) -> TrainerResult:
        return cls.model_validate(json.loads(text))
