"""The quality gate on real ONNX models and generated shapes (no training run here).

The good model is the demo's yolo11n, trained once per machine and recipe and cached by the
benchmarks (`~/.cache/visioninapp/bench/`); trained here only when that cache is empty. A candidate
"trained on corrupted labels" is that same model with class channels swapped in its ONNX graph: it
finds every shape and names some wrongly, as a model that learned from swapped labels does. The
trainer's own path runs through `run_training` on a run whose training finished in an earlier
attempt (so it only exports the stored weights: the untrained yolo11n of `exported_model`), with the
good model as baseline: the gate fails and says why in the record and the result.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.conftest import ExportedModel
from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.storage import LocalArtifactStore
from visioninapp.evaluation import EvaluationRecord
from visioninapp.local.mode import SHAPES_STYLE
from visioninapp.local.synth import CLASS_NAMES as SHAPES
from visioninapp.local.synth import generate_dataset
from visioninapp.operator.artifacts import artifact_status, check_evaluation
from visioninapp.operator.training_objects import artifact_from_result
from visioninapp.resources import ModelArtifact, TrainingJob
from visioninapp.resources.trainingjob import TrainingMetrics
from visioninapp.trainer.config import TrainerConfig
from visioninapp.trainer.gate import GateError, prepare_gate, run_gate
from visioninapp.trainer.publisher import EventPublisher
from visioninapp.trainer.run import Checkpoint, run_training
from visioninapp.validation import validate

ROOT = Path(__file__).resolve().parents[2]
IMGSZ = 128
CLASS_NAMES = list(SHAPES)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's model: the benchmarks' cached copy, trained (80 s on 2 cores) only when missing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from edge_stream import _demo_model
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return _demo_model(tmp_path_factory.mktemp("demo-model"))  # type: ignore[no-any-return]


def swapped_classes(model: Path, pairs: list[tuple[int, int]], out: Path) -> Path:
    """`model` with the score channels of each pair of classes swapped (boxes untouched)."""
    graph = onnx.load(str(model))
    output = graph.graph.output[0]
    channels = list(range(4 + len(CLASS_NAMES)))
    for a, b in pairs:
        channels[4 + a], channels[4 + b] = channels[4 + b], channels[4 + a]
    raw = output.name + "_raw"
    for node in graph.graph.node:
        node.output[:] = [raw if name == output.name else name for name in node.output]
    indices = helper.make_tensor("swap_indices", onnx.TensorProto.INT64, [len(channels)], channels)
    graph.graph.initializer.append(indices)
    graph.graph.node.append(helper.make_node("Gather", [raw, "swap_indices"], [output.name], axis=1))
    onnx.save(graph, str(out))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training data, the held-out set and new frames (rotated shapes: the variant v1 never saw)."""
    root = tmp_path_factory.mktemp("gate-data")
    generate_dataset(root / "train", train=8, val=4, imgsz=IMGSZ, seed=0, **SHAPES_STYLE)
    generate_dataset(root / "held-out", train=1, val=32, imgsz=IMGSZ, seed=7, **SHAPES_STYLE)
    variant = {**SHAPES_STYLE, "rotate": True}
    generate_dataset(root / "new", train=1, val=24, imgsz=IMGSZ, seed=11, **variant)
    return {name: root / name for name in ("train", "held-out", "new")}


def config(tmp_path: Path, data: dict[str, Path], baseline: Path | None, **gate: object) -> TrainerConfig:
    raw = {
        "name": "shapes-v2",
        "namespace": "ci",
        "attempt": 2,
        "outputUri": (tmp_path / "out" / "ci" / "shapes-v2").as_uri(),
        "spec": {
            "model": {"architecture": "yolo11n"},
            "dataset": {"uri": data["train"].as_uri()},
            "hyperparameters": {"epochs": 1, "imgsz": IMGSZ, "workers": 0},
            "resources": {"gpu": {"count": 0}},
            "evaluation": {
                "heldOut": {"uri": data["held-out"].as_uri()},
                "newFrames": {"uri": data["new"].as_uri()},
                **({"baseline": "shapes-v1"} if baseline is not None else {}),
                **gate,
            },
        },
        "terminationLog": str(tmp_path / "termination"),
        "workDir": str(tmp_path / "work"),
    }
    if baseline is not None:
        raw["baselineWeights"] = {
            "uri": baseline.as_uri(),
            "sha256": hashlib.sha256(baseline.read_bytes()).hexdigest(),
        }
    return TrainerConfig.model_validate(raw)


def gate_on(tmp_path: Path, data: dict[str, Path], candidate: Path, baseline: Path, **limits: object):
    cfg = config(tmp_path, data, baseline, **limits)
    store = LocalArtifactStore()
    inputs = prepare_gate(cfg, store, tmp_path / "work", data["train"], CLASS_NAMES)
    assert inputs is not None
    outcome = run_gate(cfg, store, inputs, candidate, candidate.as_uri(), CLASS_NAMES)
    stored = LocalArtifactStore.path_of(outcome.uri).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == outcome.sha256  # the record's checksum, as announced
    return outcome, EvaluationRecord.model_validate_json(stored)


