"""The trainer for real: moto's S3 server over HTTP, RabbitMQ Streams, ultralytics on the CPU."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from visioninapp.backends.rabbitmq import RabbitStreamBus
from visioninapp.events import TrainerResult, TrainingEvent
from visioninapp.local.synth import generate_dataset

pytestmark = [pytest.mark.services]
NETGUARD = Path(__file__).parent / "netguard"
TRAINER = [sys.executable, "-m", "visioninapp.trainer.main"]


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def dataset_uri(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synth dataset, uploaded to the S3 server."""
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, train=16, val=8, imgsz=96, seed=1)
    bucket = f"datasets-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for path in root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"shapes/v1/{path.relative_to(root)}")
    return f"s3://{bucket}/shapes/v1"


@pytest.fixture
def stream() -> str:
    return f"training-events-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def bus(rabbitmq_stream_port: int) -> Iterator[RabbitStreamBus]:
    bus = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
    yield bus
    bus.close()


def _config(
    tmp_path: Path,
    dataset: str,
    output: str,
    attempt: int = 1,
    model: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    **hyper: Any,
) -> Path:
    """A trainer config: yolo11n by default (`model`), with `hyper` over the small defaults and
    `spec` over the rest of the TrainingJob spec."""
    config = {
        "name": "shapes",
        "namespace": "ci",
        "attempt": attempt,
        "outputUri": output,
        "terminationLog": str(tmp_path / f"termination-{attempt}.txt"),
        "workDir": str(tmp_path / "work"),
        "spec": {
            "model": model or {"architecture": "yolo11n"},
            "dataset": {"uri": dataset},
            "hyperparameters": {"epochs": 2, "imgsz": 96, "batch": 8, "workers": 0, **hyper},
            "resources": {"gpu": {"count": 0}},
            "checkpointEvery": 1,
            **(spec or {}),
        },
    }
    path = tmp_path / f"config-{attempt}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env(s3_endpoint: str, stream: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(NETGUARD),
        "NETGUARD_RECORD": str(tmp_path / "netguard.log"),
        "VISIONINAPP_S3_ENDPOINT_URL": s3_endpoint,
        "VISIONINAPP_RABBITMQ_HOST": "127.0.0.1",
        "VISIONINAPP_TRAINING_STREAM": stream,
        "VISIONINAPP_DATA_DIR": str(tmp_path / "data"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        **extra,
    }


def _epoch_events(bus: RabbitStreamBus, stream: str) -> list[TrainingEvent]:
    events = [TrainingEvent.model_validate_json(m.body) for m in bus.read(stream, 0, limit=10_000)]
    return [e for e in events if e.type == "epoch"]


def _run_trainer(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRAINER, "--config", str(config)], env=env, capture_output=True, text=True, timeout=600
    )


def _new_output(s3: Any) -> tuple[str, str]:
    """A fresh bucket and the job's output URI in it."""
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return bucket, f"s3://{bucket}/ci/shapes"


def _object_sha256(s3: Any, uri: str) -> str:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


@pytest.mark.slow
def test_trains_publishes_exports_and_uploads(
    s3: Any, s3_endpoint: str, dataset_uri: str, bus: RabbitStreamBus, stream: str, tmp_path: Path
) -> None:
    bucket, output = _new_output(s3)
    config = _config(tmp_path, dataset_uri, output)
    result = _run_trainer(config, _env(s3_endpoint, stream, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "netguard.log").exists(), (tmp_path / "netguard.log").read_text()

    trainer_result = TrainerResult.from_termination_message((tmp_path / "termination-1.txt").read_text())
    assert {f.format for f in trainer_result.formats} == {"pt", "onnx"}
    assert trainer_result.class_names == ["circle", "square", "triangle", "cross"]
    assert trainer_result.imgsz == 96 and trainer_result.epochs_run == 2
    for fmt in trainer_result.formats:
        assert fmt.uri.startswith(output) and _object_sha256(s3, fmt.uri) == fmt.sha256
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="ci/shapes/manifest.json")["Body"].read())
    assert manifest["formats"] == [f.wire() for f in trainer_result.formats]

    epochs = _epoch_events(bus, stream)
    assert [e.epoch for e in epochs] == [1, 2]
    for event in epochs:
        assert event.attempt == 1 and event.epochs == 2
        assert set(event.losses) == {"box", "cls", "dfl"}
        assert event.map50_95 is not None and event.lr is not None and event.images_per_second
    logs = [TrainingEvent.model_validate_json(m.body) for m in bus.read(stream, 0, 10_000)]
    assert any(e.type == "log" and "exporting ONNX" in (e.message or "") for e in logs)

    # The Job's pod is retried after training ended (say the upload had failed): no second training.
    retry = _run_trainer(
        _config(tmp_path, dataset_uri, output, attempt=2), _env(s3_endpoint, stream, tmp_path)
    )
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "training finished in attempt 1" in retry.stdout
    again = TrainerResult.from_termination_message((tmp_path / "termination-2.txt").read_text())
    assert again.metrics == trainer_result.metrics and again.epochs_run == 2
    assert [e.epoch for e in _epoch_events(bus, stream)] == [1, 2]


