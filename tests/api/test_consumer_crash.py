"""A consumer killed (SIGKILL) at random points while events flow: every event lands exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.api.conftest import build_settings
from visioninapp.api.db import ConsumerOffset, Database, EpochMetric, LogLine
from visioninapp.events import TrainingEvent
from visioninapp.factory import build_event_bus, build_search_index

pytestmark = pytest.mark.services

KILLS = 6
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
    bus = build_event_bus(settings)
    events = all_events()

    def produce() -> None:  # events keep flowing while the consumer is killed
        for start in range(0, len(events), 100):
            chunk = events[start : start + 100]
            bus.publish(
                settings.training_stream, "crash-producer", [(start + i + 1, b) for i, b in enumerate(chunk)]
            )
            time.sleep(0.05)

    log_path = tmp_path / "consumer.log"
    log = log_path.open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "visioninapp.api.main", "consume"],
            env=env_of(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    db = Database(settings.database_url or "")
    db.migrate()
    rng = random.Random(7)
    producer = threading.Thread(target=produce)
    producer.start()
    consumer = start()
    offset = None
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 2.5))  # some kills land mid-batch, some between batches
            os.killpg(consumer.pid, signal.SIGKILL)
            consumer.wait()
            consumer = start()
        producer.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with db.session() as session:
                offset = session.scalar(
                    select(ConsumerOffset.next_offset).where(
                        ConsumerOffset.stream == settings.training_stream
                    )
                )
            if offset == len(events):
                break
            time.sleep(0.5)
        assert offset == len(events), f"consumer stopped at {offset} of {len(events)}; log: {log_path}"
    finally:
        if consumer.poll() is None:
            os.killpg(consumer.pid, signal.SIGTERM)
            consumer.wait(20)
        log.close()

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
    with admin.begin() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
