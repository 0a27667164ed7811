"""The quality gate: per-class AP, PR curves and the confusion matrix (edge/evaluate.py), the
verdict and the record
(visioninapp/evaluation.py), the trainer's refusals (trainer/gate.py), and what the operator makes of
a record (the TrainingJob's condition, the ModelArtifact's `evaluation`, `qualityGate` and
`QualityGate`)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tests.unit.test_operator_training import (
    NOW,
    SHA,
    _trainer_config,
    job,
    plan,
    pod,
    result_message,
    training_job,
    with_status,
)
from visioninapp.edge import evaluate as edge_evaluate
from visioninapp.edge.evaluate import (
    CONFUSION_CONF,
    CONFUSION_IOU,
    IOU_THRESHOLDS,
    RECALL_POINTS,
    ClassEvaluation,
    class_average_precision,
    confusion_matrix,
    evaluate,
)
from visioninapp.edge.inference import Detection, DetectionResult
from visioninapp.evaluation import (
    SUMMARY_LIMIT,
    ClassAP,
    Confusion,
    EvaluatedModel,
    EvaluationRecord,
    GateLimits,
    GateOutcome,
    MapScores,
    ModelScores,
    PRCurves,
    dataset_evaluation,
    judge,
)
from visioninapp.events import TERMINATION_MESSAGE_LIMIT, TrainerResult
from visioninapp.operator.artifacts import (
    MAX_RECORD_BYTES,
    GateCheck,
    artifact_status,
    check_evaluation,
    needs_gate_check,
    plan_artifact,
    promotion_blocked,
)
from visioninapp.operator.training_objects import BaseModel, artifact_from_result, resolve_artifact_file
from visioninapp.resources import ModelArtifact, TrainingJob
from visioninapp.trainer.config import TrainerConfig
from visioninapp.trainer.gate import same_dataset, scores_from, shared_images
from visioninapp.validation import validate

NAMES = ["circle", "square", "triangle"]
LIMITS = GateLimits(max_drop=0.01)
RECORD_URI = "s3://out/runs/vision/helmets/evaluation.json"


# --- per-class AP ---------------------------------------------------------------------------------


def _hits(*rows: bool) -> np.ndarray:
    """Per-prediction hits, the same at every IoU threshold."""
    return np.repeat(np.array(rows, dtype=bool)[:, None], len(IOU_THRESHOLDS), axis=1)


def test_each_labelled_class_gets_its_own_ap_and_label_count() -> None:
    # class 0: one label, found by the only prediction; class 1: two labels, never predicted;
    # class 2: one label, its hit ranked below a false positive; class 3 is predicted but has no label.
    correct = _hits(True, False, True, False)
    scores = np.array([0.9, 0.8, 0.3, 0.7])
    predicted = np.array([0, 2, 2, 3])
    truth = np.array([0, 1, 1, 2])
    classes = class_average_precision(correct, scores, predicted, truth)
    assert [c.class_id for c in classes] == [0, 1, 2]  # only classes with labels
    assert [c.labels for c in classes] == [1, 2, 1]
    perfect, missed, ranked_low = classes
    assert perfect.ap50 == pytest.approx(0.995) and perfect.ap50_95 == pytest.approx(0.995)
    assert missed.ap50 == 0.0 and missed.ap50_95 == 0.0
    # precision 1/2 once the label is found: half the area of a perfect ranking
    assert ranked_low.ap50 == pytest.approx(0.4975)


def test_per_class_ap50_95_averages_the_thresholds_and_ap50_is_the_first() -> None:
    correct = np.zeros((1, len(IOU_THRESHOLDS)), dtype=bool)
    correct[0, :4] = True  # the box overlaps its label at IoU 0.5 to 0.65, not beyond
    (only,) = class_average_precision(correct, np.array([0.9]), np.array([0]), np.array([0]))
    assert only.ap50 == pytest.approx(0.995)
    assert only.ap50_95 == pytest.approx(0.995 * 4 / 10)


def test_scores_carry_every_class_into_the_record() -> None:
    from visioninapp.edge.evaluate import Evaluation

    curve = tuple(np.linspace(1, 0, len(RECALL_POINTS)))
    matrix = ((2, 0, 0, 1), (0, 0, 0, 0), (0, 0, 1, 0), (1, 0, 0, 0))
    evaluation = Evaluation(
        0.5,
        0.3,
        4,
        3,
        (ClassEvaluation(0, 0.8, 0.5, 2, curve), ClassEvaluation(2, 0.2, 0.1, 1, curve)),
        matrix,
    )
    scores = scores_from(evaluation)
    assert scores.labels == {0: 2, 2: 1}
    assert scores.classes[2] == ClassAP(ap50=0.2, ap50_95=0.1)
    assert (scores.map50, scores.map50_95) == (0.5, 0.3)
    assert scores.recall == list(RECALL_POINTS) and scores.precision == {0: list(curve), 2: list(curve)}
    assert scores.confusion == [list(row) for row in matrix]
    assert (scores.confusion_threshold, scores.confusion_iou) == (0.25, 0.45)


# --- PR curves ---------------------------------------------------------------------------------------


def _at(curve: tuple[float, ...], recall: float) -> float:
    return curve[int(np.argmin(np.abs(RECALL_POINTS - recall)))]


def test_the_pr_curve_is_the_precision_envelope_at_iou_50_and_ap50_is_its_area() -> None:
    # two labels; by score: a hit (P 1, R 0.5), a false positive (P 0.5), a hit (P 2/3, R 1)
    correct = _hits(True, False, True)
    correct[:, 1:] = False  # at IoU 0.55 and beyond nothing is found: the curve is IoU 0.5's
    (cls,) = class_average_precision(
        correct, np.array([0.9, 0.8, 0.7]), np.array([1, 1, 1]), np.array([1, 1])
    )
    curve = cls.precision50
    assert len(curve) == len(RECALL_POINTS) == 101
    assert all(_at(curve, r) == pytest.approx(1.0) for r in (0.0, 0.2, 0.49))
    # between recall 0.5 and 1 the envelope holds the later 2/3 (the raw curve dips to 1/2)
    assert all(_at(curve, r) == pytest.approx(2 / 3) for r in (0.51, 0.75, 0.99))
    assert _at(curve, 1.0) == 0.0  # past the last recall reached (COCO's sentinel): as AP counts it
    assert float(np.trapezoid(curve, RECALL_POINTS)) == pytest.approx(cls.ap50)
    # 1 up to recall 0.5, 2/3 up to 0.99, then down to 0 at 1 (the step at 0.5 blurs it by a hair)
    assert cls.ap50 == pytest.approx(0.5 + 0.49 * 2 / 3 + 0.01 / 3, abs=2e-3)


def test_the_pr_curve_is_read_in_score_order_and_a_class_never_predicted_has_none() -> None:
    # the same hits given out of order: sorted by score first (a miss ranked first: precision 1/2)
    correct = _hits(True, False)
    (ranked,) = class_average_precision(correct, np.array([0.3, 0.9]), np.array([0, 0]), np.array([0]))
    assert all(_at(ranked.precision50, r) == pytest.approx(0.5) for r in (0.0, 0.5, 0.99))
    (never,) = class_average_precision(correct, np.array([0.3, 0.9]), np.array([0, 0]), np.array([4]))
    assert never.precision50 == (0.0,) * len(RECALL_POINTS) and never.ap50 == 0.0


# --- the confusion matrix -----------------------------------------------------------------------------


def test_the_confusion_matrix_counts_as_ultralytics_does() -> None:
    # classes 0 and 1; labels: l0 (class 0), l1 and l2 (class 1). IoU is labels x predictions.
    pred_classes = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    truth = np.array([0, 1, 1])
    iou = np.array(
        [
            [0.8, 0.0, 0.0, 0.5, 0.0],  # l0: p0 right; p3 overlaps it less and stays unmatched
            [0.0, 0.6, 0.0, 0.0, 0.0],  # l1: found as class 0 by p1 (confused)
            [0.0, 0.0, 0.0, 0.0, 0.9],  # l2: only p4, below the confidence threshold: missed
        ]
    )
    matrix = confusion_matrix(pred_classes, scores, truth, iou, num_classes=2)
    # rows predicted (0, 1, background), columns true (0, 1, background)
    assert matrix.tolist() == [
        [1, 1, 0],
        [0, 0, 2],  # p2 (no overlap) and p3 (its label taken): false detections
        [0, 1, 0],  # l2 missed
    ]
    assert matrix[:2].sum() == int((scores > CONFUSION_CONF).sum())  # each prediction counted once
    assert matrix[:, :2].sum() == len(truth)  # each label counted once


def test_the_confusion_matrix_gives_a_label_its_best_overlap_not_its_best_score() -> None:
    # p0 (class 1, scored higher) overlaps the class-0 label less than p1 (class 0) does
    matrix = confusion_matrix(
        np.array([1, 0]), np.array([0.9, 0.8]), np.array([0]), np.array([[0.6, 0.9]]), 2
    )
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_the_confusion_thresholds_are_strict_and_empty_sides_count_as_background() -> None:
    at_iou = confusion_matrix(np.array([0]), np.array([0.9]), np.array([0]), np.array([[CONFUSION_IOU]]), 1)
    assert at_iou.tolist() == [[0, 1], [1, 0]]  # an IoU of exactly 0.45 is no match
    at_conf = confusion_matrix(np.array([0]), np.array([CONFUSION_CONF]), np.array([0]), np.array([[0.9]]), 1)
    assert at_conf.tolist() == [[0, 0], [1, 0]]  # a confidence of exactly 0.25 is not counted
    above = confusion_matrix(np.array([0]), np.array([0.26]), np.array([0]), np.array([[0.46]]), 1)
    assert above.tolist() == [[1, 0], [0, 0]]
    no_labels = confusion_matrix(
        np.array([1, 1]), np.array([0.9, 0.5]), np.zeros(0, int), np.zeros((0, 2)), 2
    )
    assert no_labels.tolist() == [[0, 0, 0], [0, 0, 2], [0, 0, 0]]
    no_predictions = confusion_matrix(np.zeros(0, int), np.zeros(0), np.array([0, 1]), np.zeros((2, 0)), 2)
    assert no_predictions.tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 0]]
    with pytest.raises(ValueError, match="beyond the model's 2 classes"):
        confusion_matrix(np.array([2]), np.array([0.9]), np.array([0]), np.array([[0.9]]), 2)


class _FakeDetector:
    """Detections by image name (boxes in pixels of a 100 x 100 image), in descending score order."""

    class_names = ["cat", "dog"]

    def __init__(self, detections: dict[str, list[Detection]]) -> None:
        self.detections = detections
        self.current = ""

    def detect(self, image: np.ndarray, conf: float, iou: float, multi_label: bool) -> DetectionResult:
        return DetectionResult(self.detections[self.current], 100, 100)


def test_evaluate_sums_the_confusion_of_every_image_and_keeps_each_classs_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = []
    for name, labels in {
        "a": "0 0.25 0.25 0.3 0.3\n1 0.75 0.75 0.3 0.3\n",
        "b": "1 0.5 0.5 0.4 0.4\n",
    }.items():
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{name}.txt").write_text(labels)
        images.append(tmp_path / "images" / f"{name}.jpg")
    detector = _FakeDetector(
        {
            "a": [Detection((10, 10, 40, 40), 0.9, 0, "cat"), Detection((60, 60, 90, 90), 0.8, 0, "cat")],
            "b": [Detection((30, 30, 70, 70), 0.7, 1, "dog")],
        }
    )

    def read(path: Path) -> np.ndarray:
        detector.current = path.stem
        return np.zeros((100, 100, 3), np.uint8)

    monkeypatch.setattr(edge_evaluate, "read_image", read)
    result = evaluate(detector, images)  # type: ignore[arg-type]
    # a: the cat found, the dog taken for a cat; b: the dog found
    assert result.confusion == ((1, 1, 0), (0, 1, 0), (0, 0, 0))
    cat, dog = result.classes
    assert cat.ap50 == pytest.approx(float(np.trapezoid(cat.precision50, RECALL_POINTS)))
    # the dog: one of two found, by its only detection: precision 1 up to recall 0.5, then COCO's
    # interpolation down to the sentinel (recall 1, precision 0)
    assert _at(dog.precision50, 0.4) == 1.0 and _at(dog.precision50, 0.6) == pytest.approx(0.8)
    assert dog.ap50 == pytest.approx(0.75)


# --- the verdict ------------------------------------------------------------------------------------


def scores(map50_95: float, per_class: dict[int, float] | None = None) -> ModelScores:
    per_class = per_class if per_class is not None else {0: map50_95, 1: map50_95}
    return ModelScores(
        map50=min(1.0, map50_95 + 0.2),
        map50_95=map50_95,
        classes={c: ClassAP(ap50=min(1.0, v + 0.2), ap50_95=v) for c, v in per_class.items()},
        labels=dict.fromkeys(per_class, 5),
    )


def held_out(candidate: ModelScores, baseline: ModelScores | None = None):
    return dataset_evaluation("heldOut", "s3://data/held-out", 20, NAMES, candidate, baseline)


def new_frames(candidate: float, baseline: float):
    return dataset_evaluation("newFrames", "s3://data/new", 50, NAMES, scores(candidate), scores(baseline))


def test_the_gate_passes_up_to_the_limit_and_fails_just_beyond() -> None:
    at_limit = judge(held_out(scores(0.595), scores(0.605)), None, LIMITS)  # 0.01 in floats is a bit more
    assert at_limit.passed and at_limit.reasons == []
    beyond = judge(held_out(scores(0.594), scores(0.605)), None, LIMITS)
    assert not beyond.passed
    assert beyond.reasons == [
        "held-out mAP50-95 dropped 0.011 (0.594 vs baseline 0.605; at most 0.010 allowed)"
    ]


def test_a_better_candidate_passes_and_the_drop_is_baseline_minus_candidate() -> None:
    evaluation = held_out(scores(0.70), scores(0.60))
    assert evaluation.drop == pytest.approx(-0.10)
    verdict = judge(evaluation, None, GateLimits(max_drop=0.0))
    assert verdict.passed
    assert verdict.summary == "passed: held-out mAP50-95 0.700 vs baseline 0.600 (+0.100)"


def test_a_held_out_drop_fails_whatever_the_gain_on_new_frames() -> None:
    verdict = judge(held_out(scores(0.50), scores(0.60)), new_frames(0.90, 0.10), LIMITS)
    assert not verdict.passed
    assert verdict.summary == (
        "failed: held-out mAP50-95 dropped 0.100 (0.500 vs baseline 0.600; at most 0.010 allowed); "
        "new frames mAP50-95 0.900 vs baseline 0.100 (+0.800, not gating)"
    )


def test_a_loss_on_new_frames_alone_does_not_fail_the_gate() -> None:
    assert judge(held_out(scores(0.60), scores(0.60)), new_frames(0.10, 0.90), LIMITS).passed


def test_a_class_that_dropped_beyond_its_limit_fails_and_is_named() -> None:
    # the mean holds (one class up, one down) but `square` lost 0.2 AP50-95
    candidate, baseline = scores(0.6, {0: 0.8, 1: 0.4}), scores(0.6, {0: 0.6, 1: 0.6})
    assert judge(held_out(candidate, baseline), None, LIMITS).passed  # no per-class limit: unchecked
    verdict = judge(held_out(candidate, baseline), None, GateLimits(max_drop=0.01, max_class_drop=0.05))
    assert not verdict.passed
    assert verdict.reasons == [
        "held-out class 'square' AP50-95 dropped 0.200 (0.400 vs baseline 0.600; at most 0.050 allowed)"
    ]
    within = judge(held_out(candidate, baseline), None, GateLimits(max_drop=0.01, max_class_drop=0.2))
    assert within.passed
    # exactly at the limit (0.605 - 0.595 is a hair above 0.01 in floats) passes
    at_limit = held_out(scores(0.6, {0: 0.595, 1: 0.6}), scores(0.6, {0: 0.605, 1: 0.6}))
    assert judge(at_limit, None, GateLimits(max_drop=0.01, max_class_drop=0.01)).passed


def test_without_a_baseline_the_candidate_is_only_measured() -> None:
    verdict = judge(held_out(scores(0.3)), None, GateLimits(max_drop=0.0, max_class_drop=0.0))
    assert verdict.passed
    assert verdict.summary == "passed: held-out mAP50-95 0.300, no baseline to compare with"


def test_classes_are_joined_side_by_side_with_their_names_and_drops() -> None:
    evaluation = held_out(scores(0.5, {0: 0.5, 2: 0.7}), scores(0.5, {0: 0.6, 2: 0.4}))
    assert [(c.id, c.name, c.labels) for c in evaluation.classes] == [(0, "circle", 5), (2, "triangle", 5)]
    assert evaluation.classes[0].drop == pytest.approx(0.1) and evaluation.classes[1].drop == pytest.approx(
        -0.3
    )
    assert evaluation.labels == 10 and evaluation.images == 20


# --- the record ------------------------------------------------------------------------------------


def record(passed: bool = True, candidate_sha: str = SHA) -> EvaluationRecord:
    candidate = scores(0.62) if passed else scores(0.40)
    evaluation = held_out(candidate, scores(0.60))
    return EvaluationRecord(
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
        namespace="vision",
        training_job="helmets",
        attempt=1,
        class_names=NAMES,
        candidate=EvaluatedModel(artifact="helmets", uri="s3://out/model.onnx", sha256=candidate_sha),
        baseline=EvaluatedModel(artifact="helmets-v1", uri="s3://models/v1.onnx", sha256="b" * 64),
        limits=LIMITS,
        datasets=[evaluation],
        verdict=judge(evaluation, None, LIMITS),
    )


def test_the_record_round_trips_through_json_and_is_versioned() -> None:
    original = record()
    text = original.model_dump_json(by_alias=True, exclude_none=True)
    assert '"schemaVersion":1' in text and '"AP50_95"' in text and '"mAP50_95"' in text
    assert EvaluationRecord.model_validate_json(text) == original
    with pytest.raises(ValidationError):
        EvaluationRecord.model_validate_json(text.replace('"schemaVersion":1', '"schemaVersion":2'))


def measured(precision: dict[int, list[float]], confusion: list[list[int]] | None) -> ModelScores:
    return scores(0.5, dict.fromkeys(precision, 0.5)).model_copy(
        update={"recall": list(RECALL_POINTS), "precision": precision, "confusion": confusion}
    )


def test_curves_and_the_confusion_matrix_join_the_record_named_and_rounded() -> None:
    curve = [1 / 3] * len(RECALL_POINTS)
    matrix = [[3, 0, 1, 0], [0, 0, 0, 0], [1, 0, 2, 1], [0, 0, 0, 0]]
    evaluation = held_out(measured({0: curve, 2: curve}, matrix), measured({0: curve}, None))
    mine = evaluation.candidate
    assert mine.pr_curves is not None and mine.confusion is not None
    assert mine.pr_curves.iou == 0.5 and mine.pr_curves.recall[:3] == [0.0, 0.01, 0.02]
    assert [(c.id, c.name) for c in mine.pr_curves.classes] == [(0, "circle"), (2, "triangle")]
    assert mine.pr_curves.classes[0].precision[0] == 0.3333  # CURVE_DECIMALS
    assert mine.confusion.class_names == ["circle", "square", "triangle", "background"]
    assert mine.confusion.matrix == matrix
    assert (mine.confusion.threshold, mine.confusion.iou) == (CONFUSION_CONF, CONFUSION_IOU)
    theirs = evaluation.baseline
    assert theirs is not None and theirs.confusion is None and theirs.pr_curves is not None
    # the record keeps them through JSON, without them where not measured
    original = record().model_copy(update={"datasets": [evaluation]})
    text = original.to_json()
    assert EvaluationRecord.model_validate_json(text) == original
    assert b'"prCurves"' in text and b'"classNames":["circle","square","triangle","background"]' in text
    assert text.count(b'"confusion"') == 1


def test_a_record_without_curves_still_reads_and_a_malformed_one_does_not() -> None:
    # schema version 1 as written before curves and matrices existed: the optional fields are absent
    plain = record().to_json()
    assert b"prCurves" not in plain and b"confusion" not in plain
    assert EvaluationRecord.model_validate_json(plain).datasets[0].candidate.pr_curves is None
    with pytest.raises(ValidationError, match="2 precision values for 3 recall points"):
        PRCurves.model_validate(
            {"recall": [0, 0.5, 1], "classes": [{"id": 0, "name": "a", "precision": [1, 0]}]}
        )
    with pytest.raises(ValidationError, match="must be 2 x 2"):
        Confusion.model_validate(
            {"threshold": 0.25, "iou": 0.45, "classNames": ["a", "background"], "matrix": [[1, 0], [0]]}
        )
    with pytest.raises(ValidationError):
        MapScores.model_validate(
            {
                "mAP50": 0.5,
                "mAP50_95": 0.3,
                "confusion": {
                    "threshold": 0.25,
                    "iou": 0.45,
                    "classNames": ["a", "background"],
                    "matrix": [[1, -1], [0, 0]],
                },
            }
        )


def test_an_80_class_record_with_curves_and_matrices_stays_small() -> None:
    # COCO's 80 classes, both models on both datasets, every curve point a full-precision float
    rng = np.random.default_rng(0)
    names = [f"class-{i:02d}-{'x' * 12}" for i in range(80)]

    def model() -> ModelScores:
        matrix = rng.integers(0, 30, (81, 81))
        matrix[np.arange(80), np.arange(80)] = rng.integers(1000, 99999, 80)
        return ModelScores(
            map50=0.6,
            map50_95=0.4,
            classes={i: ClassAP(ap50=rng.random(), ap50_95=rng.random()) for i in range(80)},
            labels=dict.fromkeys(range(80), 5000),
            recall=list(RECALL_POINTS),
            precision={i: sorted(rng.random(len(RECALL_POINTS)), reverse=True) for i in range(80)},
            confusion=matrix.tolist(),
        )

    datasets = [
        dataset_evaluation(role, "s3://d", 5000, names, model(), model()) for role in ("heldOut", "newFrames")
    ]
    big = record().model_copy(update={"class_names": names, "datasets": datasets})
    size = len(big.to_json())
    assert size < MAX_RECORD_BYTES / 16  # what the operator reads (16 MiB), with a wide margin
    assert size < 512 * 1024, size  # a few hundred KB for the API to serve and the console to draw
    assert EvaluationRecord.model_validate_json(big.to_json()) == big


# --- the trainer ------------------------------------------------------------------------------------


def test_the_trainer_tells_the_training_data_from_the_held_out_set() -> None:
    assert same_dataset("s3://data/shapes/v1", "s3://data/shapes/v1/")
    assert not same_dataset("s3://data/shapes/v1", "s3://data/shapes/v1-held-out")
    trained = {"aaa": "0001.jpg", "bbb": "0002.jpg"}
    assert shared_images(trained, {"ccc": "h1.jpg", "bbb": "h2.jpg"}) == ["h2.jpg"]
    assert shared_images(trained, {"ccc": "h1.jpg"}) == []


def test_a_refused_gate_is_the_trainers_one_line_error() -> None:
    from visioninapp.trainer.gate import GateError
    from visioninapp.trainer.main import describe_failure

    message = (
        "spec.evaluation.heldOut is the training dataset (s3://data/x): a held-out set is never trained on"
    )
    assert describe_failure(GateError(message), None) == message


def gated_job(**evaluation: Any) -> dict[str, Any]:
    return training_job(evaluation={"heldOut": {"uri": "datasets/helmets/held-out"}, **evaluation})


def test_the_trainer_config_needs_the_baselines_onnx_when_a_baseline_is_named() -> None:
    tj = TrainingJob.model_validate(gated_job(baseline="helmets-v1"))
    with pytest.raises(ValueError, match="baselineWeights"):
        TrainerConfig(name="helmets", namespace="vision", attempt=1, spec=tj.spec, output_uri="s3://out/x")


def test_the_result_with_a_long_verdict_fits_the_termination_message() -> None:
    result = TrainerResult.from_termination_message(result_message())
    outcome = GateOutcome(uri=RECORD_URI, sha256=SHA, passed=False, summary="x" * SUMMARY_LIMIT)
    crowded = result.model_copy(
        update={"evaluation": outcome, "class_names": [f"class-{i}" for i in range(400)]}
    )
    text = crowded.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert TrainerResult.from_termination_message(text).evaluation == outcome


# --- the operator: TrainingJob ---------------------------------------------------------------------


def gated_result(passed: bool) -> str:
    result = TrainerResult.from_termination_message(result_message())
    summary = (
        "passed: held-out mAP50-95 0.620 vs baseline 0.600 (+0.020)"
        if passed
        else record(False).verdict.summary
    )
    outcome = GateOutcome(uri=RECORD_URI, sha256="c" * 64, passed=passed, summary=summary)
    return result.model_copy(update={"evaluation": outcome}).to_termination_message()


def finished(passed: bool):
    body = with_status(gated_job(baseline="helmets-v1"), phase="Running", attempts=1, jobName="helmets-1")
    return plan(body, job([("Complete", "CompletionsReached")]), [pod("Succeeded", gated_result(passed))])


def test_a_failed_gate_still_creates_the_artifact_with_its_record_and_says_why() -> None:
    result = finished(passed=False)
    artifact = result.create_artifact
    assert artifact["spec"]["evaluation"] == {"uri": RECORD_URI, "sha256": "c" * 64}
    assert artifact["spec"]["stage"] == "candidate" and validate(artifact) == []
    gate = next(c for c in result.status["conditions"] if c["type"] == "QualityGate")
    assert (gate["status"], gate["reason"]) == ("False", "Failed")
    assert "held-out mAP50-95 dropped 0.200" in gate["message"]
    assert result.status["phase"] == "Succeeded" and "quality gate failed" in result.status["message"]
    assert result.event[:2] == ("Warning", "QualityGateFailed")


def test_a_passed_gate_is_a_true_condition() -> None:
    result = finished(passed=True)
    gate = next(c for c in result.status["conditions"] if c["type"] == "QualityGate")
    assert (gate["status"], gate["reason"]) == ("True", "Passed")
    assert result.event == ("Normal", "Succeeded", "ModelArtifact helmets created")


def test_a_missing_baseline_waits_and_a_resolved_one_reaches_the_trainer() -> None:
    body = gated_job(baseline="helmets-v1", newFrames={"uri": "s3://data/helmets/new"})
    problem = resolve_artifact_file("baseline", "helmets-v1", None, ("onnx",))
    waiting = plan(body, None, baseline=problem)
    assert waiting.create_job is None and waiting.status["phase"] == "Pending"
    scheduled = waiting.status["conditions"][0]
    assert (scheduled["reason"], scheduled["status"]) == ("BaselineUnavailable", "False")
    assert "baseline 'helmets-v1' (ModelArtifact) not found" in scheduled["message"]

    available = {
        "spec": {"formats": [{"format": "pt", "uri": "s3://models/b.pt", "sha256": "b" * 64}]},
        "status": {"phase": "Available"},
    }
    assert resolve_artifact_file("baseline", "v1", available, ("onnx",)).problem == (
        "baseline 'v1' has no `onnx` format"
    )
    available["spec"]["formats"].append({"format": "onnx", "uri": "s3://models/b.onnx", "sha256": SHA})
    baseline = resolve_artifact_file("baseline", "v1", available, ("onnx", "onnx-int8"))
    assert baseline == BaseModel(uri="s3://models/b.onnx", sha256=SHA)
    config = _trainer_config(plan(body, None, baseline=baseline).create_job)
    assert config["baselineWeights"] == {"uri": "s3://models/b.onnx", "sha256": SHA}
    # keys of the artifact store resolve like the training dataset's
    assert config["spec"]["evaluation"]["heldOut"]["uri"] == "s3://out/runs/datasets/helmets/held-out"
    assert config["spec"]["evaluation"]["newFrames"]["uri"] == "s3://data/helmets/new"


# --- the operator: ModelArtifact -------------------------------------------------------------------


def gated_artifact(data: bytes) -> dict[str, Any]:
    tj = TrainingJob.model_validate(gated_job())
    result = TrainerResult.from_termination_message(result_message())
    outcome = GateOutcome(uri=RECORD_URI, sha256=hashlib.sha256(data).hexdigest(), passed=True, summary="-")
    body = artifact_from_result(tj, result.model_copy(update={"evaluation": outcome}))
    body["metadata"]["generation"] = 1
    return body


def checked(data: bytes, stored: bytes | None = None) -> GateCheck:
    stored = data if stored is None else stored
    artifact = ModelArtifact.model_validate(gated_artifact(data))
    return check_evaluation(artifact, read=lambda uri: stored, size=lambda uri: len(stored))


def _json(value: EvaluationRecord) -> bytes:
    return value.model_dump_json(by_alias=True, exclude_none=True).encode()


def test_the_record_is_read_only_with_its_checksum_and_for_this_model() -> None:
    good = _json(record())
    assert checked(good).record == record()
    assert "the spec says" in (checked(good, stored=good + b" ").problem or "")
    assert "not an evaluation record" in (checked(b"{}").problem or "")
    other = _json(record(candidate_sha="d" * 64))
    assert "not this version's" in (checked(other).problem or "")
    artifact = ModelArtifact.model_validate(gated_artifact(good))
    missing = check_evaluation(artifact, read=lambda uri: b"", size=lambda uri: None)
    assert missing.problem == f"evaluation record {RECORD_URI} does not exist"


def test_a_failed_gate_is_in_status_with_why_and_blocks_promotion() -> None:
    data = _json(record(passed=False))
    body = gated_artifact(data)
    assert needs_gate_check(body) and promotion_blocked(body) == "quality gate not checked yet"
    plan_ = plan_artifact(body, [], None, [], NOW, gate=checked(data))
    gate = plan_.status["qualityGate"]
    assert gate["passed"] is False and gate["baseline"] == "helmets-v1" and gate["maxDrop"] == 0.01
    assert gate["heldOut"] == {"candidate": 0.4, "baseline": 0.6, "drop": 0.2}
    assert gate["reasons"] == [
        "held-out mAP50-95 dropped 0.200 (0.400 vs baseline 0.600; at most 0.010 allowed)"
    ]
    condition = next(c for c in plan_.status["conditions"] if c["type"] == "QualityGate")
    assert (condition["status"], condition["reason"]) == ("False", "Failed")
    assert plan_.event == ("Warning", "QualityGateFailed", record(passed=False).verdict.summary)
    body["status"] = plan_.status
    assert not needs_gate_check(body)  # final: the record is immutable
    assert (promotion_blocked(body) or "").startswith(
        "quality gate failed: failed: held-out mAP50-95 dropped"
    )
    assert artifact_status(body, None, NOW) == {}
    assert validate(body) == []  # the status fits the CRD


def test_a_passed_gate_allows_promotion_and_a_bad_record_does_not() -> None:
    data = _json(record(passed=True))
    body = gated_artifact(data)
    body["status"] = artifact_status(body, [], NOW, gate=checked(data))
    assert body["status"]["qualityGate"]["passed"] is True and promotion_blocked(body) is None
    tampered = gated_artifact(data)
    tampered["status"] = artifact_status(tampered, [], NOW, gate=checked(data, stored=b"{}"))
    condition = next(c for c in tampered["status"]["conditions"] if c["type"] == "QualityGate")
    assert (condition["status"], condition["reason"]) == ("False", "RecordInvalid")
    assert "qualityGate" not in tampered["status"] and promotion_blocked(tampered)
    unknown = gated_artifact(data)
    unknown["status"] = artifact_status(unknown, [], NOW, gate=GateCheck(error="store unreachable"))
    assert needs_gate_check(unknown)  # retried later
    plain = gated_artifact(data)
    del plain["spec"]["evaluation"]
    assert not needs_gate_check(plain) and promotion_blocked(plain) is None


# --- the CRDs --------------------------------------------------------------------------------------


def test_the_crd_refuses_a_negative_limit_and_the_training_data_as_held_out() -> None:
    assert validate(gated_job(maxDrop=0.02, maxClassDrop=0.05, baseline="helmets-v1")) == []
    assert [e.path for e in validate(gated_job(maxDrop=-0.01))] == ["spec.evaluation.maxDrop"]
    same = training_job(evaluation={"heldOut": {"uri": "s3://data/helmets/v3"}})
    errors = validate(same)
    assert [e.path for e in errors] == ["spec.evaluation.heldOut.uri"]
    assert "never trained on" in errors[0].message


def test_the_evaluation_of_a_version_and_of_a_run_cannot_change() -> None:
    data = _json(record())
    old = gated_artifact(data)
    new = {**old, "spec": {**old["spec"], "evaluation": {"uri": RECORD_URI, "sha256": "e" * 64}}}
    assert validate(new, old) and validate(old, old) == []
    tj_old = gated_job()
    tj_new = gated_job(maxDrop=0.5)
    assert validate(tj_new, tj_old)
