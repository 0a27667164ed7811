"""mAP of a detector on a YOLO-format split, in NumPy (no torch): the quality gate of quantization.

Same definition as ultralytics' validator: predictions at conf 0.001 / NMS IoU 0.7 with several
labels per box, matched to
labels per IoU threshold 0.50:0.05:0.95, AP as the area under the interpolated precision-recall
curve sampled at 101 recall points, averaged over classes present in the labels. Each of those
classes' own AP50 and AP50-95 (and label count) comes with the averages: the training quality gate
compares them class by class (visioninapp/evaluation.py). So does what the registry shows to decide
by: each class's precision-recall curve at IoU 0.5 (the envelope that AP50 is the area under, at the
same 101 recall points) and the confusion matrix as ultralytics' `ConfusionMatrix` counts it
(predictions above confidence 0.25, matched to labels of any class at IoU above 0.45).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visioninapp.edge.inference import Detector
from visioninapp.images import read_image

__all__ = [
    "CONFUSION_CONF",
    "CONFUSION_IOU",
    "IOU_THRESHOLDS",
    "RECALL_POINTS",
    "ClassEvaluation",
    "Evaluation",
    "average_precision",
    "class_average_precision",
    "confusion_matrix",
    "evaluate",
    "match_predictions",
    "precision_envelope",
]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0, 1, 101)  # where AP samples the precision envelope (COCO), and the PR curve
CONFUSION_CONF = 0.25  # ultralytics' ConfusionMatrix: predictions above this confidence count
CONFUSION_IOU = 0.45  # ... and match a label (of any class) at an IoU above this


@dataclass(frozen=True)
class ClassEvaluation:
    """One class present in the labels: its AP at IoU 0.5, averaged over 0.5:0.95, and its labels."""

    class_id: int
    ap50: float
    ap50_95: float
    labels: int
    # Its precision-recall curve at IoU 0.5: the precision envelope at RECALL_POINTS (AP50 is its area).
    precision50: tuple[float, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    map50: float
    map50_95: float
    images: int
    labels: int
    classes: tuple[ClassEvaluation, ...] = ()  # by class id, only classes with labels
    # Counts at CONFUSION_CONF / CONFUSION_IOU: rows the predicted class, columns the true class, each
    # with a last "background" entry (a missed label: background row; a false detection: background column).
    confusion: tuple[tuple[int, ...], ...] = ()


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (len(a), len(b))."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)  # type: ignore[no-any-return]


def _one_to_one(iou: np.ndarray, overlaps: np.ndarray, by_iou: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(label, prediction) pairs among the `overlaps` (labels x predictions), each label and each
    prediction at most once: each prediction takes its best-IoU label, then each label its first
    prediction (best-scored: predictions are in descending score order) or, `by_iou`, its best-IoU one."""
    labels, preds = np.nonzero(overlaps)
    if not len(labels):
        return labels, preds
    order = np.argsort(-iou[labels, preds], kind="stable")
    labels, preds = labels[order], preds[order]
    _, first_pred = np.unique(preds, return_index=True)  # each prediction: its best-IoU label
    labels, preds = labels[first_pred], preds[first_pred]  # now by prediction, best score first
    if by_iou:
        order = np.argsort(-iou[labels, preds], kind="stable")
        labels, preds = labels[order], preds[order]
    _, first_label = np.unique(labels, return_index=True)  # each label: its first prediction
    return labels[first_label], preds[first_label]


