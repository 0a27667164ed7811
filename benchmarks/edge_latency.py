"""Edge runtime latency on the CPU: how close the runtime stays to bare onnxruntime.

Same model and image for every contender, run interleaved (one call of each per round) so drift
hits all alike; prints p50 per contender and ratios to the floor (`session.run` alone):
- floor: `session.run` on a ready tensor;
- runtime: bytes in -> response dict (decode, letterbox, run, NMS, rescale, metrics);
- ultralytics: `YOLO(model.onnx).predict` on the decoded image;
- http: the runtime behind its HTTP API (uvicorn, loopback).
Also peak RSS (VmHWM: ru_maxrss would carry the parent's peak over exec) of a process that detects
with the edge runtime vs one that predicts with ultralytics + torch, and the installed size of the
edge's inference dependencies vs ultralytics + torch.
Goals: runtime <= 1.10x floor, http <= 1.20x floor, RSS <= 1/3, size <= 1/5.

    python benchmarks/edge_latency.py [--rounds 200] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from goals import Goals

RSS_SCRIPT = {
    "edge": """
import sys, cv2
from pathlib import Path
from visioninapp.edge.inference import Detector
d = Detector(Path(sys.argv[1])); image = cv2.imread(sys.argv[2])
for _ in range(20): d.detect(image)
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
""",
    "ultralytics": """
import sys, os
os.environ["YOLO_OFFLINE"] = "1"
from ultralytics import YOLO
m = YOLO(sys.argv[1], task="detect")
for _ in range(20): m.predict(sys.argv[2], verbose=False)
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
""",
}


def _export(imgsz: int, directory: Path) -> Path:
    from visioninapp.trainer.offline import prepare_offline_ultralytics

    prepare_offline_ultralytics(directory / "ultralytics")
    from ultralytics import YOLO

    exported = YOLO("yolo11n.yaml").export(format="onnx", imgsz=imgsz, opset=17, simplify=True, verbose=False)
    return Path(exported).resolve().rename(directory / "model.onnx")


def _distribution_size(names: list[str]) -> int:
    """Bytes on disk of the given distributions' files (each counted once)."""
    seen: set[Path] = set()
    total = 0
    for name in names:
        try:
            files = metadata.files(name) or []
        except metadata.PackageNotFoundError:
            continue
        for file in files:
            path = Path(str(file.locate())).resolve()
            if path not in seen and path.is_file():
                seen.add(path)
                total += path.stat().st_size
    return total


def _requirements(root: str) -> list[str]:
    """A distribution and everything it requires, transitively (installed ones only)."""
    from packaging.requirements import Requirement

    todo, found = [root], set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in found:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        found.add(name)
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()

    import requests
    import ultralytics
    import uvicorn
    from ultralytics import YOLO

    from visioninapp.edge.inference import Detector
    from visioninapp.edge.models import ModelSpec
    from visioninapp.edge.runtime import EdgeRuntime
    from visioninapp.edge.server import create_app
    from visioninapp.settings import Settings

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        root = Path(tmp)
        model_path = _export(args.imgsz, root)
        image_path = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
        data = image_path.read_bytes()
        image = cv2.imread(str(image_path))

        detector = Detector(model_path)
        tensor, _, _ = detector.preprocess(image)
        runtime = EdgeRuntime(Settings(data_dir=root / "state"))
        runtime.models.set_desired(
            ModelSpec(
                model_path.as_uri(), hashlib.sha256(model_path.read_bytes()).hexdigest(), version="bench"
            )
        )
        reference = YOLO(str(model_path), task="detect")

        port = 18000 + int(time.time()) % 1000
        server = uvicorn.Server(
            uvicorn.Config(create_app(runtime, start=False), host="127.0.0.1", port=port, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        session = requests.Session()
        url = f"http://127.0.0.1:{port}/v1/detect"
        while True:
            try:
                session.post(url, data=data, timeout=30)
                break
            except requests.ConnectionError:
                time.sleep(0.1)

        contenders = {
            "floor (session.run)": lambda: detector.run(tensor),
            "runtime (bytes -> dict)": lambda: runtime.detect(data),
            "ultralytics predict": lambda: reference.predict(image, verbose=False),
            "runtime over HTTP": lambda: session.post(url, data=data, timeout=30).raise_for_status(),
        }
        timings: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(10):  # warm-up
            for call in contenders.values():
                call()
        for _ in range(args.rounds):
            for name, call in contenders.items():
                start = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - start) * 1e3)
        server.should_exit = True

        floor = statistics.median(timings["floor (session.run)"])
        p50s = {name: statistics.median(values) for name, values in timings.items()}
        print(
            f"model yolo11n {args.imgsz}x{args.imgsz}, image bus.jpg, {args.rounds} interleaved rounds, "
            f"provider {detector.provider}"
        )
        for name, values in timings.items():
            p50 = statistics.median(values)
            print(
                f"  {name:26s} p50 {p50:8.2f} ms   p95 {np.percentile(values, 95):8.2f} ms   "
                f"{p50 / floor:5.2f}x floor"
            )

        rss = {}
        for name, script in RSS_SCRIPT.items():
            out = subprocess.run(
                [sys.executable, "-c", script, str(model_path), str(image_path)],
                capture_output=True,
                text=True,
                check=True,
            )
            rss[name] = int(out.stdout.strip().splitlines()[-1]) / 1024
        print(
            f"peak RSS: edge runtime {rss['edge']:.0f} MiB, ultralytics + torch {rss['ultralytics']:.0f} MiB"
        )
        edge_deps = _requirements("onnxruntime") + _requirements("opencv-python-headless") + ["numpy"]
        heavy = _requirements("ultralytics") + _requirements("torch") + _requirements("torchvision")
        edge_size, heavy_size = _distribution_size(edge_deps), _distribution_size(heavy)
        print(
            f"installed size: edge inference deps {edge_size / 2**20:.0f} MiB, ultralytics + torch "
            f"{heavy_size / 2**20:.0f} MiB"
        )
        print("goals:")
        goals = Goals("edge_latency")
        goals.at_most("runtime / floor", p50s["runtime (bytes -> dict)"] / floor, 1.10, "x")
        goals.at_most("HTTP / floor", p50s["runtime over HTTP"] / floor, 1.20, "x")
        goals.at_most("peak RSS / ultralytics'", rss["edge"] / rss["ultralytics"], 0.33, "x")
        goals.at_most("installed size / ultralytics + torch", edge_size / heavy_size, 0.20, "x")
        goals.finish()


if __name__ == "__main__":
    main()