# The trainer as its pod runs it, with a test-only hold: after epoch HOLD_EPOCH's checkpoint is
# uploaded (ultralytics saves before `on_fit_epoch_end`; YOLOX's `on_epoch` uploads before it
# publishes), it says so on stdout and waits for stdin, which never answers: the test kills it
# there, whatever this machine's speed.
HELD_TRAINER = """
import sys
from visioninapp.trainer import run
from visioninapp.trainer.main import main

HOLD_EPOCH, FAMILY = int(sys.argv[1]), sys.argv[2]


def hold(epoch, pending):
    if epoch == HOLD_EPOCH:
        for upload in pending:
            upload.result()  # this epoch's checkpoint is in the bucket
        print("CHECKPOINTED", HOLD_EPOCH, flush=True)
        sys.stdin.readline()


if FAMILY == "yolox":
    on_epoch = run._YoloxRun.on_epoch

    def held(self, result, latest):
        on_epoch(self, result, latest)
        hold(result.epoch, [])

    run._YoloxRun.on_epoch = held
else:
    fit_epoch_end = run._Callbacks.on_fit_epoch_end

    def held(self, trainer):
        fit_epoch_end(self, trainer)
        hold(trainer.epoch + 1, self.pending)

    run._Callbacks.on_fit_epoch_end = held
sys.argv = ["visioninapp-trainer", *sys.argv[3:]]
main()
"""


def _held_at_checkpoint(
    config: Path, env: dict[str, str], epoch: int, family: str = "ultralytics"
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_TRAINER, str(epoch), family, "--config", str(config)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # the trainer's own output, then the hook's line
        if line.split() == ["CHECKPOINTED", str(epoch)]:
            return process
    raise AssertionError(f"the trainer exited ({process.wait()}) before the checkpoint of epoch {epoch}")


@pytest.mark.slow
def test_killed_trainer_resumes_from_its_checkpoint_without_duplicate_events(
    s3: Any, s3_endpoint: str, dataset_uri: str, bus: RabbitStreamBus, stream: str, tmp_path: Path
) -> None:
    bucket, output = _new_output(s3)
    env = _env(s3_endpoint, stream, tmp_path)
    first = _held_at_checkpoint(_config(tmp_path, dataset_uri, output, 1, epochs=5), env, 2)
    try:
        marker = json.loads(
            s3.get_object(Bucket=bucket, Key="ci/shapes/checkpoints/checkpoint.json")["Body"].read()
        )
        assert marker["epoch"] == 2 and first.poll() is None  # alive, mid-run, with a checkpoint
        deadline = time.monotonic() + 60  # its epoch events reach the stream in the background
        while [e.epoch for e in _epoch_events(bus, stream)] != [1, 2]:
            assert time.monotonic() < deadline, _epoch_events(bus, stream)
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)  # preemption: no cleanup, no goodbye
    finally:
        first.kill()
        first.wait(30)
    # The spec asked for one more epoch meanwhile: it takes effect on the resumed attempt.
    second = _run_trainer(_config(tmp_path, dataset_uri, output, 2, epochs=6), env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from the checkpoint of epoch 2" in second.stdout
    result = TrainerResult.from_termination_message((tmp_path / "termination-2.txt").read_text())
    assert result.attempt == 2 and result.epochs_run == 6

    epochs = _epoch_events(bus, stream)
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5, 6], f"duplicated or missing epoch events: {epochs}"
    assert [e.attempt for e in epochs] == [1, 1, 2, 2, 2, 2]  # resumed after epoch 2, nothing redone


