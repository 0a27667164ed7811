"""The hard-frame picker: which frames are worth a person's labelling time.

One picker per runtime (so per node and deployment), fed by `/v1/detect` and by every camera. A
frame is a candidate when one of its detections is uncertain (a score in the feedback range around
the threshold). It is kept unless the hourly budget is spent, its uncertain classes already have
their share of the budget (the budget split evenly between the classes seen uncertain this hour; a
kept frame counts for the rarest of its classes: a busy class cannot crowd out a rare one that shows
up later, nor is budget held back for classes never seen), it is a
near-duplicate of a recently kept frame, or sampling passes it over. Near-duplicate: the same scene
(64-bit difference hashes within `duplicate_bits`) with the same uncertain objects at the same
places (each one matched by class and IoU): a parked car seen by a fixed camera for an hour is one
frame, not 3,600, while a car driving through the same view is new in each position it is seen.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from visioninapp.edge.inference import Detection

__all__ = ["HardFramePicker", "Outcome", "difference_hash", "hamming"]

Box = tuple[float, float, float, float]
Outcome = Literal["kept", "certain", "disabled", "budget", "class_quota", "duplicate", "sampled"]
HOUR = 3600.0


def difference_hash(image: np.ndarray) -> int:
    """64-bit dHash: is each pixel of a 9x8 grey thumbnail brighter than its right neighbour."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@dataclass(frozen=True)
class _Seen:
    digest: int
    objects: tuple[tuple[str, Box], ...]

    def same_as(self, digest: int, objects: Sequence[tuple[str, Box]], bits: int, overlap: float) -> bool:
        if hamming(digest, self.digest) > bits or len(objects) != len(self.objects):
            return False
        return all(
            any(name == seen and _iou(box, other) >= overlap for seen, other in self.objects)
            for name, box in objects
        )


@dataclass
class HardFramePicker:
    enabled: bool
    min_score: float
    max_score: float
    sample_rate: float
    max_frames_per_hour: int
    duplicate_bits: int = 6  # of 64: the same scene with sensor noise and lighting drift
    duplicate_iou: float = 0.7  # an uncertain object this close to one seen before is the same
    recent: int = 512  # kept frames remembered for near-duplicate checks
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # the detect API's threads and the cameras' share one picker
        self._hour_start = self.clock()
        self._kept = 0
        self._per_class: Counter[str] = Counter()
        self._classes_seen: set[str] = set()
        self._seen: deque[_Seen] = deque(maxlen=self.recent)

    def uncertain(self, detections: Sequence[Detection]) -> list[str]:
        """Classes of the detections whose score is in the feedback range."""
        return sorted({d.class_name for d in detections if self.min_score <= d.score <= self.max_score})

    def pick(self, image: np.ndarray, detections: Sequence[Detection]) -> Outcome:
        """Decide about one frame; a `kept` frame is counted against the budget at once."""
        with self._lock:
            return self._pick(image, detections)

    def _pick(self, image: np.ndarray, detections: Sequence[Detection]) -> Outcome:
        if not self.enabled:
            return "disabled"
        classes = self.uncertain(detections)
        if not classes:
            return "certain"
        if self.clock() - self._hour_start >= HOUR:
            self._hour_start, self._kept = self.clock(), 0
            self._per_class.clear()
            self._classes_seen.clear()
        self._classes_seen.update(classes)
        if self._kept >= self.max_frames_per_hour:
            return "budget"
        quota = math.ceil(self.max_frames_per_hour / len(self._classes_seen))
        rarest = min(classes, key=lambda c: (self._per_class[c], c))
        if self._per_class[rarest] >= quota:
            return "class_quota"
        digest = difference_hash(image)
        objects = [(d.class_name, d.box) for d in detections if self.min_score <= d.score <= self.max_score]
        if any(s.same_as(digest, objects, self.duplicate_bits, self.duplicate_iou) for s in self._seen):
            return "duplicate"
        if self.rng.random() >= self.sample_rate:
            return "sampled"
        self._kept += 1
        self._per_class[rarest] += 1
        self._seen.append(_Seen(digest, tuple(objects)))
        return "kept"
