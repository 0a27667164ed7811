"""Event bus: append-only streams with offsets, as RabbitMQ Streams provides them.

Publishing is idempotent per (producer name, publishing id): a retried publish with an id the
stream has already seen is dropped, so a producer that resends after a crash never double-counts.
Consumers read from an offset and store the offset they have processed under their name.
"""

from __future__ import annotations

import fcntl
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EventBus", "LocalEventLog", "StreamMessage"]


@dataclass(frozen=True)
class StreamMessage:
    offset: int
    body: bytes


class EventBus(ABC):
    """Append-only streams of bytes messages."""

    @abstractmethod
    def publish(self, stream: str, producer: str, messages: Sequence[tuple[int, bytes]]) -> int:
        """Append (publishing id, body) pairs; ids at or below the producer's last are dropped.

        Returns how many messages were appended.
        """

    @abstractmethod
    def last_publishing_id(self, stream: str, producer: str) -> int:
        """Highest publishing id stored for the producer (0 if none), to resume numbering."""

    @abstractmethod
    def read(self, stream: str, offset: int, limit: int = 1000) -> list[StreamMessage]:
        """Messages from `offset` on (at most `limit`)."""

    @abstractmethod
    def store_offset(self, stream: str, consumer: str, offset: int) -> None:
        """Remember the next offset a named consumer should read."""

    @abstractmethod
    def query_offset(self, stream: str, consumer: str) -> int:
        """The stored next offset of a consumer (0 if none)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class LocalEventLog(EventBus):
    """Streams as JSON-lines files in a directory (the embedded default, local mode).

    Safe across processes on one machine: appends hold an exclusive file lock.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _log(self, stream: str) -> Path:
        return self.directory / f"{stream}.jsonl"

    def _state(self, stream: str) -> Path:
        return self.directory / f"{stream}.state.json"

    def _load_state(self, stream: str) -> dict[str, dict[str, int]]:
        path = self._state(stream)
        return json.loads(path.read_text()) if path.exists() else {"producers": {}, "consumers": {}}

    def _save_state(self, stream: str, state: dict[str, dict[str, int]]) -> None:
        path = self._state(stream)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(state))
        partial.replace(path)

    def publish(self, stream: str, producer: str, messages: Sequence[tuple[int, bytes]]) -> int:
        with self._log(stream).open("ab") as log:
            fcntl.flock(log, fcntl.LOCK_EX)
            state = self._load_state(stream)
            last = state["producers"].get(producer, 0)
            appended = 0
            for publishing_id, body in messages:
                if publishing_id <= last:
                    continue
                log.write(body.replace(b"\n", b" ") + b"\n")
                last = publishing_id
                appended += 1
            log.flush()
            state["producers"][producer] = last
            self._save_state(stream, state)
        return appended

    def last_publishing_id(self, stream: str, producer: str) -> int:
        return self._load_state(stream)["producers"].get(producer, 0)

    def read(self, stream: str, offset: int, limit: int = 1000) -> list[StreamMessage]:
        path = self._log(stream)
        if not path.exists():
            return []
        out: list[StreamMessage] = []
        with path.open("rb") as log:
            for index, line in enumerate(log):
                if index < offset:
                    continue
                if len(out) >= limit or not line.endswith(b"\n"):
                    break
                out.append(StreamMessage(index, line[:-1]))
        return out

    def store_offset(self, stream: str, consumer: str, offset: int) -> None:
        with self._log(stream).open("ab") as log:
            fcntl.flock(log, fcntl.LOCK_EX)
            state = self._load_state(stream)
            state["consumers"][consumer] = offset
            self._save_state(stream, state)

    def query_offset(self, stream: str, consumer: str) -> int:
        return self._load_state(stream)["consumers"].get(consumer, 0)
