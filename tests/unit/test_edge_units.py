"""Edge runtime pieces without a server: providers, pre/post-processing, heads, feedback, spools,
the model cache's rejections and who may swap the model."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SwitchableBus
from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.storage import LocalArtifactStore
from visioninapp.edge.inference import (
    Detection,
    Detector,
    choose_providers,
    decode_yolox,
    letterbox,
    nms,
    yolox_resize,
)
from visioninapp.edge.models import ModelManager, ModelSpec
from visioninapp.edge.runtime import EdgeRuntime, ModelGovernedError
from visioninapp.edge.telemetry import Spool, WindowStats, publish_spool
from visioninapp.events import EdgeEvent
from visioninapp.images import ImageError, decode_image
from visioninapp.settings import Settings


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (["AzureExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        ([], ["CPUExecutionProvider"]),
    ],
)
def test_providers_in_order_tensorrt_cuda_cpu(
    available: list[str], expected: list[str], tmp_path: Path
) -> None:
    chosen = choose_providers(available, "fp16", tmp_path / "engines")
    assert [p[0] if isinstance(p, tuple) else p for p in chosen] == expected


def test_tensorrt_gets_an_engine_cache_and_fp16_when_asked(tmp_path: Path) -> None:
    (name, options), *_ = choose_providers(["TensorrtExecutionProvider"], "fp16", tmp_path / "engines")
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] is True and options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path / "engines") and (tmp_path / "engines").is_dir()
    (_, fp32), *_ = choose_providers(["TensorrtExecutionProvider"], "fp32", None)
    assert fp32 == {"trt_fp16_enable": False}


def test_letterbox_keeps_aspect_and_centres() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    padded, gain, pad = letterbox(image, (64, 64))
    assert padded.shape == (64, 64, 3) and gain == (64 / 200, 32 / 100) and pad == (0, 16)
    assert (padded[:16] == 114).all() and (padded[16:48] == 0).all()


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2]


def test_decode_image_rejects_bad_input() -> None:
    import cv2

    with pytest.raises(ImageError, match="empty") as empty:
        decode_image(b"")
    assert empty.value.status == 400
    with pytest.raises(ImageError, match="not a supported image") as garbage:
        decode_image(b"\x89PNG garbage")
    assert garbage.value.status == 415 and garbage.value.unsupported
    gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
    with pytest.raises(ImageError) as unsupported:
        decode_image(gif)
    assert unsupported.value.status == 415
    png = cv2.imencode(".png", np.zeros((4096, 4096), np.uint8))[1].tobytes()
    with pytest.raises(ImageError, match="corrupt") as truncated:  # a good header, then nothing
        decode_image(png[:200])
    assert truncated.value.status == 400
    huge = cv2.imencode(".png", np.zeros((8193, 8192), np.uint8))[1].tobytes()  # one row too many
    with pytest.raises(ImageError, match="8192x8193") as large:
        decode_image(huge)
    assert large.value.too_large and large.value.status == 413
    assert decode_image(cv2.imencode(".png", np.zeros((8192, 8), np.uint8))[1].tobytes()).shape == (
        8192,
        8,
        3,
    )


def _detector(head: str, names: list[str]) -> Detector:
    detector = Detector.__new__(Detector)
    detector.head = head  # type: ignore[assignment]
    detector.class_names = names
    return detector


def test_classic_yolov5_head_multiplies_objectness() -> None:
    # anchors x (x, y, w, h, objectness, class scores): the second box has a high class score but a
    # low objectness, so it is dropped.
    prediction = np.array([[[32, 32, 20, 20, 0.9, 0.1, 0.8], [80, 80, 10, 10, 0.1, 0.9, 0.1]]], np.float32)
    detections = _detector("v5", ["a", "b"]).postprocess(
        prediction, (1.0, 1.0), (0, 0), (128, 128), 0.25, 0.45
    )
    assert [(d.class_name, round(d.score, 2), d.box) for d in detections] == [
        ("b", 0.72, (22.0, 22.0, 42.0, 42.0))
    ]


def test_nms_is_per_class_overlapping_boxes_of_different_classes_both_stay() -> None:
    # A person on a forklift: nearly the same box, two classes. Suppression is within a class only,
    # so both stay; the third box overlaps the first one with the same class and goes.
    anchors = np.array(
        [
            # x, y, w, h, score of class a, score of class b
            [50, 50, 40, 40, 0.90, 0.05],
            [51, 51, 40, 40, 0.05, 0.80],
            [52, 50, 40, 40, 0.70, 0.10],
            [150, 150, 20, 20, 0.10, 0.60],
        ],
        np.float32,
    )
    prediction = anchors.T[None]  # the v8 layout: 1 x (4 + classes) x anchors
    detections = _detector("v8", ["a", "b"]).postprocess(
        prediction, (1.0, 1.0), (0, 0), (256, 256), 0.25, 0.45
    )
    assert [(d.class_name, round(d.score, 2), d.box) for d in detections] == [
        ("a", 0.9, (30.0, 30.0, 70.0, 70.0)),
        ("b", 0.8, (31.0, 31.0, 71.0, 71.0)),
        ("b", 0.6, (140.0, 140.0, 160.0, 160.0)),
    ]
    # Every label kept (multi-label, as validators count them): still suppressed per class only.
    multi = _detector("v8", ["a", "b"]).postprocess(
        prediction, (1.0, 1.0), (0, 0), (256, 256), 0.25, 0.45, multi_label=True
    )
    assert sorted((d.class_name, round(d.score, 2)) for d in multi) == [("a", 0.9), ("b", 0.6), ("b", 0.8)]


def test_end_to_end_head_needs_no_nms_and_is_rescaled() -> None:
    prediction = np.array([[[10, 20, 30, 40, 0.8, 1], [0, 0, 5, 5, 0.1, 0]]], np.float32)
    detections = _detector("end2end", ["a", "b"]).postprocess(
        prediction, (0.5, 0.5), (2, 4), (200, 200), 0.25, 0.45
    )
    assert len(detections) == 1 and detections[0].class_name == "b"
    assert detections[0].box == (16.0, 32.0, 56.0, 72.0)


def test_spool_numbers_survive_restarts_and_publishing_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", ".json")
    window = WindowStats()
    for latency, score in ((10.0, 0.9), (20.0, 0.8), (30.0, 0.3)):
        window.record(latency, False, latency > 25, [Detection((0, 0, 1, 1), score, 0, "helmet")])
    window.record(5.0, True, False)
    window.detected([Detection((0, 0, 1, 1), 0.6, 1, "vest")])  # a camera frame: not a request
    event = window.close(namespace="ns", deployment="d", node="n", revision="r")
    assert (event.requests, event.errors, event.low_confidence) == (4, 1, 1)
    assert event.p50_ms == 20.0 and event.detections_per_class == {"helmet": 3, "vest": 1}
    assert event.mean_confidence == pytest.approx((0.9 + 0.8 + 0.3 + 0.6) / 4)
    assert WindowStats().close(namespace="ns", deployment="d", node="n", revision="r").mean_confidence is None
    spool.add(event.to_bytes())
    bus = SwitchableBus(LocalEventLog(tmp_path / "bus"), up=False)
    assert publish_spool(spool, bus, "edge-events", "edge.ns.d.n") == 0 and len(spool.items()) == 1
    restarted = Spool(tmp_path / "spool", ".json")
    restarted.add(event.to_bytes())
    assert [p.name for p in restarted.items()] == ["000000000001.json", "000000000002.json"]
    bus.up = True
    assert publish_spool(restarted, bus, "edge-events", "edge.ns.d.n") == 2
    # A crash between publish and delete resends: the stream drops the repeated publishing id.
    again = Spool(tmp_path / "spool", ".json")
    assert again.add(event.to_bytes()) == 3
    bus.inner.publish("edge-events", "edge.ns.d.n", [(3, b"{}")])
    publish_spool(again, bus, "edge-events", "edge.ns.d.n")
    events = bus.read("edge-events", 0)
    assert len(events) == 3 and EdgeEvent.model_validate_json(events[0].body).deployment == "d"


# --- the model cache and who sets the model -----------------------------------------------------


def _model(path: Path, nan: bool = False, classes: int = 2, size: int = 32) -> Path:
    """A YOLOv8-shaped ONNX whose output is 0 everywhere (or NaN: only the self-test catches it)."""
    import onnx
    from onnx import TensorProto, helper

    anchors = sum((size // stride) ** 2 for stride in (8, 16, 32))
    shape = [1, 4 + classes, anchors]
    values = helper.make_tensor("v", TensorProto.FLOAT, shape, [-1.0 if nan else 0.0] * (shape[1] * anchors))
    nodes = [helper.make_node("Constant", [], ["v" if nan else "output0"], value=values)]
    if nan:
        nodes.append(helper.make_node("Sqrt", ["v"], ["output0"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _spec(path: Path, version: str, sha256: str | None = None) -> ModelSpec:
    return ModelSpec(path.as_uri(), sha256 or hashlib.sha256(path.read_bytes()).hexdigest(), version=version)


def test_rejected_models_leave_nothing_in_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    manager = ModelManager(cache, lambda uri: LocalArtifactStore())
    good = _spec(_model(tmp_path / "good.onnx"), "good")
    assert manager.set_desired(good)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(4096))
    rejected = [
        _spec(corrupt, "corrupt"),  # does not load
        _spec(_model(tmp_path / "nan.onnx", nan=True), "nan"),  # loads, fails its self-test
        _spec(tmp_path / "good.onnx", "wrong-sum", "0" * 64),  # checksum mismatch
    ]
    engines = cache / "engines" / rejected[1].sha256
    engines.mkdir(parents=True)  # as TensorRT would have built for it
    for spec in rejected:
        assert not manager.set_desired(spec)
        assert manager.current is not None and manager.current.spec == good, "the last-good one serves"
        assert "rejected" in (manager.not_ready_reason or "")
    assert sorted(p.name for p in (cache / "models").iterdir()) == [f"{good.sha256}.onnx"]
    assert not (cache / "engines").exists() or list((cache / "engines").iterdir()) == []
    assert json.loads((cache / "last-good.json").read_text())["version"] == "good"


def test_a_corrupt_last_good_model_is_deleted_not_served(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = _spec(_model(tmp_path / "good.onnx"), "good")
    assert ModelManager(cache, lambda uri: LocalArtifactStore()).set_desired(good)
    cached = cache / "models" / f"{good.sha256}.onnx"
    cached.write_bytes(cached.read_bytes()[:100])  # the disk went bad
    restarted = ModelManager(cache, lambda uri: LocalArtifactStore())
    assert not restarted.load_last_good() and restarted.current is None
    assert not cached.exists() and not (cache / "last-good.json").exists()


def _runtime(tmp_path: Path, **settings: object) -> EdgeRuntime:
    return EdgeRuntime(Settings(data_dir=tmp_path / "data", **settings), bus=LocalEventLog(tmp_path / "ev"))


def test_admin_swap_is_refused_while_a_deployment_governs_the_model(tmp_path: Path) -> None:
    first = _spec(_model(tmp_path / "first.onnx"), "first")
    other = _spec(_model(tmp_path / "other.onnx", classes=3), "other")
    config = tmp_path / "model.yaml"
    config.write_text(f"uri: {first.uri}\nsha256: {first.sha256}\nversion: first\n")
    for settings in (
        {"edge_model_config": config},
        {"edge_model_uri": first.uri, "edge_model_sha256": first.sha256, "edge_model_version": "first"},
    ):
        runtime = _runtime(tmp_path / str(len(settings)), **settings)
        runtime.start(sync_interval=0.02)
        try:
            deadline = time.monotonic() + 60
            while not runtime.models.ready:
                assert time.monotonic() < deadline, runtime.models.not_ready_reason
                time.sleep(0.02)
            with pytest.raises(ModelGovernedError, match="EdgeDeployment"):
                runtime.set_model_by_admin(other)
            assert runtime.models.desired == first and runtime.models.current is not None
            assert runtime.models.current.spec == first
            assert not (runtime.models.cache_dir / "models" / f"{other.sha256}.onnx").exists()
        finally:
            runtime.stop()


def test_admin_swap_holds_where_nothing_else_sets_the_model(tmp_path: Path) -> None:
    first = _spec(_model(tmp_path / "first.onnx"), "first")
    other = _spec(_model(tmp_path / "other.onnx", classes=3), "other")
    runtime = _runtime(tmp_path)
    assert runtime.governed_by() is None
    # Count the model watcher's rounds (each reads the config file once): the test waits for real
    # rounds, not for a time in which some probably ran.
    rounds = [0]
    ran = threading.Condition()
    read_config = runtime._desired_from_config_file

    def counted() -> ModelSpec | None:
        value = read_config()
        with ran:
            rounds[0] += 1
            ran.notify_all()
        return value

    runtime._desired_from_config_file = counted  # type: ignore[method-assign]
    runtime.start(sync_interval=0.01)
    try:
        assert runtime.set_model_by_admin(first) and runtime.set_model_by_admin(other)
        swapped = rounds[0]
        for passed in range(1, 21):  # 20 full rounds of the watcher, each a chance to interfere
            with ran:
                assert ran.wait_for(lambda n=passed: rounds[0] > swapped + n, timeout=30), rounds
            assert runtime.models.current is not None and runtime.models.current.spec == other
        assert runtime.models.ready and runtime.models.desired == other
    finally:
        runtime.stop()


def test_yolox_resize_is_yoloxs_preproc_top_left_grey_bgr_untouched() -> None:
    image = np.zeros((50, 100, 3), np.uint8)
    image[..., 0] = 200  # blue in BGR: stays channel 0 (YOLOX trains on cv2's BGR)
    padded, gain, pad = yolox_resize(image, (64, 64))
    assert gain == (0.64, 0.64) and pad == (0, 0)
    assert (padded[:32, :, 0] == 200).all() and (padded[:32, :, 1:] == 0).all()  # int(50 * 0.64) rows
    assert (padded[32:] == 114).all()  # padding below, none above


def test_decode_yolox_is_grid_plus_offset_times_stride_and_exp_size() -> None:
    imgsz, strides = (64, 64), [8, 16, 32]
    anchors = sum((64 // s) ** 2 for s in strides)
    raw = np.zeros((anchors, 7), np.float32)
    raw[9] = [0.5, 0.25, np.log(2), 0.0, 0.9, 0.1, 0.8]  # stride 8, row 1, column 1
    raw[64 + 5] = [0.0, 0.0, 0.0, np.log(3), 0.9, 0.1, 0.8]  # stride 16, row 1, column 1
    decoded = decode_yolox(raw, imgsz, strides)
    np.testing.assert_allclose(decoded[9, :4], [12, 10, 16, 8], rtol=1e-6)
    np.testing.assert_allclose(decoded[69, :4], [16, 16, 16, 48], rtol=1e-6)
    np.testing.assert_array_equal(decoded[:, 4:], raw[:, 4:])  # scores untouched
