"""The real operator process against the real control plane (Job controller, scheduler, garbage
collector, TTL controller), with a real S3 server.

Pods run from scripts here (fast); test_operator_trainer.py runs the real trainer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.k8s.conftest import OperatorProcess, wait_for
from visioninapp.events import TrainerResult
from visioninapp.local.cluster.agent import Outcome
from visioninapp.local.cluster.cluster import Cluster

GROUP, VERSION = "visioninapp.io", "v1alpha1"
pytestmark = pytest.mark.services


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"runs-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def operator(cluster: Cluster, operator_factory: Any, s3_endpoint: str, bucket: str) -> OperatorProcess:
    return operator_factory(
        cluster,
        VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint,
        VISIONINAPP_ARTIFACTS_URI=f"s3://{bucket}/runs",
        VISIONINAPP_OPERATOR_TRAINER_IMAGE="ghcr.io/visioninapp/trainer:test",
    )


def trainer_config(pod: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    return json.loads(env["VISIONINAPP_TRAINER_CONFIG_JSON"])


def successful_trainer(
    s3: Any, seconds: float = 0.2, corrupt: bool = False, names_in_manifest_only: bool = False
) -> Callable[[dict[str, Any]], Outcome]:
    """A scripted trainer: uploads weights where the real one would and reports them."""

    def run(pod: dict[str, Any]) -> Outcome:
        config = trainer_config(pod)
        bucket, prefix = config["outputUri"].removeprefix("s3://").split("/", 1)
        formats = []
        for fmt, key in (("pt", "weights/best.pt"), ("onnx", "weights/model.onnx")):
            data = f"{fmt} of {config['name']} attempt {config['attempt']}".encode()
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)
            digest = hashlib.sha256(b"tampered" if corrupt else data).hexdigest()
            formats.append(
                {"format": fmt, "uri": f"s3://{bucket}/{prefix}/{key}", "sha256": digest, "size": len(data)}
            )
        names = ["helmet", "head"]
        s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=json.dumps({"classNames": names}))
        result = TrainerResult(
            formats=formats,
            manifest_uri=f"s3://{bucket}/{prefix}/manifest.json",
            metrics={"mAP50": 0.61, "mAP50_95": 0.42},
            class_names=None if names_in_manifest_only else names,
            imgsz=config["spec"]["hyperparameters"]["imgsz"],
            epochs_run=config["spec"]["hyperparameters"]["epochs"],
            attempt=config["attempt"],
        )
        return Outcome(message=result.to_termination_message(), seconds=seconds)

    return run


def training_job(name: str = "helmets", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "yolo11n"},
            "dataset": {"uri": "s3://datasets/helmets/v3"},
            "hyperparameters": {"epochs": 3, "imgsz": 320},
            "resources": {"gpu": {"count": 1}},
            "placement": {"nodeSelector": {"agentpool": "gpu"}},
            **spec,
        },
    }


def get(cluster: Cluster, plural: str, name: str, group: str = GROUP) -> dict[str, Any] | None:
    return cluster.get(group, plural, cluster.namespace, name)


def phase(cluster: Cluster, name: str = "helmets", plural: str = "trainingjobs") -> str | None:
    obj = get(cluster, plural, name)
    return ((obj or {}).get("status") or {}).get("phase")


def wait_phase(
    cluster: Cluster, operator: OperatorProcess, wanted: str, name: str = "helmets", **kw: Any
) -> dict:
    wait_for(lambda: phase(cluster, name, **kw) == wanted, 30, f"{name} to be {wanted}", operator)
    obj = get(cluster, kw.get("plural", "trainingjobs"), name)
    assert obj is not None
    return obj


def reasons(cluster: Cluster, name: str) -> set[str]:
    """Reasons of the Events about `name` (posted right after the status write: wait for them)."""
    return {
        e["reason"]
        for e in cluster.list("", "events", cluster.namespace)
        if e["involvedObject"]["name"] == name
    }


def conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["status"].get("conditions", [])}


def test_training_job_to_gpu_job_to_verified_artifact(
    cluster: Cluster, operator: OperatorProcess, s3: Any, kube: Any
) -> None:
    cluster.set_script(successful_trainer(s3))
    api = client.CustomObjectsApi(kube)
    api.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "trainingjobs", training_job())
    job = wait_for(lambda: get(cluster, "jobs", "helmets-1", "batch"), 30, "the Job", operator)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == "ghcr.io/visioninapp/trainer:test"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    tj = wait_phase(cluster, operator, "Succeeded")
    assert tj["status"]["artifact"] == "helmets" and tj["status"]["attempts"] == 1
    assert tj["status"]["metrics"]["mAP50_95"] == 0.42 and tj["status"]["epoch"] == 3
    assert conditions(tj)["Succeeded"] == ("True", "ArtifactCreated")
    assert tj["status"]["observedGeneration"] == 1
    artifact = wait_phase(cluster, operator, "Available", plural="modelartifacts")
    assert conditions(artifact)["Verified"] == ("True", "ChecksumsMatch")
    assert artifact["spec"]["source"]["trainingJob"] == "helmets"
    assert "ownerReferences" not in artifact["metadata"]
    wait_for(lambda: "Succeeded" in reasons(cluster, "helmets"), 10, "the Succeeded Event", operator)
    # The finished Job no longer carries the operator's finalizer: its outcome is recorded.
    wait_for(
        lambda: not get(cluster, "jobs", "helmets-1", "batch")["metadata"].get("finalizers"), 10, "release"
    )


def test_a_corrupt_artifact_is_invalid(cluster: Cluster, operator: OperatorProcess, s3: Any) -> None:
    cluster.set_script(successful_trainer(s3, corrupt=True))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job())
    artifact = wait_phase(cluster, operator, "Invalid", plural="modelartifacts")
    status, reason = conditions(artifact)["Verified"]
    assert (status, reason) == ("False", "ChecksumMismatch")
    assert "sha256" in artifact["status"]["message"]


def test_class_names_left_out_of_the_result_come_from_the_manifest(
    cluster: Cluster, operator: OperatorProcess, s3: Any
) -> None:
    cluster.set_script(successful_trainer(s3, names_in_manifest_only=True))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job())
    artifact = wait_phase(cluster, operator, "Available", plural="modelartifacts")
    assert artifact["spec"]["classNames"] == ["helmet", "head"]


def test_failure_carries_the_pods_reason(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.set_script(
        lambda pod: Outcome(exit_code=1, message="error: S3 object or bucket not found (NoSuchBucket)")
    )
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job(backoffLimit=1))
    tj = wait_phase(cluster, operator, "Failed")
    assert conditions(tj)["Failed"] == ("True", "BackoffLimitExceeded")
    assert "NoSuchBucket" in tj["status"]["message"]
    assert len(cluster.list("", "pods", cluster.namespace, "job-name=helmets-1")) == 2  # tried twice


def test_deadline_fails_the_run(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.set_script(lambda pod: Outcome(seconds=120))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job(activeDeadlineSeconds=60))
    wait_phase(cluster, operator, "Running")
    assert get(cluster, "jobs", "helmets-1", "batch")["spec"]["activeDeadlineSeconds"] == 60
    # Let the deadline pass now rather than in a minute: the Job controller measures from startTime.
    cluster.patch("batch", "jobs", cluster.namespace, "helmets-1", {"spec": {"activeDeadlineSeconds": 1}})
    tj = wait_phase(cluster, operator, "Failed")
    assert conditions(tj)["Failed"] == ("True", "DeadlineExceeded")


def test_unschedulable_until_a_gpu_node_joins(cluster: Cluster, operator: OperatorProcess, s3: Any) -> None:
    cluster.set_script(successful_trainer(s3, seconds=1))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job(resources={"gpu": {"count": 4}}))

    def unschedulable() -> Any:
        tj = get(cluster, "trainingjobs", "helmets")
        return tj and tj.get("status") and conditions(tj).get("Unschedulable", ("", ""))[0] == "True" and tj

    tj = wait_for(unschedulable, 30, "Unschedulable", operator)
    assert tj["status"]["phase"] == "Pending"
    message = next(c["message"] for c in tj["status"]["conditions"] if c["type"] == "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in message
    cluster.add_node("gpu-big", gpus=8, labels={"agentpool": "gpu"})
    tj = wait_phase(cluster, operator, "Succeeded")
    assert conditions(tj)["Unschedulable"][0] == "False"


def test_suspend_deletes_the_job_and_resume_starts_attempt_two(
    cluster: Cluster, operator: OperatorProcess, s3: Any
) -> None:
    cluster.set_script(lambda pod: Outcome(seconds=60))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job())
    wait_phase(cluster, operator, "Running")
    cluster.patch(GROUP, "trainingjobs", cluster.namespace, "helmets", {"spec": {"suspend": True}})
    tj = wait_phase(cluster, operator, "Suspended")
    assert conditions(tj)["Suspended"] == ("True", "Suspended")
    wait_for(
        lambda: not cluster.list("batch", "jobs", cluster.namespace), 10, "the Job to be deleted", operator
    )
    wait_for(lambda: not cluster.list("", "pods", cluster.namespace), 10, "its pods to be deleted", operator)
    cluster.set_script(successful_trainer(s3))
    cluster.patch(
        GROUP,
        "trainingjobs",
        cluster.namespace,
        "helmets",
        {"spec": {"suspend": False, "hyperparameters": {"epochs": 5}}},
    )
    tj = wait_phase(cluster, operator, "Succeeded")
    assert tj["status"]["attempts"] == 2 and tj["status"]["jobName"] == "helmets-2"
    assert tj["status"]["epoch"] == 5  # the spec change took effect on the next attempt
    assert get(cluster, "modelartifacts", "helmets")["spec"]["source"]["attempt"] == 2
    wait_for(
        lambda: {"Suspended", "JobCreated", "Succeeded"} <= reasons(cluster, "helmets"),
        10,
        "Events",
        operator,
    )


def test_kueue_queue_holds_the_job_until_admitted(
    cluster: Cluster, operator: OperatorProcess, s3: Any
) -> None:
    cluster.set_script(successful_trainer(s3))
    cluster.create(
        GROUP, "trainingjobs", cluster.namespace, training_job(placement={"queueName": "gpu-queue"})
    )
    tj = wait_phase(cluster, operator, "Queued")
    job = get(cluster, "jobs", "helmets-1", "batch")
    assert (
        job["spec"]["suspend"] is True
        and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    )
    assert conditions(tj)["Queued"][0] == "True"
    cluster.patch(
        "batch", "jobs", cluster.namespace, "helmets-1", {"spec": {"suspend": False}}
    )  # what Kueue does
    wait_phase(cluster, operator, "Succeeded")


def test_invalid_training_jobs_are_rejected_before_the_operator_sees_them(
    kube: Any, cluster: Cluster
) -> None:
    api = client.CustomObjectsApi(kube)
    with pytest.raises(ApiException) as error:
        api.create_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, "trainingjobs", training_job(model={"architecture": "yolov7"})
        )
    assert error.value.status == 422 and "spec.model.architecture" in error.value.body
    assert not cluster.list(GROUP, "trainingjobs", cluster.namespace)


def test_ttl_removes_the_job_never_the_training_job_and_delete_cascades(
    cluster: Cluster, operator: OperatorProcess, s3: Any
) -> None:
    cluster.set_script(successful_trainer(s3))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job(ttlSecondsAfterFinished=0))
    wait_phase(cluster, operator, "Succeeded")
    wait_for(
        lambda: not cluster.list("batch", "jobs", cluster.namespace),
        10,
        "the TTL to remove the Job",
        operator,
    )
    wait_for(
        lambda: not cluster.list("", "pods", cluster.namespace), 10, "the TTL to remove the pods", operator
    )
    assert phase(cluster) == "Succeeded" and get(cluster, "modelartifacts", "helmets") is not None
    cluster.set_script(lambda pod: Outcome(seconds=60))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job("running"))
    wait_phase(cluster, operator, "Running", name="running")
    cluster.delete(GROUP, "trainingjobs", cluster.namespace, "running")
    wait_for(
        lambda: not cluster.list("batch", "jobs", cluster.namespace), 10, "the cascade to the Job", operator
    )
    wait_for(lambda: not cluster.list("", "pods", cluster.namespace), 10, "the cascade to the pods", operator)
    assert get(cluster, "modelartifacts", "helmets") is not None  # artifacts outlive their jobs


def test_fine_tuning_resolves_the_base_model_to_its_pt_file(
    cluster: Cluster, operator: OperatorProcess, s3: Any
) -> None:
    cluster.set_script(successful_trainer(s3))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job("base"))
    wait_phase(cluster, operator, "Available", name="base", plural="modelartifacts")
    seen: list[dict[str, Any]] = []
    trainer = successful_trainer(s3)
    cluster.set_script(lambda pod: (seen.append(trainer_config(pod)), trainer(pod))[1])
    cluster.create(
        GROUP, "trainingjobs", cluster.namespace, training_job("tuned", model={"baseModel": "base"})
    )
    tuned = wait_phase(cluster, operator, "Succeeded", name="tuned")
    base_pt = next(
        f for f in get(cluster, "modelartifacts", "base")["spec"]["formats"] if f["format"] == "pt"
    )
    assert seen[0]["baseWeights"] == {"uri": base_pt["uri"], "sha256": base_pt["sha256"]}
    assert (
        get(cluster, "modelartifacts", tuned["status"]["artifact"])["spec"]["source"]["baseModel"] == "base"
    )
    cluster.create(
        GROUP, "trainingjobs", cluster.namespace, training_job("orphan", model={"baseModel": "missing"})
    )

    def waiting() -> Any:
        tj = get(cluster, "trainingjobs", "orphan")
        return (
            tj and tj.get("status") and conditions(tj).get("Scheduled", ("", ""))[1] == "BaseModelUnavailable"
        )

    wait_for(waiting, 30, "the missing base model to be reported", operator)
    assert get(cluster, "jobs", "orphan-1", "batch") is None


def test_new_artifacts_are_mirrored_to_the_edge_cluster(
    cluster: Cluster, operator_factory: Any, s3: Any, s3_endpoint: str, bucket: str, tmp_path: Any
) -> None:
    with Cluster(tmp_path / "edge") as edge:  # a second control plane: the edge cluster
        edge.namespace = cluster.namespace
        edge.create_namespace(edge.namespace)
        kubeconfig = yaml.safe_dump(edge.kubeconfig_dict()).encode()
        cluster.create(
            "",
            "secrets",
            cluster.namespace,
            {
                "metadata": {"name": "edge-cluster"},
                "data": {"kubeconfig": base64.b64encode(kubeconfig).decode()},
            },
        )
        operator = operator_factory(
            cluster,
            VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint,
            VISIONINAPP_ARTIFACTS_URI=f"s3://{bucket}/runs",
            VISIONINAPP_OPERATOR_ROLES='["training"]',
            VISIONINAPP_OPERATOR_MIRROR_KUBECONFIG_SECRET=f"{cluster.namespace}/edge-cluster",
        )
        edge_operator = operator_factory(
            edge, VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint, VISIONINAPP_OPERATOR_ROLES='["rollout"]'
        )
        cluster.set_script(successful_trainer(s3))
        cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job())
        wait_phase(cluster, operator, "Succeeded")
        mirrored = wait_for(
            lambda: edge.get(GROUP, "modelartifacts", cluster.namespace, "helmets"),
            30,
            "the mirror",
            operator,
        )
        assert mirrored["spec"] == get(cluster, "modelartifacts", "helmets")["spec"]
        # The edge cluster's operator verifies it there too (every role verifies artifacts).
        wait_for(
            lambda: (
                (
                    (edge.get(GROUP, "modelartifacts", cluster.namespace, "helmets") or {}).get("status")
                    or {}
                ).get("phase")
                == "Available"
            ),
            30,
            "verification in the edge cluster",
            edge_operator,
        )
        assert not edge.list("batch", "jobs", cluster.namespace)  # no training controller there
        # A promotion in the training cluster reaches the edge cluster: deployments there follow it.
        cluster.patch(
            GROUP, "modelartifacts", cluster.namespace, "helmets", {"spec": {"stage": "production"}}
        )
        wait_for(
            lambda: (
                edge.get(GROUP, "modelartifacts", cluster.namespace, "helmets")["spec"]["stage"]
                == "production"
            ),
            30,
            "the promotion mirrored",
            operator,
        )
        edge_operator.stop()


def test_watches_only_its_namespaces_and_serves_health_and_metrics(
    cluster: Cluster, operator_factory: Any, s3: Any, s3_endpoint: str, bucket: str
) -> None:
    import requests

    from tests.services import free_port

    metrics_port, liveness_port = free_port(), free_port()
    other = f"{cluster.namespace}-other"
    cluster.create_namespace(other)
    operator = operator_factory(
        cluster,
        VISIONINAPP_OPERATOR_NAMESPACES=json.dumps([cluster.namespace]),
        VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint,
        VISIONINAPP_ARTIFACTS_URI=f"s3://{bucket}/runs",
        VISIONINAPP_OPERATOR_METRICS_PORT=str(metrics_port),
        VISIONINAPP_OPERATOR_LIVENESS_PORT=str(liveness_port),
    )
    cluster.set_script(successful_trainer(s3))
    cluster.create(GROUP, "trainingjobs", other, {**training_job(), "metadata": {"name": "elsewhere"}})
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job())
    wait_phase(cluster, operator, "Succeeded")
    assert not (cluster.get(GROUP, "trainingjobs", other, "elsewhere") or {}).get("status")
    assert requests.get(f"http://127.0.0.1:{liveness_port}/healthz", timeout=5).status_code == 200
    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'visioninapp_operator_reconciles_total{kind="TrainingJob",result="ok"}' in metrics
    assert "visioninapp_operator_reconcile_seconds_bucket" in metrics
    assert 'visioninapp_operator_api_requests_total{verb="POST"}' in metrics


def gated_trainer(s3: Any, passed: bool, seen: list[dict[str, Any]]) -> Callable[[dict[str, Any]], Outcome]:
    """The scripted trainer, also storing an evaluation record (the gate's verdict) next to the weights."""
    from tests.unit.test_evaluation import record
    from visioninapp.evaluation import GateOutcome

    trainer = successful_trainer(s3)

    def run(pod: dict[str, Any]) -> Outcome:
        config = trainer_config(pod)
        seen.append(config)
        outcome = trainer(pod)
        result = TrainerResult.from_termination_message(outcome.message or "")
        onnx = next(f for f in result.formats if f.format == "onnx")
        data = record(passed, candidate_sha=onnx.sha256).model_dump_json(by_alias=True).encode()
        bucket, prefix = config["outputUri"].removeprefix("s3://").split("/", 1)
        s3.put_object(Bucket=bucket, Key=f"{prefix}/evaluation.json", Body=data)
        verdict = record(passed).verdict
        result.evaluation = GateOutcome(
            uri=f"s3://{bucket}/{prefix}/evaluation.json",
            sha256=hashlib.sha256(data).hexdigest(),
            passed=passed,
            summary=verdict.summary,
        )
        return Outcome(message=result.to_termination_message(), seconds=outcome.seconds)

    return run


def test_the_quality_gate_verdict_reaches_the_artifact_and_a_failure_says_why(
    cluster: Cluster, operator: OperatorProcess, s3: Any
) -> None:
    cluster.set_script(successful_trainer(s3))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job("base"))
    base = wait_phase(cluster, operator, "Available", name="base", plural="modelartifacts")
    evaluation = {"heldOut": {"uri": "s3://datasets/helmets-held-out"}, "baseline": "base", "maxDrop": 0.01}
    seen: list[dict[str, Any]] = []
    for name, passed in (("worse", False), ("better", True)):
        cluster.set_script(gated_trainer(s3, passed, seen))
        cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job(name, evaluation=evaluation))
        wait_phase(cluster, operator, "Succeeded", name=name)

        def checked(name: str = name) -> Any:
            artifact = get(cluster, "modelartifacts", name) or {}
            return "QualityGate" in conditions(artifact) if artifact.get("status") else False

        wait_for(checked, 30, f"{name}'s gate checked", operator)
    base_onnx = next(f for f in base["spec"]["formats"] if f["format"] == "onnx")
    assert seen[0]["baselineWeights"] == {"uri": base_onnx["uri"], "sha256": base_onnx["sha256"]}
    worse, better = get(cluster, "modelartifacts", "worse"), get(cluster, "modelartifacts", "better")
    assert worse is not None and better is not None
    assert conditions(worse)["QualityGate"] == ("False", "Failed")
    gate = worse["status"]["qualityGate"]
    assert gate["passed"] is False and "held-out mAP50-95 dropped 0.200" in gate["reasons"][0]
    assert (
        worse["spec"]["evaluation"]["uri"].endswith("/evaluation.json")
        and worse["spec"]["stage"] == "candidate"
    )
    assert (
        conditions(better)["QualityGate"] == ("True", "Passed") and better["status"]["qualityGate"]["passed"]
    )
    tj = get(cluster, "trainingjobs", "worse")
    assert tj is not None and conditions(tj)["QualityGate"] == ("False", "Failed")


def test_a_run_the_trainer_refuses_fails_at_once_without_its_retries(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """A refused configuration or dataset (the trainer's EXIT_CONFIGURATION) fails the Job on its
    first pod (podFailurePolicy); any other failure is retried as before."""
    from visioninapp.events import EXIT_CONFIGURATION

    refused = "error: spec.evaluation.heldOut datasets/x/v1: no images in its `val` split"
    cluster.set_script(lambda pod: Outcome(exit_code=EXIT_CONFIGURATION, message=refused))
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job(backoffLimit=3))
    tj = wait_phase(cluster, operator, "Failed")
    assert "no images in its `val` split" in tj["status"]["message"]
    assert len(cluster.list("", "pods", cluster.namespace, "job-name=helmets-1")) == 1  # not retried
