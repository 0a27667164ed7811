"""The camera pipeline on the CPU: what the runtime costs beyond a plain OpenCV + onnxruntime loop.

Two synthetic cameras (shapes gliding over a background, drawn in the style the model was trained
on) are served at 15 FPS as H.264 by GStreamer's RTSP server on loopback (tests/rtsp_server.py).
The model is the demo's: yolo11n trained on the shapes with the local example's recipe, at its
input size (128 px), or `--model`. Then, one after the other in the same run:
- pipeline: the edge runtime (`python -m visioninapp.edge.server`, its own process) reading both
  cameras, its detections consumed live from the SSE streams;
- plain: a process with one thread per camera doing cv2.VideoCapture.read → letterbox →
  session.run → NMS, the loop a user would write (the same model and decoding code).
Measured: CPU seconds of each process tree per processed frame, end-to-end latency (frame read →
detections published) p50/p99, per-camera FPS, drop rate, the runtime's RSS over the run, and the
pipeline's detections against the ground truth (each result matched to the video frame it fits
best: every object found with its class at IoU >= 0.5, at most one extra box).
Goals: CPU per frame <= 1.10x plain; p99 <= 2x one inference; FPS within 10% of 15 per camera;
RSS in the last minute <= 1.05x the first (no queue grows); >= 90% of frames match.

    python benchmarks/edge_stream.py [--seconds 300] [--plain-seconds 60] [--model M.onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import requests
from goals import Goals

ROOT = Path(__file__).resolve().parent.parent
FPS = 15
CAMERAS = ("north", "south")
FRAMES = 300  # per camera video: 20 s, looped by the server
SCENE_FRAMES = 30


def _iou(a: Any, b: Any) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _matches(
    detections: list[dict[str, Any]], truths: list[list[tuple[int, float, float, float, float]]]
) -> bool:
    """Whether the detections fit some frame of the video: each of its objects found, by class, at
    IoU >= 0.5 (extra boxes are the model's precision, not the pipeline's doing)."""
    return any(
        all(any(d["classId"] == t[0] and _iou(d["box"], t[1:]) >= 0.5 for d in detections) for t in truth)
        for truth in truths
    )


def _tree_cpu(process: psutil.Process) -> float:
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _videos(root: Path, size: int) -> dict[str, list[list[tuple[int, float, float, float, float]]]]:
    """Each camera's video: scenes of 2 s, each its own background and shapes in the model's training
    style, so that no one scene's luck decides the accuracy figure."""
    from visioninapp.local.mode import SHAPES_STYLE
    from visioninapp.local.synth import moving_shapes

    truths: dict[str, list[list[tuple[int, float, float, float, float]]]] = {}
    style = {k: v for k, v in SHAPES_STYLE.items() if k in ("radius", "min_contrast", "rotate")}
    for number, camera in enumerate(CAMERAS):
        folder = root / camera
        folder.mkdir()
        frames, truths[camera] = [], []
        for scene in range(FRAMES // SCENE_FRAMES):
            seed = 1000 * (number + 1) + scene
            images, truth = moving_shapes(seed, size, SCENE_FRAMES, objects=2, **style)  # type: ignore[arg-type]
            frames += images
            truths[camera] += truth
        for index, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"{index:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return truths


def _rtsp_server(root: Path, port: int) -> subprocess.Popen[str]:
    mounts = [f"{camera}={root / camera}@{FPS}" for camera in CAMERAS]
    server = subprocess.Popen(
        ["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), str(port), *mounts],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready", "RTSP server failed"
    return server


def _demo_model(root: Path) -> Path:
    """The demo's model, trained once per machine and recipe (80 s on 2 cores), then reused."""
    import shutil

    import ultralytics

    recipe = (ROOT / "manifests" / "examples" / "local" / "trainingjob-shapes.yaml").read_bytes()
    key = hashlib.sha256(recipe + ultralytics.__version__.encode()).hexdigest()[:16]
    cached = Path.home() / ".cache" / "visioninapp" / "bench" / f"demo-yolo11n-{key}.onnx"
    if not cached.exists():
        from edge_latency import _trained_model

        model, _ = _trained_model(128, root / "model")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model, cached.with_suffix(".partial"))
        cached.with_suffix(".partial").replace(cached)
    return cached


def _offline_match_rate(model: Path, root: Path, truths: dict[str, Any]) -> float:
    """The model's own accuracy on the original frames, without the pipeline nor H.264: a ceiling."""
    from visioninapp.edge.inference import Detector
    from visioninapp.edge.stream import detection_json

    detector = Detector(model)
    matched = total = 0
    for camera, truth in truths.items():
        for index, frame_truth in enumerate(truth):
            image = cv2.imread(str(root / camera / f"{index:05d}.jpg"))
            matched += _matches(detection_json(detector.detect(image).detections), [frame_truth])
            total += 1
    return matched / total


def _one_inference_ms(model: Path, size: int) -> float:
    from visioninapp.edge.inference import Detector

    detector = Detector(model)
    tensor, _, _ = detector.preprocess(np.zeros((size, size, 3), np.uint8))
    for _ in range(20):
        detector.run(tensor)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        detector.run(tensor)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def _pipeline(root: Path, model: Path, urls: dict[str, str], seconds: float, warmup: float) -> dict[str, Any]:
    """The runtime in its own process; its results read from the SSE streams."""
    cameras_dir = root / "cameras"
    cameras_dir.mkdir()
    (cameras_dir / "bench").write_text(
        json.dumps([{"name": c, "url": u, "targetFps": FPS} for c, u in urls.items()])
    )
    port = 18500 + os.getpid() % 400
    env = {
        **os.environ,
        "VISIONINAPP_DATA_DIR": str(root / "runtime"),
        "VISIONINAPP_NODE_NAME": "bench",
        "VISIONINAPP_EDGE_CAMERAS_DIR": str(cameras_dir),
        "VISIONINAPP_EDGE_MODEL_URI": model.as_uri(),
        "VISIONINAPP_EDGE_MODEL_SHA256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "VISIONINAPP_EDGE_MODEL_VERSION": "demo",
        "VISIONINAPP_LOG_LEVEL": "WARNING",
    }
    runtime = subprocess.Popen(
        [sys.executable, "-m", "visioninapp.edge.server", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[tuple[float, dict[str, Any]]]] = {c: [] for c in urls}
    stop = threading.Event()

    def consume(camera: str) -> None:
        while not stop.is_set():
            try:
                with requests.get(f"{base}/v1/cameras/{camera}/detections", stream=True, timeout=30) as r:
                    for line in r.iter_lines(decode_unicode=True):
                        if stop.is_set():
                            return
                        if line.startswith("data: "):
                            results[camera].append((time.monotonic(), json.loads(line[6:])))
            except requests.RequestException:
                time.sleep(0.2)  # the runtime is starting

    try:
        consumers = [threading.Thread(target=consume, args=(c,), daemon=True) for c in urls]
        for consumer in consumers:
            consumer.start()
        deadline = time.monotonic() + 120
        while not all(results.values()):
            assert time.monotonic() < deadline and runtime.poll() is None, "the runtime never streamed"
            time.sleep(0.2)
        time.sleep(warmup)
        process = psutil.Process(runtime.pid)
        totals = _processed_totals(base)
        cpu, started = _tree_cpu(process), time.monotonic()
        rss: list[tuple[float, float]] = []
        while (elapsed := time.monotonic() - started) < seconds:
            rss.append(
                (elapsed, sum(p.memory_info().rss for p in [process, *process.children(True)]) / 2**20)
            )
            print(f"  pipeline {elapsed:.0f}/{seconds:.0f} s, RSS {rss[-1][1]:.0f} MiB", flush=True)
            time.sleep(min(10.0, seconds - elapsed))
        cpu, ended = _tree_cpu(process) - cpu, time.monotonic()
        after = _processed_totals(base)
    finally:
        stop.set()
        runtime.terminate()
        runtime.wait(30)
    window = [r for c in urls for t, r in results[c] if started <= t <= ended]
    frames = {c: after[c]["processed"] - totals[c]["processed"] for c in urls}
    runs = after["inference"]["count"] - totals["inference"]["count"]
    inference_ms = (after["inference"]["sum"] - totals["inference"]["sum"]) / max(runs, 1)
    return {
        "cpu_per_frame_ms": cpu / max(sum(frames.values()), 1) * 1e3,
        "latencies": [r["latencyMs"] for r in window],
        "fps": {c: frames[c] / (ended - started) for c in urls},
        "dropped": {c: after[c]["dropped"] - totals[c]["dropped"] for c in urls},
        "read": {c: after[c]["read"] - totals[c]["read"] for c in urls},
        "results": {c: [r for t, r in results[c] if started <= t <= ended] for c in urls},
        "rss": rss,
        "inference_ms": inference_ms,
    }


def _processed_totals(base: str) -> dict[str, dict[str, float]]:
    text = requests.get(f"{base}/metrics", timeout=10).text
    totals: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for metric, key in (
            ("visioninapp_edge_camera_frames_processed_total", "processed"),
            ("visioninapp_edge_camera_frames_dropped_total", "dropped"),
            ("visioninapp_edge_camera_frames_read_total", "read"),
        ):
            if line.startswith("visioninapp_edge_stream_inference_ms_"):
                name, value = line.split(" ")
                totals.setdefault("inference", {})[name.rsplit("_", 1)[1]] = float(value)
            if line.startswith(metric + "{"):
                camera = line.split('camera="', 1)[1].split('"', 1)[0]
                totals.setdefault(camera, {})[key] = float(line.rsplit(" ", 1)[1])
    return totals


PLAIN = """
import json, sys, threading, time
import cv2
from pathlib import Path
from visioninapp.edge.inference import Detector

model, seconds, urls = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
detector = Detector(model)
latencies, frames, stop = [], {u: 0 for u in urls}, threading.Event()

def loop(url):
    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    while not stop.is_set():
        ok, image = capture.read()
        if not ok:
            continue
        read = time.perf_counter()
        tensor, gain, pad = detector.preprocess(image)
        detector.postprocess(detector.run(tensor), gain, pad, image.shape[:2], 0.25, 0.45)
        latencies.append((time.perf_counter() - read) * 1e3)
        frames[url] += 1

threads = [threading.Thread(target=loop, args=(u,)) for u in urls]
for t in threads: t.start()
print("ready", flush=True)
sys.stdin.readline()  # the parent measures between "ready" and its newline
mark = (len(latencies), dict(frames))
print(json.dumps({"start": mark}), flush=True)
sys.stdin.readline()
stop.set()
for t in threads: t.join()
counts = {u: frames[u] - mark[1][u] for u in urls}
print(json.dumps({"latencies": latencies[mark[0]:], "frames": counts}), flush=True)
"""


def _plain(model: Path, urls: dict[str, str], seconds: float, warmup: float) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, "-c", PLAIN, str(model), str(seconds), *urls.values()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(warmup)
    process = psutil.Process(child.pid)
    cpu, started = _tree_cpu(process), time.monotonic()
    child.stdin.write("\n")
    child.stdin.flush()
    child.stdout.readline()
    time.sleep(seconds)
    cpu, elapsed = _tree_cpu(process) - cpu, time.monotonic() - started
    child.stdin.write("\n")
    child.stdin.flush()
    out = json.loads(child.stdout.readline())
    child.wait(30)
    frames = sum(out["frames"].values())
    return {
        "cpu_per_frame_ms": cpu / max(frames, 1) * 1e3,
        "latencies": out["latencies"],
        "fps": {c: out["frames"][u] / elapsed for c, u in urls.items()},
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300, help="pipeline measurement (the soak)")
    parser.add_argument("--plain-seconds", type=float, default=60, help="plain loop measurement")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--model", type=Path, help="an exported detector (default: train the demo's)")
    parser.add_argument("--size", type=int, default=256, help="camera frame size (square)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    from tests.services import free_port

    with tempfile.TemporaryDirectory(prefix="edge-stream-") as tmp:
        root = Path(tmp)
        model = args.model.resolve() if args.model else _demo_model(root)
        truths = _videos(root, args.size)
        port = free_port()
        server = _rtsp_server(root, port)
        urls = {c: f"rtsp://127.0.0.1:{port}/{c}" for c in CAMERAS}
        try:
            inference_ms = _one_inference_ms(model, args.size)
            offline = _offline_match_rate(model, root, truths)
            print(
                f"one inference: {inference_ms:.2f} ms; the model alone on the original frames finds "
                f"every object in {offline:.0%} of them",
                flush=True,
            )
            pipeline = _pipeline(root, model, urls, args.seconds, args.warmup)
            print("plain loop", flush=True)
            plain = _plain(model, urls, args.plain_seconds, args.warmup)
        finally:
            server.terminate()
            server.wait(10)
    _report(pipeline, plain, inference_ms, truths, offline)


def _report(
    pipeline: dict[str, Any],
    plain: dict[str, Any],
    inference_ms: float,
    truths: dict[str, Any],
    offline: float,
) -> None:
    goals = Goals("edge_stream")
    p50, p99 = _percentile(pipeline["latencies"], 50), _percentile(pipeline["latencies"], 99)
    print(
        f"pipeline: {pipeline['cpu_per_frame_ms']:.2f} ms CPU/frame, latency p50 {p50:.1f} ms "
        f"p99 {p99:.1f} ms, FPS {', '.join(f'{c} {v:.2f}' for c, v in pipeline['fps'].items())}, "
        f"dropped {pipeline['dropped']} of read {pipeline['read']}"
    )
    print(
        f"plain:    {plain['cpu_per_frame_ms']:.2f} ms CPU/frame, latency p50 "
        f"{_percentile(plain['latencies'], 50):.1f} ms p99 {_percentile(plain['latencies'], 99):.1f} ms, FPS "
        f"{', '.join(f'{c} {v:.2f}' for c, v in plain['fps'].items())}"
    )
    goals.at_most(
        "CPU per frame vs plain", pipeline["cpu_per_frame_ms"] / plain["cpu_per_frame_ms"], 1.10, "x"
    )
    print(
        f"one inference: {inference_ms:.2f} ms alone, {pipeline['inference_ms']:.2f} ms on average in the "
        "pipeline (the cores shared with both decoders)"
    )
    goals.at_most("p99 latency vs one inference in the pipeline", p99 / pipeline["inference_ms"], 2.0, "x")
    for camera, fps in pipeline["fps"].items():
        goals.at_most(f"{camera} FPS off its target", abs(fps - FPS) / FPS, 0.10)
    drops = sum(pipeline["dropped"].values()) / max(sum(pipeline["read"].values()), 1)
    print(f"drop rate: {drops:.2%}")
    rss = pipeline["rss"]
    first = [v for t, v in rss if t <= 60] or [rss[0][1]]
    last = [v for t, v in rss if t >= rss[-1][0] - 60]
    goals.at_most("RSS last minute vs first", max(last) / max(first), 1.05, "x")
    matched = total = 0
    for camera, results in pipeline["results"].items():
        for result in results:
            total += 1
            matched += _matches(result["detections"], truths[camera])
    rate = matched / max(total, 1)
    model_limit = f"the model alone finds every object in {offline:.0%} of the original frames"
    goals.at_least("frames matching the ground truth", rate, 0.90, why=model_limit if offline < 0.90 else "")
    goals.at_least("... vs the model alone on the original frames", rate / offline, 0.95, "x")
    goals.finish()


if __name__ == "__main__":
    main()
