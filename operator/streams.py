"""The operator's stream readers, all of one shape: a reader handles each batch of messages, and
`follow` reads its stream from the stored offset forever, storing the offset once the reader has
acted on everything before it (`settled`), so a restarted operator resumes where it stopped.

- `ProgressReader`: training-events → live epoch and metrics in TrainingJob status;
- `HealthReader`: edge-events → per-node health of each deployment; the affected rollouts re-plan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from visioninapp.backends.events import EventBus, StreamMessage
from visioninapp.events import EdgeEvent, TrainingEvent
from visioninapp.factory import build_event_bus
from visioninapp.operator.context import Key, log
from visioninapp.operator.progress import ProgressTracker
from visioninapp.operator.rollout_step import EdgeHealthTracker
from visioninapp.settings import Settings

__all__ = ["CONSUMER", "HealthReader", "ProgressReader", "follow", "keep_following"]

CONSUMER = "visioninapp-operator"
BATCH = 1000
READ_RETRY_SECONDS = 2.0  # the broker is away: keep the offset, try again
READ_RETRIES = 5  # then the connection itself is suspect: `keep_following` builds a new one
RESTART_SECONDS = 5.0


class Reader(Protocol):
    stream: str

    async def handle(self, messages: list[StreamMessage]) -> None:
        """Act on one batch (possibly empty: time passes for rate limits)."""

    def settled(self) -> bool:
        """Everything handled so far is acted on: its offset may be stored."""


class ProgressReader:
    """training-events → at most one status patch per TrainingJob and interval."""

    def __init__(
        self,
        stream: str,
        tracker: ProgressTracker,
        patch_status: Callable[[str, str, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.stream, self.tracker, self.patch_status = stream, tracker, patch_status

    async def handle(self, messages: list[StreamMessage]) -> None:
        for message in messages:
            try:
                self.tracker.add(TrainingEvent.model_validate_json(message.body))
            except ValueError:
                log.warning("skipping a malformed event at offset %d of %s", message.offset, self.stream)
        for (namespace, name), patch in self.tracker.due(asyncio.get_running_loop().time()):
            await self.patch_status(namespace, name, patch)

    def settled(self) -> bool:
        return not self.tracker.pending


class HealthReader:
    """edge-events → the health tracker; each deployment that heard from a node re-plans once."""

    def __init__(
        self, stream: str, health: EdgeHealthTracker, replan: Callable[[str, str], Awaitable[None]]
    ) -> None:
        self.stream, self.health, self.replan = stream, health, replan

    async def handle(self, messages: list[StreamMessage]) -> None:
        touched: set[Key] = set()
        for message in messages:
            try:
                event = EdgeEvent.model_validate_json(message.body)
            except ValueError:
                continue
            self.health.add(event)
            touched.add((event.namespace, event.deployment))
        for namespace, name in touched:
            await self.replan(namespace, name)

    def settled(self) -> bool:
        return True  # health is kept in memory: a restart rebuilds it from newer events


async def follow(bus: EventBus, reader: Reader, poll_seconds: float = 0.5) -> None:
    """Read `reader.stream` from the stored offset forever."""
    stream = reader.stream
    offset = stored = await asyncio.to_thread(bus.query_offset, stream, CONSUMER)
    failures = 0
    while True:
        try:
            messages = await asyncio.to_thread(bus.read, stream, offset, BATCH)
        except Exception as error:
            failures += 1
            if failures >= READ_RETRIES:
                raise
            log.warning("cannot read %s (try %d of %d): %s", stream, failures, READ_RETRIES, error)
            await asyncio.sleep(READ_RETRY_SECONDS)
            continue
        failures = 0
        await reader.handle(messages)
        if messages:
            offset = messages[-1].offset + 1
        if reader.settled() and offset != stored:
            await asyncio.to_thread(bus.store_offset, stream, CONSUMER, offset)
            stored = offset
        if not messages:
            await asyncio.sleep(poll_seconds)


async def keep_following(settings: Settings, make_reader: Callable[[], Reader]) -> None:
    """`follow` forever with a bus of its own: on any failure log it and start again from the stored
    offset (with a fresh reader)."""
    while True:
        bus: EventBus | None = None
        reader = make_reader()
        try:
            bus = await asyncio.to_thread(build_event_bus, settings)
            await follow(bus, reader)
        except Exception:
            log.exception("the %s consumer failed; restarting it in %.0f s", reader.stream, RESTART_SECONDS)
            await asyncio.sleep(RESTART_SECONDS)
        finally:
            if bus is not None:
                await asyncio.to_thread(bus.close)
