"""The operator's pure decisions: the Job it wants, how it reads Jobs and pods, what each state leads to."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from visioninapp.events import TrainerResult, TrainingEvent
from visioninapp.operator.artifacts import artifact_status, mirror_copy, needs_verification, verify_formats
from visioninapp.operator.progress import ProgressTracker
from visioninapp.operator.training import plan_training, status_from_job
from visioninapp.operator.training_objects import (
    JOB_FINALIZER,
    TRAINING_JOB_LABEL,
    BaseModel,
    TrainerTemplate,
    artifact_from_result,
    desired_job,
    trainer_config,
)
from visioninapp.resources import ModelArtifact, TrainingJob
from visioninapp.resources.base import ADMITTED
from visioninapp.validation import apply_defaults, validate

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SHA = "a" * 64


def training_job(**spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "helmets", "namespace": "vision", "uid": "uid-1", "generation": 1},
        "spec": {
            "model": {"architecture": "yolo11n"},
            "dataset": {"uri": "s3://data/helmets/v3"},
            **spec,
        },
    }
    return apply_defaults(body)


TEMPLATE = TrainerTemplate(image="trainer:1", default_output="s3://out/runs")


def make_job(tj: TrainingJob, attempt: int) -> dict[str, Any]:
    return TEMPLATE.job(tj, "uid-1", attempt, None)


def job(
    conditions: list[tuple[str, str]] = (), suspend: bool = False, name: str = "helmets-1", **status: Any
):
    return {
        "metadata": {"name": name, "namespace": "vision", "finalizers": [JOB_FINALIZER]},
        "spec": {"suspend": suspend, "backoffLimit": 2},
        "status": {
            "conditions": [{"type": t, "status": "True", "reason": r, "message": r} for t, r in conditions],
            **status,
        },
    }


def pod(phase: str, message: str | None = None, unschedulable: str | None = None, node: str | None = "gpu-0"):
    status: dict[str, Any] = {"phase": phase}
    if message is not None:
        status["containerStatuses"] = [{"state": {"terminated": {"exitCode": 0, "message": message}}}]
    if unschedulable:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        ]
    return {
        "metadata": {"name": "helmets-1-abcde", "creationTimestamp": "2026-11-23T11:00:00Z"},
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


def result_message(attempt: int = 1) -> str:
    return TrainerResult(
        formats=[
            {
                "format": "pt",
                "uri": "s3://out/runs/vision/helmets/weights/best.pt",
                "sha256": SHA,
                "size": 10,
            },
            {
                "format": "onnx",
                "uri": "s3://out/runs/vision/helmets/weights/model.onnx",
                "sha256": SHA,
                "size": 20,
            },
        ],
        manifest_uri="s3://out/runs/vision/helmets/manifest.json",
        metrics={"mAP50": 0.6, "mAP50_95": 0.4},
        class_names=["helmet", "head"],
        imgsz=640,
        epochs_run=50,
        attempt=attempt,
    ).to_termination_message()


def plan(
    body: dict[str, Any], the_job: dict[str, Any] | None = None, pods: list[dict[str, Any]] = (), **kw: Any
):
    tj = TrainingJob.model_validate(body, context=ADMITTED)
    return plan_training(tj, body, the_job, list(pods), NOW, template=TEMPLATE, **kw)


def with_status(body: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**body, "status": {**body.get("status", {}), **status}}


# --- desired_job ----------------------------------------------------------------------------


def test_desired_job_carries_gpu_placement_limits_and_the_trainer_config() -> None:
    body = training_job(
        resources={"gpu": {"count": 2, "type": "NVIDIA-A100-SXM4-80GB"}},
        placement={
            "nodeSelector": {"agentpool": "gpu"},
            "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
            "priorityClassName": "training",
        },
        backoffLimit=3,
        activeDeadlineSeconds=3600,
        ttlSecondsAfterFinished=600,
    )
    result = desired_job(
        TrainingJob.model_validate(body),
        "uid-1",
        2,
        image="trainer:1",
        default_output="s3://out/runs",
        base=BaseModel(uri="s3://models/best.pt", sha256=SHA),
        service_account="trainer",
        env={"VISIONINAPP_S3_ENDPOINT_URL": "http://s3"},
        env_secret="trainer-credentials",
    )
    assert result["metadata"]["name"] == "helmets-2"
    assert result["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "TrainingJob",
        "name": "helmets",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert result["metadata"]["finalizers"] == [JOB_FINALIZER]
    spec = result["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
        3,
        3600,
        600,
    )
    assert spec["suspend"] is False
    pod_spec = spec["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"agentpool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod_spec[
        "tolerations"
    ]
    assert (pod_spec["priorityClassName"], pod_spec["serviceAccountName"], pod_spec["restartPolicy"]) == (
        "training",
        "trainer",
        "Never",
    )
    container = pod_spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["envFrom"] == [{"secretRef": {"name": "trainer-credentials"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VISIONINAPP_S3_ENDPOINT_URL"] == "http://s3"
    config = json.loads(env["VISIONINAPP_TRAINER_CONFIG_JSON"])
    assert (config["name"], config["namespace"], config["attempt"]) == ("helmets", "vision", 2)
    assert config["outputUri"] == "s3://out/runs/vision/helmets"
    assert config["baseWeights"] == {"uri": "s3://models/best.pt", "sha256": SHA}
    assert config["spec"]["hyperparameters"]["epochs"] == 100
    from visioninapp.trainer.config import TrainerConfig

    TrainerConfig.model_validate(config)  # the trainer accepts what the operator writes


def test_desired_job_for_a_queue_is_created_suspended_with_kueues_label() -> None:
    body = training_job(placement={"queueName": "gpu-queue"}, resources={"gpu": {"count": 0}})
    result = make_job(TrainingJob.model_validate(body), 1)
    assert result["spec"]["suspend"] is True
    assert result["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    container = result["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert result["spec"]["template"]["spec"]["tolerations"] == []


def test_desired_job_is_a_valid_batch_v1_job() -> None:
    import kubernetes_validate  # a dev dependency: present wherever the tests run

    result = make_job(TrainingJob.model_validate(training_job()), 1)
    kubernetes_validate.validate(result, "1.35", strict=True)


# --- reading Jobs ---------------------------------------------------------------------------


def test_status_from_job_reads_each_state() -> None:
    assert (
        status_from_job(
            job([("Complete", "CompletionsReached")]), [pod("Succeeded", "{}")]
        ).termination_message
        == "{}"
    )
    failed = status_from_job(job([("Failed", "DeadlineExceeded")]), [pod("Failed", "error: out of memory")])
    assert (failed.phase, failed.reason) == ("Failed", "DeadlineExceeded")
    assert "out of memory" in failed.message
    assert status_from_job(job(suspend=True), []).phase == "Queued"
    assert status_from_job(job(), [pod("Running")]).phase == "Running"
    waiting = status_from_job(
        job(), [pod("Pending", unschedulable="0/3 nodes: Insufficient nvidia.com/gpu", node=None)]
    )
    assert (waiting.phase, waiting.unschedulable) == ("Pending", "0/3 nodes: Insufficient nvidia.com/gpu")
    assert status_from_job(job(), []).reason == "JobCreated"
    # Between a pod's end and the Job's verdict (the real Job controller takes a moment to record
    # it, and waits a back-off before a retry) the run neither looks unscheduled nor finished.
    finishing = status_from_job(job(), [pod("Succeeded", "{}")])
    assert (finishing.phase, finishing.reason) == ("Running", "PodCompleted")
    retrying = status_from_job(job(failed=1), [pod("Failed", "error: NoSuchBucket")])
    assert (retrying.phase, retrying.reason) == ("Pending", "BackoffLimitNotReached")
    assert "NoSuchBucket" in retrying.message and "retry 1 of 2" in retrying.message
    disrupted = pod("Failed")
    disrupted["status"]["conditions"] = [
        {
            "type": "DisruptionTarget",
            "status": "True",
            "message": "Pod was terminated in response to imminent node shutdown.",
        }
    ]
    lost = status_from_job(job(), [disrupted])
    assert (lost.phase, lost.reason) == ("Pending", "PodDisrupted") and "node shutdown" in lost.message


def test_a_disrupted_trainer_pod_costs_no_retry_and_a_refused_one_fails_the_job() -> None:
    rules = make_job(TrainingJob.model_validate(training_job()), 1)["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3]}},
    ]


# --- plans ----------------------------------------------------------------------------------


def test_a_new_training_job_gets_its_first_job_and_status() -> None:
    result = plan(training_job())
    assert result.create_job["metadata"]["name"] == "helmets-1"
    assert result.status["phase"] == "Pending"
    assert (result.status["attempts"], result.status["jobName"], result.status["epochs"]) == (
        1,
        "helmets-1",
        100,
    )
    assert result.status["observedGeneration"] == 1
    assert [c["type"] for c in result.status["conditions"]] == ["Scheduled"]


def test_a_queued_training_job_shows_queued_until_admitted() -> None:
    body = training_job(placement={"queueName": "gpu-queue"})
    first = plan(body).status
    assert first["phase"] == "Queued" and first["conditions"][-1]["type"] == "Queued"
    started = with_status(body, phase="Queued", attempts=1, jobName="helmets-1")
    queued = plan(started, job(suspend=True))
    assert "phase" not in queued.status and queued.create_job is None  # still Queued
    assert {c["type"]: c["status"] for c in queued.status["conditions"]}["Queued"] == "True"
    admitted = plan(with_status(started, **queued.status), job(), [pod("Running")])
    assert admitted.status["phase"] == "Running"
    assert {c["type"]: c["status"] for c in admitted.status["conditions"]}["Queued"] == "False"


def test_replanning_the_same_state_changes_nothing() -> None:
    body = training_job()
    first = plan(body)
    body = with_status(body, **first.status)
    running = plan(body, job(), [pod("Running")])
    body = with_status(body, **running.status)
    again = plan(body, job(), [pod("Running")])
    assert again.empty, again


def test_unschedulable_pods_show_the_schedulers_message_not_running() -> None:
    body = with_status(training_job(), phase="Pending", attempts=1, jobName="helmets-1")
    message = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    result = plan(body, job(), [pod("Pending", unschedulable=message, node=None)])
    assert "phase" not in result.status  # still Pending: not Running
    condition = next(c for c in result.status["conditions"] if c["type"] == "Unschedulable")
    assert (condition["status"], condition["message"]) == ("True", message)


def test_success_creates_the_artifact_and_releases_the_job() -> None:
    body = with_status(
        training_job(output={"model": "helmet-detector"}), phase="Running", attempts=1, jobName="helmets-1"
    )
    result = plan(body, job([("Complete", "CompletionsReached")]), [pod("Succeeded", result_message())])
    artifact = result.create_artifact
    assert artifact["metadata"]["name"] == "helmets"
    assert "ownerReferences" not in artifact["metadata"]
    assert artifact["metadata"]["labels"][TRAINING_JOB_LABEL] == "helmets"
    assert artifact["spec"]["source"] == {
        "trainingJob": "helmets",
        "attempt": 1,
        "dataset": "s3://data/helmets/v3",
    }
    assert artifact["spec"]["model"] == "helmet-detector"
    assert validate(artifact) == []
    assert (result.status["phase"], result.status["artifact"], result.status["epoch"]) == (
        "Succeeded",
        "helmets",
        50,
    )
    assert result.status["metrics"]["mAP50_95"] == 0.4
    assert result.release_job == "helmets-1"


def test_an_unreadable_result_fails_with_the_reason() -> None:
    body = with_status(training_job(), phase="Running", attempts=1, jobName="helmets-1")
    result = plan(body, job([("Complete", "CompletionsReached")]), [pod("Succeeded", "not json")])
    assert result.status["phase"] == "Failed" and result.create_artifact is None
    assert "unreadable" in result.status["message"]


def test_failure_reports_the_jobs_reason_and_the_pods_message() -> None:
    body = with_status(training_job(), phase="Running", attempts=1, jobName="helmets-1")
    result = plan(
        body, job([("Failed", "BackoffLimitExceeded")]), [pod("Failed", "error: dataset not found")]
    )
    assert result.status["phase"] == "Failed"
    assert "dataset not found" in result.status["message"]
    failed = next(c for c in result.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert result.event[0] == "Warning"


def test_suspend_deletes_the_job_and_resume_starts_the_next_attempt() -> None:
    body = with_status(training_job(suspend=True), phase="Running", attempts=1, jobName="helmets-1")
    suspended = plan(body, job(), [pod("Running")])
    assert suspended.delete_job == "helmets-1" and suspended.status["phase"] == "Suspended"
    body = with_status(body, **suspended.status)
    gone = plan(body, None)
    assert gone.empty  # stays suspended, nothing to do
    resumed = plan(
        with_status({**body, "spec": {**body["spec"], "suspend": False}}, **suspended.status), None
    )
    assert resumed.create_job["metadata"]["name"] == "helmets-2"
    assert resumed.status["attempts"] == 2 and resumed.status["phase"] == "Pending"
    config = json.loads(resumed.create_job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
    assert config["attempt"] == 2 and config["outputUri"] == "s3://out/runs/vision/helmets"  # same checkpoint


def test_a_vanished_job_is_recreated_under_the_same_name() -> None:
    body = with_status(training_job(), phase="Running", attempts=1, jobName="helmets-1")
    result = plan(body, None)
    assert result.create_job["metadata"]["name"] == "helmets-1"


def test_a_finished_training_job_is_never_restarted() -> None:
    body = with_status(
        training_job(), phase="Succeeded", attempts=1, jobName="helmets-1", observedGeneration=1
    )
    assert plan(body, None).empty


def test_a_job_deleted_after_finishing_is_still_read_before_release() -> None:
    body = with_status(training_job(), phase="Running", attempts=1, jobName="helmets-1")
    deleting = job([("Complete", "CompletionsReached")])
    deleting["metadata"]["deletionTimestamp"] = "2026-11-23T12:00:00Z"  # ttlSecondsAfterFinished: 0
    result = plan(body, deleting, [pod("Succeeded", result_message())])
    assert result.create_artifact is not None and result.release_job == "helmets-1"


def test_a_missing_base_model_waits_with_a_clear_condition() -> None:
    body = training_job(model={"baseModel": "helmets-v2"})
    result = plan(body, base=BaseModel(problem="base model 'helmets-v2' (ModelArtifact) not found"))
    assert result.create_job is None and result.status["phase"] == "Pending"
    condition = result.status["conditions"][0]
    assert (condition["reason"], condition["status"]) == ("BaseModelUnavailable", "False")


def _trainer_config(job_body: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e.get("value") for e in job_body["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(env["VISIONINAPP_TRAINER_CONFIG_JSON"])


def test_a_recreated_fine_tune_keeps_its_base_weights() -> None:
    body = with_status(
        training_job(model={"baseModel": "helmets-v2"}), phase="Running", attempts=1, jobName="helmets-1"
    )
    result = plan(body, None, base=BaseModel(uri="s3://models/best.pt", sha256=SHA))
    assert result.create_job["metadata"]["name"] == "helmets-1"
    assert _trainer_config(result.create_job)["baseWeights"] == {"uri": "s3://models/best.pt", "sha256": SHA}


def test_a_base_model_problem_seen_before_the_job_was_cached_heals_once_the_job_shows() -> None:
    body = with_status(
        training_job(model={"baseModel": "helmets-v2"}), phase="Running", attempts=1, jobName="helmets-1"
    )
    waiting = plan(body, None, base=BaseModel(problem="base model 'helmets-v2' (ModelArtifact) not found"))
    body = with_status(body, **waiting.status)
    running = plan(body, job(active=1), [pod("Running")])
    scheduled = next(c for c in running.status["conditions"] if c["type"] == "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("True", "JobExists")
    assert running.status["phase"] == "Running"


def test_a_config_the_trainer_would_refuse_fails_the_run_without_a_job() -> None:
    refusing = TrainerTemplate(image="trainer:1", default_output="s3://o/r")  # a one-letter bucket
    tj_body = training_job()
    result = plan_training(
        TrainingJob.model_validate(tj_body, context=ADMITTED), tj_body, None, [], NOW, template=refusing
    )
    assert result.create_job is None and result.status["phase"] == "Failed"
    failed = next(c for c in result.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidTrainerConfig"
    assert failed["message"].startswith(
        "the trainer's config is invalid: output_uri: Value error, must be a storage URI"
    )
    assert result.event is not None and result.event[:2] == ("Warning", "InvalidTrainerConfig")


def test_a_spec_change_bumps_observed_generation_only() -> None:
    body = with_status(training_job(), phase="Running", attempts=1, jobName="helmets-1", observedGeneration=1)
    body["metadata"]["generation"] = 2
    result = plan(body, job(), [pod("Running")])
    assert result.status["observedGeneration"] == 2 and result.create_job is None


# --- artifacts ------------------------------------------------------------------------------


def artifact_body() -> dict[str, Any]:
    tj = TrainingJob.model_validate(training_job())
    body = artifact_from_result(tj, TrainerResult.from_termination_message(result_message()))
    body["metadata"]["generation"] = 1
    return body


def test_verification_reports_missing_resized_and_changed_objects() -> None:
    artifact = ModelArtifact.model_validate(artifact_body())
    sizes = {artifact.spec.formats[0].uri: 10, artifact.spec.formats[1].uri: 20}
    assert verify_formats(artifact, checksum=lambda uri: SHA, size=sizes.get) == []
    problems = verify_formats(
        artifact, checksum=lambda uri: "b" * 64, size={artifact.spec.formats[0].uri: 10}.get
    )
    assert "pt: sha256" in problems[0] and "onnx:" in problems[1] and "does not exist" in problems[1]


def test_artifact_status_from_a_verification_then_stage_changes() -> None:
    body = artifact_body()
    assert needs_verification(body)
    ok = artifact_status(body, [], NOW)
    assert ok["phase"] == "Available"
    body["status"] = ok
    assert not needs_verification(body)
    assert artifact_status(body, None, NOW) == {}
    body["spec"]["stage"], body["metadata"]["generation"] = "production", 2
    staged = artifact_status(body, None, NOW)
    condition = next(c for c in staged["conditions"] if c["type"] == "Staged")
    assert condition["reason"] == "Production" and "was candidate" in condition["message"]
    bad = artifact_status(artifact_body(), ["pt: sha256 differs"], NOW)
    assert bad["phase"] == "Invalid" and bad["message"] == "pt: sha256 differs"
    unknown = artifact_status(artifact_body(), None, NOW, error="store unreachable")
    assert unknown["phase"] == "Pending"
    assert needs_verification({**artifact_body(), "status": unknown})  # retried later


def test_mirror_copy_is_plain_data() -> None:
    body = {**artifact_body(), "status": {"phase": "Available"}}
    body["metadata"].update(uid="x", resourceVersion="5")
    copy = mirror_copy(body)
    assert set(copy) == {"apiVersion", "kind", "metadata", "spec"}
    assert "uid" not in copy["metadata"] and copy["metadata"]["labels"]["visioninapp.io/mirrored"] == "true"


# --- progress -------------------------------------------------------------------------------


def epoch(n: int, attempt: int = 1, name: str = "helmets") -> TrainingEvent:
    return TrainingEvent(
        type="epoch",
        namespace="vision",
        training_job=name,
        attempt=attempt,
        epoch=n,
        epochs=10,
        mAP50=0.1 * n,
    )


def test_progress_is_rate_limited_and_keeps_the_newest_epoch() -> None:
    tracker = ProgressTracker(interval=2.0)
    for n in (1, 2, 3):
        tracker.add(epoch(n))
    tracker.add(epoch(2))  # a replayed older event changes nothing
    assert tracker.due(100.0) == [
        (("vision", "helmets"), {"epoch": 3, "epochs": 10, "metrics": {"mAP50": 0.30000000000000004}})
    ]
    tracker.add(epoch(4))
    assert tracker.due(101.0) == [] and tracker.pending  # within the interval
    assert tracker.due(102.5)[0][1]["epoch"] == 4
    assert not tracker.pending
    tracker.add(
        TrainingEvent(type="log", namespace="vision", training_job="helmets", attempt=1, message="hi")
    )
    assert not tracker.pending


def test_a_dataset_key_without_a_scheme_lies_in_the_artifact_store() -> None:
    relative = TrainingJob.model_validate(training_job(dataset={"uri": "datasets/shapes/v1"}))
    config = trainer_config(relative, 1, "file:///data/artifacts", None, "/scratch")
    assert config.spec.dataset.uri == "file:///data/artifacts/datasets/shapes/v1"
    absolute = TrainingJob.model_validate(training_job())
    assert trainer_config(absolute, 1, "s3://out/runs", None, "/scratch").spec.dataset.uri == (
        "s3://data/helmets/v3"
    )


def test_gpu_runs_without_placement_go_to_the_clusters_gpu_pool() -> None:
    pool = {"agentpool": "gpupool"}
    spot = {
        "key": "kubernetes.azure.com/scalesetpriority",
        "operator": "Equal",
        "value": "spot",
        "effect": "NoSchedule",
    }

    def pod_spec(**spec: Any) -> dict[str, Any]:
        tj = TrainingJob.model_validate(training_job(**spec))
        job = desired_job(
            tj,
            "uid-1",
            1,
            image="t",
            default_output="s3://out/runs",
            gpu_node_selector=pool,
            gpu_tolerations=[spot],
        )
        return job["spec"]["template"]["spec"]  # type: ignore[no-any-return]

    gpu = pod_spec(resources={"gpu": {"count": 1}})
    assert gpu["nodeSelector"] == pool and spot in gpu["tolerations"]
    own = pod_spec(resources={"gpu": {"count": 1}}, placement={"nodeSelector": {"pool": "mine"}})
    assert own["nodeSelector"] == {"pool": "mine"}
    cpu = pod_spec(resources={"gpu": {"count": 0}})
    assert cpu["nodeSelector"] == {} and spot not in cpu["tolerations"]


# --- the Job's finalizer and the newest pod (kill mutmut survivors: docs/mutation.md) ---------------


def test_a_job_being_deleted_under_a_running_training_job_is_released() -> None:
    body = with_status(training_job(), phase="Running", attempts=1, jobName="helmets-1", observedGeneration=1)
    deleting = job()
    deleting["metadata"]["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    result = plan(body, deleting, [pod("Running")])
    assert "phase" not in result.status  # the phase is unchanged: only the deletion releases
    assert result.release_job == "helmets-1"
    assert plan(body, job(), [pod("Running")]).release_job is None


def test_a_leftover_job_of_a_finished_training_job_is_released() -> None:
    body = with_status(
        training_job(), phase="Succeeded", attempts=1, jobName="helmets-1", observedGeneration=1
    )
    result = plan(body, job([("Complete", "CompletionsReached")]), [pod("Succeeded", result_message())])
    assert "phase" not in result.status  # already terminal in the stored status
    assert result.release_job == "helmets-1"


def test_pods_are_read_newest_first_by_creation_time_then_name() -> None:
    from visioninapp.operator.training import _newest

    def named(name: str, created: str | None) -> dict[str, Any]:
        meta = {"name": name} | ({"creationTimestamp": created} if created else {})
        return {"metadata": meta}

    pods = [
        named("a-old", "2026-11-23T10:00:00Z"),
        named("z-new", "2026-11-23T11:00:00Z"),
        named("m-old-too", "2026-11-23T10:00:00Z"),
        named("b-unknown", None),
    ]
    order = [p["metadata"]["name"] for p in _newest(pods)]
    assert order == ["z-new", "m-old-too", "a-old", "b-unknown"]
