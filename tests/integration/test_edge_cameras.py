"""Cameras for real: synthetic videos of moving shapes served by GStreamer's RTSP server on loopback
(H.264, basic auth) and replayed from files, read by the edge runtime's continuous pipeline, with
detections consumed from its live SSE stream, per-camera numbers from /v1/cameras, /metrics and the
EdgeEvents windows, and hard frames from the streams in the feedback spool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests

from tests.conftest import REPO, ExportedModel
from tests.helpers import wait_for
from tests.integration.test_edge import _Server, _settings, _sha
from tests.services import apt_install, free_port
from visioninapp.backends.events import LocalEventLog
from visioninapp.edge.runtime import EdgeRuntime
from visioninapp.events import EdgeEvent
from visioninapp.local.synth import generate_image, moving_shapes

pytestmark = [pytest.mark.slow]

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_PACKAGES = (
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
)
USER, PASSWORD = "camera", "p@ss:w/rd"  # characters that must be quoted in the URL


def ensure_rtsp_server() -> None:
    """GStreamer's RTSP server and its H.264 encoder from Debian, installed when missing."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    if subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode != 0:
        apt_install(*RTSP_PACKAGES)
    if (
        shutil.which("gst-inspect-1.0")
        and b"x264enc" not in subprocess.run(["gst-inspect-1.0", "x264enc"], capture_output=True).stdout
    ):
        apt_install("gstreamer1.0-plugins-ugly")


