"""The quality gate inside the trainer pod (`spec.evaluation`).

Before training, `prepare_gate` fetches the held-out set, the new frames and the baseline's ONNX
(sha256-checked) and refuses what would make the gate meaningless: a held-out set that is the
training dataset or shares an image with its train split, or class names that differ. After export,
`run_gate` evaluates the candidate and the baseline with the edge's evaluation (onnxruntime, CPU:
mAP, per-class AP, PR curves, confusion matrix), judges (visioninapp/evaluation.py), and stores the
record next to the weights; the trainer's result carries its URI, sha256 and verdict. A failed
gate is a result, not a failure of the run: the ModelArtifact is created and says why in its
status, and nothing promotes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from visioninapp.backends.storage import ArtifactStore, join_uri, sha256_file
from visioninapp.datasets import fetch_dataset, split_images, validate_dataset
from visioninapp.edge.evaluate import CONFUSION_CONF, CONFUSION_IOU, RECALL_POINTS, Evaluation, evaluate
from visioninapp.edge.inference import Detector
from visioninapp.evaluation import (
    SUMMARY_LIMIT,
    ClassAP,
    DatasetEvaluation,
    DatasetRole,
    EvaluatedModel,
    EvaluationRecord,
    GateLimits,
    GateOutcome,
    ModelScores,
    dataset_evaluation,
    judge,
)
from visioninapp.resources.trainingjob import DatasetRef
from visioninapp.trainer.config import TrainerConfig

__all__ = [
    "EVALUATION_FILE",
    "GateError",
    "GateInputs",
    "prepare_gate",
    "run_gate",
    "same_dataset",
    "scores_from",
    "shared_images",
]

log = logging.getLogger("visioninapp.trainer")

EVALUATION_FILE = "evaluation.json"  # under the job's output URI, next to weights/
CPU = ["CPUExecutionProvider"]  # the same numbers whatever accelerator the trainer pod has


class GateError(ValueError):
    """The gate cannot be run as asked; the trainer refuses to train (one line for the user)."""


@dataclass(frozen=True)
class FixedData:
    role: DatasetRole
    uri: str
    images: list[Path]


@dataclass(frozen=True)
class GateInputs:
    """What `prepare_gate` fetched and checked before training."""

    data: tuple[FixedData, ...]  # held-out first
    baseline: Path | None


def same_dataset(a: str, b: str) -> bool:
    """Whether two dataset URIs name the same folder (a trailing `/` aside)."""
    return a.rstrip("/") == b.rstrip("/")


def shared_images(trained: Mapping[str, str], held_out: Mapping[str, str]) -> list[str]:
    """Held-out images (by name) whose bytes are also a trained image; maps are sha256 → name."""
    return sorted(name for digest, name in held_out.items() if digest in trained)


def scores_from(evaluation: Evaluation) -> ModelScores:
    """The record's form of the edge's evaluation: AP, PR curve and labels by class, the confusion matrix."""
    return ModelScores(
        map50=evaluation.map50,
        map50_95=evaluation.map50_95,
        classes={c.class_id: ClassAP(ap50=c.ap50, ap50_95=c.ap50_95) for c in evaluation.classes},
        labels={c.class_id: c.labels for c in evaluation.classes},
        recall=[float(r) for r in RECALL_POINTS],
        precision={c.class_id: list(c.precision50) for c in evaluation.classes if c.precision50},
        confusion=[list(row) for row in evaluation.confusion] if evaluation.confusion else None,
        confusion_threshold=CONFUSION_CONF,
        confusion_iou=CONFUSION_IOU,
    )


def _digests(images: list[Path]) -> dict[str, str]:
    return {sha256_file(path): path.name for path in images}


def _fetch(
    store: ArtifactStore, ref: DatasetRef, role: DatasetRole, work: Path, class_names: list[str]
) -> FixedData:
    if ref.uri.split("://")[0] != store.scheme:
        raise GateError(f"spec.evaluation.{role} {ref.uri} must be in the same kind of store as the output")
    root = fetch_dataset(store, ref.uri, ref.data_yaml, work / role)
    names = validate_dataset(root, ref.data_yaml, work / f"{role}.resolved.yaml", splits=("val",))
    if names != class_names:
        raise GateError(
            f"spec.evaluation.{role} {ref.uri} has classes {names[:10]}, the training dataset "
            f"{class_names[:10]}: the gate compares class by class, so they must be the same"
        )
    images = split_images(root, "val", ref.data_yaml)
    if not images:
        raise GateError(f"spec.evaluation.{role} {ref.uri}: no images in its `val` split")
    return FixedData(role, ref.uri, images)


def prepare_gate(
    config: TrainerConfig, store: ArtifactStore, work: Path, training_root: Path, class_names: list[str]
) -> GateInputs | None:
    """The fixed data and the baseline, fetched and checked before a GPU is spent (None: no gate)."""
    spec = config.spec.evaluation
    if spec is None:
        return None
    if same_dataset(spec.held_out.uri, config.spec.dataset.uri):
        raise GateError(
            f"spec.evaluation.heldOut is the training dataset ({spec.held_out.uri}): a held-out set is "
            "never trained on; give the line's held-out set"
        )
    held_out = _fetch(store, spec.held_out, "heldOut", work / "gate", class_names)
    trained = _digests(split_images(training_root, "train", config.spec.dataset.data_yaml))
    leaked = shared_images(trained, _digests(held_out.images))
    if leaked:
        shown = ", ".join(leaked[:5]) + (f" (and {len(leaked) - 5} more)" if len(leaked) > 5 else "")
        raise GateError(
            f"spec.evaluation.heldOut shares {len(leaked)} image(s) with the training split: {shown}; "
            "a held-out set is never trained on"
        )
    data = [held_out]
    if spec.new_frames is not None:
        data.append(_fetch(store, spec.new_frames, "newFrames", work / "gate", class_names))
    baseline = None
    if config.baseline_weights is not None:
        baseline = store.get_file(
            config.baseline_weights.uri,
            work / "gate" / "baseline.onnx",
            sha256=config.baseline_weights.sha256,
        )
        loaded = Detector(baseline, providers=CPU)
        named = "names" in loaded.metadata
        if len(loaded.class_names) != len(class_names) or (named and loaded.class_names != class_names):
            raise GateError(
                f"baseline {spec.baseline} has classes {loaded.class_names[:10]}, the training dataset "
                f"{class_names[:10]}: the gate compares class by class, so they must be the same"
            )
    log.info(
        "quality gate: %s, baseline %s",
        ", ".join(f"{d.role} {len(d.images)} images" for d in data),
        spec.baseline or "none",
    )
    return GateInputs(tuple(data), baseline)


def run_gate(
    config: TrainerConfig,
    store: ArtifactStore,
    inputs: GateInputs,
    candidate: Path,
    candidate_uri: str,
    class_names: list[str],
) -> GateOutcome:
    """Evaluate both models on the fixed data, judge, and store the record; returns its reference."""
    spec = config.spec.evaluation
    assert spec is not None  # prepare_gate returned inputs
    mine = Detector(candidate, providers=CPU)
    theirs = Detector(inputs.baseline, providers=CPU) if inputs.baseline is not None else None
    datasets: list[DatasetEvaluation] = []
    for fixed in inputs.data:
        scores = scores_from(evaluate(mine, fixed.images))
        base = scores_from(evaluate(theirs, fixed.images)) if theirs is not None else None
        datasets.append(
            dataset_evaluation(fixed.role, fixed.uri, len(fixed.images), class_names, scores, base)
        )
    limits = GateLimits(max_drop=spec.max_drop, max_class_drop=spec.max_class_drop)
    verdict = judge(datasets[0], datasets[1] if len(datasets) > 1 else None, limits)
    record = EvaluationRecord(
        created_at=datetime.now(UTC),
        namespace=config.namespace,
        training_job=config.name,
        attempt=config.attempt,
        class_names=class_names,
        candidate=EvaluatedModel(
            artifact=config.spec.output.artifact_name or config.name,
            uri=candidate_uri,
            sha256=sha256_file(candidate),
        ),
        baseline=(
            EvaluatedModel(
                artifact=spec.baseline, uri=config.baseline_weights.uri, sha256=config.baseline_weights.sha256
            )
            if config.baseline_weights is not None
            else None
        ),
        limits=limits,
        datasets=datasets,
        verdict=verdict,
    )
    stored = store.put_bytes(record.to_json(), join_uri(config.output_uri, EVALUATION_FILE))
    log.info("quality gate %s", verdict.summary)
    summary = verdict.summary
    if len(summary) > SUMMARY_LIMIT:
        summary = summary[: SUMMARY_LIMIT - 1] + "…"
    return GateOutcome(uri=stored.uri, sha256=stored.sha256, passed=verdict.passed, summary=summary)
