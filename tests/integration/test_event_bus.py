"""The RabbitMQ Streams bus under steady traffic: a read returns in bounded time even when the stream
is never quiet (a large fleet reports every second), and reading on from where it stopped loses and
repeats nothing."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.helpers import wait_for
from visioninapp.backends.rabbitmq import RabbitStreamBus

pytestmark = pytest.mark.services


def test_reads_of_a_never_quiet_stream_return_and_resume_exactly(rabbitmq_stream_port: int) -> None:
    stream = f"edge-events-{uuid.uuid4().hex[:8]}"
    writer = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
    reader = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
    writer.ensure_stream(stream)
    stop = threading.Event()

    def publish_steadily() -> None:  # a message every 50 ms: never 0.5 s of quiet
        number = 0
        while not stop.is_set():
            number += 1
            writer.publish(stream, "fleet", [(number, str(number).encode())])
            time.sleep(0.05)

    publisher = threading.Thread(target=publish_steadily, daemon=True)
    publisher.start()
    try:
        seen: list[int] = []
        offset = 0
        for _ in range(3):
            started = time.monotonic()
            messages = reader.read(stream, offset, 1000)
            # READ_MAX_SECONDS plus a subscription; waiting for a quiet stream took 52 s here
            assert time.monotonic() - started < 8, "a read waited for the stream to be quiet"
            assert messages, "a busy stream read returned nothing"
            seen += [int(m.body) for m in messages]
            offset = messages[-1].offset + 1
    finally:
        stop.set()
        publisher.join(10)
        for bus in (writer, reader):  # the session deletes the stream (tests/services.delete_test_streams)
            bus.close()
    assert seen == list(range(1, len(seen) + 1))  # in order, nothing lost or repeated


def test_closing_the_bus_ends_a_call_waiting_in_another_thread(rabbitmq_stream_port: int) -> None:
    """A consumer cancelled mid-read closes its bus while the read's thread still waits (an operator
    stopping on SIGTERM): that call fails at once, so the process can exit."""
    import asyncio

    bus = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
    outcome: list[BaseException | None] = []

    def wait_for_ever() -> None:
        try:
            bus._run(asyncio.Event().wait(), timeout=3600)  # stands in for a read that waits long
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    caller = threading.Thread(target=wait_for_ever, daemon=True)
    caller.start()
    wait_for(lambda: bus._in_flight, 10, "the call in flight")
    bus.close()
    caller.join(30)
    assert not caller.is_alive(), "the call still waits after the bus was closed"
    assert isinstance(outcome[0], ConnectionError) and "closed" in str(outcome[0])