def match_predictions(pred_classes: np.ndarray, true_classes: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """For each prediction and IoU threshold, whether it is a true positive.

    Predictions are in descending score order; a label goes to the best-scored prediction that
    overlaps it enough, each prediction taking its best-IoU label (ultralytics' and COCO's rule).
    """
    correct = np.zeros((len(pred_classes), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(pred_classes) or not len(true_classes):
        return correct
    iou = iou * (true_classes[:, None] == pred_classes[None, :])  # labels x predictions
    for k, threshold in enumerate(IOU_THRESHOLDS):
        _, preds = _one_to_one(iou, iou >= threshold)
        correct[preds, k] = True
    return correct


def confusion_matrix(
    pred_classes: np.ndarray,
    scores: np.ndarray,
    true_classes: np.ndarray,
    iou: np.ndarray,
    num_classes: int,
    conf: float = CONFUSION_CONF,
    iou_threshold: float = CONFUSION_IOU,
) -> np.ndarray:
    """One image's confusion matrix as ultralytics' `ConfusionMatrix.process_batch` counts it:
    (num_classes + 1) square, rows the predicted class, columns the true class, the last of each the
    background. Predictions above `conf` are matched one to one to labels of any class overlapping
    them at an IoU above `iou_threshold` (the best IoU first); a matched label counts at (predicted,
    true), an unmatched label at (background, true), an unmatched prediction at (predicted, background).
    `iou` is labels x predictions; a class id of num_classes or more is refused."""
    if np.any(pred_classes >= num_classes) or np.any(true_classes >= num_classes):
        raise ValueError(f"a class id beyond the model's {num_classes} classes")
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    kept = scores > conf
    pred_classes, iou = pred_classes[kept], iou[:, kept]
    labels, preds = _one_to_one(iou, iou > iou_threshold, by_iou=True)
    np.add.at(matrix, (pred_classes[preds], true_classes[labels]), 1)
    missed = np.ones(len(true_classes), dtype=bool)
    missed[labels] = False
    matrix[num_classes, :num_classes] += np.bincount(true_classes[missed], minlength=num_classes)
    unmatched = np.ones(len(pred_classes), dtype=bool)
    unmatched[preds] = False
    matrix[:num_classes, num_classes] += np.bincount(pred_classes[unmatched], minlength=num_classes)
    return matrix


def precision_envelope(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The interpolated precision (the best precision at this recall or beyond) at RECALL_POINTS: the
    precision-recall curve as ultralytics plots it and as AP integrates it."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision, [0.0])))))
    return np.interp(RECALL_POINTS, r, p)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, sampled at 101 recall points (COCO)."""
    return float(np.trapezoid(precision_envelope(recall, precision), RECALL_POINTS))


def _labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        return np.zeros(0, dtype=int), np.zeros((0, 4))
    rows = np.array([line.split() for line in path.read_text().splitlines() if line.strip()], dtype=float)
    if not len(rows):
        return np.zeros(0, dtype=int), np.zeros((0, 4))
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return rows[:, 0].astype(int), np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def evaluate(detector: Detector, images: list[Path]) -> Evaluation:
    """mAP50 and mAP50-95 of `detector` on images with YOLO labels in the sibling `labels/` folder,
    with each labelled class's AP50, AP50-95, label count and PR curve, and the confusion matrix."""
    stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    true_counts: list[np.ndarray] = []
    matrices: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for path in images:
        image = read_image(path)
        height, width = image.shape[:2]
        label_path = Path(str(path.with_suffix(".txt")).replace("/images/", "/labels/"))
        true_classes, true_boxes = _labels(label_path, width, height)
        detections = detector.detect(image, conf=0.001, iou=0.7, multi_label=True).detections
        boxes = np.array([d.box for d in detections]).reshape(-1, 4)
        scores = np.array([d.score for d in detections])
        classes = np.array([d.class_id for d in detections], dtype=int)
        iou = _box_iou(true_boxes, boxes)
        correct = match_predictions(classes, true_classes, iou)
        stats.append((correct, scores, classes))
        true_counts.append(true_classes)
        matrices.append((classes, scores, true_classes, iou))
    correct = np.concatenate([s[0] for s in stats]) if stats else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    scores = np.concatenate([s[1] for s in stats]) if stats else np.zeros(0)
    classes = np.concatenate([s[2] for s in stats]) if stats else np.zeros(0, int)
    truth = np.concatenate(true_counts) if true_counts else np.zeros(0, int)
    per_class = class_average_precision(correct, scores, classes, truth)
    map50 = float(np.mean([c.ap50 for c in per_class])) if per_class else 0.0
    map50_95 = float(np.mean([c.ap50_95 for c in per_class])) if per_class else 0.0
    # the model's classes, and any id beyond them a label or a prediction carries
    num_classes = max([len(detector.class_names), *(int(c.max()) + 1 for c in (classes, truth) if len(c))])
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image_classes, image_scores, image_truth, iou in matrices:
        matrix += confusion_matrix(image_classes, image_scores, image_truth, iou, num_classes)
    confusion = tuple(tuple(int(v) for v in row) for row in matrix)
    return Evaluation(map50, map50_95, len(images), len(truth), per_class, confusion)


def class_average_precision(
    correct: np.ndarray, scores: np.ndarray, pred_classes: np.ndarray, true_classes: np.ndarray
) -> tuple[ClassEvaluation, ...]:
    """AP50, AP50-95 and the PR curve at IoU 0.5 of each class present in `true_classes` (every label
    of the split), from all predictions of the split: their per-threshold hits (`match_predictions`),
    scores and classes."""
    order = np.argsort(-scores, kind="stable")
    correct, pred_classes = correct[order], pred_classes[order]
    result = []
    for cls in np.unique(true_classes):
        hits = correct[pred_classes == cls]
        total = int((true_classes == cls).sum())
        ap = np.zeros(len(IOU_THRESHOLDS))
        curve = np.zeros(len(RECALL_POINTS))  # never predicted: no precision at any recall
        if len(hits):
            tp = np.cumsum(hits, 0)
            fp = np.cumsum(~hits, 0)
            recall, precision = tp / total, tp / (tp + fp)
            ap = np.array(
                [average_precision(recall[:, k], precision[:, k]) for k in range(len(IOU_THRESHOLDS))]
            )
            curve = precision_envelope(recall[:, 0], precision[:, 0])
        result.append(
            ClassEvaluation(int(cls), float(ap[0]), float(ap.mean()), total, tuple(float(v) for v in curve))
        )
    return tuple(result)
