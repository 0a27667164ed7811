"""Publish TrainingEvents to the stream without ever stopping the training run.

Publishing ids are derived from the epoch (`epoch * 1_000_000 + n`), and the publisher name is the
same for every attempt of a TrainingJob. The stream drops ids it has already stored for that
name, so a resumed attempt that re-runs epochs never duplicates their events. While the broker is
unreachable, events wait in a bounded buffer and are sent with the next successful publish.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from visioninapp.backends.events import EventBus
from visioninapp.events import TrainingEvent

__all__ = ["EventPublisher"]

log = logging.getLogger(__name__)
IDS_PER_EPOCH = 1_000_000
BUFFER_LIMIT = 10_000


class EventPublisher:
    def __init__(self, bus: EventBus, stream: str, namespace: str, name: str, attempt: int) -> None:
        self.bus = bus
        self.stream = stream
        self.producer = f"trainer.{namespace}.{name}"
        self.namespace, self.name, self.attempt = namespace, name, attempt
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=BUFFER_LIMIT)
        self._epoch = 0  # last completed epoch: log lines are numbered after its event
        self._sequence = 0
        self._lock = threading.Lock()
        self.dropped = 0

    def start_from_epoch(self, epoch: int) -> None:
        """Number the next events after `epoch` (the epoch a resumed run starts from)."""
        self._epoch, self._sequence = epoch, 0

    def epoch(self, event: TrainingEvent) -> None:
        epoch = event.epoch or 0
        self._epoch, self._sequence = epoch, 0
        self._enqueue(epoch * IDS_PER_EPOCH, event)
        self.flush()

    def log_line(self, message: str, level: str = "INFO") -> None:
        self._sequence = min(self._sequence + 1, IDS_PER_EPOCH - 1)
        event = TrainingEvent(
            type="log",
            namespace=self.namespace,
            training_job=self.name,
            attempt=self.attempt,
            level=level,
            message=message[:8192],
        )
        self._enqueue(self._epoch * IDS_PER_EPOCH + self._sequence, event)

    def _enqueue(self, publishing_id: int, event: TrainingEvent) -> None:
        with self._lock:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1  # the oldest log line goes first; bounded memory beats a crash
            self._buffer.append((publishing_id, event.to_bytes()))

    def flush(self) -> bool:
        """Send what is buffered; returns False (and keeps it) when the broker is unreachable.

        The lock guards only the buffer: publishing and logging happen outside it, since a log
        line of another thread (a checkpoint upload) comes back here through the log handler."""
        with self._lock:
            pending = sorted(self._buffer)
            self._buffer.clear()
        if not pending:
            return True
        try:
            self.bus.publish(self.stream, self.producer, pending)
        except Exception as error:  # any broker failure: keep the events, keep training
            with self._lock:  # back in front of what arrived meanwhile (ids deduplicate a resend)
                arrived = list(self._buffer)
                self._buffer.clear()
                self._buffer.extend(pending + arrived)
            log.warning("events buffered (%d): cannot publish to %s: %r", len(pending), self.stream, error)
            return False
        return True

    @property
    def buffered(self) -> int:
        return len(self._buffer)
