"""Health summaries and hard-frame feedback, spooled on disk so that nothing is lost offline.

Every window the runtime writes one `EdgeEvent` into a spool directory; a sync pass publishes the
spool to `edge-events` with the spool number as publishing id (a resend after a crash is dropped by
the stream) and deletes what was confirmed. Low-confidence frames are sampled, rate-limited, and
spooled the same way until their upload to `<feedback uri>/<namespace>/<deployment>/<node>/`
succeeds (`visioninapp.feedback.feedback_prefix`), each named `<spool id>-<number>`: the spool id is
drawn once per spool directory, so a node whose state was wiped never overwrites its earlier frames.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from visioninapp.backends.events import EventBus
from visioninapp.backends.storage import ArtifactStore, join_uri
from visioninapp.edge.inference import Detection
from visioninapp.events import EdgeEvent
from visioninapp.feedback import feedback_prefix

__all__ = ["FeedbackSpool", "Spool", "WindowStats"]

log = logging.getLogger(__name__)
MAX_SPOOLED = 100_000


class Spool:
    """Numbered files in a directory, oldest first; the numbers survive restarts."""

    def __init__(self, directory: Path, suffix: str) -> None:
        self.directory, self.suffix = directory, suffix
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._next = max((self._number(p) for p in self.items()), default=0) + 1
        state = directory / "last-number"
        if state.exists():
            self._next = max(self._next, int(state.read_text() or 0) + 1)

    def _number(self, path: Path) -> int:
        return int(path.name.split(".")[0])

    def items(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{self.suffix}"), key=self._number)

    def add(self, payload: bytes, extra: dict[str, bytes] | None = None) -> int:
        with self._lock:
            number = self._next
            self._next += 1
            (self.directory / "last-number").write_text(str(number))
        for suffix, data in (extra or {}).items():
            (self.directory / f"{number:012d}{suffix}").write_bytes(data)
        partial = self.directory / f".{number:012d}{self.suffix}.partial"
        partial.write_bytes(payload)
        partial.replace(self.directory / f"{number:012d}{self.suffix}")  # complete or absent
        items = self.items()
        for old in items[: max(0, len(items) - MAX_SPOOLED)]:
            self.remove(old)  # bounded disk: the oldest goes first
        return number

    def remove(self, path: Path) -> None:
        stem = path.name.split(".")[0]
        for sibling in self.directory.glob(f"{stem}.*"):
            sibling.unlink(missing_ok=True)


@dataclass
class _Request:
    latency_ms: float
    error: bool
    low_confidence: bool


class WindowStats:
    """Requests and detections (of requests and camera frames) of the current window, summarised
    into an EdgeEvent at its end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[_Request] = []
        self._detections: Counter[str] = Counter()
        self._score_sum = 0.0
        self.started = datetime.now(UTC)

    def record(
        self, latency_ms: float, error: bool, low_confidence: bool, detections: Sequence[Detection] = ()
    ) -> None:
        """One detect request."""
        with self._lock:
            self._requests.append(_Request(latency_ms, error, low_confidence))
            self._count(detections)

    def detected(self, detections: Sequence[Detection]) -> None:
        """One camera frame's detections (not a request)."""
        with self._lock:
            self._count(detections)

    def _count(self, detections: Sequence[Detection]) -> None:
        self._detections.update(d.class_name for d in detections)
        self._score_sum += sum(d.score for d in detections)

    def close(self, **identity: object) -> EdgeEvent:
        with self._lock:
            requests, self._requests = self._requests, []
            detections, self._detections = self._detections, Counter()
            score_sum, self._score_sum = self._score_sum, 0.0
            start, self.started = self.started, datetime.now(UTC)
        latencies = np.array([r.latency_ms for r in requests if not r.error])
        count = sum(detections.values())
        return EdgeEvent(
            window_start=start,
            window_end=self.started,
            requests=len(requests),
            errors=sum(r.error for r in requests),
            p50_ms=float(np.percentile(latencies, 50)) if latencies.size else None,
            p95_ms=float(np.percentile(latencies, 95)) if latencies.size else None,
            detections_per_class=dict(detections),
            mean_confidence=min(1.0, score_sum / count) if count else None,
            low_confidence=sum(r.low_confidence for r in requests),
            **identity,
        )


def publish_spool(spool: Spool, bus: EventBus, stream: str, producer: str, batch: int = 500) -> int:
    """Send spooled events in order, a batch per round trip; returns how many were confirmed.

    Raises nothing: what could not be sent stays spooled for the next sync.
    """
    sent = 0
    items = spool.items()
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        try:
            bus.publish(stream, producer, [(int(p.name.split(".")[0]), p.read_bytes()) for p in chunk])
        except Exception as error:  # offline: try again at the next sync
            log.info("edge events spooled (%d): %s", len(items) - sent, error)
            break
        for path in chunk:
            spool.remove(path)
        sent += len(chunk)
    return sent


class FeedbackSpool:
    """Hard frames waiting for upload (image + detections JSON) to this node's own prefix."""

    def __init__(self, directory: Path, uri: str, namespace: str, deployment: str, node: str) -> None:
        self.spool = Spool(directory, ".json")
        self.prefix = feedback_prefix(uri, namespace, deployment, node)
        self.spool_id = self._spool_id(directory)
        self._uploaded: list[str] = []  # record URIs not announced yet
        self._uploaded_lock = threading.Lock()

    def take_uploaded(self, limit: int) -> list[str]:
        """Record URIs uploaded since the last call (at most `limit`; the rest wait), to announce."""
        with self._uploaded_lock:
            taken, self._uploaded = self._uploaded[:limit], self._uploaded[limit:]
        return taken

    @staticmethod
    def _spool_id(directory: Path) -> str:
        """Random, drawn when the spool directory is new: numbers restart with a new directory."""
        path = directory / "spool-id"
        if path.exists() and (text := path.read_text().strip()):
            return text
        value = secrets.token_hex(6)
        partial = directory / ".spool-id.partial"
        partial.write_text(value)
        partial.replace(path)
        return value

    def add(self, image: bytes, detections: list[dict[str, object]], provenance: dict[str, object]) -> None:
        """Spool a frame with the detections that made it hard and where it came from: the model
        (`model`, `sha256`), the pod template `revision`, the `camera` (absent for /v1/detect)."""
        record = {"time": datetime.now(UTC).isoformat(), **provenance, "detections": detections}
        self.spool.add(json.dumps(record).encode(), {".jpg": image})

    def object_uri(self, stem: str, suffix: str) -> str:
        return join_uri(self.prefix, f"{self.spool_id}-{stem}{suffix}")

    def upload(self, store: ArtifactStore) -> int:
        uploaded = 0
        for path in self.spool.items():
            stem = path.name.split(".")[0]
            image = path.with_name(f"{stem}.jpg")
            try:
                if image.exists():
                    store.put_file(image, self.object_uri(stem, ".jpg"))
                record = store.put_file(path, self.object_uri(stem, ".json"))  # last: it marks a frame
            except Exception as error:  # offline (or refused): keep the frame
                log.info("feedback frames spooled (%d): %s", len(self.spool.items()), error)
                break
            self.spool.remove(path)
            with self._uploaded_lock:
                self._uploaded.append(record.uri)
            uploaded += 1
        return uploaded
