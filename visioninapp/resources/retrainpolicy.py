"""RetrainPolicy (`rp`): when a model line is fine-tuned on the hard frames its fleet sent back, how,
what gate the candidate must pass, and where a passing candidate is promoted.

It lives where TrainingJobs are created (the training cluster). The API's cluster sync runs it: the
reviewed frames and the fleet's confidence it triggers on are in the API's database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from visioninapp.resources.base import CelRule, Condition, DnsLabel, DnsSubdomain, KubeModel, StorageUri
from visioninapp.resources.trainingjob import (
    DatasetRef,
    ExportOptions,
    Hyperparameters,
    Placement,
    TrainingResources,
)

__all__ = [
    "ConfidenceDrop",
    "LabelPolicy",
    "QualityGateSpec",
    "RetrainPolicyPhase",
    "RetrainPolicySpec",
    "RetrainPolicyStatus",
    "RetrainTemplate",
    "RetrainTriggers",
    "TriggerRecord",
]

RetrainPolicyPhase = Literal[
    "Waiting", "Training", "Promoted", "GateFailed", "NotPromoted", "Failed", "Suspended"
]
CRON = r"^(\S+\s+){4}\S+$"


class ConfidenceDrop(KubeModel):
    """The fleet grows unsure: its mean detection confidence over the last window fell this much below
    the same mean over the first window after the line's production version reached it."""

    window_minutes: int = Field(60, ge=5, le=10080, description="Length of both windows, in minutes.")
    drop: float = Field(gt=0, le=1, description="Fall of the mean confidence that triggers, e.g. `0.1`.")
    min_detections: int = Field(
        100, ge=1, le=10**9, description="Detections each window needs before it is compared."
    )


class RetrainTriggers(KubeModel):
    """When to retrain; any one of them triggers (and `minIntervalMinutes` spaces the runs)."""

    cel_rules = (
        CelRule(
            rule="has(self.reviewedFrames) || has(self.confidenceDrop) || has(self.schedule)",
            message="give at least one trigger: reviewedFrames, confidenceDrop or schedule",
            reason="FieldValueRequired",
        ),
    )

    reviewed_frames: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Retrain once this many hard frames of the line have labels ready (reviewed by a "
        "person, or auto-accepted when `labels.autoAcceptMinScore` is set) since the last run.",
    )
    confidence_drop: ConfidenceDrop | None = Field(None, description="Retrain when confidence falls.")
    schedule: Annotated[str, Field(max_length=128, pattern=CRON)] | None = Field(
        None,
        description="Cron schedule (5 fields, UTC), e.g. `0 3 * * 0`; a run needs new frames all the same.",
    )


class LabelPolicy(KubeModel):
    """Where the new frames' labels come from."""

    auto_accept_min_score: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Unset (the default): only labels a person reviewed join a dataset. Set: frames "
        "still pending take the model's proposals scoring at least this, marked `auto-accepted`.",
    )


class RetrainTemplate(KubeModel):
    """The fine-tune: from the line's production version, on `dataset`'s latest version plus the
    new frames (published as the dataset's next version)."""

    dataset: DnsSubdomain = Field(
        description="The project's dataset (console or API) the new frames are added to."
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Training settings of each fine-tune."
    )
    resources: TrainingResources = Field(default_factory=TrainingResources, description="Trainer pod.")
    placement: Placement = Field(default_factory=Placement, description="Where the trainer pod runs.")
    export: ExportOptions = Field(default_factory=ExportOptions, description="ONNX export options.")
    output_uri: StorageUri | None = Field(
        None, description="Base URI for the runs' weights; the operator's default when empty."
    )


class QualityGateSpec(KubeModel):
    """The gate each candidate passes before promotion, against the line's production version."""

    held_out: DatasetRef = Field(description="The line's held-out set: never trained on, gating.")
    max_drop: float = Field(0.01, ge=0, le=1, description="Allowed drop of held-out mAP50-95.")
    max_class_drop: float | None = Field(
        None, ge=0, le=1, description="Allowed drop of each held-out class's AP50-95; unset: not checked."
    )


class RetrainPolicySpec(KubeModel):
    """Desired behaviour of a RetrainPolicy."""

    line: DnsLabel = Field(description="The model line it retrains (`spec.model` of its ModelArtifacts).")
    triggers: RetrainTriggers = Field(description="When to retrain.")
    min_interval_minutes: int = Field(
        60, ge=0, le=525600, description="Minutes between the start of one run and the next trigger."
    )
    labels: LabelPolicy = Field(default_factory=LabelPolicy, description="Where labels come from.")
    training: RetrainTemplate = Field(description="What each fine-tune trains on, and how.")
    gate: QualityGateSpec = Field(description="The quality gate on fixed data.")
    promote_to: Literal["staging", "production"] = Field(
        "staging", description="Stage a candidate that passed the gate is promoted to."
    )
    suspend: bool = Field(False, description="Stop triggering (a run in progress finishes).")


class TriggerRecord(KubeModel):
    time: datetime = Field(description="When it triggered.")
    reason: str = Field(max_length=1024, description="Which trigger, with its numbers.")


class RetrainPolicyStatus(KubeModel):
    """Observed state of a RetrainPolicy, written by the API's cluster sync."""

    observed_generation: int | None = Field(None, ge=0, description="Generation last acted on.")
    phase: RetrainPolicyPhase = Field("Waiting", description="Where the loop is.")
    message: str | None = Field(None, max_length=4096, description="What it waits for, or why it stopped.")
    result: str | None = Field(
        None, max_length=4096, description="The latest run's outcome: promoted, or why not."
    )
    ready_frames: int = Field(0, ge=0, description="Frames with labels ready since the last run.")
    pending_frames: int = Field(0, ge=0, description="Frames of the line still waiting for review.")
    runs: int = Field(0, ge=0, description="Fine-tunes started.")
    run: DnsSubdomain | None = Field(None, description="The TrainingJob of the latest run.")
    candidate: DnsSubdomain | None = Field(None, description="The ModelArtifact of the latest run.")
    baseline: DnsSubdomain | None = Field(None, description="The production version it was compared with.")
    dataset_version: int | None = Field(None, ge=1, description="Dataset version the latest run trained on.")
    last_trigger: TriggerRecord | None = Field(None, description="The latest trigger.")
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list, description="`Triggered`, `Promoted`."
    )
