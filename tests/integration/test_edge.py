"""The edge runtime for real: ONNX models trained here, onnxruntime, HTTP, S3 server, hot-swaps."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import requests
import uvicorn
from onnx import TensorProto, helper

from tests.conftest import ExportedModel
from tests.helpers import SwitchableBus, wait_for
from tests.services import free_port, wait_for_port
from visioninapp.backends.events import LocalEventLog
from visioninapp.edge.inference import Detector
from visioninapp.edge.runtime import EdgeRuntime
from visioninapp.edge.server import create_app
from visioninapp.events import EdgeEvent
from visioninapp.settings import Settings

pytestmark = [pytest.mark.slow]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(model: ExportedModel) -> list[Path]:
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    synth = sorted((model.dataset / "images" / "val").glob("*.jpg"))[:6]
    return [*synth, assets / "bus.jpg", assets / "zidane.jpg"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def test_boxes_match_ultralytics_predict(exported_model: ExportedModel) -> None:
    from ultralytics import YOLO

    reference = YOLO(str(exported_model.onnx), task="detect")
    detector = Detector(exported_model.onnx)
    assert detector.head == "v8" and detector.class_names == ["circle", "square", "triangle", "cross"]
    compared = 0
    for path in _images(exported_model):
        expected = reference.predict(
            str(path), conf=0.25, iou=0.45, imgsz=exported_model.imgsz, verbose=False
        )[0]
        ours = detector.detect(cv2.imread(str(path)), conf=0.25, iou=0.45).detections
        boxes, scores, classes = (
            expected.boxes.xyxy.numpy(),
            expected.boxes.conf.numpy(),
            expected.boxes.cls.numpy().astype(int),
        )
        assert len(ours) == len(boxes), path.name
        for detection, box, score, cls in zip(ours, boxes, scores, classes, strict=True):
            assert detection.class_id == cls
            assert _iou(np.array(detection.box), box) >= 0.99
            assert abs(detection.score - score) < 1e-3
            compared += 1
    assert compared >= 50, "too few detections to compare"


def _nan_model(path: Path, imgsz: int) -> Path:
    """Loads fine, but every output is NaN: only the self-test can catch it."""
    anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    minus_one = helper.make_tensor("m", TensorProto.FLOAT, [1, 8, anchors], [-1.0] * (8 * anchors))
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=minus_one),
            helper.make_node("Sqrt", ["c"], ["output0"]),
        ],
        "nan",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 8, anchors])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class _Server:
    def __init__(self, runtime: EdgeRuntime) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(runtime), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_for_port(self.port, 30, "edge runtime")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        edge_summary_interval_seconds=1.0,
        deployment="gate",
        node_name="jetson-1",
        namespace="ci",
        revision="r1",
        **extra,
    )


def _put_model(base: str, path: Path, version: str, sha256: str | None = None) -> requests.Response:
    body = {"uri": path.as_uri(), "sha256": sha256 or _sha(path), "version": version}
    return requests.put(f"{base}/v1/admin/model", json=body, timeout=120)


def test_hot_swap_under_load_never_fails_a_request(exported_model: ExportedModel, tmp_path: Path) -> None:
    good = {"model-a": exported_model.onnx, "model-b": exported_model.onnx_small}
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(4096))
    nan = _nan_model(tmp_path / "nan.onnx", exported_model.imgsz)
    image = cv2.imencode(".jpg", cv2.imread(str(_images(exported_model)[0])))[1].tobytes()
    runtime = EdgeRuntime(_settings(tmp_path), bus=LocalEventLog(tmp_path / "events"))
    responses: list[tuple[int, str | None]] = []
    stop = threading.Event()

    with _Server(runtime) as base:
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 503
        assert _put_model(base, good["model-a"], "model-a").status_code == 200

        def load() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    r = session.post(f"{base}/v1/detect", data=image, timeout=30)
                    responses.append((r.status_code, r.json().get("model", {}).get("version")))

        workers = [threading.Thread(target=load) for _ in range(3)]
        for worker in workers:
            worker.start()
        plan = [
            ("model-b", good["model-b"], None, True),
            ("corrupt", corrupt, None, False),
            ("model-a", good["model-a"], None, True),
            ("wrong-sum", good["model-b"], "0" * 64, False),
            ("model-b", good["model-b"], None, True),
            ("nan", nan, None, False),
            ("model-a", good["model-a"], None, True),
            ("model-b", good["model-b"], None, True),
            ("corrupt", corrupt, None, False),
            ("model-a", good["model-a"], None, True),
        ]
        serving = "model-a"
        for version, path, sha256, accepted in plan:
            result = _put_model(base, path, version, sha256)
            ready = requests.get(f"{base}/readyz", timeout=5)
            if accepted:
                serving = version
                assert result.status_code == 200 and ready.status_code == 200, result.text
            else:
                assert result.status_code == 422 and ready.status_code == 503
                assert "rejected" in ready.json()["reason"] and ready.json()["model"] == serving
            # Requests in flight during the swap finish on the old model; those after it use the new.
            swapped_at = len(responses)
            deadline = time.monotonic() + 10
            while len(responses) < swapped_at + len(workers) + 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert responses[-1][1] == serving
        stop.set()
        for worker in workers:
            worker.join(30)
        metrics = requests.get(f"{base}/metrics", timeout=5).text

    assert len(responses) > 30
    assert [r for r in responses if r[0] != 200] == []
    assert {version for _, version in responses} <= set(good)
    assert "visioninapp_edge_model_rejections_total 4.0" in metrics
    # The rejected files (corrupt, NaN) were deleted from the cache; the good ones stay for restarts.
    cached = {p.name for p in (tmp_path / "data" / "edge-cache" / "models").iterdir()}
    assert cached == {f"{_sha(path)}.onnx" for path in good.values()}


def test_bad_images_get_clear_4xx(exported_model: ExportedModel, tmp_path: Path) -> None:
    runtime = EdgeRuntime(_settings(tmp_path), bus=LocalEventLog(tmp_path / "events"))
    with _Server(runtime) as base:
        assert requests.post(f"{base}/v1/detect", data=b"x", timeout=10).status_code == 503  # no model yet
        assert _put_model(base, exported_model.onnx, "m").status_code == 200
        jpeg = cv2.imencode(".jpg", np.full((50, 80, 3), 90, np.uint8))[1].tobytes()
        cases = {
            b"": (400, "empty"),
            b"not an image": (415, "not a supported image"),
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;": (415, "JPEG, PNG"),
            jpeg[: len(jpeg) // 3]: None,
        }
        for body, expected in cases.items():
            r = requests.post(f"{base}/v1/detect", data=body, timeout=10)
            if expected is None:  # truncated JPEG: decoded partially or refused, never a crash
                assert r.status_code in (200, 400)
                continue
            error = r.json()["error"]  # the one error body, as everywhere in the project
            assert r.status_code == expected[0] == error["status"] and expected[1] in error["message"], error
        huge = cv2.imencode(".png", np.zeros((9000, 9000), np.uint8))[1].tobytes()
        r = requests.post(f"{base}/v1/detect", data=huge, timeout=60)
        assert r.status_code == 413 and "too large" in r.json()["error"]["message"]  # not 415
        r = requests.post(f"{base}/v1/detect", files={"file": ("a.jpg", jpeg, "image/jpeg")}, timeout=10)
        assert r.status_code == 200 and r.json()["image"] == {"width": 80, "height": 50}
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200


def test_offline_restart_serves_the_cache_and_uploads_resume(
    exported_model: ExportedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in (
        ("AWS_ACCESS_KEY_ID", "t"),
        ("AWS_SECRET_ACCESS_KEY", "t"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(key, value)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3_server.start()
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for bucket in ("models", "feedback"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(exported_model.onnx), "models", "ci/shapes/model.onnx")
    sha256 = _sha(exported_model.onnx)
    settings = _settings(
        tmp_path,
        s3_endpoint_url=endpoint,
        edge_model_uri="s3://models/ci/shapes/model.onnx",
        edge_model_sha256=sha256,
        edge_model_version="shapes-v1",
        feedback_enabled=True,
        feedback_min_score=0.0,
        feedback_max_score=1.0,
        feedback_sample_rate=1.0,
        feedback_uri="s3://feedback/frames",
    )
    bus = SwitchableBus(LocalEventLog(tmp_path / "events"))
    # five different scenes: the same frame five times would be one hard frame (near-duplicates)
    images = [cv2.imencode(".jpg", cv2.imread(str(p)))[1].tobytes() for p in _images(exported_model)[:5]]

    first = EdgeRuntime(settings, bus=bus)
    first.start(sync_interval=0.2)
    deadline = time.monotonic() + 60
    while not first.models.ready and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.models.ready
    first.stop()

    s3_server.stop()  # the network is gone, and so is the event broker
    bus.up = False
    second = EdgeRuntime(settings, bus=bus)
    second.start(sync_interval=0.2)
    assert second.models.ready, "the cached last-good model must serve at once, offline"
    for image in images:
        assert second.detect(image)["model"]["version"] == "shapes-v1"
    time.sleep(1.5)  # at least one summary window closes while offline
    second.close_window()
    second.sync_once()
    assert len(second.feedback.spool.items()) == 5 and len(second.events.items()) >= 2

    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3_server.start()  # back online (moto starts empty: the bucket is created again)
    try:
        s3.create_bucket(Bucket="feedback")
        bus.up = True
        second.sync_once()
        assert second.feedback.spool.items() == [] and second.events.items() == []
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="feedback")["Contents"]]
        assert len([k for k in keys if k.endswith(".jpg")]) == 5
        assert all(k.startswith("frames/ci/gate/jetson-1/") for k in keys)  # the namespace first
        events = [EdgeEvent.model_validate_json(m.body) for m in bus.read("edge-events", 0)]
        assert sum(e.requests for e in events) == 5
        assert {(e.deployment, e.node, e.revision) for e in events} == {("gate", "jetson-1", "r1")}
    finally:
        second.stop()
        s3_server.stop()


def test_watched_model_config_file_drives_the_swap(exported_model: ExportedModel, tmp_path: Path) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(
        f"uri: {exported_model.onnx.as_uri()}\nsha256: {_sha(exported_model.onnx)}\nversion: v1\n"
    )
    runtime = EdgeRuntime(
        _settings(tmp_path, edge_model_config=config), bus=LocalEventLog(tmp_path / "events")
    )
    runtime.start(sync_interval=0.1)

    def serving(version: str) -> Any:
        return lambda: runtime.models.ready and runtime.model_info()["serving"]["version"] == version

    try:
        wait_for(serving("v1"), 60, "v1 to serve", interval=0.05)
        small = exported_model.onnx_small
        config.write_text(f"uri: {small.as_uri()}\nsha256: {_sha(small)}\nversion: v2\n")
        os.utime(config, (time.time() + 5, time.time() + 5))  # a new mtime even within the same second
        wait_for(serving("v2"), 60, "v2 to serve", interval=0.05)
    finally:
        runtime.stop()
