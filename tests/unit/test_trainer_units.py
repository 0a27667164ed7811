"""Trainer pieces without training: dataset checks, config errors, event publishing and buffering."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import SwitchableBus
from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.storage import ChecksumMismatch, LocalArtifactStore, sha256_file
from visioninapp.datasets import DatasetError, fetch_dataset, validate_dataset
from visioninapp.events import TrainingEvent
from visioninapp.local.synth import generate_dataset
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


def test_a_held_out_set_needs_only_its_val_split(dataset: Path, tmp_path: Path) -> None:
    """The quality gate only evaluates `val`: a held-out set without a train split is fine there."""
    import shutil

    shutil.rmtree(dataset / "images" / "train")
    shutil.rmtree(dataset / "labels" / "train")
    (dataset / "data.yaml").write_text("path: .\nval: images/val\nnames: [circle, square, triangle, cross]\n")
    names = validate_dataset(dataset, "data.yaml", tmp_path / "held-out.yaml", splits=("val",))
    assert names == ["circle", "square", "triangle", "cross"]
    with pytest.raises(DatasetError, match="`train` is missing"):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")  # training needs both


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


def test_local_dataset_is_copied_and_missing_one_is_named(dataset: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore()
    fetched = fetch_dataset(store, dataset.as_uri(), "data.yaml", tmp_path / "x")
    assert fetched == tmp_path / "x"  # a private copy: training never writes into the store
    assert _tree(fetched) == _tree(dataset)
    with pytest.raises(DatasetError, match=r"dataset not found: .*/missing/data\.yaml"):
        fetch_dataset(store, (tmp_path / "missing").as_uri(), "data.yaml", tmp_path / "x")


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _publish(dataset: Path, store_root: Path) -> str:
    """The dataset as the API publishes it: files, then manifest.json naming them."""
    from visioninapp.api.ingest import manifest_of, upload_version

    files, digest = manifest_of(dataset)
    uri = (store_root / "v1").as_uri()
    upload_version(dataset, files, digest, LocalArtifactStore(), uri)
    return uri


def test_fetch_takes_exactly_the_manifests_files(dataset: Path, tmp_path: Path) -> None:
    uri = _publish(dataset, tmp_path / "store")
    stored = tmp_path / "store" / "v1"
    # Leftovers of a crashed upload under the same prefix: images, labels, a stale cache.
    (stored / "images" / "train" / "stale.jpg").write_bytes(
        (dataset / "images/train/train_00000.jpg").read_bytes()
    )
    (stored / "labels" / "train" / "stale.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (stored / "labels" / "train.cache").write_bytes(b"x")
    target = tmp_path / "work"
    (target / "images" / "train").mkdir(parents=True)
    (target / "images" / "train" / "old.jpg").write_bytes(b"from an earlier attempt")
    fetch_dataset(LocalArtifactStore(), uri, "data.yaml", target)
    assert _tree(target) == _tree(dataset)  # nothing more, nothing less
    # A file changed after publication is refused by its sha256.
    (stored / "labels" / "val" / "val_00000.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ChecksumMismatch):
        fetch_dataset(LocalArtifactStore(), uri, "data.yaml", tmp_path / "work2")


def test_manifest_paths_cannot_leave_the_target(dataset: Path, tmp_path: Path) -> None:
    uri = _publish(dataset, tmp_path / "store")
    manifest = tmp_path / "store" / "v1" / "manifest.json"
    body = json.loads(manifest.read_text())
    body["files"].append({"path": "../../escaped.txt", "sha256": "0" * 64, "size": 1})
    manifest.write_text(json.dumps(body))
    with pytest.raises(DatasetError, match="leaves the dataset folder"):
        fetch_dataset(LocalArtifactStore(), uri, "data.yaml", tmp_path / "work")
    assert not (tmp_path / "escaped.txt").exists()


def test_training_preparation_leaves_the_stored_version_unchanged(dataset: Path, tmp_path: Path) -> None:
    """ultralytics writes labels/*.cache next to the labels: into the private copy, not the store."""
    from ultralytics.data.dataset import YOLODataset

    uri = _publish(dataset, tmp_path / "store")
    before = _tree(tmp_path / "store")
    root = fetch_dataset(LocalArtifactStore(), uri, "data.yaml", tmp_path / "work" / "dataset")
    validate_dataset(root, "data.yaml", tmp_path / "work" / "data.resolved.yaml")
    data = yaml.safe_load((tmp_path / "work" / "data.resolved.yaml").read_text())
    for split in ("train", "val"):
        built = YOLODataset(img_path=str(Path(data["path"]) / data[split]), data=data, augment=False)
        assert len(built) > 0
    assert (root / "labels" / "train.cache").is_file()  # ultralytics did write its cache ...
    assert _tree(tmp_path / "store") == before  # ... and not into the stored version


def test_resolved_yaml_drops_download_and_other_keys(dataset: Path, tmp_path: Path) -> None:
    text = (dataset / "data.yaml").read_text()
    (dataset / "data.yaml").write_text(
        text + "download: import os; os.system('touch /tmp/pwned')\ntest: /etc\n"
    )
    validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")
    resolved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert set(resolved) == {"path", "train", "val", "nc", "names"}


OUTSIDE_SPLITS = [
    ("train: /etc\nval: images/val\nnames: [a, b, c, d]\n", "leaves the dataset folder"),
    ("train: ../other/images/train\nval: images/val\nnames: [a, b, c, d]\n", "leaves the dataset folder"),
    ("train: list.txt\nval: images/val\nnames: [a, b, c, d]\n", "leaves the dataset folder"),
    ("train: linked\nval: images/val\nnames: [a, b, c, d]\n", "through a symlink"),
]


@pytest.mark.parametrize(("data_yaml", "message"), OUTSIDE_SPLITS)
def test_split_paths_stay_inside_the_dataset(
    dataset: Path, tmp_path: Path, data_yaml: str, message: str
) -> None:
    other = tmp_path / "other"
    generate_dataset(other, train=2, val=1, imgsz=64, seed=9)
    (dataset / "list.txt").write_text(f"images/train/train_00000.jpg\n{other}/images/train/train_00000.jpg\n")
    (dataset / "linked").symlink_to(other / "images" / "train")
    (dataset / "data.yaml").write_text(data_yaml)
    with pytest.raises(DatasetError, match=message):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")


def test_yaml_alias_bomb_and_control_characters_are_refused(dataset: Path, tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    (dataset / "data.yaml").write_text(bomb + "train: images/train\nval: images/val\nnames: [*i]\n")
    assert len((dataset / "data.yaml").read_bytes()) < 400
    with pytest.raises(DatasetError, match="aliases"):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")
    (dataset / "data.yaml").write_text(
        'train: images/train\nval: images/val\nnames: ["ok", "bad\\u0007bell"]\n'
    )
    with pytest.raises(DatasetError, match="control characters"):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")
    (dataset / "data.yaml").write_bytes(b"train: images/train\nval: images/val\nnames: [\xff\xfe]\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")
    (dataset / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a, b, c, d]\n")
    (dataset / "labels" / "train" / "train_00000.txt").write_bytes(b"0 0.5 0.5 0.1 0.1 \xff\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        validate_dataset(dataset, "data.yaml", tmp_path / "resolved.yaml")


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
