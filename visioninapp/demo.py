"""`visioninapp demo`: the loop on one machine with no cluster — data, training, serving, detection.

Generates the synthetic shapes dataset, runs `visioninapp-trainer` on the CPU against the local
artifact store and event log (the same program and config a trainer pod gets), follows its epochs
from the event log, serves the exported model with the edge runtime over HTTP, sends validation
images to it, prints the detections and saves an annotated image.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from visioninapp.backends.events import LocalEventLog
from visioninapp.events import TrainerResult, TrainingEvent
from visioninapp.settings import Settings
from visioninapp.synth import CLASS_NAMES, generate_dataset

__all__ = ["generate_demo_dataset", "run_demo", "trainer_config"]

EPOCHS = 40
COLOURS = [(66, 135, 245), (245, 158, 66), (80, 200, 120), (220, 80, 200)]


def trainer_config(root: Path) -> dict[str, Any]:
    """The trainer's config for the demo: what a TrainingJob sized for a 2-core CPU gives it."""
    return {
        "name": "shapes",
        "namespace": "demo",
        "attempt": 1,
        "outputUri": (root / "artifacts" / "demo" / "shapes").resolve().as_uri(),
        "terminationLog": str(root / "trainer-result.json"),
        "workDir": str(root / "work"),
        "spec": {
            "model": {"architecture": "yolo11n"},
            "dataset": {"uri": (root / "datasets" / "shapes").resolve().as_uri()},
            "hyperparameters": {
                "epochs": EPOCHS,
                "imgsz": 128,
                "batch": 8,
                "nominalBatch": 8,
                "workers": 2,
                "seed": 0,
            },
            "resources": {"gpu": {"count": 0}},
            "checkpointEvery": 10,
        },
    }


def generate_demo_dataset(root: Path) -> Path:
    return generate_dataset(root / "datasets" / "shapes", train=128, val=32, imgsz=128, seed=0)


def _train(root: Path, settings: Settings, console: Console) -> TrainerResult:
    config = trainer_config(root)
    (root / "trainer.yaml").write_text(yaml.safe_dump(config))
    log = root / "trainer.log"
    env = {**os.environ, "VISIONINAPP_DATA_DIR": str(settings.data_dir)}
    env.pop("VISIONINAPP_RABBITMQ_HOST", None)  # the demo keeps its events in the local log
    bus = LocalEventLog(settings.data_dir / "events")
    offset = len(bus.read(settings.training_stream, 0, limit=10**9))
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "visioninapp.trainer.main", "--config", str(root / "trainer.yaml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    columns = (
        TextColumn("training yolo11n"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=EPOCHS, metrics="")
        while process.poll() is None or bus.read(settings.training_stream, offset, 1):
            for message in bus.read(settings.training_stream, offset):
                offset = message.offset + 1
                event = TrainingEvent.model_validate_json(message.body)
                if event.type == "epoch" and event.training_job == "shapes":
                    progress.update(
                        task,
                        completed=event.epoch,
                        metrics=f"mAP50 {event.map50 or 0:.3f}  box loss {event.losses.get('box', 0):.2f}",
                    )
            time.sleep(0.5)
    if process.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        raise RuntimeError("training failed:\n" + "\n".join(tail))
    return TrainerResult.from_termination_message((root / "trainer-result.json").read_text())


def _serve(onnx_uri: str, sha256: str, settings: Settings) -> tuple[str, Any]:
    import uvicorn

    from visioninapp.edge.runtime import EdgeRuntime
    from visioninapp.edge.server import create_app

    edge_settings = settings.model_copy(
        update={
            "edge_model_uri": onnx_uri,
            "edge_model_sha256": sha256,
            "edge_model_version": "shapes",
            "deployment": "demo",
            "node_name": "local-edge-0",
        }
    )
    runtime = EdgeRuntime(edge_settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    return f"http://127.0.0.1:{port}", server


def _annotate(image: np.ndarray, detections: list[dict[str, Any]]) -> np.ndarray:
    out = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    for d in detections:
        x1, y1, x2, y2 = (int(v * 4) for v in d["box"])
        colour = COLOURS[d["classId"] % len(COLOURS)]
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(
            out,
            f"{d['className']} {d['score']:.2f}",
            (x1, max(12, y1 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            colour,
            1,
            cv2.LINE_AA,
        )
    return out


def run_demo(root: Path, keep_serving: bool, console: Console | None = None) -> dict[str, Any]:
    """Run the whole loop; returns a summary (also written to `<root>/demo-summary.json`)."""
    import requests

    console = console or Console()
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=root / "state")
    dataset = root / "datasets" / "shapes"
    if not (dataset / "data.yaml").exists():
        with console.status("drawing the synthetic shapes dataset"):
            generate_demo_dataset(root)
    console.print(f"dataset: {dataset} ({len(CLASS_NAMES)} classes: {', '.join(CLASS_NAMES)})")

    result = _train(root, settings, console)
    console.print(
        f"trained: mAP50 {result.metrics.map50:.3f}, mAP50-95 {result.metrics.map50_95:.3f}; "
        f"files: {', '.join(f.uri for f in result.formats)}"
    )
    onnx = next(f for f in result.formats if f.format == "onnx")

    base, server = _serve(onnx.uri, onnx.sha256, settings)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("the edge runtime did not become ready")

    table = Table(title=f"detections by the edge runtime at {base}")
    for column in ("image", "class", "score", "box (x1, y1, x2, y2)", "labelled"):
        table.add_column(column)
    images = sorted((dataset / "images" / "val").glob("*.jpg"))[:4]
    found: list[str] = []
    for path in images:
        response = requests.post(f"{base}/v1/detect", data=path.read_bytes(), timeout=30).json()
        labels = (dataset / "labels" / "val" / f"{path.stem}.txt").read_text().split("\n")
        truth = sorted(CLASS_NAMES[int(line.split()[0])] for line in labels if line.strip())
        for d in response["detections"] or [{"className": "-", "score": 0, "box": []}]:
            table.add_row(path.name, d["className"], f"{d['score']:.2f}", str(d["box"]), ", ".join(truth))
            found.append(d["className"])
        image = cv2.imread(str(path))
        if image is not None:
            cv2.imwrite(str(root / f"annotated-{path.stem}.jpg"), _annotate(image, response["detections"]))
    console.print(table)
    summary = {
        "mAP50": result.metrics.map50,
        "mAP50_95": result.metrics.map50_95,
        "classesDetected": sorted(set(found) - {"-"}),
        "annotated": str(root / f"annotated-{images[0].stem}.jpg"),
        "edge": base,
        "seconds": round(time.perf_counter() - started, 1),
        "modelSha256": hashlib.sha256(Path(onnx.uri.removeprefix("file://")).read_bytes()).hexdigest(),
    }
    (root / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"annotated images: {root}/annotated-*.jpg; whole loop took {summary['seconds']} s")
    if keep_serving:
        console.print(
            f"the edge runtime keeps serving at {base} (POST an image to {base}/v1/detect); Ctrl-C stops"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    server.should_exit = True
    return summary
