"""The quality gate of a training run: its evaluation record and its verdict, as typed data and pure
functions (no I/O, no inference).

The trainer evaluates the candidate it exported and the baseline (normally the line's production
model) on the line's held-out set and on the new frames, with the edge's evaluation (mAP and
per-class AP as ultralytics defines them), and stores ONE record per candidate next to its weights:
`EvaluationRecord`, JSON, `schemaVersion` 1. The ModelArtifact carries that record's URI and sha256;
the operator checks the checksum and summarises the verdict in the artifact's status; the console's
comparison page reads the same record. docs/quality-gate.md describes it with an example.

Each model's scores on a dataset may carry what the registry shows to decide by (optional, so still
`schemaVersion` 1: a record without them reads as before): `prCurves`, each labelled class's
precision at fixed recall points at IoU 0.5, and `confusion`, the confusion matrix at a confidence
threshold with a background row and column. Rounded to `CURVE_DECIMALS`, an 80-class record with
both models on two datasets stays a few hundred KB (tests/unit/test_evaluation.py checks it).

The rule (`judge`): the gate fails when the candidate's held-out mAP50-95 is more than `maxDrop`
below the baseline's, or (with `maxClassDrop`) when any held-out class's AP50-95 is more than
`maxClassDrop` below the baseline's, whatever the gain on the new frames, which is only reported.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "BACKGROUND",
    "CURVE_DECIMALS",
    "SCHEMA_VERSION",
    "TOLERANCE",
    "ClassAP",
    "ClassComparison",
    "ClassCurve",
    "Confusion",
    "DatasetEvaluation",
    "DatasetRole",
    "EvaluatedModel",
    "EvaluationRecord",
    "GateLimits",
    "GateOutcome",
    "GateVerdict",
    "MapScores",
    "ModelScores",
    "PRCurves",
    "dataset_evaluation",
    "judge",
    "model_scores",
]

SCHEMA_VERSION: Literal[1] = 1
# Differences this small are rounding, not a drop: 0.605 - 0.595 is 0.010000000000000009 in floats.
TOLERANCE = 1e-9
MAX_REASONS = 32
SUMMARY_LIMIT = 512  # characters of the one-line summary carried in the termination message
CURVE_DECIMALS = 4  # a PR curve's precision in the record: enough for a chart, a third of the bytes
BACKGROUND = "background"  # the confusion matrix's last row (missed labels) and column (false detections)

DatasetRole = Literal["heldOut", "newFrames"]
Score = Annotated[float, Field(ge=0, le=1)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ClassAP(_Model):
    """One model's AP of one class."""

    ap50: Score = Field(alias="AP50", description="AP at IoU 0.5.")
    ap50_95: Score = Field(alias="AP50_95", description="AP averaged over IoU 0.5:0.05:0.95.")


class ClassCurve(_Model):
    """One class's precision-recall curve: its precision at each of `PRCurves.recall`."""

    id: int = Field(ge=0, description="Class id.")
    name: str = Field(description="Class name.")
    precision: list[Score] = Field(description="Interpolated precision at each recall point.")


class PRCurves(_Model):
    """One model's precision-recall curves on one dataset, one per labelled class."""

    iou: Score = Field(0.5, description="IoU at which a detection is a true positive.")
    recall: list[Score] = Field(min_length=2, description="The recall points, ascending.")
    classes: list[ClassCurve] = Field(default_factory=list, description="By class id.")

    @model_validator(mode="after")
    def _one_precision_per_recall(self) -> PRCurves:
        for curve in self.classes:
            if len(curve.precision) != len(self.recall):
                raise ValueError(
                    f"class {curve.id} has {len(curve.precision)} precision values for "
                    f"{len(self.recall)} recall points"
                )
        return self


class Confusion(_Model):
    """One model's confusion matrix on one dataset (ultralytics' `ConfusionMatrix`)."""

    threshold: Score = Field(description="Detections above this confidence count.")
    iou: Score = Field(description="A detection matches a label (of any class) at an IoU above this.")
    class_names: list[str] = Field(min_length=2, description=f"By id, then {BACKGROUND!r}.")
    matrix: list[list[Annotated[int, Field(ge=0)]]] = Field(
        description=f"Counts: rows predicted, columns true, each ending with {BACKGROUND!r}."
    )

    @model_validator(mode="after")
    def _square(self) -> Confusion:
        size = len(self.class_names)
        if len(self.matrix) != size or any(len(row) != size for row in self.matrix):
            raise ValueError(
                f"the confusion matrix must be {size} x {size}, one row and column per class name"
            )
        return self


