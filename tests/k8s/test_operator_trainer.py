"""End to end: the real operator, the real trainer as the pod's process, S3 and RabbitMQ Streams."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.k8s.conftest import wait_for
from visioninapp.cluster.cluster import Cluster
from visioninapp.synth import generate_dataset

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
    # Live progress, from the API server's own record of the operator's status writes (in the order
    # it answered them): epochs were reported while the run was still Running.
    reported = [
        ((r.get("requestObject") or {}).get("status") or {})
        for r in cluster.plane.audit_records(cluster.namespace)
        if (r.get("objectRef") or {}).get("resource") == "trainingjobs"
        and r["objectRef"].get("subresource") == "status"
        and r["objectRef"].get("name") == "shapes"
        and r["stage"] == "ResponseComplete"
        and r["responseStatus"]["code"] < 300
    ]
    finished_at = next(i for i, s in enumerate(reported) if s.get("phase") == "Succeeded")
    live = [s["epoch"] for s in reported[:finished_at] if s.get("epoch")]
    assert live and min(live) < 4, f"no epoch was reported before the run finished: {reported}"
    assert live == sorted(live), f"epochs were reported out of order: {live}"
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
