"""Live training progress: `training-events` → `status.epoch` and `status.metrics`.

`ProgressTracker` is the pure part: it keeps the newest epoch per TrainingJob and hands out at most
one status patch per job per interval. streams.py runs it against the stream with a stored offset,
so a restarted operator resumes where it stopped (and a replayed event is harmless: the patch sets
absolute values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visioninapp.events import TrainingEvent

__all__ = ["ProgressTracker"]

Key = tuple[str, str]  # (namespace, training job)


@dataclass
class ProgressTracker:
    interval: float
    _latest: dict[Key, TrainingEvent] = field(default_factory=dict)
    _sent: dict[Key, tuple[float, int]] = field(default_factory=dict)  # when, which epoch

    def add(self, event: TrainingEvent) -> None:
        if event.type != "epoch" or event.epoch is None:
            return
        key = (event.namespace, event.training_job)
        latest = self._latest.get(key)
        if latest is None or (event.attempt, event.epoch) >= (latest.attempt, latest.epoch or 0):
            self._latest[key] = event

    def due(self, now: float) -> list[tuple[Key, dict[str, Any]]]:
        """Patches to send now: one per job with a newer epoch, at most one per `interval`."""
        patches = []
        for key, event in list(self._latest.items()):
            sent_at, sent_epoch = self._sent.get(key, (float("-inf"), -1))
            if event.epoch == sent_epoch or now - sent_at < self.interval:
                continue
            metrics = event.metrics().model_dump(mode="json", by_alias=True, exclude_none=True)
            metrics = {name: value for name, value in metrics.items() if value != {}}
            patch: dict[str, Any] = {"epoch": event.epoch}
            if event.epochs is not None:
                patch["epochs"] = event.epochs
            if metrics:
                patch["metrics"] = metrics
            patches.append((key, patch))
            self._sent[key] = (now, event.epoch or 0)
        return patches

    @property
    def pending(self) -> bool:
        return any(self._sent.get(k, (0, -1))[1] != e.epoch for k, e in self._latest.items())
