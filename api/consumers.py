"""Stream consumers: `training-events` and `edge-events` into SQL, the search index and S3.

Exactly once, with no coordination service: each batch is one SQL transaction that locks the
consumer's offset row, reads the stream from that offset, writes the rows, indexes them under
ids derived from the stream offset (a replay overwrites, never duplicates), archives raw log lines
under a key derived from the offset range, and moves the offset — all committed together. A
consumer killed anywhere before the commit replays the same batch; after it, nothing is replayed.
Several API replicas may run consumers: the row lock serialises them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from visioninapp.api.db import (
    ConsumerOffset,
    Database,
    EdgeWindow,
    EpochMetric,
    FrameAnnouncement,
    LogLine,
    TrainingRun,
)
from visioninapp.api.domain.ledger import record_window
from visioninapp.backends.events import EventBus, StreamMessage
from visioninapp.backends.search import SearchIndex
from visioninapp.backends.storage import ArtifactStore, join_uri
from visioninapp.events import EdgeEvent, TrainingEvent
from visioninapp.factory import artifact_store_for
from visioninapp.settings import Settings

__all__ = [
    "BatchResult",
    "EdgeEventConsumer",
    "StreamConsumer",
    "TrainingEventConsumer",
    "make_consumers",
    "run_consumers",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    read: int
    written: int
    skipped: int
    next_offset: int


class StreamConsumer:
    """Reads one stream in batches; subclasses turn messages into rows and documents."""

    name = "api"
    stream = ""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        search: SearchIndex,
        batch_size: int = 500,
    ) -> None:
        self.db = db
        self.bus = bus
        self.search = search
        self.batch_size = batch_size

    def _offset_row(self, session: Session) -> ConsumerOffset:
        query = select(ConsumerOffset).where(
            ConsumerOffset.consumer == self.name, ConsumerOffset.stream == self.stream
        )
        row = session.scalars(query.with_for_update()).first()
        if row is None:
            session.add(ConsumerOffset(consumer=self.name, stream=self.stream, next_offset=0))
            session.flush()
            row = session.scalars(query.with_for_update()).one()
        return row

    def ensure_offset_row(self) -> None:
        with self.db.session() as session:
            self._offset_row(session)

    def poll_once(self) -> BatchResult:
        """Process at most one batch; returns what it did (read == 0: the stream is drained)."""
        with self.db.session() as session:
            row = self._offset_row(session)
            messages = self.bus.read(self.stream, row.next_offset, self.batch_size)
            written = skipped = 0
            if messages:
                written, skipped = self.handle(session, messages)
                row.next_offset = messages[-1].offset + 1
        return BatchResult(len(messages), written, skipped, row.next_offset)

    def handle(self, session: Session, messages: list[StreamMessage]) -> tuple[int, int]:
        raise NotImplementedError

    def run(self, stop: threading.Event, idle_seconds: float = 1.0) -> None:
        """Consume until `stop` is set; errors are logged and retried with a growing pause."""
        self.ensure_offset_row()
        failures = 0
        while not stop.is_set():
            try:
                result = self.poll_once()
                failures = 0
                if result.read == 0:
                    stop.wait(idle_seconds)
            except Exception:
                failures += 1
                pause = min(30.0, 0.5 * 2**failures)
                log.exception("%s consumer of %s failed; retrying in %.1f s", self.name, self.stream, pause)
                stop.wait(pause)


def _decode(model: type[TrainingEvent] | type[EdgeEvent], message: StreamMessage) -> Any:
    try:
        return model.from_bytes(message.body)
    except (ValidationError, ValueError) as error:
        # A malformed event must not stop the stream: it is logged with its offset and skipped.
        log.warning("skipping malformed event at offset %d: %s", message.offset, error)
        return None


class TrainingEventConsumer(StreamConsumer):
    stream = "training-events"

    def __init__(self, *args: Any, archive: tuple[ArtifactStore, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.archive = archive  # (store, base URI) for raw log lines, or None

    def handle(self, session: Session, messages: list[StreamMessage]) -> tuple[int, int]:
        epochs: list[tuple[str, dict[str, Any]]] = []
        logs: list[tuple[str, dict[str, Any]]] = []
        raw_logs: list[bytes] = []
        skipped = 0
        for message in messages:
            event: TrainingEvent | None = _decode(TrainingEvent, message)
            if event is None:
                skipped += 1
                continue
            if event.type == "epoch" and event.epoch is not None:
                self._upsert_epoch(session, event, message.offset)
                doc_id = f"{event.namespace}/{event.training_job}/{event.epoch}"
                epochs.append((doc_id, _epoch_document(event)))
            elif event.type == "log":
                session.add(
                    LogLine(
                        project_name=event.namespace,
                        training_job=event.training_job,
                        attempt=event.attempt,
                        time=event.time,
                        level=event.level or "INFO",
                        message=event.message or "",
                        stream_offset=message.offset,
                    )
                )
                logs.append((f"{self.stream}-{message.offset}", _log_document(event)))
                raw_logs.append(message.body)
            else:
                skipped += 1
        session.flush()  # a constraint violation surfaces here, before anything leaves the process
        self.search.index_many("epochs", epochs)
        self.search.index_many("logs", logs)
        if self.archive is not None and raw_logs:
            store, base = self.archive
            first, last = messages[0].offset, messages[-1].offset
            key = join_uri(base, "logs", self.stream, f"{first:012d}-{last:012d}.jsonl")
            store.put_bytes(b"\n".join(raw_logs) + b"\n", key)
        return len(epochs) + len(logs), skipped

    @staticmethod
    def _upsert_epoch(session: Session, event: TrainingEvent, offset: int) -> None:
        row = session.scalars(
            select(EpochMetric).where(
                EpochMetric.project_name == event.namespace,
                EpochMetric.training_job == event.training_job,
                EpochMetric.epoch == event.epoch,
            )
        ).first()
        values = {
            "epochs": event.epochs,
            "attempt": event.attempt,
            "time": event.time,
            "map50": event.map50,
            "map50_95": event.map50_95,
            "precision": event.precision,
            "recall": event.recall,
            "losses": dict(event.losses),
            "lr": event.lr,
            "images_per_second": event.images_per_second,
            "stream_offset": offset,
        }
        if row is None:
            session.add(
                EpochMetric(
                    project_name=event.namespace, training_job=event.training_job, epoch=event.epoch, **values
                )
            )
        else:  # a resumed attempt repeated the epoch: the newest values win, still one row
            for key, value in values.items():
                setattr(row, key, value)
        run = session.scalars(
            select(TrainingRun).where(
                TrainingRun.project_name == event.namespace, TrainingRun.name == event.training_job
            )
        ).first()
        if run is not None:
            run.epochs_seen = max(run.epochs_seen, event.epoch or 0)
            if event.map50 is not None and (run.best_map50 is None or event.map50 > run.best_map50):
                run.best_map50 = event.map50


def _epoch_document(event: TrainingEvent) -> dict[str, Any]:
    return {
        "project": event.namespace,
        "name": event.training_job,
        "title": f"{event.training_job} epoch {event.epoch}",
        "epoch": event.epoch,
        "map50": event.map50,
        "time": event.time.isoformat(),
        "attempt": event.attempt,
    }


def _log_document(event: TrainingEvent) -> dict[str, Any]:
    return {
        "project": event.namespace,
        "name": event.training_job,
        "title": f"{event.training_job} log",
        "level": event.level or "INFO",
        "message": event.message or "",
        "time": event.time.isoformat(),
        "attempt": event.attempt,
    }


class EdgeEventConsumer(StreamConsumer):
    stream = "edge-events"

    def handle(self, session: Session, messages: list[StreamMessage]) -> tuple[int, int]:
        skipped = 0
        written = 0
        for message in messages:
            event: EdgeEvent | None = _decode(EdgeEvent, message)
            if event is None:
                skipped += 1
                continue
            session.add(
                EdgeWindow(
                    project_name=event.namespace,
                    deployment=event.deployment,
                    node=event.node,
                    revision=event.revision,
                    model_version=event.model_version,
                    window_start=event.window_start,
                    window_end=event.window_end,
                    requests=event.requests,
                    errors=event.errors,
                    p50_ms=event.p50_ms,
                    p95_ms=event.p95_ms,
                    detections_per_class=dict(event.detections_per_class),
                    mean_confidence=event.mean_confidence,
                    low_confidence=event.low_confidence,
                    provider=event.provider,
                    ready=event.ready,
                    reason=event.reason,
                    cameras=[camera.model_dump(mode="json", by_alias=True) for camera in event.cameras],
                    stream_offset=message.offset,
                )
            )
            record_window(session, event)
            for uri in event.frames:  # imported (and checked) by the cluster sync
                session.add(
                    FrameAnnouncement(
                        project_name=event.namespace, deployment=event.deployment, node=event.node, uri=uri
                    )
                )
            written += 1
        return written, skipped


def make_consumers(
    settings: Settings, db: Database, bus: EventBus, search: SearchIndex
) -> list[StreamConsumer]:
    """The API's two consumers, on the streams and the archive the settings name."""
    base = settings.resolved_artifacts_uri
    training = TrainingEventConsumer(db, bus, search, archive=(artifact_store_for(base, settings), base))
    training.stream = settings.training_stream
    edge = EdgeEventConsumer(db, bus, search)
    edge.stream = settings.edge_stream
    return [training, edge]


def run_consumers(consumers: list[StreamConsumer], stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for consumer in consumers:
        thread = threading.Thread(
            target=consumer.run, args=(stop,), name=f"consume-{consumer.stream}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads


def wait_drained(consumer: StreamConsumer, timeout: float = 30.0) -> None:
    """Poll until a batch reads nothing (tests and the reindex command)."""
    deadline = time.monotonic() + timeout
    while consumer.poll_once().read:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{consumer.stream} not drained within {timeout} s")
