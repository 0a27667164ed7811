"""Small test doubles around real backends (never instead of them)."""

from __future__ import annotations

from collections.abc import Sequence

from visioninapp.backends.events import EventBus, StreamMessage


class SwitchableBus(EventBus):
    """A real bus behind a switch: `up = False` makes publishing fail as an unreachable broker does."""

    def __init__(self, inner: EventBus, up: bool = True) -> None:
        self.inner, self.up = inner, up

    def publish(self, stream: str, producer: str, messages: Sequence[tuple[int, bytes]]) -> int:
        if not self.up:
            raise ConnectionError("broker unreachable")
        return self.inner.publish(stream, producer, messages)

    def last_publishing_id(self, stream: str, producer: str) -> int:
        return self.inner.last_publishing_id(stream, producer)

    def read(self, stream: str, offset: int, limit: int = 1000) -> list[StreamMessage]:
        return self.inner.read(stream, offset, limit)

    def store_offset(self, stream: str, consumer: str, offset: int) -> None:
        self.inner.store_offset(stream, consumer, offset)

    def query_offset(self, stream: str, consumer: str) -> int:
        return self.inner.query_offset(stream, consumer)
