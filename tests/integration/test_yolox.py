"""YOLOX for real: Megvii's training code on the CPU through the trainer, served by the edge runtime.

The trainer runs as its pod runs it (moto's S3 over HTTP, RabbitMQ Streams, no network); the edge
runtime serves the exported ONNX over HTTP, and its boxes are compared with YOLOX's own PyTorch
inference (its model, its `ValTransform` and `postprocess`, as its evaluator runs them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import requests
import torch
import yaml

from tests.integration import test_trainer as trainer_tests
from tests.integration.test_edge import _iou, _put_model, _Server, _settings, _sha
from tests.integration.test_trainer import (
    _config,
    _env,
    _epoch_events,
    _held_at_checkpoint,
    _new_output,
    _object_sha256,
    _run_trainer,
    _upload_dataset,
)
from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.rabbitmq import RabbitStreamBus
from visioninapp.edge.runtime import EdgeRuntime
from visioninapp.events import TrainerResult, TrainingEvent
from visioninapp.factory import artifact_store_for
from visioninapp.local.synth import generate_dataset
from visioninapp.operator.artifacts import verify_formats
from visioninapp.operator.training_objects import artifact_from_result
from visioninapp.resources import ModelArtifact, TrainingJob
from visioninapp.resources.trainingjob import ExportOptions
from visioninapp.settings import Settings
from visioninapp.trainer.yolox_train import export_yolox_onnx, optimizer_state_digest

pytestmark = [pytest.mark.services, pytest.mark.slow]
s3, bus, stream = trainer_tests.s3, trainer_tests.bus, trainer_tests.stream  # the trainer tests' fixtures
IMGSZ = 160
EPOCHS = 24
CONF, IOU = 0.001, 0.65  # a low confidence, and YOLOX's own NMS threshold (its configs' nmsthre)
CLASS_NAMES = ["circle", "square", "triangle", "cross"]
# Validation images drawn at VAL_SIZE and cropped to VAL_SIZE x IMGSZ, both ways: resized by IMGSZ /
# VAL_SIZE and padded, their shapes the size of the training images'. (Padded instead, the shapes
# shrink with the resize; this short training does not generalise to that: mAP50 0.01 at 0.83.)
VAL_SIZE = 192
# The best epoch's mAP50 on them (8 images: a noisy measure): measured 0.022, and 0.019 with other
# float numerics (no ultralytics imported); at most 0.0006 in the first 8 epochs, an untrained model's.
MIN_MAP50 = 0.006


@pytest.fixture(scope="module")
def dataset_uri(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """64 training images: YOLOX's BatchNorm statistics (momentum 0.03) need ~150 steps to settle,
    and before they do its eval-mode outputs are not a detector's yet."""
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, train=64, val=8, imgsz=IMGSZ, seed=1)
    _non_square_validation(root, tmp_path_factory.mktemp("synth-val"))
    bucket = f"datasets-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return _upload_dataset(s3, bucket, root, "shapes/v1")


def _non_square_validation(root: Path, scratch: Path) -> None:
    """Replace the validation split with images drawn at VAL_SIZE and cropped to VAL_SIZE x IMGSZ (the
    far strip cut from the height, or the width, on alternate images), so that the evaluator's and
    the edge's resize ratio is not 1 and their padding not 0; the labels are clipped to the crop."""
    generate_dataset(scratch, train=1, val=8, imgsz=VAL_SIZE, seed=2)
    for index, source in enumerate(sorted((scratch / "images" / "val").glob("*.jpg"))):
        image = cv2.imread(str(source))
        assert image is not None and image.shape[:2] == (VAL_SIZE, VAL_SIZE)
        wide = index % 2 == 0
        height, width = (IMGSZ, VAL_SIZE) if wide else (VAL_SIZE, IMGSZ)
        cv2.imwrite(str(root / "images" / "val" / source.name), image[:height, :width])
        rows = []
        for line in (scratch / "labels" / "val" / f"{source.stem}.txt").read_text().splitlines():
            cls, *values = line.split()
            cx, cy, w, h = (float(v) * VAL_SIZE for v in values)
            x0, y0 = max(cx - w / 2, 0), max(cy - h / 2, 0)
            x1, y1 = min(cx + w / 2, width), min(cy + h / 2, height)
            if (x1 - x0) * (y1 - y0) >= 0.4 * w * h:  # mostly inside the crop
                box = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
                rows.append(f"{cls} {' '.join(f'{v:.6f}' for v in box)}")
        (root / "labels" / "val" / f"{source.stem}.txt").write_text("".join(f"{row}\n" for row in rows))


