"""mAP of a detector on a YOLO-format split, in NumPy (no torch): the quality gate of quantization.

Same definition as ultralytics' validator: predictions at conf 0.001 / NMS IoU 0.7 with several
labels per box, matched to
labels per IoU threshold 0.50:0.05:0.95, AP as the area under the interpolated precision-recall
curve sampled at 101 recall points, averaged over classes present in the labels. Each of those
classes' own AP50 and AP50-95 (and label count) comes with the averages: the training quality gate
compares them class by class (visioninapp/evaluation.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visioninapp.edge.inference import Detector
from visioninapp.images import read_image

__all__ = [
    "ClassEvaluation",
    "Evaluation",
    "average_precision",
    "class_average_precision",
    "evaluate",
    "match_predictions",
]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class ClassEvaluation:
    """One class present in the labels: its AP at IoU 0.5, averaged over 0.5:0.95, and its labels."""

    class_id: int
    ap50: float
    ap50_95: float
    labels: int


@dataclass(frozen=True)
class Evaluation:
    map50: float
    map50_95: float
    images: int
    labels: int
    classes: tuple[ClassEvaluation, ...] = ()  # by class id, only classes with labels


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (len(a), len(b))."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)  # type: ignore[no-any-return]


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
        labels, preds = np.nonzero(iou >= threshold)
        if not len(labels):
            continue
        order = np.argsort(-iou[labels, preds], kind="stable")
        labels, preds = labels[order], preds[order]
        _, first_pred = np.unique(preds, return_index=True)  # each prediction: its best-IoU label
        labels, preds = labels[first_pred], preds[first_pred]  # now by prediction, best score first
        _, first_label = np.unique(labels, return_index=True)  # each label: its best-scored prediction
        correct[preds[first_label], k] = True
    return correct


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, sampled at 101 recall points (COCO)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision, [0.0])))))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, r, p), x))


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
    with each labelled class's AP50, AP50-95 and label count."""
    stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    true_counts: list[np.ndarray] = []
    for path in images:
        image = read_image(path)
        height, width = image.shape[:2]
        label_path = Path(str(path.with_suffix(".txt")).replace("/images/", "/labels/"))
        true_classes, true_boxes = _labels(label_path, width, height)
        detections = detector.detect(image, conf=0.001, iou=0.7, multi_label=True).detections
        boxes = np.array([d.box for d in detections]).reshape(-1, 4)
        scores = np.array([d.score for d in detections])
        classes = np.array([d.class_id for d in detections], dtype=int)
        correct = match_predictions(classes, true_classes, _box_iou(true_boxes, boxes))
        stats.append((correct, scores, classes))
        true_counts.append(true_classes)
    correct = np.concatenate([s[0] for s in stats]) if stats else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    scores = np.concatenate([s[1] for s in stats]) if stats else np.zeros(0)
    classes = np.concatenate([s[2] for s in stats]) if stats else np.zeros(0, int)
    truth = np.concatenate(true_counts) if true_counts else np.zeros(0, int)
    per_class = class_average_precision(correct, scores, classes, truth)
    map50 = float(np.mean([c.ap50 for c in per_class])) if per_class else 0.0
    map50_95 = float(np.mean([c.ap50_95 for c in per_class])) if per_class else 0.0
    return Evaluation(map50, map50_95, len(images), len(truth), per_class)


def class_average_precision(
    correct: np.ndarray, scores: np.ndarray, pred_classes: np.ndarray, true_classes: np.ndarray
) -> tuple[ClassEvaluation, ...]:
    """AP50 and AP50-95 of each class present in `true_classes` (every label of the split), from all
    predictions of the split: their per-threshold hits (`match_predictions`), scores and classes."""
    order = np.argsort(-scores, kind="stable")
    correct, pred_classes = correct[order], pred_classes[order]
    result = []
    for cls in np.unique(true_classes):
        hits = correct[pred_classes == cls]
        total = int((true_classes == cls).sum())
        ap = np.zeros(len(IOU_THRESHOLDS))
        if len(hits):
            tp = np.cumsum(hits, 0)
            fp = np.cumsum(~hits, 0)
            recall, precision = tp / total, tp / (tp + fp)
            ap = np.array(
                [average_precision(recall[:, k], precision[:, k]) for k in range(len(IOU_THRESHOLDS))]
            )
        result.append(ClassEvaluation(int(cls), float(ap[0]), float(ap.mean()), total))
    return tuple(result)