class RtspServer:
    """tests/rtsp_server.py in a process of its own: killed and started again on the same port."""

    def __init__(self, mounts: dict[str, tuple[Path, int]], auth: str | None = None) -> None:
        self.port = free_port()
        self.args = [f"{name}={directory}@{fps}" for name, (directory, fps) in mounts.items()]
        self.auth = auth
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = [SYSTEM_PYTHON, str(REPO / "tests" / "rtsp_server.py"), str(self.port), *self.args]
        self.process = subprocess.Popen(
            [*command, *(["--auth", self.auth] if self.auth else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "ready", f"RTSP server did not start: {line}{self.process.stdout.read()}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def url(self, mount: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two synthetic camera views as JPEG frame folders (for the RTSP server) and as an MJPG file."""
    root = tmp_path_factory.mktemp("videos")
    out: dict[str, Path] = {}
    for name, seed in (("gate", 1), ("dock", 2)):
        frames, _ = moving_shapes(seed, 96, 45)
        folder = root / name
        folder.mkdir()
        for index, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"{index:05d}.jpg"), frame)
        out[name] = folder
        writer = cv2.VideoWriter(str(root / f"{name}.avi"), cv2.VideoWriter.fourcc(*"MJPG"), 15, (96, 96))
        for frame in frames:
            writer.write(frame)
        writer.release()
        out[f"{name}.avi"] = root / f"{name}.avi"
    return out


@pytest.fixture
def rtsp(videos: dict[str, Path]) -> Iterator[RtspServer]:
    ensure_rtsp_server()
    server = RtspServer({"gate": (videos["gate"], 15)}, auth=f"{USER}:{PASSWORD}")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def _runtime(tmp_path: Path, model: Path, cameras: list[dict[str, Any]], **extra: Any) -> EdgeRuntime:
    directory = tmp_path / "cameras"
    directory.mkdir()
    (directory / "jetson-1").write_text(json.dumps(cameras))
    settings = _settings(
        tmp_path,
        edge_cameras_dir=directory,
        edge_model_uri=model.as_uri(),
        edge_model_sha256=_sha(model),
        edge_model_version="shapes-v1",
        **extra,
    )
    return EdgeRuntime(settings, bus=LocalEventLog(tmp_path / "events"))


def _live(base: str, camera: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The next `count` results of a camera's live stream."""
    results: list[dict[str, Any]] = []
    with requests.get(f"{base}/v1/cameras/{camera}/detections", stream=True, timeout=timeout) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                results.append(json.loads(line.removeprefix("data: ")))
                if len(results) == count:
                    break
    return results


def _camera(base: str, name: str) -> dict[str, Any]:
    cameras = requests.get(f"{base}/v1/cameras", timeout=10).json()["cameras"]
    return next(c for c in cameras if c["name"] == name)


def test_rtsp_and_file_cameras_stream_detections_at_their_own_rates(
    exported_model: ExportedModel, videos: dict[str, Path], rtsp: RtspServer, tmp_path: Path
) -> None:
    cameras = [
        {"name": "gate", "url": rtsp.url("gate"), "credentialsSecret": "gate-camera", "targetFps": 4},
        {"name": "dock", "file": str(videos["dock.avi"]), "loop": True, "targetFps": 10},
    ]
    environ = {"VISIONINAPP_CAMERA_GATE_USERNAME": USER, "VISIONINAPP_CAMERA_GATE_PASSWORD": PASSWORD}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in environ.items():
            patch.setenv(key, value)
        runtime = _runtime(tmp_path, exported_model.onnx, cameras)
        with _Server(runtime) as base:
            gate, dock = _live(base, "gate", 8), _live(base, "dock", 12)
            states = {name: _camera(base, name) for name in ("gate", "dock")}
            assert requests.get(f"{base}/v1/cameras/nope/detections", timeout=10).status_code == 404
            metrics = requests.get(f"{base}/metrics", timeout=10).text
            # Closed streams leave no subscriber behind.
            wait_for(lambda: _camera(base, "dock")["subscribers"] == 0, 30, "subscribers gone")
            # The dock camera leaves this node (its ConfigMap entry changes): its live stream ends.
            with requests.get(f"{base}/v1/cameras/dock/detections", stream=True, timeout=60) as live:
                (tmp_path / "cameras" / "jetson-1").write_text(json.dumps(cameras[:1]))
                ended = [line for line in live.iter_lines(decode_unicode=True) if line.startswith("data: ")]
            assert [c["name"] for c in requests.get(f"{base}/v1/cameras", timeout=10).json()["cameras"]] == [
                "gate"
            ]
    for results, camera, fps in ((gate, "gate", 4), (dock, "dock", 10)):
        assert {r["camera"] for r in results} == {camera}
        assert all(r["model"]["version"] == "shapes-v1" for r in results)
        assert sum(len(r["detections"]) for r in results) >= len(results), "the model sees the shapes"
        assert all(r["image"] == {"width": 96, "height": 96} for r in results)
        # Paced to the camera's own target (a lower bound on time, whatever the machine's speed): n
        # frames forwarded span at least n - 1 periods, less the pacing slack and one source frame.
        first, last = results[0], results[-1]
        assert last["time"] - first["time"] >= (last["seq"] - first["seq"] - 1.25) / fps, camera
        assert states[camera]["state"] == "streaming" and states[camera]["framesRead"] > 0
    assert all("position" in r for r in dock) and not any("position" in r for r in gate)
    assert 'visioninapp_edge_camera_state{camera="gate",state="streaming"} 1.0' in metrics
    assert 'visioninapp_edge_camera_frames_processed_total{camera="dock"}' in metrics
    assert ended is not None  # the stream ended by itself (it would block until the timeout otherwise)


def test_a_camera_reconnects_after_its_rtsp_server_restarts(
    exported_model: ExportedModel, rtsp: RtspServer, tmp_path: Path
) -> None:
    cameras = [{"name": "gate", "url": rtsp.url("gate"), "credentialsSecret": "gate-camera", "targetFps": 5}]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISIONINAPP_CAMERA_GATE_USERNAME", USER)
        patch.setenv("VISIONINAPP_CAMERA_GATE_PASSWORD", PASSWORD)
        runtime = _runtime(tmp_path, exported_model.onnx, cameras)
        with _Server(runtime) as base:
            assert _live(base, "gate", 3)
            rtsp.kill()
            lost = wait_for(lambda: _camera(base, "gate")["state"] == "reconnecting", 60, "camera lost")
            assert lost
            rtsp.start()  # the same port, a new server process
            wait_for(lambda: _camera(base, "gate")["state"] == "streaming", 90, "camera reconnected")
            after = _live(base, "gate", 3)
            state = _camera(base, "gate")
            metrics = requests.get(f"{base}/metrics", timeout=10).text
        assert isinstance(runtime.bus, LocalEventLog)
        events = [EdgeEvent.model_validate_json(m.body) for m in runtime.bus.read("edge-events", 0)]
    assert after and state["reconnects"] >= 1
    assert 'visioninapp_edge_camera_reconnects_total{camera="gate"}' in metrics
    assert 'visioninapp_edge_camera_reconnects_total{camera="gate"} 0.0' not in metrics
    windows = [c for e in events for c in e.cameras if c.name == "gate"]
    assert sum(w.reconnects for w in windows) == state["reconnects"]
    assert any(w.state == "reconnecting" for w in windows) or any(w.error for w in windows)
    assert sum(w.frames_processed for w in windows) > 0


def test_wrong_credentials_and_missing_secrets_are_reported_per_camera(
    exported_model: ExportedModel, rtsp: RtspServer, tmp_path: Path
) -> None:
    cameras = [
        {"name": "gate", "url": rtsp.url("gate"), "credentialsSecret": "gate-camera", "targetFps": 5},
        {"name": "side", "url": rtsp.url("gate"), "credentialsSecret": "side-camera", "targetFps": 5},
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISIONINAPP_CAMERA_GATE_USERNAME", USER)
        patch.setenv("VISIONINAPP_CAMERA_GATE_PASSWORD", "wrong")
        runtime = _runtime(tmp_path, exported_model.onnx, cameras)
        with _Server(runtime) as base:
            wait_for(lambda: _camera(base, "gate")["error"] is not None, 60, "open failure reported")
            gate, side = _camera(base, "gate"), _camera(base, "side")
    assert gate["state"] == "connecting" and "cannot open rtsp://127.0.0.1" in gate["error"]
    assert PASSWORD not in gate["error"] and "wrong" not in gate["error"]  # never a credential in a state
    assert side["state"] == "failed" and "VISIONINAPP_CAMERA_SIDE_USERNAME" in side["error"]


def test_hard_frames_from_streams_carry_their_provenance_and_skip_duplicates(
    one_class_model: Path, videos: dict[str, Path], tmp_path: Path
) -> None:
    still = tmp_path / "still.avi"  # one frame over and over: a parked car for an hour
    scenes = tmp_path / "scenes.avi"  # a different scene in every frame
    rng = np.random.default_rng(3)
    for path, frames in (
        (still, [cv2.imread(str(videos["gate"] / "00000.jpg"))] * 30),
        (scenes, [np.asarray(generate_image(rng, 96)[0])[:, :, ::-1] for _ in range(30)]),
    ):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 15, (96, 96))
        for frame in frames:
            writer.write(np.ascontiguousarray(frame))
        writer.release()
    cameras = [
        {"name": "still", "file": str(still), "loop": True, "targetFps": 15},
        {"name": "scenes", "file": str(scenes), "loop": True, "targetFps": 15},
    ]
    runtime = _runtime(
        tmp_path,
        one_class_model,
        cameras,
        feedback_enabled=True,
        feedback_min_score=0.0,
        feedback_max_score=1.0,
        feedback_sample_rate=1.0,
        feedback_max_frames_per_hour=6,
        feedback_uri=(tmp_path / "feedback").as_uri(),
    )
    with _Server(runtime) as base:
        wait_for(lambda: len(list((tmp_path / "feedback").rglob("*.json"))) >= 6, 120, "budget filled")
        _live(base, "still", 20)  # the still camera kept going after its first frame was kept
        metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert isinstance(runtime.bus, LocalEventLog)
    events = [EdgeEvent.model_validate_json(m.body) for m in runtime.bus.read("edge-events", 0)]
    announced = [uri for event in events for uri in event.frames]  # the API imports these, no sync
    uploaded = sorted((tmp_path / "feedback").rglob("*.json"))
    assert sorted(announced) == [path.as_uri() for path in uploaded]
    records = [json.loads(p.read_text()) for p in (tmp_path / "feedback").rglob("*.json")]
    assert len(records) == 6, "the per-node budget holds"
    assert {r["camera"] for r in records} == {"still", "scenes"}
    assert sum(r["camera"] == "still" for r in records) == 1, "a still scene is one frame, not many"
    assert all(r["model"] == "shapes-v1" and r["revision"] == "r1" for r in records)
    assert all(r["sha256"] == _sha(one_class_model) for r in records)
    assert 'visioninapp_edge_hard_frames_total{outcome="duplicate"}' in metrics
    assert 'visioninapp_edge_hard_frames_total{outcome="budget"}' in metrics


def test_frames_waiting_together_go_through_one_batch_with_the_same_boxes(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    """With a dynamic batch axis, frames of several cameras (of different sizes) are one inference
    run, and each frame's detections are those it gets alone."""
    from prometheus_client import CollectorRegistry
    from ultralytics import YOLO

    from visioninapp.edge.cameras import Frame
    from visioninapp.edge.inference import Detector
    from visioninapp.edge.models import LoadedModel, ModelSpec
    from visioninapp.edge.stream import StreamPipeline

    dynamic = Path(
        YOLO(str(exported_model.weights)).export(format="onnx", imgsz=96, dynamic=True, verbose=False)
    )
    detector = Detector(dynamic)
    images = [
        cv2.imread(str(p)) for p in sorted((exported_model.dataset / "images" / "val").glob("*.jpg"))[:3]
    ]
    images.append(cv2.resize(images[0], (200, 120)))
    model = LoadedModel(ModelSpec(dynamic.as_uri(), "0" * 64, "onnx", "dyn"), detector, 0.0)
    pipeline = StreamPipeline(lambda: model, 0.25, 0.45, CollectorRegistry())
    frames = [Frame(f"cam{i}", 1, image, 0.0, 0.0) for i, image in enumerate(images)]
    jobs = list(pipeline._infer(model, frames))
    assert [len(job.frames) for job in jobs] == [4]  # one run for all
    job = jobs[0]
    for index, (frame, image) in enumerate(zip(frames, images, strict=True)):
        gain, pad = job.letterboxes[index]
        batched = detector.postprocess(job.output[index : index + 1], gain, pad, image.shape[:2], 0.25, 0.45)
        alone = detector.detect(image, 0.25, 0.45).detections
        assert len(batched) == len(alone) > 0, frame.camera
        for a, b in zip(batched, alone, strict=True):
            assert a.class_id == b.class_id and abs(a.score - b.score) < 1e-4
            assert max(abs(x - y) for x, y in zip(a.box, b.box, strict=True)) < 0.05


def test_a_gstreamer_pipeline_through_pygobject(tmp_path: Path) -> None:
    """The CSI path without a CSI camera: a GStreamer pipeline ending in appsink, read through
    PyGObject (this OpenCV has no GStreamer), here with `videotestsrc` and the system's gi."""
    ensure_rtsp_server()  # the same Debian packages: GStreamer, its base plugins, python3-gi
    site = tmp_path / "site"
    site.mkdir()
    (site / "gi").symlink_to(Path("/usr/lib/python3/dist-packages/gi"))
    script = """
import sys, time
from visioninapp.edge.cameras import Backoff, CameraReader, FrameSlot, open_source
from visioninapp.resources.edgedeployment import CameraSpec
import threading
ok = CameraSpec(name="csi", pipeline="videotestsrc ! video/x-raw,width=64,height=48,framerate=30/1 ! "
                "videoconvert ! video/x-raw,format=BGR ! appsink", target_fps=10)
slot = FrameSlot(threading.Condition())
reader = CameraReader(ok, slot)
reader.start()
deadline = time.monotonic() + 30
while reader.counters.frames_forwarded < 5 and time.monotonic() < deadline:
    time.sleep(0.1)
with slot._ready:
    frame = slot.take()
print("state", reader.state, reader.counters.frames_forwarded, frame.image.shape if frame else None)
reader.stop()
for bad in ("nosuchelement ! appsink",):  # (no appsink at the end: the CRD refuses it already)
    try:
        open_source(CameraSpec(name="bad", pipeline=bad))
    except Exception as error:
        print("refused", type(error).__name__, getattr(error, "retry", None), str(error)[:80])
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    state = next(line for line in lines if line.startswith("state"))
    assert state.startswith("state streaming") and state.endswith("(48, 64, 3)"), run.stdout
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 1 and "SourceError False" in refused[0] and "nosuchelement" in refused[0], (
        run.stdout
    )