def _fails_with(tmp_path: Path, config: Path, env: dict[str, str], *expected: str) -> str:
    termination_log = tmp_path / "termination-failed.txt"  # an invalid config cannot name its own
    result = subprocess.run(
        [*TRAINER, "--config", str(config), "--termination-log", str(termination_log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    for text in expected:
        assert text in errors[0], errors[0]
    assert termination_log.read_text() == errors[0]
    return errors[0]


def _upload_dataset(s3: Any, bucket: str, root: Path, prefix: str = "bad") -> str:
    for path in root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root)}")
    return f"s3://{bucket}/{prefix}"


def _assert_nothing_marked_done(s3: Any, bucket: str) -> None:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not any(k.endswith(("manifest.json", "checkpoint.json")) for k in keys), keys


@pytest.mark.parametrize("case", ["missing-dataset", "malformed-yaml", "label-out-of-range", "unknown-arch"])
def test_bad_input_fails_with_one_line(
    case: str, s3: Any, s3_endpoint: str, stream: str, tmp_path: Path, rabbitmq_stream_port: int
) -> None:
    bucket = f"bad-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    root = tmp_path / "ds"
    generate_dataset(root, train=4, val=2, imgsz=64, seed=2)
    expected: tuple[str, ...]
    if case == "missing-dataset":
        dataset, expected = f"s3://{bucket}/nothing-here", ("dataset not found", "nothing-here/data.yaml")
    elif case == "malformed-yaml":
        (root / "data.yaml").write_text("train: [images/train\nnames: {0: a")
        dataset, expected = _upload_dataset(s3, bucket, root), ("data.yaml is not valid YAML",)
    elif case == "label-out-of-range":
        (root / "labels" / "train" / "train_00001.txt").write_text("7 0.5 0.5 0.2 0.2\n")
        dataset, expected = _upload_dataset(s3, bucket, root), ("train_00001.txt", "class id 7 out of range")
    else:
        dataset, expected = _upload_dataset(s3, bucket, root), ("model.architecture", "yolov7")
    config = _config(tmp_path, dataset, f"s3://{bucket}/out")
    if case == "unknown-arch":
        raw = yaml.safe_load(config.read_text())
        raw["spec"]["model"]["architecture"] = "yolov7"  # no offline package trains it
        config.write_text(yaml.safe_dump(raw))
    _fails_with(tmp_path, config, _env(s3_endpoint, stream, tmp_path), *expected)
    _assert_nothing_marked_done(s3, bucket)


def test_wrong_s3_credentials_fail_clearly(tmp_path: Path, stream: str) -> None:
    """An S3 server that checks credentials (moto with IAM auth on) refuses unknown keys."""
    from tests.services import free_port, wait_for_port

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, "moto server with auth")
        config = _config(tmp_path, "s3://datasets/shapes/v1", "s3://models/ci/shapes")
        env = _env(
            f"http://127.0.0.1:{port}",
            stream,
            tmp_path,
            AWS_ACCESS_KEY_ID="AKIAWRONG",
            AWS_SECRET_ACCESS_KEY="wrong",
        )
        _fails_with(tmp_path, config, env, "S3 refused the credentials", "InvalidAccessKeyId")
    finally:
        server.terminate()
        server.wait(10)


def test_bad_config_fails_before_anything_else(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("name: x\n")
    result = subprocess.run(
        [*TRAINER, "--config", str(config), "--termination-log", str(tmp_path / "t.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3  # EXIT_CONFIGURATION: the Job fails at once, no retry fixes it
    assert result.stderr.strip().startswith("error: invalid config: ")
    assert (tmp_path / "t.txt").read_text().startswith("error: invalid config")
