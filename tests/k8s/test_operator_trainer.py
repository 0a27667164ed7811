"""End to end: the real operator, the real trainer as the pod's process, S3 and RabbitMQ Streams."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.k8s.conftest import wait_for
from visioninapp.backends.rabbitmq import RabbitStreamBus
from visioninapp.events import TrainingEvent
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.local.synth import generate_dataset

GROUP = "visioninapp.io"
pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_training_job_runs_the_real_trainer_to_a_verified_artifact(
    cluster: Cluster, operator_factory: Any, s3_endpoint: str, rabbitmq_stream_port: int, tmp_path: Path
) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"e2e-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    root = tmp_path / "synth"
    generate_dataset(root, train=16, val=8, imgsz=96, seed=3)
    for path in root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"datasets/shapes/{path.relative_to(root)}")
    stream = f"training-events-{uuid.uuid4().hex[:8]}"
    operator = operator_factory(
        cluster,
        VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint,
        VISIONINAPP_ARTIFACTS_URI=f"s3://{bucket}/runs",
        VISIONINAPP_RABBITMQ_HOST="127.0.0.1",
        VISIONINAPP_TRAINING_STREAM=stream,
        VISIONINAPP_OPERATOR_TRAINER_WORK_DIR=str(tmp_path / "scratch"),
    )
    cluster.set_script(None)  # pods run their command: visioninapp-trainer
    cluster.create(
        GROUP,
        "trainingjobs",
        cluster.namespace,
        {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "shapes"},
            "spec": {
                "model": {"architecture": "yolo11n"},
                "dataset": {"uri": f"s3://{bucket}/datasets/shapes"},
                "hyperparameters": {"epochs": 4, "imgsz": 96, "batch": 8, "nominalBatch": 8, "workers": 0},
                "resources": {"gpu": {"count": 0}, "cpu": "2", "memory": "4Gi"},
                "checkpointEvery": 1,
            },
        },
    )

    def status() -> dict[str, Any]:
        return (cluster.get(GROUP, "trainingjobs", cluster.namespace, "shapes") or {}).get("status") or {}

    wait_for(lambda: status().get("phase") in ("Succeeded", "Failed"), 400, "the training run", operator)
    final = status()
    pods = cluster.list("", "pods", cluster.namespace, "job-name=shapes-1")
    log = cluster.pod_log(cluster.namespace, pods[0]["metadata"]["name"]) if pods else ""
    assert final["phase"] == "Succeeded", f"{final.get('message')}\n{log[-3000:]}"
    # Live progress, independent of how fast this machine trains: the trainer published each epoch
    # to the stream as it ended, before the pod ended; the operator's status writes (the API
    # server's own record of them, in its order) carried epochs forward only, and never sent the
    # run back to an earlier phase.
    bus = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
    try:
        events = [TrainingEvent.from_bytes(m.body) for m in bus.read(stream, 0, 10_000)]
    finally:
        bus.close()
    epochs = [e for e in events if e.type == "epoch" and e.training_job == "shapes"]
    assert [e.epoch for e in epochs] == [1, 2, 3, 4], f"events on {stream}: {events}\n{log[-3000:]}"
    ended = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    assert all(e.time <= datetime.fromisoformat(ended) for e in epochs)
    writes = [
        ((r.get("requestObject") or {}).get("status") or {})
        for r in cluster.plane.audit_records(cluster.namespace)
        if (r.get("objectRef") or {}).get("resource") == "trainingjobs"
        and r["objectRef"].get("subresource") == "status"
        and r["objectRef"].get("name") == "shapes"
        and r["stage"] == "ResponseComplete"
        and r["responseStatus"]["code"] < 300
    ]
    reported = [w["epoch"] for w in writes if "epoch" in w]
    assert reported == sorted(reported) and reported[-1] == 4, writes
    # phases only ever move forward (a new run's first status may already say Running: the operator
    # writes it once the burst of new Jobs is over, with what the pod's start said meanwhile)
    phases = [w["phase"] for w in writes if "phase" in w]
    order = [["Pending", "Running", "Succeeded"].index(p) for p in phases]
    assert order == sorted(set(order)) and phases[-1] == "Succeeded", phases
    assert final["epoch"] == 4 and final["artifact"] == "shapes"
    wait_for(
        lambda: (
            (
                (cluster.get(GROUP, "modelartifacts", cluster.namespace, "shapes") or {}).get("status") or {}
            ).get("phase")
            == "Available"
        ),
        60,
        "the artifact to be verified",
        operator,
    )
    artifact = cluster.get(GROUP, "modelartifacts", cluster.namespace, "shapes")
    assert {f["format"] for f in artifact["spec"]["formats"]} == {"pt", "onnx"}
    assert artifact["spec"]["classNames"] and artifact["spec"]["imgsz"] == 96
