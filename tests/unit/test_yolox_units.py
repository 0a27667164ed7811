"""YOLOX in the trainer without training: resume edge cases, COCO conversion, config mapping, the
quantizer's head exclusion, and the one-line failure on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image

from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.storage import LocalArtifactStore
from visioninapp.local.synth import generate_dataset
from visioninapp.resources.trainingjob import ExportOptions, Hyperparameters, TrainingMetrics
from visioninapp.trainer.config import TrainerConfig
from visioninapp.trainer.publisher import EventPublisher
from visioninapp.trainer.run import Checkpoint, run_training
from visioninapp.trainer.yolox_train import (
    apply_hyperparameters,
    coco_annotations,
    export_yolox_onnx,
    yolox_config,
)

CLASS_NAMES = ["circle", "square", "triangle", "cross"]
IMGSZ = 64
EPOCHS = 3


def _publish(dataset: Path, store_root: Path) -> str:
    from visioninapp.api.ingest import manifest_of, upload_version

    files, digest = manifest_of(dataset)
    uri = (store_root / "v1").as_uri()
    upload_version(dataset, files, digest, LocalArtifactStore(), uri)
    return uri


def _spec(dataset_uri: str, epochs: int = EPOCHS) -> dict[str, Any]:
    return {
        "model": {"architecture": "yolox-nano"},
        "dataset": {"uri": dataset_uri},
        "hyperparameters": {"epochs": epochs, "imgsz": IMGSZ, "batch": 2, "workers": 0},
        "resources": {"gpu": {"count": 0}},
        "export": {"simplify": False},
    }


def _yolox_checkpoint(path: Path, epoch: int, seed: int) -> Path:
    """A checkpoint as YOLOX's Trainer.save_ckpt writes it (EMA model, SGD state, best AP)."""
    torch.manual_seed(seed)
    model = yolox_config("yolox-nano", len(CLASS_NAMES), IMGSZ).get_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.save(
        {
            "start_epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_ap": 0.25,
            "curr_ap": 0.2,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def dataset_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("yolox-data")
    generate_dataset(root / "ds", train=4, val=2, imgsz=IMGSZ, seed=3)
    return _publish(root / "ds", root / "store")


@pytest.mark.parametrize(
    ("epochs", "with_best"),
    [(EPOCHS, True), (EPOCHS, False), (EPOCHS - 1, True)],
    ids=["final-epoch-best-carried", "final-epoch-no-best", "epochs-lowered"],
)
def test_resume_with_no_epoch_left_uses_the_stored_weights(
    dataset_uri: str, tmp_path: Path, epochs: int, with_best: bool
) -> None:
    """The final epoch's checkpoint was stored, then the attempt died before `finish`: the next
    attempt trains nothing and returns the stored weights (the carried best, else the checkpoint's)."""
    output = (tmp_path / "out" / "ci" / "shapes").as_uri()
    store = LocalArtifactStore()
    checkpoint = Checkpoint(store, output)
    last = _yolox_checkpoint(tmp_path / "last.pth", EPOCHS, seed=1)
    best = _yolox_checkpoint(tmp_path / "best.pth", 2, seed=2)
    epoch_metrics = TrainingMetrics(map50=0.4, map50_95=0.2)
    best_metrics = TrainingMetrics(map50=0.5, map50_95=0.25)
    extra: dict[str, Any] = {"metrics": epoch_metrics.wire()}
    if with_best:
        extra |= {
            "bestSha256": checkpoint.upload_best(best),
            "bestEpoch": 2,
            "bestMetrics": best_metrics.wire(),
        }
    checkpoint.upload(last, EPOCHS, 1, extra)

    config = TrainerConfig.model_validate(
        {
            "name": "shapes",
            "namespace": "ci",
            "attempt": 2,
            "outputUri": output,
            "spec": _spec(dataset_uri, epochs),
            "terminationLog": str(tmp_path / "termination"),
            "workDir": str(tmp_path / "work"),
        }
    )
    publisher = EventPublisher(LocalEventLog(tmp_path / "events"), "training-events", "ci", "shapes", 2)
    result = run_training(config, store, publisher)

    assert result.epochs_run == EPOCHS and result.imgsz == IMGSZ
    expected, metrics = (best, best_metrics) if with_best else (last, epoch_metrics)
    assert result.metrics.map50 == metrics.map50 and result.metrics.map50_95 == metrics.map50_95
    uploaded = LocalArtifactStore.path_of(next(f.uri for f in result.formats if f.format == "pt"))
    weights = torch.load(uploaded, map_location="cpu", weights_only=True)
    reference = torch.load(expected, map_location="cpu", weights_only=True)["model"]
    assert weights["architecture"] == "yolox-nano" and weights["classNames"] == CLASS_NAMES
    assert all(torch.equal(weights["model"][k], v) for k, v in reference.items())
    marker = checkpoint.latest()
    assert marker is not None and marker["finished"] and marker["epoch"] == EPOCHS


def test_a_failure_after_yolox_took_the_streams_is_one_line_on_stderr(
    dataset_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """YOLOX's Trainer points sys.stdout/stderr at loguru; a failure after it trained (here: the
    export) is still one line on stderr, the `error: ...` of trainer/main.py."""
    from loguru import logger

    from visioninapp.trainer import main as trainer_main
    from visioninapp.trainer import run

    def broken_export(*args: Any) -> Path:
        raise run.TrainerError("the export broke")

    monkeypatch.setattr(run, "_export_onnx", broken_export)
    monkeypatch.setenv("VISIONINAPP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VISIONINAPP_RABBITMQ_HOST", raising=False)
    config = {
        "name": "shapes",
        "namespace": "ci",
        "attempt": 1,
        "outputUri": (tmp_path / "out").as_uri(),
        "spec": _spec(dataset_uri, 1),
        "terminationLog": str(tmp_path / "termination"),
        "workDir": str(tmp_path / "work"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    stdout, stderr = sys.stdout, sys.stderr
    try:
        code = trainer_main.main(["--config", str(path)])
        streams_kept = sys.stdout is stdout and sys.stderr is stderr
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        logger.remove()
        logger.add(sys.stderr)  # loguru's default
    out, err = capfd.readouterr()
    assert err.splitlines() == ["error: the export broke"], err[-3000:]
    assert code == 1 and streams_kept
    assert "error: the export broke" not in out
    assert (tmp_path / "termination").read_text() == "error: the export broke"


def test_hyperparameters_keep_multiscale_on_a_gpu_and_map_determinism_to_cudnn() -> None:
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        hp = Hyperparameters(epochs=5, imgsz=IMGSZ, deterministic=True)
        config = yolox_config("yolox-nano", 2, IMGSZ)
        apply_hyperparameters(config, hp, on_gpu=True)
        assert config.deterministic is False  # YOLOX's multi-scale training stays on
        assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
        apply_hyperparameters(config, hp.model_copy(update={"deterministic": False}), on_gpu=True)
        assert config.deterministic is False
        assert torch.backends.cudnn.deterministic is False and torch.backends.cudnn.benchmark is True
        apply_hyperparameters(config, hp.model_copy(update={"deterministic": False}), on_gpu=False)
        assert config.deterministic is True  # on the CPU the size stays imgsz
        assert config.max_epoch == 5
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _dataset_with(tmp_path: Path, image: Image.Image, label: str, exif: Image.Exif | None = None) -> Path:
    root = tmp_path / "ds"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        image.save(root / "images" / split / "a.jpg", exif=exif if exif is not None else Image.Exif())
        (root / "labels" / split / "a.txt").write_text(label)
    (root / "data.yaml").write_text(
        yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val", "names": CLASS_NAMES})
    )
    return root


def test_coco_annotations_round_trip_a_yolo_label(tmp_path: Path) -> None:
    root = _dataset_with(tmp_path, Image.new("RGB", (200, 100)), "2 0.5 0.25 0.2 0.3\n\n0 0.1 0.9 0.1 0.1\n")
    out = coco_annotations(root, "data.yaml", CLASS_NAMES, "val", tmp_path / "val.json")
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
    (image,) = coco["images"]
    assert (image["width"], image["height"]) == (200, 100) and Path(image["file_name"]).is_absolute()
    first, second = coco["annotations"]
    assert first["category_id"] == 3 and second["category_id"] == 1  # YOLO class + 1
    np.testing.assert_allclose(first["bbox"], [80, 10, 40, 30])  # top-left x, y, width, height in px
    np.testing.assert_allclose(second["bbox"], [10, 85, 20, 10])
    assert first["image_id"] == second["image_id"] == image["id"] and first["area"] == pytest.approx(1200)


def test_coco_annotations_take_the_size_cv2_reads_from_an_exif_rotated_jpeg(tmp_path: Path) -> None:
    import cv2

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: stored 200x100, shown 100x200
    root = _dataset_with(tmp_path, Image.new("RGB", (200, 100)), "0 0.5 0.5 0.5 0.5\n", exif)
    coco = json.loads(
        coco_annotations(root, "data.yaml", CLASS_NAMES, "train", tmp_path / "t.json").read_text()
    )
    (image,) = coco["images"]
    read = cv2.imread(image["file_name"])
    assert read is not None and read.shape[:2] == (200, 100)  # what YOLOX's dataset reads
    assert (image["width"], image["height"]) == (100, 200)
    np.testing.assert_allclose(coco["annotations"][0]["bbox"], [25, 50, 50, 100])


def test_int8_quantization_keeps_a_yolox_heads_activations_and_decoding_fp32(tmp_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from visioninapp.edge.quantize import head_decode_nodes

    best = tmp_path / "best.pt"
    model = yolox_config("yolox-nano", 2, IMGSZ).get_model()
    torch.save(
        {"model": model.state_dict(), "architecture": "yolox-nano", "classNames": ["a", "b"], "imgsz": IMGSZ},
        best,
    )
    exported = export_yolox_onnx(
        best, ExportOptions(decode_in_graph=True, simplify=False), tmp_path / "m.onnx"
    )
    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared))
    excluded = set(head_decode_nodes(graph, "yolox"))
    names = {n.name: n.op_type for n in graph.graph.node}
    head = {name: op for name, op in names.items() if name.startswith("/head/")}
    assert excluded and excluded <= set(names)
    assert excluded == {name for name, op in head.items() if op != "Conv"}
    assert {"/head/Sigmoid", "/head/Exp", "/head/Concat"} <= excluded  # scores and box decoding
    assert not any(names[n] == "Conv" or not n.startswith("/head/") for n in excluded)
    # The family comes from the export's metadata when not given.
    assert set(head_decode_nodes(onnx.load(str(exported)))) == {
        n.name
        for n in onnx.load(str(exported)).graph.node
        if n.name.startswith("/head/") and n.op_type != "Conv"
    }


def test_the_best_weights_are_stored_with_the_checkpoint_that_follows_them(
    dataset_uri: str, tmp_path: Path
) -> None:
    """YOLOX's best_ckpt.pth reaches the store with the next checkpoint, named in its marker, and a
    resumed attempt gets it back (YOLOX's runs/ directory does not outlive the attempt)."""
    from visioninapp.trainer.run import _YoloxRun
    from visioninapp.trainer.yolox_train import EpochResult

    output = (tmp_path / "out").as_uri()
    store = LocalArtifactStore()
    checkpoint = Checkpoint(store, output)
    config = TrainerConfig.model_validate(
        {
            "name": "shapes",
            "namespace": "ci",
            "attempt": 1,
            "outputUri": output,
            "spec": {**_spec(dataset_uri, 4), "checkpointEvery": 2},
            "workDir": str(tmp_path / "work"),
        }
    )
    publisher = EventPublisher(LocalEventLog(tmp_path / "events"), "training-events", "ci", "shapes", 1)
    run = _YoloxRun(config, publisher, checkpoint, tmp_path / "work")
    latest, best = tmp_path / "latest_ckpt.pth", tmp_path / "best_ckpt.pth"
    latest.write_bytes(b"latest")

    def epoch(n: int, map50_95: float, improved: bool) -> EpochResult:
        if improved:
            best.write_bytes(f"best of epoch {n}".encode())
        metrics = TrainingMetrics(map50=map50_95 * 2, map50_95=map50_95, losses={"iou": 1.0})
        return EpochResult(n, metrics, 0.01, 10.0, best if improved else None)

    run.on_epoch(epoch(1, 0.1, True), latest)
    assert checkpoint.latest() is None  # checkpointEvery 2
    run.on_epoch(epoch(2, 0.05, False), latest)
    marker = checkpoint.latest()
    assert marker is not None and marker["epoch"] == 2 and marker["bestEpoch"] == 1
    assert TrainingMetrics.model_validate(marker["metrics"]).map50_95 == 0.05
    carried = checkpoint.download_best(marker, tmp_path / "resume" / "best.pth")
    assert carried is not None and carried[0].read_bytes() == b"best of epoch 1"
    assert carried[1].map50_95 == 0.1 and not carried[1].losses
    run.on_epoch(epoch(3, 0.3, True), latest)
    run.on_epoch(epoch(4, 0.2, False), latest)
    marker = checkpoint.latest()
    assert marker is not None and marker["epoch"] == 4 and marker["bestEpoch"] == 3
    carried = checkpoint.download_best(marker, tmp_path / "resume" / "best-2.pth")
    assert carried is not None and carried[0].read_bytes() == b"best of epoch 3"
