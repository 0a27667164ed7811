"""What `visioninapp-trainer` adds to plain ultralytics training: events, checkpoints, uploads.

Same synthetic data, seed, epochs and image size. The baseline is a plain ultralytics script that
trains and exports ONNX; the candidate is `visioninapp-trainer` with per-epoch events and a
checkpoint upload every epoch (local store and local event log unless VISIONINAPP_* settings point
at S3 and RabbitMQ). Runs alternate (A, B, A, B, ...) so drift hits both; prints medians and the
ratio. Goal: ratio <= 1.03.

    python benchmarks/trainer_overhead.py [--runs 3] [--epochs 5] [--images 32] [--imgsz 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from goals import Goals

from visioninapp.local.synth import generate_dataset

PLAIN = """
import os, sys
os.environ["YOLO_OFFLINE"] = "1"
from visioninapp.trainer.offline import prepare_offline_ultralytics
from pathlib import Path
prepare_offline_ultralytics(Path(sys.argv[2]))
from ultralytics import YOLO
model = YOLO("yolo11n.yaml")
model.train(data=sys.argv[1], epochs=int(sys.argv[3]), imgsz=int(sys.argv[4]), batch=16, workers=2, seed=0,
            deterministic=True, device="cpu", project=sys.argv[2], name="plain", exist_ok=True, plots=False,
            verbose=False)
YOLO(model.trainer.best).export(format="onnx", opset=17, simplify=True, imgsz=int(sys.argv[4]), verbose=False)
"""


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        root = Path(tmp)
        generate_dataset(
            root / "ds", train=args.images, val=max(8, args.images // 4), imgsz=args.imgsz, seed=0
        )
        data = yaml.safe_load((root / "ds" / "data.yaml").read_text())
        resolved = root / "data.resolved.yaml"
        resolved.write_text(yaml.safe_dump({**data, "path": str(root / "ds")}))
        env = {**os.environ, "VISIONINAPP_DATA_DIR": str(root / "state")}
        plain: list[float] = []
        ours: list[float] = []
        for run in range(args.runs):
            work = root / f"run-{run}"
            plain.append(
                _timed(
                    [
                        sys.executable,
                        "-c",
                        PLAIN,
                        str(resolved),
                        str(work / "plain"),
                        str(args.epochs),
                        str(args.imgsz),
                    ],
                    env,
                )
            )
            config = {
                "name": f"bench-{run}",
                "namespace": "bench",
                "attempt": 1,
                "outputUri": (root / "out" / f"bench-{run}").as_uri(),
                "terminationLog": str(work / "termination.json"),
                "workDir": str(work / "ours"),
                "spec": {
                    "model": {"architecture": "yolo11n"},
                    "dataset": {"uri": (root / "ds").as_uri()},
                    "hyperparameters": {
                        "epochs": args.epochs,
                        "imgsz": args.imgsz,
                        "batch": 16,
                        "workers": 2,
                        "seed": 0,
                    },
                    "resources": {"gpu": {"count": 0}},
                    "checkpointEvery": 1,
                },
            }
            config_path = work / "config.yaml"
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(yaml.safe_dump(config))
            ours.append(
                _timed([sys.executable, "-m", "visioninapp.trainer.main", "--config", str(config_path)], env)
            )
            print(
                f"run {run + 1}/{args.runs}: plain {plain[-1]:.1f} s, visioninapp-trainer {ours[-1]:.1f} s",
                flush=True,
            )
    base, cand = statistics.median(plain), statistics.median(ours)
    print(f"plain ultralytics (train + ONNX export) median: {base:.2f} s")
    print(f"visioninapp-trainer (events + checkpoint every epoch) median: {cand:.2f} s")
    print("goals:")
    goals = Goals("trainer_overhead")
    goals.at_most("visioninapp-trainer / plain ultralytics", cand / base, 1.03, "x")
    goals.finish()


if __name__ == "__main__":
    main()
