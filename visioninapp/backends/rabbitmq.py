"""Event bus on RabbitMQ Streams (rstream), the production backend of `EventBus`.

rstream is asyncio; the bus owns one event loop in a daemon thread so that synchronous callers
(the trainer's callbacks, CLI tools) can use it, and async callers can run it in an executor.
Deduplication is the server's: messages carry explicit publishing ids under a publisher name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    Producer,
    RawMessage,
)

from visioninapp.backends.events import EventBus, StreamMessage

__all__ = ["RabbitStreamBus"]

T = TypeVar("T")
READ_IDLE_SECONDS = 0.5  # a read returns once the stream has been quiet this long,
READ_MAX_SECONDS = 2.0  # or after this long in all: a busy stream is never quiet (a large fleet)
OPERATION_TIMEOUT = 30.0


class RabbitStreamBus(EventBus):
    def __init__(
        self, host: str, port: int = 5552, user: str = "guest", password: str = "guest", vhost: str = "/"
    ) -> None:
        self._connection = {
            "host": host,
            "port": port,
            "username": user,
            "password": password,
            "vhost": vhost,
        }
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rstream", daemon=True)
        self._thread.start()
        self._producer: Producer | None = None
        # rstream keeps one publisher per stream and client, named by its first send: a producer
        # name of its own per client keeps each name's deduplication sequence apart.
        self._named_producers: dict[str, Producer] = {}
        self._consumer: Consumer | None = None
        self._streams: set[str] = set()
        self._in_flight: set[concurrent.futures.Future[Any]] = set()

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = OPERATION_TIMEOUT) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        self._in_flight.add(future)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # never leave it running (a subscription, a wait) behind the caller's back
            raise
        except concurrent.futures.CancelledError:
            raise ConnectionError("the event bus was closed during the call") from None
        finally:
            self._in_flight.discard(future)

    async def _get_producer(self) -> Producer:
        if self._producer is None:
            producer = Producer(**self._connection)  # type: ignore[arg-type]
            await producer.start()
            self._producer = producer
        return self._producer

    async def _producer_named(self, name: str) -> Producer:
        if name not in self._named_producers:
            producer = Producer(**self._connection)  # type: ignore[arg-type]
            await producer.start()
            self._named_producers[name] = producer
        return self._named_producers[name]

    async def _get_consumer(self) -> Consumer:
        if self._consumer is None:
            consumer = Consumer(**self._connection)  # type: ignore[arg-type]
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def _ensure_stream(self, stream: str) -> Producer:
        producer = await self._get_producer()
        if stream not in self._streams:
            await producer.create_stream(stream, exists_ok=True)
            self._streams.add(stream)
        return producer

    def ensure_stream(self, stream: str) -> None:
        self._run(self._ensure_stream(stream))

    def publish(self, stream: str, producer: str, messages: Sequence[tuple[int, bytes]]) -> int:
        async def send() -> int:
            await self._ensure_stream(stream)
            client = await self._producer_named(producer)
            last = await self._last_publishing_id(stream, producer)
            fresh = [RawMessage(body, publishing_id=pid) for pid, body in messages if pid > last]
            if fresh:
                confirmed: asyncio.Future[None] = self._loop.create_future()
                pending = {m.publishing_id for m in fresh}

                async def on_confirm(status: Any) -> None:
                    pending.discard(status.message_id)
                    if not pending and not confirmed.done():
                        confirmed.set_result(None)

                await client.send_batch(stream, fresh, publisher_name=producer, on_publish_confirm=on_confirm)
                await asyncio.wait_for(confirmed, OPERATION_TIMEOUT)
            return len(fresh)

        return self._run(send(), OPERATION_TIMEOUT + 5)

    async def _last_publishing_id(self, stream: str, producer: str) -> int:
        client = await (await self._get_producer())._get_or_create_client(stream)
        return int(await client.query_publisher_sequence(stream, producer))

    def last_publishing_id(self, stream: str, producer: str) -> int:
        async def query() -> int:
            await self._ensure_stream(stream)
            return await self._last_publishing_id(stream, producer)

        return self._run(query())

    def read(self, stream: str, offset: int, limit: int = 1000) -> list[StreamMessage]:
        async def collect() -> list[StreamMessage]:
            await self._ensure_stream(stream)
            consumer = await self._get_consumer()
            received: list[StreamMessage] = []
            arrived = asyncio.Event()

            async def on_message(body: AMQPMessage, context: MessageContext) -> None:
                if context.offset >= offset and len(received) < limit:
                    received.append(StreamMessage(context.offset, bytes(body)))
                    arrived.set()

            subscriber = await consumer.subscribe(
                stream,
                on_message,
                offset_specification=ConsumerOffsetSpecification(OffsetType.OFFSET, offset),
                initial_credit=max(10, min(limit, 1000)),
            )
            deadline = self._loop.time() + READ_MAX_SECONDS
            try:
                while len(received) < limit and self._loop.time() < deadline:
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), READ_IDLE_SECONDS)
                    except TimeoutError:
                        break
            finally:
                await consumer.unsubscribe(subscriber)
            return sorted(received, key=lambda m: m.offset)

        return self._run(collect(), OPERATION_TIMEOUT + 60)

    def store_offset(self, stream: str, consumer: str, offset: int) -> None:
        async def store() -> None:
            await (await self._get_consumer()).store_offset(stream, consumer, offset)

        self._run(store())

    def query_offset(self, stream: str, consumer: str) -> int:
        async def query() -> int:
            await self._ensure_stream(stream)
            try:
                return int(await (await self._get_consumer()).query_offset(stream, consumer))
            except Exception as error:  # rstream raises OffsetNotFound before the first store
                if type(error).__name__ == "OffsetNotFound":
                    return 0
                raise

        return self._run(query())

    def close(self) -> None:
        """Close the connections; a call still waiting in another thread (a read of a consumer that is
        being cancelled) fails at once with ConnectionError instead of waiting out its timeout, which
        held a stopping operator for up to 90 s."""
        for future in list(self._in_flight):
            future.cancel()

        async def shutdown() -> None:
            for client in (self._producer, self._consumer, *self._named_producers.values()):
                if client is not None:
                    await client.close()

        try:
            self._run(shutdown(), 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
