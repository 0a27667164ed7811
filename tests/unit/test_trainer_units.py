"""Trainer pieces without training: dataset checks, config errors, event publishing and buffering."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SwitchableBus
from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.storage import LocalArtifactStore
from visioninapp.datasets import DatasetError, fetch_dataset, validate_dataset
from visioninapp.events import TrainingEvent
from visioninapp.synth import generate_dataset
from visioninapp.trainer.config import ConfigError, load_config
from visioninapp.trainer.publisher import BUFFER_LIMIT, EventPublisher


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    generate_dataset(tmp_path / "ds", train=5, val=2, imgsz=64, seed=4)
    return tmp_path / "ds"


def test_valid_dataset_resolves_an_absolute_path(dataset: Path, tmp_path: Path) -> None:
    names = validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")
    assert names == ["circle", "square", "triangle", "cross"]
    assert f"path: {dataset.resolve()}" in (tmp_path / "resolved.yaml").read_text()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "labels/train/train_00000.txt").write_text("0 0.5 0.5 1.4 0.2\n"), "not normalised"),
        (
            lambda d: (d / "labels/train/train_00000.txt").write_text("0 0.5 0.5\n"),
            "expected `class cx cy w h`",
        ),
        (lambda d: (d / "labels/val/val_00000.txt").write_text("a b c d e\n"), "not numbers"),
        (
            lambda d: (d / "labels/train/orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n"),
            "label without an image",
        ),
        (
            lambda d: (d / "data.yaml").write_text("train: images/train\nval: images/val\n"),
            "`names` is missing",
        ),
        (
            lambda d: (d / "data.yaml").write_text(
                "train: images/train\nval: images/val\nnc: 3\nnames: [a, b]\n"
            ),
            "nc is 3 but 2 names",
        ),
        (
            lambda d: (d / "data.yaml").write_text("train: images/nope\nval: images/val\nnames: [a]\n"),
            "train images not found",
        ),
    ],
)
def test_bad_datasets_name_the_file_and_the_problem(dataset: Path, tmp_path: Path, damage, message) -> None:  # type: ignore[no-untyped-def]
    damage(dataset)
    with pytest.raises(DatasetError, match=message):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")


def test_many_bad_files_are_summarised(dataset: Path, tmp_path: Path) -> None:
    for i in range(5):
        (dataset / "labels" / "train" / f"train_{i:05d}.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"dataset has 5 bad file\(s\): labels/train/train_00000.txt"):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")


def test_local_dataset_is_used_in_place_and_missing_one_is_named(dataset: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore()
    assert fetch_dataset(store, dataset.as_uri(), "data.yaml", tmp_path / "x") == dataset
    with pytest.raises(DatasetError, match=r"dataset not found: .*/missing/data\.yaml"):
        fetch_dataset(store, (tmp_path / "missing").as_uri(), "data.yaml", tmp_path / "x")


def test_config_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISIONINAPP_TRAINER_CONFIG", raising=False)
    monkeypatch.delenv("VISIONINAPP_TRAINER_CONFIG_JSON", raising=False)
    with pytest.raises(ConfigError, match="no config"):
        load_config()
    monkeypatch.setenv("VISIONINAPP_TRAINER_CONFIG_JSON", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config()
    base = (
        '{"name": "a", "namespace": "b", "attempt": 1, "outputUri": "s3://bucket/x", '
        '"spec": {"model": {"baseModel": "m"}, "dataset": {"uri": "s3://bucket/d"}}}'
    )
    monkeypatch.setenv("VISIONINAPP_TRAINER_CONFIG_JSON", base)
    with pytest.raises(ConfigError, match="baseWeights"):
        load_config()


def _epoch(epoch: int, attempt: int = 1) -> TrainingEvent:
    return TrainingEvent(
        type="epoch", namespace="ns", training_job="tj", attempt=attempt, epoch=epoch, epochs=5
    )


def test_resumed_attempt_does_not_duplicate_epoch_events(tmp_path: Path) -> None:
    bus = LocalEventLog(tmp_path)
    first = EventPublisher(bus, "training-events", "ns", "tj", attempt=1)
    for epoch in (1, 2, 3):
        first.log_line(f"epoch {epoch} running")
        first.epoch(_epoch(epoch))
    # Killed after epoch 3, but the checkpoint is from epoch 2: attempt 2 re-runs epoch 3.
    second = EventPublisher(bus, "training-events", "ns", "tj", attempt=2)
    second.start_from_epoch(2)
    for epoch in (3, 4):
        second.log_line(f"epoch {epoch} running")
        second.epoch(_epoch(epoch, attempt=2))
    events = [TrainingEvent.from_bytes(m.body) for m in bus.read("training-events", 0)]
    epochs = [(e.epoch, e.attempt) for e in events if e.type == "epoch"]  # type: ignore[attr-defined]
    assert epochs == [(1, 1), (2, 1), (3, 1), (4, 2)]


def test_events_wait_in_a_bounded_buffer_while_the_broker_is_down(tmp_path: Path) -> None:
    bus = SwitchableBus(LocalEventLog(tmp_path), up=False)
    publisher = EventPublisher(bus, "training-events", "ns", "tj", attempt=1)
    publisher.epoch(_epoch(1))  # no exception: training goes on
    publisher.epoch(_epoch(2))
    assert publisher.buffered == 2
    bus.up = True
    assert publisher.flush() and publisher.buffered == 0
    assert len(bus.read("training-events", 0)) == 2
    bus.up = False
    for i in range(BUFFER_LIMIT + 5):
        publisher.log_line(f"line {i}")
    assert publisher.buffered == BUFFER_LIMIT and publisher.dropped == 5


def test_another_threads_log_line_during_a_failing_publish_neither_waits_nor_is_lost(tmp_path: Path) -> None:
    """A checkpoint upload logs (→ a log event) while an epoch's publish fails: the trainer once
    deadlocked there (the buffer's lock held across the publish and its warning)."""

    class AwayBus(SwitchableBus):
        def publish(self, stream: str, producer: str, messages: Any) -> None:
            other = threading.Thread(target=publisher.log_line, args=("checkpoint of epoch 1 uploaded",))
            other.start()
            other.join(5)
            assert not other.is_alive(), "log_line waited for a publish in progress"
            raise ConnectionError("the broker is away")

    publisher = EventPublisher(AwayBus(LocalEventLog(tmp_path), up=False), "training-events", "ns", "tj", 1)
    publisher.epoch(_epoch(1))
    assert publisher.buffered == 2  # the epoch and the other thread's line, both kept
