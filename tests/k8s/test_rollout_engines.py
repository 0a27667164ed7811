"""`format: tensorrt` on a real control plane: three Jetsons of the node agent run the real edge
runtime with the engine's CPU stand-in (`VISIONINAPP_EDGE_ENGINE=ort-optimized`). The first node
of a rollout's first wave builds the engine and is designated its builder, the operator checks its
upload and records it, and the next wave waits for that, then downloads and verifies the engine
instead of building: the fleet builds once. (A new deployment's pods all start at once, so its first
model is built on every node; the rollout of the next model is the case.)"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ExportedModel
from tests.k8s.conftest import onnx_artifact, wait_for
from visioninapp.local.cluster.cluster import Cluster

GROUP = "visioninapp.io"
pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_the_fleet_builds_each_engine_once_and_the_others_download_it(
    cluster: Cluster,
    operator_factory: Any,
    exported_model: ExportedModel,
    rabbitmq_stream_port: int,
    tmp_path: Path,
) -> None:
    cluster.set_script(None)  # pods run `visioninapp-edge`
    for index in range(3):
        cluster.add_node(
            f"jetson-{index}",
            labels={"visioninapp.io/edge": "true"},
            taints=[{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}],
        )
    for name, path, size in (("first", exported_model.onnx_small, 64), ("good", exported_model.onnx, 96)):
        cluster.create(GROUP, "modelartifacts", cluster.namespace, onnx_artifact(name, path, imgsz=size))
    edge_env = {"VISIONINAPP_EDGE_SUMMARY_INTERVAL_SECONDS": "1", "VISIONINAPP_EDGE_ENGINE": "ort-optimized"}
    operator = operator_factory(
        cluster,
        VISIONINAPP_RABBITMQ_HOST="127.0.0.1",
        VISIONINAPP_EDGE_STREAM=f"edge-events-{uuid.uuid4().hex[:8]}",
        VISIONINAPP_OPERATOR_EDGE_CACHE_PATH=str(tmp_path / "node-cache"),
        VISIONINAPP_OPERATOR_EDGE_ENV=json.dumps(edge_env),
        VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS="0.5",
    )

    def available(name: str) -> bool:
        artifact = cluster.get(GROUP, "modelartifacts", cluster.namespace, name) or {}
        return (artifact.get("status") or {}).get("phase") == "Available"

    wait_for(lambda: available("first") and available("good"), 30, "the artifacts verified", operator)
    cluster.create(
        GROUP,
        "edgedeployments",
        cluster.namespace,
        {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": "EdgeDeployment",
            "metadata": {"name": "engines"},
            "spec": {
                "modelRef": "first",
                "format": "tensorrt",
                "strategy": {
                    "canary": {"steps": [33, 100]},
                    "maxUnavailable": 2,
                    "healthGate": {"minReadySeconds": 1},
                },
            },
        },
    )

    def status() -> dict[str, Any]:
        return (cluster.get(GROUP, "edgedeployments", cluster.namespace, "engines") or {}).get("status") or {}

    def healthy(model: str) -> bool:
        current = status()
        return (current.get("phase"), current.get("readyNodes"), current.get("currentModel")) == (
            "Healthy",
            3,
            model,
        )

    def pods() -> list[dict[str, Any]]:
        return [
            p
            for p in cluster.list("", "pods", cluster.namespace, "visioninapp.io/edge-deployment=engines")
            if not p["metadata"].get("deletionTimestamp")
        ]

    def engine_of(pod: dict[str, Any]) -> dict[str, Any]:
        answer = requests.get(f"http://{pod['status']['podIP']}:8080/v1/model", timeout=10).json()
        return dict(answer["engine"])

    try:
        wait_for(lambda: healthy("first"), 180, "the first model's engine serving on 3 nodes", operator)
        cluster.patch(GROUP, "edgedeployments", cluster.namespace, "engines", {"spec": {"modelRef": "good"}})
        wait_for(lambda: healthy("good"), 180, "the good model's engine serving on 3 nodes", operator)
    except BaseException:
        print("STATUS", json.dumps(status(), indent=1), flush=True)
        raise
    key_hash = engine_of(pods()[0])["keyHash"]
    (record,) = [r for r in status().get("engines", []) if r["keyHash"] == key_hash]
    assert record["phase"] == "Available" and record["builder"] in {"jetson-0", "jetson-1", "jetson-2"}
    image = sorted((exported_model.dataset / "images" / "val").iterdir())[0].read_bytes()
    sources = {}
    for pod in pods():
        engine = engine_of(pod)
        assert engine["state"] == "ready" and engine["keyHash"] == key_hash
        sources[pod["spec"]["nodeName"]] = (engine["source"], engine.get("uploaded", False), engine["sha256"])
        answer = requests.post(f"http://{pod['status']['podIP']}:8080/v1/detect", data=image, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["version"] == "good" and answer.json()["model"]["format"] == "tensorrt"
    builder = record["builder"]
    assert sources.pop(builder) == ("built", True, record["sha256"]), "the builder built and uploaded it"
    assert sorted(sources.values()) == [("shared", False, record["sha256"])] * 2, "the others downloaded it"
    reasons = {e.get("reason") for e in cluster.list("", "events", cluster.namespace)}
    assert {"EngineBuilder", "EngineRecorded"} <= reasons