def test_a_candidate_with_corrupted_classes_fails_and_says_which(
    good_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    corrupted = swapped_classes(good_model, [(0, 1)], tmp_path / "swapped.onnx")  # circle <-> square
    outcome, record = gate_on(tmp_path, data, corrupted, good_model, maxClassDrop=0.05)
    held_out = record.dataset("heldOut")
    assert held_out is not None and held_out.baseline is not None
    baseline, swapped = held_out.baseline.map50_95, held_out.candidate.map50_95
    print(f"held-out mAP50-95: baseline {baseline:.3f}, classes swapped {swapped:.3f}")
    assert held_out.baseline.map50_95 > 0.5, "the demo model should detect the shapes"
    assert held_out.images == 32 and held_out.labels == sum(c.labels for c in held_out.classes)
    assert [c.name for c in held_out.classes] == CLASS_NAMES
    by_name = {c.name: c for c in held_out.classes}
    for name in ("circle", "square"):  # the swapped classes collapse, the others are untouched
        assert (by_name[name].drop or 0) > 0.3
    for name in ("triangle", "cross"):
        assert by_name[name].drop == pytest.approx(0.0, abs=1e-9)
    assert not outcome.passed and not record.verdict.passed
    reasons = record.verdict.reasons
    assert reasons[0].startswith("held-out mAP50-95 dropped ")
    assert any(r.startswith("held-out class 'circle' AP50-95 dropped") for r in reasons)
    assert any(r.startswith("held-out class 'square' AP50-95 dropped") for r in reasons)
    assert not any("triangle" in r or "cross" in r for r in reasons)
    assert outcome.summary == record.verdict.summary and "not gating" in outcome.summary


def test_the_better_model_passes_against_the_corrupted_one(
    good_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    corrupted = swapped_classes(good_model, [(0, 1), (2, 3)], tmp_path / "swapped.onnx")
    outcome, record = gate_on(tmp_path, data, good_model, corrupted, maxClassDrop=0.0)
    assert outcome.passed and record.verdict.reasons == []
    assert outcome.summary.startswith("passed: held-out mAP50-95 ")
    new = record.dataset("newFrames")
    assert new is not None and new.images == 24 and new.baseline is not None
    # the same model against itself: no drop at all (the evaluation is deterministic)
    same, _ = gate_on(tmp_path / "same", data, good_model, good_model, maxDrop=0.0, maxClassDrop=0.0)
    assert same.passed


def test_the_trainer_refuses_a_held_out_set_it_trains_on(data: dict[str, Path], tmp_path: Path) -> None:
    store = LocalArtifactStore()
    cfg = config(tmp_path, data, None)
    same = cfg.model_copy(
        update={"spec": cfg.spec.model_copy(update={"dataset": cfg.spec.evaluation.held_out})}  # type: ignore[union-attr]
    )
    with pytest.raises(GateError, match="is the training dataset"):
        prepare_gate(same, store, tmp_path / "work", data["held-out"], CLASS_NAMES)
    leaky = tmp_path / "leaky"
    generate_dataset(leaky, train=2, val=2, imgsz=IMGSZ, seed=0, **SHAPES_STYLE)
    first = sorted((data["held-out"] / "images" / "val").iterdir())[0]
    (leaky / "images" / "train" / "copied.jpg").write_bytes(first.read_bytes())
    (leaky / "labels" / "train" / "copied.txt").write_bytes(
        (data["held-out"] / "labels" / "val" / first.with_suffix(".txt").name).read_bytes()
    )
    with pytest.raises(GateError, match=f"shares 1 image\\(s\\) with the training split: {first.name}"):
        prepare_gate(cfg, store, tmp_path / "work", leaky, CLASS_NAMES)


def test_the_trainer_stores_one_record_and_the_operator_reads_the_same(
    good_model: Path, exported_model: ExportedModel, data: dict[str, Path], tmp_path: Path
) -> None:
    """run_training end to end without training: attempt 1 finished training (its best weights, the
    untrained yolo11n, are stored), attempt 2 exports, gates against the good baseline, and fails."""
    cfg = config(tmp_path, data, good_model)
    store = LocalArtifactStore()
    Checkpoint(store, cfg.output_uri).finish(
        exported_model.weights, 1, IMGSZ, TrainingMetrics(map50=0.0, map50_95=0.0), attempt=1
    )
    publisher = EventPublisher(LocalEventLog(tmp_path / "events"), "training-events", "ci", "shapes-v2", 2)
    result = run_training(cfg, store, publisher)

    assert result.evaluation is not None and not result.evaluation.passed
    assert result.evaluation.uri == cfg.output_uri + "/evaluation.json"
    assert "held-out mAP50-95 dropped" in result.evaluation.summary
    text = result.to_termination_message()
    assert len(text.encode()) <= 4096
    manifest = json.loads(LocalArtifactStore.path_of(cfg.output_uri + "/manifest.json").read_text())
    assert manifest["evaluation"]["sha256"] == result.evaluation.sha256

    tj = TrainingJob.model_validate(
        {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": cfg.spec.wire(),
        }
    )
    body = artifact_from_result(tj, result)
    body["metadata"]["generation"] = 1
    assert validate(body) == []
    artifact = ModelArtifact.model_validate(body)
    check = check_evaluation(artifact, read=store.get_bytes, size=store.size)
    assert check.problem is None and check.record is not None
    onnx_sha = next(f.sha256 for f in artifact.spec.formats if f.format == "onnx")
    assert check.record.candidate.sha256 == onnx_sha and check.record.baseline is not None
    status = artifact_status(body, [], datetime.now(UTC), gate=check)
    gate = status["qualityGate"]
    assert gate["passed"] is False and gate["heldOut"]["drop"] > 0.5
    condition = next(c for c in status["conditions"] if c["type"] == "QualityGate")
    assert (condition["status"], condition["reason"]) == ("False", "Failed")
    assert condition["message"].startswith("failed: held-out mAP50-95 dropped")
    print(condition["message"])
    np.testing.assert_allclose(
        gate["heldOut"]["candidate"], check.record.datasets[0].candidate.map50_95, atol=1e-4
    )