class MapScores(_Model):
    """One model's mAP on one dataset (its classes are in the dataset's `classes`), with its PR curves
    and confusion matrix when the evaluation measured them."""

    map50: Score = Field(alias="mAP50")
    map50_95: Score = Field(alias="mAP50_95")
    pr_curves: PRCurves | None = None
    confusion: Confusion | None = None


class ModelScores(_Model):
    """One model on one dataset as the edge's `evaluate` measured it (classes with labels only): the
    input of `dataset_evaluation`, which stores it as `MapScores` plus side-by-side classes."""

    map50: Score = Field(alias="mAP50")
    map50_95: Score = Field(alias="mAP50_95")
    classes: dict[int, ClassAP] = Field(default_factory=dict, description="AP by class id.")
    labels: dict[int, int] = Field(default_factory=dict, description="Labels by class id.")
    recall: list[Score] = Field(default_factory=list, description="The PR curves' recall points.")
    precision: dict[int, list[float]] = Field(
        default_factory=dict, description="By class id: precision at each recall point (IoU 0.5)."
    )
    confusion: list[list[int]] | None = Field(
        None, description="Rows predicted, columns true, each ending with the background."
    )
    confusion_threshold: Score = 0.25
    confusion_iou: Score = 0.45


class ClassComparison(_Model):
    """One class of a dataset, both models side by side."""

    id: int = Field(ge=0, description="Class id.")
    name: str = Field(description="Class name.")
    labels: int = Field(ge=0, description="Labels of the class in the evaluated images.")
    candidate: ClassAP
    baseline: ClassAP | None = None
    drop: float | None = Field(None, description="Baseline minus candidate AP50-95 (positive: worse).")


class DatasetEvaluation(_Model):
    """Both models on one dataset (its `val` split)."""

    role: DatasetRole = Field(description="`heldOut` (gates) or `newFrames` (reported).")
    uri: str = Field(description="The dataset's URI.")
    split: str = Field("val", description="The split evaluated.")
    images: int = Field(ge=0)
    labels: int = Field(ge=0)
    candidate: MapScores
    baseline: MapScores | None = None
    classes: list[ClassComparison] = Field(default_factory=list, description="By class id.")

    @property
    def drop(self) -> float | None:
        """Baseline minus candidate mAP50-95 (positive: the candidate is worse)."""
        return None if self.baseline is None else self.baseline.map50_95 - self.candidate.map50_95


class EvaluatedModel(_Model):
    """A model the record evaluated: the ONNX file, by checksum."""

    artifact: str | None = Field(None, description="ModelArtifact name (the baseline's; the candidate's).")
    uri: str
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")


class GateLimits(_Model):
    max_drop: float = Field(ge=0, le=1, description="Allowed drop of held-out mAP50-95.")
    max_class_drop: float | None = Field(
        None, ge=0, le=1, description="Allowed drop of each held-out class's AP50-95 (none: unchecked)."
    )


class GateVerdict(_Model):
    """The gate's decision and exactly why."""

    passed: bool
    summary: str = Field(description="One line: the held-out comparison and, if failed, what dropped.")
    reasons: list[str] = Field(default_factory=list, description="Each failed check (empty: passed).")


class EvaluationRecord(_Model):
    """The one evaluation record of a candidate (stored as `evaluation.json` next to its weights)."""

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Bumped on any incompatible change.")
    created_at: datetime
    namespace: str
    training_job: str
    attempt: int = Field(ge=1)
    class_names: list[str] = Field(description="The candidate's class names by id.")
    candidate: EvaluatedModel
    baseline: EvaluatedModel | None = None
    limits: GateLimits
    datasets: list[DatasetEvaluation] = Field(min_length=1, description="`heldOut` first.")
    verdict: GateVerdict

    def dataset(self, role: DatasetRole) -> DatasetEvaluation | None:
        return next((d for d in self.datasets if d.role == role), None)

    def to_json(self) -> bytes:
        """The stored bytes: compact JSON (indenting would put each curve point and matrix count on a
        line of its own and quadruple the size; `jq .` shows it indented)."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class GateOutcome(_Model):
    """What the trainer's result says of the gate (small: it travels in the termination message)."""

    uri: str = Field(description="URI of the evaluation record.")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$", description="sha256 of the record's bytes.")
    passed: bool
    summary: str = Field(max_length=SUMMARY_LIMIT)


def _name(class_names: list[str], class_id: int) -> str:
    return class_names[class_id] if class_id < len(class_names) else str(class_id)


