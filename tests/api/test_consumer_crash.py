"""A consumer killed (SIGKILL) in the middle of batches while events flow: every event lands exactly
once.

Where the kills land is not left to timing: the consumer runs with a test hook that reports each
batch once its rows are written (in the batch's transaction, before the offset commits) and holds
it there until the test lets it go. Each kill lands on a held batch — after the consumer committed
progress since the previous kill, before the producer finished — and the test asserts exactly that.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.api.conftest import build_settings
from tests.services import delete_streams
from visioninapp.api.db import ConsumerOffset, Database, EpochMetric, LogLine
from visioninapp.events import TrainingEvent
from visioninapp.factory import build_event_bus, build_search_index

pytestmark = pytest.mark.services

KILLS = 6
BATCH = 25  # the consumer's batch size here: many batches, so kills land deep in the stream
CHUNKS = KILLS + 2  # the producer publishes one chunk before each kill, the rest after the last
JOBS = 10
EPOCHS = 30  # per job, each published twice (a resumed attempt repeats it): one row per epoch
LOGS_PER_EPOCH = 3


def env_of(settings: Any) -> dict[str, str]:
    values = {
        "VISIONINAPP_DATA_DIR": str(settings.data_dir),
        "VISIONINAPP_DATABASE_URL": settings.database_url,
        "VISIONINAPP_ELASTICSEARCH_URL": settings.elasticsearch_url,
        "VISIONINAPP_SEARCH_INDEX_PREFIX": settings.search_index_prefix,
        "VISIONINAPP_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "VISIONINAPP_ARTIFACTS_URI": settings.artifacts_uri,
        "VISIONINAPP_RABBITMQ_HOST": settings.rabbitmq_host,
        "VISIONINAPP_TRAINING_STREAM": settings.training_stream,
        "VISIONINAPP_EDGE_STREAM": settings.edge_stream,
    }
    return {**os.environ, **{k: v for k, v in values.items() if v}}


def all_events() -> list[bytes]:
    events: list[bytes] = []
    for epoch in range(1, EPOCHS + 1):
        for job in range(JOBS):
            for attempt in (1, 2):
                events.append(
                    TrainingEvent(
                        type="epoch",
                        namespace="crash",
                        training_job=f"run-{job}",
                        attempt=attempt,
                        epoch=epoch,
                        epochs=EPOCHS,
                        mAP50=epoch / EPOCHS,
                    ).to_bytes()
                )
            for line in range(LOGS_PER_EPOCH):
                events.append(
                    TrainingEvent(
                        type="log",
                        namespace="crash",
                        training_job=f"run-{job}",
                        attempt=1,
                        message=f"epoch {epoch} line {line}",
                    ).to_bytes()
                )
    return events


# Run as the consumer process: `visioninapp-api consume` with small batches and a hold in each
# training batch (after its rows are written, before its offset commits) until stdin says "go".
CONSUMER = f"""
import sys
from visioninapp.api import consumers
from visioninapp.api.main import main

consumers.StreamConsumer.__init__.__defaults__ = ({BATCH},)
handle = consumers.TrainingEventConsumer.handle