def _yolox_config(tmp_path: Path, dataset: str, output: str, attempt: int = 1, **spec: Any) -> Path:
    # Small and short for 2 CPU cores: 16 steps per epoch, YOLOX's LR (lr0 per nominalBatch images)
    # 4 times its default per image.
    hyperparameters = {
        "epochs": EPOCHS,
        "imgsz": IMGSZ,
        "batch": 4,
        "nominalBatch": 16,
        "lrf": 0.05,
        "workers": 0,
        "warmupEpochs": 2,
        "closeMosaic": 4,
        **spec.pop("hyperparameters", {}),
    }
    return _config(
        tmp_path, dataset, output, attempt, model={"architecture": "yolox-nano"}, spec=spec, **hyperparameters
    )


def _download(s3: Any, uri: str, path: Path) -> Path:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(path))
    return path


@dataclass
class Trained:
    result: TrainerResult
    config: Path
    weights: Path
    onnx: Path
    images: list[Path]


def _verified(config: Path, result: TrainerResult, s3_endpoint: str) -> None:
    """The ModelArtifact the operator would create from this result passes the operator's check."""
    raw = yaml.safe_load(config.read_text())
    job = TrainingJob.model_validate(
        {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": raw["name"], "namespace": raw["namespace"]},
            "spec": raw["spec"],
        }
    )
    artifact = ModelArtifact.model_validate(artifact_from_result(job, result))
    store = artifact_store_for(result.formats[0].uri, Settings(s3_endpoint_url=s3_endpoint))
    assert verify_formats(artifact, store.checksum, store.size) == []