def model_scores(scores: ModelScores, class_names: list[str]) -> MapScores:
    """The record's form of one model's scores: mAP, and its PR curves (rounded to `CURVE_DECIMALS`)
    and confusion matrix (classes named, then the background) when measured."""
    curves = None
    if scores.recall and scores.precision:
        curves = PRCurves(
            recall=[round(r, CURVE_DECIMALS) for r in scores.recall],
            classes=[
                ClassCurve(
                    id=class_id,
                    name=_name(class_names, class_id),
                    precision=[round(p, CURVE_DECIMALS) for p in scores.precision[class_id]],
                )
                for class_id in sorted(scores.precision)
            ],
        )
    confusion = None
    if scores.confusion is not None:
        confusion = Confusion(
            threshold=scores.confusion_threshold,
            iou=scores.confusion_iou,
            class_names=[_name(class_names, i) for i in range(len(scores.confusion) - 1)] + [BACKGROUND],
            matrix=scores.confusion,
        )
    return MapScores(map50=scores.map50, map50_95=scores.map50_95, pr_curves=curves, confusion=confusion)


def dataset_evaluation(
    role: DatasetRole,
    uri: str,
    images: int,
    class_names: list[str],
    candidate: ModelScores,
    baseline: ModelScores | None,
) -> DatasetEvaluation:
    """Both models' scores on one dataset, joined class by class (the classes with labels)."""
    rows = []
    for class_id in sorted(candidate.labels):
        mine = candidate.classes.get(class_id, ClassAP(ap50=0.0, ap50_95=0.0))
        theirs = None if baseline is None else baseline.classes.get(class_id, ClassAP(ap50=0.0, ap50_95=0.0))
        rows.append(
            ClassComparison(
                id=class_id,
                name=_name(class_names, class_id),
                labels=candidate.labels[class_id],
                candidate=mine,
                baseline=theirs,
                drop=None if theirs is None else theirs.ap50_95 - mine.ap50_95,
            )
        )
    return DatasetEvaluation(
        role=role,
        uri=uri,
        images=images,
        labels=sum(candidate.labels.values()),
        candidate=model_scores(candidate, class_names),
        baseline=None if baseline is None else model_scores(baseline, class_names),
        classes=rows,
    )


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _new_frames_note(new_frames: DatasetEvaluation | None) -> str:
    if new_frames is None:
        return ""
    note = f"; new frames mAP50-95 {new_frames.candidate.map50_95:.3f}"
    if new_frames.baseline is not None:
        gain = new_frames.candidate.map50_95 - new_frames.baseline.map50_95
        note += f" vs baseline {new_frames.baseline.map50_95:.3f} ({_signed(gain)}, not gating)"
    return note


def judge(
    held_out: DatasetEvaluation, new_frames: DatasetEvaluation | None, limits: GateLimits
) -> GateVerdict:
    """The gate: a held-out drop beyond a limit fails it, whatever the gain on the new frames."""
    candidate = held_out.candidate.map50_95
    gain = _new_frames_note(new_frames)
    if held_out.baseline is None or held_out.drop is None:
        return GateVerdict(
            passed=True,
            summary=f"passed: held-out mAP50-95 {candidate:.3f}, no baseline to compare with{gain}",
        )
    baseline, drop = held_out.baseline.map50_95, held_out.drop
    reasons = []
    if drop > limits.max_drop + TOLERANCE:
        reasons.append(
            f"held-out mAP50-95 dropped {drop:.3f} ({candidate:.3f} vs baseline {baseline:.3f}; "
            f"at most {limits.max_drop:.3f} allowed)"
        )
    if limits.max_class_drop is not None:
        for row in held_out.classes:
            if row.drop is not None and row.drop > limits.max_class_drop + TOLERANCE:
                assert row.baseline is not None  # a drop is only computed against a baseline
                reasons.append(
                    f"held-out class {row.name!r} AP50-95 dropped {row.drop:.3f} "
                    f"({row.candidate.ap50_95:.3f} vs baseline {row.baseline.ap50_95:.3f}; "
                    f"at most {limits.max_class_drop:.3f} allowed)"
                )
    head = f"held-out mAP50-95 {candidate:.3f} vs baseline {baseline:.3f} ({_signed(-drop)})"
    if reasons:
        shown = "; ".join(reasons[:3]) + (f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else "")
        return GateVerdict(passed=False, summary=f"failed: {shown}{gain}", reasons=reasons[:MAX_REASONS])
    return GateVerdict(passed=True, summary=f"passed: {head}{gain}")
