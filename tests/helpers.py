"""Small test helpers: waiting for a condition, and doubles around real backends (never instead of
them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

from visioninapp.backends.events import EventBus, StreamMessage

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    explain: Callable[[], str] | None = None,
    interval: float = 0.1,
) -> T:
    """Poll `condition()` until it returns something truthy, and return that; after `timeout`
    seconds fail, naming `what` (and adding `explain()`, e.g. a component's log)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{explain()}" if explain else "")
            )
        time.sleep(interval)


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