@pytest.fixture(scope="module")
def trained_run(
    s3: Any,
    s3_endpoint: str,
    dataset_uri: str,
    rabbitmq_stream_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Trained:
    """One training through the real trainer (its ONNX decodes in the graph)."""
    tmp_path = tmp_path_factory.mktemp("yolox")
    stream_name = f"training-events-{uuid.uuid4().hex[:8]}"
    bucket, output = _new_output(s3)
    config = _yolox_config(tmp_path, dataset_uri, output)
    started = time.monotonic()
    run = _run_trainer(config, _env(s3_endpoint, stream_name, tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    print(f"yolox-nano, {EPOCHS} epochs at {IMGSZ} px on the CPU: {time.monotonic() - started:.1f} s")
    assert not (tmp_path / "netguard.log").exists(), (tmp_path / "netguard.log").read_text()

    result = TrainerResult.from_termination_message((tmp_path / "termination-1.txt").read_text())
    assert {f.format for f in result.formats} == {"pt", "onnx"}
    assert result.class_names == CLASS_NAMES and result.imgsz == IMGSZ and result.epochs_run == EPOCHS
    print(f"best epoch: mAP50 {result.metrics.map50}, mAP50-95 {result.metrics.map50_95}")
    assert result.metrics.map50 is not None and result.metrics.map50 >= MIN_MAP50, result.metrics
    for fmt in result.formats:
        assert fmt.uri.startswith(output) and _object_sha256(s3, fmt.uri) == fmt.sha256
    _verified(config, result, s3_endpoint)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="ci/shapes/manifest.json")["Body"].read())
    assert manifest["family"] == "yolox" and manifest["architecture"] == "yolox-nano"

    events = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
    try:
        epochs = _epoch_events(events, stream_name)
    finally:
        events.close()
    assert [e.epoch for e in epochs] == list(range(1, EPOCHS + 1))
    for event in epochs:  # the fields of ultralytics' epochs, YOLOX's own loss names
        assert event.epochs == EPOCHS and set(event.losses) == {"iou", "l1", "conf", "cls"}
        assert event.map50 is not None and event.map50_95 is not None and event.lr and event.images_per_second

    files = {f.format: f.uri for f in result.formats}
    dataset_bucket, prefix = dataset_uri.removeprefix("s3://").split("/", 1)
    keys = s3.list_objects_v2(Bucket=dataset_bucket, Prefix=f"{prefix}/images/val/")["Contents"]
    images = [
        _download(s3, f"s3://{dataset_bucket}/{o['Key']}", tmp_path / "val" / Path(o["Key"]).name)
        for o in keys
    ]
    return Trained(
        result,
        config,
        _download(s3, files["pt"], tmp_path / "best.pt"),
        _download(s3, files["onnx"], tmp_path / "model.onnx"),
        images,
    )


@pytest.fixture(scope="module", params=[True, False], ids=["decoded-in-graph", "raw-head"])
def trained(request: pytest.FixtureRequest, trained_run: Trained) -> Trained:
    """The run's own ONNX, or the same weights exported by the trainer's export with the graph ending
    at the raw head (`export.decodeInGraph: false`): one training serves both (it took 45 s each)."""
    if request.param:
        return trained_run
    options = ExportOptions.model_validate({"decodeInGraph": False})
    raw = export_yolox_onnx(trained_run.weights, options, trained_run.onnx.with_name("raw-head.onnx"))
    metadata = {p.key: p.value for p in onnx.load(str(raw)).metadata_props}
    assert metadata["decoded"] == "false", metadata  # the edge decodes it: grid, strides, exp
    return dataclasses.replace(trained_run, onnx=raw)


def _yolox_reference(weights: Path, images: list[Path]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """YOLOX's own inference: its model, ValTransform (BGR from cv2, as its datasets load) and
    postprocess; boxes scaled back by the resize ratio as its evaluator does, clipped to the image
    as the edge runtime reports them."""
    from yolox.config import YoloxConfig
    from yolox.data import ValTransform
    from yolox.models import YoloxModule
    from yolox.utils import postprocess

    config = YoloxConfig.get_named_config("yolox-nano")
    assert config is not None
    config.num_classes, config.test_size = len(CLASS_NAMES), (IMGSZ, IMGSZ)
    model = YoloxModule.from_pretrained(weights, config)
    transform = ValTransform(legacy=False)
    results = []
    for path in images:
        image = cv2.imread(str(path))
        tensor = torch.from_numpy(transform(image, None, config.test_size)[0])[None]
        with torch.no_grad():
            (output,) = postprocess(model(tensor), config.num_classes, CONF, IOU)
        ratio = min(IMGSZ / image.shape[0], IMGSZ / image.shape[1])
        boxes = (output[:, :4] / ratio).numpy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.shape[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.shape[0])
        results.append((boxes, (output[:, 4] * output[:, 5]).numpy(), output[:, 6].numpy().astype(int)))
    return results


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU; boxes clipped to nothing (predicted wholly outside the image) match by their coordinates."""
    if (a[2] - a[0]) * (a[3] - a[1]) <= 0 and (b[2] - b[0]) * (b[3] - b[1]) <= 0:
        return 1.0 if np.allclose(a, b, atol=0.02) else 0.0  # the runtime rounds to 0.01 px
    return _iou(a, b)


def test_edge_boxes_over_http_match_yolox_pytorch(trained: Trained, tmp_path: Path) -> None:
    reference = _yolox_reference(trained.weights, trained.images)
    runtime = EdgeRuntime(_settings(tmp_path), bus=LocalEventLog(tmp_path / "events"))
    worst_iou, worst_score, fewest = 1.0, 0.0, 10**6
    with _Server(runtime) as base:
        assert _put_model(base, trained.onnx, "yolox", _sha(trained.onnx)).status_code == 200
        for path, (boxes, scores, classes) in zip(trained.images, reference, strict=True):
            response = requests.post(
                f"{base}/v1/detect", params={"conf": CONF, "iou": IOU}, data=path.read_bytes(), timeout=60
            )
            assert response.status_code == 200, response.text
            ours = response.json()["detections"]
            # The runtime keeps the best 300 (max_det); YOLOX's postprocess keeps all.
            top = np.argsort(-scores, kind="stable")[: len(ours)]
            assert len(ours) == min(len(scores), 300), path.name
            matched, unused = 0, list(ours)
            for index in top:  # one to one: the closest unused box of the class, then the closest score
                same_class = [d for d in unused if d["classId"] == classes[index]]
                assert same_class, f"{path.name}: no box of class {classes[index]}"
                best = max(
                    same_class,
                    key=lambda d: (
                        _box_iou(np.array(d["box"]), boxes[index]),
                        -abs(d["score"] - scores[index]),
                    ),
                )
                unused.remove(best)
                iou, delta = _box_iou(np.array(best["box"]), boxes[index]), abs(best["score"] - scores[index])
                assert iou >= 0.99 and delta < 1e-3, (path.name, best, boxes[index], scores[index])
                worst_iou, worst_score = min(worst_iou, iou), max(worst_score, delta)
                matched += 1
            assert matched >= 20, f"{path.name}: only {matched} boxes at conf {CONF}"
            fewest = min(fewest, matched)
    print(
        f"{len(trained.images)} images, at least {fewest} boxes each, worst IoU {worst_iou:.5f}, "
        f"worst |Δscore| {worst_score:.2e}"
    )


def test_killed_yolox_training_resumes_with_its_optimizer_state(
    s3: Any, s3_endpoint: str, dataset_uri: str, bus: RabbitStreamBus, stream: str, tmp_path: Path
) -> None:
    bucket, output = _new_output(s3)
    env = _env(s3_endpoint, stream, tmp_path)
    config = _yolox_config(tmp_path, dataset_uri, output, 1, hyperparameters={"epochs": 4})
    first = _held_at_checkpoint(config, env, 2, family="yolox")
    try:
        marker = json.loads(
            s3.get_object(Bucket=bucket, Key="ci/shapes/checkpoints/checkpoint.json")["Body"].read()
        )
        assert marker["epoch"] == 2 and first.poll() is None  # alive, mid-run, with a checkpoint
        first.send_signal(signal.SIGKILL)  # preemption: no cleanup, no goodbye
    finally:
        first.kill()
        first.wait(30)
    # What the checkpoint holds: YOLOX's optimizer state (SGD momentum buffers) after epoch 2.
    saved = torch.load(
        _download(s3, f"s3://{bucket}/ci/shapes/checkpoints/last.pt", tmp_path / "saved.pth"),
        map_location="cpu",
        weights_only=True,
    )
    assert saved["start_epoch"] == 2 and saved["optimizer"]["state"], "no optimizer state was saved"
    expected_digest = optimizer_state_digest(saved["optimizer"])

    second = _run_trainer(_yolox_config(tmp_path, dataset_uri, output, 2, hyperparameters={"epochs": 4}), env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from the checkpoint of epoch 2" in second.stdout
    logs = [TrainingEvent.model_validate_json(m.body) for m in bus.read(stream, 0, 10_000)]
    resumed = [e.message for e in logs if e.type == "log" and (e.message or "").startswith("resumed at")]
    # The optimizer the resumed trainer holds, fingerprinted right after YOLOX loaded the checkpoint.
    assert resumed == [f"resumed at epoch 3 with the optimizer state restored ({expected_digest})"]
    result = TrainerResult.from_termination_message((tmp_path / "termination-2.txt").read_text())
    assert result.attempt == 2 and result.epochs_run == 4
    epochs = _epoch_events(bus, stream)
    assert [(e.epoch, e.attempt) for e in epochs] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def _upload(s3: Any, path: Path, bucket: str, key: str) -> dict[str, str]:
    s3.upload_file(str(path), bucket, key)
    return {"uri": f"s3://{bucket}/{key}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _megvii_checkpoint(path: Path) -> Path:
    """A file in the format of YOLOX's released COCO weights (`{"start_epoch", "model"}`, 80 classes,
    no architecture named), made by YOLOX's own code: the release files need a download."""
    from yolox.config import YoloxConfig

    config = YoloxConfig.get_named_config("yolox-tiny")
    assert config is not None
    torch.save({"start_epoch": 300, "model": config.get_model().state_dict()}, path)
    return path


@pytest.mark.parametrize("trained", [True], indirect=True, ids=["decoded-in-graph"])
def test_fine_tunes_from_a_yolox_artifact_and_from_coco_weights(
    trained: Trained, s3: Any, s3_endpoint: str, dataset_uri: str, stream: str, tmp_path: Path
) -> None:
    bucket, _ = _new_output(s3)
    bases = {
        "yolox-nano": _upload(s3, trained.weights, bucket, "artifacts/shapes/best.pt"),
        "yolox-tiny": _upload(
            s3, _megvii_checkpoint(tmp_path / "coco.pth"), bucket, "imported/yolox_tiny.pth"
        ),
    }
    for attempt, (architecture, weights) in enumerate(bases.items(), 1):
        config = _yolox_config(
            tmp_path, dataset_uri, f"s3://{bucket}/ci/tuned-{attempt}", attempt, hyperparameters={"epochs": 1}
        )
        raw = yaml.safe_load(config.read_text())
        raw["spec"]["model"] = {"baseModel": f"base-{attempt}"}
        raw["baseWeights"] = weights
        config.write_text(yaml.safe_dump(raw))
        run = _run_trainer(config, _env(s3_endpoint, stream, tmp_path))
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"base model base-{attempt} holds {architecture} weights" in run.stdout
        loaded = re.search(r"fine-tuning from the base weights: (\d+) of (\d+) tensors loaded", run.stdout)
        assert loaded is not None, run.stdout[-3000:]
        # All but the class predictions (4 classes here; 80 in COCO's: 3 levels x weight and bias).
        expected_missing = 0 if architecture == "yolox-nano" else 6
        assert int(loaded[1]) == int(loaded[2]) - expected_missing
        result = TrainerResult.from_termination_message((tmp_path / f"termination-{attempt}.txt").read_text())
        manifest_key = f"ci/tuned-{attempt}/manifest.json"
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        assert manifest["architecture"] == architecture and manifest["family"] == "yolox"
        assert result.class_names == CLASS_NAMES and result.epochs_run == 1
