"""Rollouts at fleet scale: the operator's CPU time and API requests per node.

N simulated Jetsons on the harness (pods scripted: Ready at once, or crash-looping for the broken
model), health-gate wait 0. Measured in the operator process: a full canary rollout v1 → v2
(10% → 50% → 100%), then a rollout of a broken v3 that fails its first wave and rolls back.
Goal: <= 5 ms CPU and <= 3 API requests per node for each.

    python benchmarks/rollout_scale.py [--nodes 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from visioninapp.cluster.controllers import Outcome
from visioninapp.cluster.harness import Harness

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operator_scale import cpu_seconds

GROUP = "visioninapp.io"


def artifact(root: Path, name: str) -> dict[str, Any]:
    path = root / f"{name}.onnx"
    path.write_bytes(name.encode() * 100)
    data = path.read_bytes()
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "ModelArtifact",
        "metadata": {"name": name},
        "spec": {
            "model": "bench",
            "version": name,
            "formats": [
                {
                    "format": "onnx",
                    "uri": path.as_uri(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ],
            "classNames": ["a"],
        },
    }


def edge_pod(pod: dict[str, Any]) -> Outcome:
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    if env.get("VISIONINAPP_EDGE_MODEL_VERSION") == "v3":
        return Outcome(seconds=math.inf, ready=False, restarts=5)
    return Outcome(seconds=math.inf, ready=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp) / "cluster", script=edge_pod) as cluster:
        root = Path(tmp)
        cluster.create_namespace("bench")
        for index in range(args.nodes):
            cluster.add_node(
                f"jetson-{index:05d}",
                labels={"visioninapp.io/edge": "true"},
                taints=[{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}],
            )
        for name in ("v1", "v2", "v3"):
            cluster.create(GROUP, "modelartifacts", "bench", artifact(root, name))
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "VISIONINAPP_DATA_DIR": str(root / "data"),
            "VISIONINAPP_OPERATOR_ROLES": '["rollout"]',
            "VISIONINAPP_OPERATOR_METRICS_PORT": "0",
            "VISIONINAPP_OPERATOR_LIVENESS_PORT": "0",
            "VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS": "1",
        }
        with (root / "operator.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "visioninapp.operator.main"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:

            def status() -> dict[str, Any]:
                return (cluster.get(GROUP, "edgedeployments", "bench", "fleet") or {}).get("status") or {}

            def requests() -> int:
                counts = cluster.emulator.request_counts
                return sum(n for k, n in counts.items() if not k.startswith(("WATCH", "GET /", "POST nodes")))

            cluster.wait_for(
                lambda: all(
                    ((cluster.get(GROUP, "modelartifacts", "bench", n) or {}).get("status") or {}).get(
                        "phase"
                    )
                    == "Available"
                    for n in ("v1", "v2", "v3")
                ),
                120,
                "verified artifacts",
            )
            cluster.create(
                GROUP,
                "edgedeployments",
                "bench",
                {
                    "apiVersion": "visioninapp.io/v1alpha1",
                    "kind": "EdgeDeployment",
                    "metadata": {"name": "fleet"},
                    "spec": {
                        "modelRef": "v1",
                        "strategy": {
                            "canary": {"steps": [10, 50, 100]},
                            "healthGate": {"minReadySeconds": 0},
                        },
                    },
                },
            )
            cluster.wait_for(
                lambda: status().get("phase") == "Healthy" and status().get("readyNodes") == args.nodes,
                600,
                "v1 on every node",
            )
            results = {}
            runs = (
                ("full rollout v1 → v2", "v2", "Healthy", "v2"),
                ("failed v3, rollback", "v3", "RolledBack", "v2"),
            )
            for label, model, final, serving in runs:
                cpu, calls, start = cpu_seconds(process.pid), requests(), time.monotonic()
                cluster.patch(GROUP, "edgedeployments", "bench", "fleet", {"spec": {"modelRef": model}})

                def finished(final: str = final, serving: str = serving) -> bool:
                    time.sleep(0.2)  # poll gently: this process also runs the harness
                    current = status()
                    return (
                        current.get("phase") == final
                        and current.get("currentModel") == serving
                        and current.get("updatedNodes") == current.get("readyNodes") == args.nodes
                    )

                cluster.wait_for(finished, 900, label)
                time.sleep(1)
                results[label] = (
                    time.monotonic() - start,
                    cpu_seconds(process.pid) - cpu,
                    requests() - calls,
                )
        finally:
            process.terminate()
            process.wait(30)
    print(f"\n{args.nodes} nodes, health-gate wait 0")
    print(f"{'':24}{'wall s':>8}{'CPU ms/node':>13}{'requests/node':>15}")
    for label, (wall, cpu, calls) in results.items():
        print(f"{label:24}{wall:8.1f}{1000 * cpu / args.nodes:13.2f}{calls / args.nodes:15.2f}")
    print("goal: <= 5 ms CPU and <= 3 requests per node")


if __name__ == "__main__":
    main()
