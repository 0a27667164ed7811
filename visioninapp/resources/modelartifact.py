"""ModelArtifact (`ma`): an immutable, checksummed model version in object storage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from visioninapp.resources.base import (
    CelRule,
    Condition,
    DnsLabel,
    DnsSubdomain,
    KubeModel,
    Sha256,
    StorageUri,
)
from visioninapp.resources.trainingjob import TrainingMetrics

__all__ = [
    "ArtifactFormat",
    "ArtifactSource",
    "EvaluationRef",
    "FormatName",
    "GateScores",
    "ModelArtifactPhase",
    "ModelArtifactSpec",
    "ModelArtifactStatus",
    "QualityGateStatus",
    "Stage",
]

FormatName = Literal["pt", "onnx", "onnx-int8"]
Stage = Literal["candidate", "staging", "production", "archived"]
ModelArtifactPhase = Literal["Pending", "Available", "Invalid"]


class ArtifactFormat(KubeModel):
    """One stored file of the model."""

    format: FormatName = Field(description="`pt` (PyTorch weights), `onnx` or `onnx-int8`.")
    uri: StorageUri = Field(description="Where the file is, e.g. `s3://models/helmets/v3/model.onnx`.")
    sha256: Sha256 = Field(description="Lowercase hex SHA-256 of the file; checked before every use.")
    size: int = Field(ge=0, le=2**40, description="Size of the file in bytes.")


class ArtifactSource(KubeModel):
    """Lineage: where the model came from."""

    training_job: DnsSubdomain | None = Field(None, description="TrainingJob that produced it.")
    attempt: int | None = Field(None, ge=1, description="Attempt of that TrainingJob.")
    dataset: str | None = Field(None, max_length=1024, description="URI of the training dataset.")
    base_model: DnsSubdomain | None = Field(None, description="ModelArtifact it was fine-tuned from.")
    quantized_from: DnsSubdomain | None = Field(
        None, description="FP32 ModelArtifact an INT8 version was quantized from."
    )


class EvaluationRef(KubeModel):
    """The quality gate's evaluation record of this version (visioninapp/evaluation.py)."""

    uri: StorageUri = Field(description="Where the record (JSON) is, next to the weights.")
    sha256: Sha256 = Field(description="Lowercase hex SHA-256 of the record; checked before it is read.")


class ModelArtifactSpec(KubeModel):
    """A trained model version. Everything but `stage` is immutable."""

    model: DnsLabel = Field(description="Model line the version belongs to, e.g. `helmet-detector`.")
    version: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = (
        Field(description="Version within the model line, e.g. `v3` or `2026-11-23.1`.")
    )
    formats: Annotated[list[ArtifactFormat], Field(min_length=1, max_length=3)] = Field(
        description="Stored files, at most one per format.",
        json_schema_extra={
            "x-kubernetes-validations": [
                CelRule(
                    rule="self.all(f, self.exists_one(g, g.format == f.format))",
                    message="each format may be listed at most once",
                    reason="FieldValueDuplicate",
                ).to_schema()
            ]
        },
    )
    task: Literal["detect"] = Field("detect", description="Task of the model (only `detect` for now).")
    class_names: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]], Field(min_length=1, max_length=1000)
    ] = Field(description="Class names by class id.")
    imgsz: int = Field(640, ge=32, le=4096, description="Input size the model was trained and exported at.")
    metrics: TrainingMetrics | None = Field(None, description="Validation metrics of the model.")
    source: ArtifactSource = Field(default_factory=ArtifactSource, description="Lineage.")
    evaluation: EvaluationRef | None = Field(
        None, description="The quality gate's per-class evaluation record (candidate vs baseline)."
    )
    stage: Stage = Field(
        "candidate", description="Lifecycle stage; the only field that may change after creation."
    )


def _immutable_except_stage() -> CelRule:
    """One transition rule, derived from the model's fields, that freezes all but `stage`."""
    parts = []
    for name, info in ModelArtifactSpec.model_fields.items():
        if name == "stage":
            continue
        key = info.alias or name
        if info.is_required():
            parts.append(f"self.{key} == oldSelf.{key}")
        else:
            parts.append(
                f"has(self.{key}) == has(oldSelf.{key}) && (!has(self.{key}) || self.{key} == oldSelf.{key})"
            )
    return CelRule(
        rule=" && ".join(parts),
        message="a ModelArtifact is immutable except spec.stage: create a new version instead",
        reason="FieldValueForbidden",
    )


ModelArtifactSpec.cel_rules = (_immutable_except_stage(),)


Score = Annotated[float, Field(ge=0, le=1)]


class GateScores(KubeModel):
    """mAP50-95 of the candidate (this version) and of the baseline on one dataset."""

    candidate: Score = Field(description="This version's mAP50-95.")
    baseline: Score | None = Field(None, description="The baseline's mAP50-95.")
    drop: float | None = Field(None, ge=-1, le=1, description="Baseline minus candidate (positive: worse).")


class QualityGateStatus(KubeModel):
    """The verdict of the checked evaluation record, in short (the record has every class)."""

    passed: bool = Field(description="Whether the gate passed; a failed version must not be promoted.")
    baseline: DnsSubdomain | None = Field(None, description="ModelArtifact compared with.")
    held_out: GateScores = Field(description="On the held-out set (gating).")
    new_frames: GateScores | None = Field(None, description="On the new frames (reported only).")
    max_drop: float = Field(ge=0, le=1, description="Allowed held-out mAP50-95 drop.")
    max_class_drop: float | None = Field(None, ge=0, le=1, description="Allowed per-class AP50-95 drop.")
    reasons: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=32)] = Field(
        default_factory=list, description="Each failed check: which metric or class dropped, by how much."
    )


class ModelArtifactStatus(KubeModel):
    """Observed state of a ModelArtifact, written only by the operator."""

    observed_generation: int | None = Field(None, ge=0, description="Generation last reconciled.")
    phase: ModelArtifactPhase = Field("Pending", description="`Available` once every format is verified.")
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        description="`Verified` (each object exists, checksum matches), `Staged`, `QualityGate` (the "
        "evaluation record's checksum matches and its verdict passed).",
    )
    deployed_to: Annotated[list[DnsSubdomain], Field(max_length=256)] = Field(
        default_factory=list, description="EdgeDeployments that use this model."
    )
    message: str | None = Field(
        None, max_length=4096, description="Why the artifact is `Invalid` (a missing object, a checksum)."
    )
    quality_gate: QualityGateStatus | None = Field(
        None, description="The quality gate's verdict, from the checked evaluation record."
    )