def held(self, session, messages):
    result = handle(self, session, messages)
    print("HELD", messages[0].offset, messages[-1].offset, flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("the test stopped feeding the hook")
    return result


consumers.TrainingEventConsumer.handle = held
sys.argv = ["visioninapp-api", "consume"]
main()
"""


@dataclass(frozen=True)
class Kill:
    committed: int  # the consumer's committed offset when it was killed
    held: tuple[int, int]  # the batch it was in the middle of (rows written, not committed)
    published: int  # events published by then


class Consumer:
    """One consumer process with the hook; its reports arrive on a queue (a reader thread)."""

    def __init__(self, env: dict[str, str], log: Any) -> None:
        self.log = Path(log.name)
        self.process = subprocess.Popen(
            [sys.executable, "-c", CONSUMER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        self.reports: queue.Queue[tuple[int, int] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            words = line.decode().split()
            if words[:1] == ["HELD"]:
                self.reports.put((int(words[1]), int(words[2])))
        self.reports.put(None)  # the process closed its output: it exited

    def next_batch(self, timeout: float = 180) -> tuple[int, int]:
        """The next batch the consumer holds (its first and last offset)."""
        try:
            report = self.reports.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no batch in {timeout} s; consumers' log:\n{self._log_tail()}") from None
        assert report is not None, f"the consumer exited ({self.process.wait(5)}):\n{self._log_tail()}"
        return report

    def _log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()  # dead: nothing of the held batch can commit after this

    def terminate(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        assert self.process.wait(30) == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(20)


def chunks(events: list[bytes]) -> Iterator[list[tuple[int, bytes]]]:
    size = -(-len(events) // CHUNKS)
    for start in range(0, len(events), size):
        yield [(start + i + 1, body) for i, body in enumerate(events[start : start + size])]


def test_killed_consumer_resumes_with_nothing_lost_or_doubled(
    tmp_path: Path, mariadb_server: str, elasticsearch_url: str, s3_endpoint: str, rabbitmq_stream_port: int
) -> None:
    import sqlalchemy

    name = f"vt_crash_{os.getpid()}"
    admin = sqlalchemy.create_engine(f"{mariadb_server}/")
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    settings = build_settings(
        tmp_path,
        f"{mariadb_server}/{name}?charset=utf8mb4",
        redis_url=None,
        elasticsearch_url=elasticsearch_url,
        s3_endpoint=s3_endpoint,
        rabbitmq=True,
        kubeconfig=tmp_path / "unused",
        certs_url="http://127.0.0.1:1/unused",
    )
    # Stream names outside the pattern that every test session's start sweeps (`training-events-<hex>`):
    # another session starting meanwhile must not delete them mid-test. Deleted at the end.
    tag = uuid.uuid4().hex[:8]
    settings.training_stream, settings.edge_stream = f"crash-training-{tag}", f"crash-edge-{tag}"
    bus = build_event_bus(settings)
    events = all_events()
    pending = list(chunks(events))
    published = 0

    def publish_next() -> None:  # events keep flowing between (and during) the kills
        nonlocal published
        chunk = pending.pop(0)
        bus.publish(settings.training_stream, "crash-producer", chunk)
        published = chunk[-1][0]

    db = Database(settings.database_url or "")
    db.migrate()

    def committed() -> int:
        with db.session() as session:
            offset = session.scalar(
                select(ConsumerOffset.next_offset).where(ConsumerOffset.stream == settings.training_stream)
            )
        return offset or 0

    log_path = tmp_path / "consumer.log"
    log = log_path.open("ab")
    env = env_of(settings)
    kills: list[Kill] = []
    consumer = Consumer(env, log)
    try:
        publish_next()
        for k in range(KILLS):
            # Let 1 or 2 batches commit (progress since the last kill), then kill in the next one.
            for _ in range(1 + k % 2):
                consumer.next_batch()
                consumer.go()
            held = consumer.next_batch()  # its predecessors committed before it was read
            at = committed()
            consumer.kill()
            kills.append(Kill(at, held, published))
            publish_next()
            consumer = Consumer(env, log)
        while pending:
            publish_next()
        # The last consumer runs on: every batch let through until the stream is drained, then a
        # graceful stop (SIGTERM: the batch in flight commits first) and its exit.
        while consumer.next_batch()[1] != len(events) - 1:
            consumer.go()
        consumer.go()
        consumer.terminate()
        assert committed() == len(events), f"consumer stopped at {committed()} of {len(events)}: {log_path}"
    finally:
        consumer.stop()
        log.close()

    # Every kill landed mid-stream, in a batch whose rows were written but whose offset had not
    # committed, and after the consumer had committed progress since the previous kill.
    previous = 0
    for kill in kills:
        assert kill.held[0] == kill.committed, kills  # the batch began at the committed offset
        assert kill.held[1] > kill.held[0], kills  # a batch of several events
        assert kill.committed > previous, kills  # progress since the previous restart
        assert kill.held[1] < kill.published < len(events), kills  # the producer had more to send
        previous = kill.committed
    assert kills[-1].committed >= KILLS * BATCH

    with db.session() as session:
        epochs = session.scalar(select(func.count()).select_from(EpochMetric))
        logs = session.scalar(select(func.count()).select_from(LogLine))
        distinct_logs = session.scalar(select(func.count(func.distinct(LogLine.stream_offset))))
    assert epochs == JOBS * EPOCHS
    assert logs == distinct_logs == JOBS * EPOCHS * LOGS_PER_EPOCH
    search = build_search_index(settings)
    assert search.count("epochs") == JOBS * EPOCHS
    assert search.count("logs") == JOBS * EPOCHS * LOGS_PER_EPOCH
    db.dispose()
    bus.close()
    delete_streams([settings.training_stream, settings.edge_stream])
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
