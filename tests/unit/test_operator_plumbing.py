"""The operator's plumbing without a cluster: one plan at a time per object, and stream readers that
retry a failing read in place before asking for a new connection."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from visioninapp.backends.events import StreamMessage
from visioninapp.operator import streams
from visioninapp.operator.cache import Turns

KEY = ("vision", "helmets")


@pytest.mark.asyncio
async def test_a_plan_cancelled_before_its_turn_leaves_later_events_planned() -> None:
    turns, ran, started, release = Turns(), [], asyncio.Event(), asyncio.Event()

    async def first() -> None:
        started.set()
        await release.wait()
        ran.append("first")

    async def later() -> None:
        ran.append("later")

    running = asyncio.create_task(turns.run(KEY, first))
    await started.wait()  # `first` holds the object's turn
    waiting = asyncio.create_task(turns.run(KEY, later))
    await asyncio.sleep(0)  # one turn of the loop: the task queues itself before its first await
    assert turns.queued(KEY)
    waiting.cancel()  # e.g. shutdown, or the waiter's task torn down
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    release.set()
    await running
    await turns.run(KEY, later)  # must run, not be taken for "already queued"
    assert ran == ["first", "later"]


class _Reader:
    stream = "training-events"

    def __init__(self) -> None:
        self.batches: list[list[StreamMessage]] = []

    async def handle(self, messages: list[StreamMessage]) -> None:
        self.batches.append(messages)
        if messages:
            raise _Done

    def settled(self) -> bool:
        return True


class _Done(Exception):
    pass


class _Bus:
    def __init__(self, failures: int) -> None:
        self.failures, self.reads = failures, 0

    def query_offset(self, stream: str, consumer: str) -> int:
        return 0

    def read(self, stream: str, offset: int, limit: int) -> list[StreamMessage]:
        self.reads += 1
        if self.reads <= self.failures:
            raise ConnectionError("broker away")
        return [StreamMessage(offset=offset, body=b"{}")]

    def store_offset(self, *_: Any) -> None:
        pass


@pytest.mark.asyncio
async def test_a_failing_read_is_retried_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "READ_RETRY_SECONDS", 0)
    bus, reader = _Bus(failures=streams.READ_RETRIES - 1), _Reader()
    with pytest.raises(_Done):
        await asyncio.wait_for(streams.follow(bus, reader), 10)  # type: ignore[arg-type]
    assert bus.reads == streams.READ_RETRIES and len(reader.batches) == 1


@pytest.mark.asyncio
async def test_a_read_that_keeps_failing_hands_the_connection_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "READ_RETRY_SECONDS", 0)
    bus, reader = _Bus(failures=10**6), _Reader()
    with pytest.raises(ConnectionError):  # keep_following logs it and builds a new bus
        await asyncio.wait_for(streams.follow(bus, reader), 10)  # type: ignore[arg-type]
    assert bus.reads == streams.READ_RETRIES and reader.batches == []


def test_a_late_deletion_never_drops_a_newer_object_of_the_same_name() -> None:
    """Deleted and made again at once: kopf may hand over the old object's deletion after the new
    one's creation. The cache keeps the new one (it dropped it, and the new deployment was never
    planned again: its cameras map was neither re-owned nor made again)."""
    from visioninapp.operator.cache import ObjectCache

    cache = ObjectCache().deployments
    old = {"metadata": {"namespace": "ns", "name": "helmets", "uid": "old", "resourceVersion": "1"}}
    new = {"metadata": {"namespace": "ns", "name": "helmets", "uid": "new", "resourceVersion": "2"}}
    cache.remember(new)
    assert cache.forget(old["metadata"]) is None
    assert cache.get(("ns", "helmets")) == new
    assert cache.forget(new["metadata"]) == new and ("ns", "helmets") not in cache
    assert cache.remember(old) == old and ("ns", "helmets") not in cache  # a deleted object never comes back
