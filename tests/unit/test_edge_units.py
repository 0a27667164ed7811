"""Edge runtime pieces without a server: providers, pre/post-processing, heads, feedback, spools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SwitchableBus
from visioninapp.backends.events import LocalEventLog
from visioninapp.edge.inference import (
    Detector,
    ImageError,
    choose_providers,
    decode_image,
    letterbox,
    nms,
)
from visioninapp.edge.telemetry import FeedbackPolicy, Spool, WindowStats, publish_spool
from visioninapp.events import EdgeEvent


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
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(b"\x89PNG garbage")


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


def test_end_to_end_head_needs_no_nms_and_is_rescaled() -> None:
    prediction = np.array([[[10, 20, 30, 40, 0.8, 1], [0, 0, 5, 5, 0.1, 0]]], np.float32)
    detections = _detector("end2end", ["a", "b"]).postprocess(
        prediction, (0.5, 0.5), (2, 4), (200, 200), 0.25, 0.45
    )
    assert len(detections) == 1 and detections[0].class_name == "b"
    assert detections[0].box == (16.0, 32.0, 56.0, 72.0)


def test_feedback_policy_range_sampling_and_hourly_budget() -> None:
    now = [0.0]
    import random

    policy = FeedbackPolicy(True, 0.2, 0.5, 1.0, 3, clock=lambda: now[0], rng=random.Random(1))
    assert not policy.keep(0.9) and not policy.keep(0.1)
    assert [policy.keep(0.3) for _ in range(5)] == [True, True, True, False, False]
    now[0] = 3600
    assert policy.keep(0.3)
    sampled = FeedbackPolicy(True, 0.0, 1.0, 0.25, 10_000, rng=random.Random(2))
    kept = sum(sampled.keep(0.5) for _ in range(2000))
    assert 400 < kept < 600
    assert not FeedbackPolicy(False, 0.0, 1.0, 1.0, 10).keep(0.5)


def test_spool_numbers_survive_restarts_and_publishing_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", ".json")
    window = WindowStats()
    for latency in (10.0, 20.0, 30.0):
        window.record(latency, False, ["helmet"], latency > 25)
    window.record(5.0, True, [], False)
    event = window.close(namespace="ns", deployment="d", node="n", revision="r")
    assert (event.requests, event.errors, event.low_confidence) == (4, 1, 1)
    assert event.p50_ms == 20.0 and event.detections_per_class == {"helmet": 3}
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
