"""TrainingJob decisions as pure functions: no I/O, so every branch is tested without a cluster.

`plan_training(tj, body, job, pods, ...)` looks at a TrainingJob, the Job of its current attempt and that
Job's pods, and says what to do: create a Job, delete one, create the ModelArtifact, and which status
fields change. Handlers read, call it, and write. Every name is derived from the TrainingJob and its
attempt, so running a plan twice (after a crash, or from two events) creates nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from pydantic import ValidationError

from visioninapp.backends.storage import join_uri
from visioninapp.events import TrainerResult
from visioninapp.k8s import MANAGED_BY, Obj, controller_reference, iso_time, set_condition
from visioninapp.operator.names import job_name
from visioninapp.resources import API_VERSION, TrainingJob
from visioninapp.resources.base import to_dns_label

__all__ = [
    "ATTEMPT_LABEL",
    "JOB_FINALIZER",
    "TRAINING_JOB_LABEL",
    "BaseModel",
    "TrainingPlan",
    "artifact_from_result",
    "desired_job",
    "job_finished",
    "plan_training",
    "status_from_job",
]

TRAINING_JOB_LABEL = "visioninapp.io/training-job"
ATTEMPT_LABEL = "visioninapp.io/attempt"
# Keeps a finished Job (and so its pods' termination message) until the operator has recorded the
# outcome, even when ttlSecondsAfterFinished or a user deletes it first.
JOB_FINALIZER = "visioninapp.io/training-result"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
TERMINAL = ("Succeeded", "Failed")
CONDITION_TYPES = ("Scheduled", "Unschedulable", "Queued", "Running", "Suspended", "Succeeded", "Failed")


@dataclass(frozen=True)
class BaseModel:
    """`spec.model.baseModel` resolved by the handler: its `pt` file, or why it cannot be used."""

    uri: str | None = None
    sha256: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class TrainingPlan:
    """What one reconciliation does; empty when everything is as it should be."""

    create_job: Obj | None = None
    delete_job: str | None = None
    create_artifact: Obj | None = None
    release_job: str | None = None  # remove our finalizer from this Job (its outcome is recorded)
    status: Obj = field(default_factory=dict)  # a merge patch for `.status`
    event: tuple[str, str, str] | None = None  # (type, reason, message) for a Kubernetes Event

    @property
    def empty(self) -> bool:
        return not (
            self.create_job or self.delete_job or self.create_artifact or self.release_job or self.status
        )


# --- the Job ------------------------------------------------------------------------------------


def output_uri(tj: TrainingJob, default_base: str) -> str:
    return join_uri(tj.spec.output.uri or default_base, tj.metadata.namespace or "default", tj.metadata.name)


def dataset_uri(tj: TrainingJob, store: str) -> str:
    """The dataset's URI; a key without a scheme (`datasets/shapes/v1`) lies in the artifact store."""
    uri = tj.spec.dataset.uri
    return uri if "://" in uri else join_uri(store, uri)


def trainer_config(
    tj: TrainingJob, attempt: int, default_output: str, base: BaseModel | None, work_dir: str
) -> Obj:
    """The trainer's config (the trainer issue's contract), passed inline in the pod's environment."""
    spec = tj.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    spec["dataset"]["uri"] = dataset_uri(tj, default_output)
    config: Obj = {
        "name": tj.metadata.name,
        "namespace": tj.metadata.namespace or "default",
        "attempt": attempt,
        "spec": spec,
        "outputUri": output_uri(tj, default_output),
        "terminationLog": "/dev/termination-log",
        "workDir": work_dir,
    }
    if base is not None and base.uri and base.sha256:
        config["baseWeights"] = {"uri": base.uri, "sha256": base.sha256}
    return config


def desired_job(
    tj: TrainingJob,
    uid: str,
    attempt: int,
    *,
    image: str,
    default_output: str,
    base: BaseModel | None = None,
    service_account: str | None = None,
    env: dict[str, str] | None = None,
    env_secret: str | None = None,
    work_dir: str = "/scratch",
    gpu_node_selector: dict[str, str] | None = None,
    gpu_tolerations: list[Obj] | None = None,
) -> Obj:
    """The batch/v1 Job of one attempt, owned by the TrainingJob."""
    spec, name = tj.spec, job_name(tj.metadata.name, attempt)
    labels = {
        **MANAGED_BY,
        "app.kubernetes.io/component": "trainer",
        TRAINING_JOB_LABEL: to_dns_label(tj.metadata.name, 63),
        ATTEMPT_LABEL: str(attempt),
    }
    job_labels = {
        **labels,
        **({KUEUE_QUEUE_LABEL: spec.placement.queue_name} if spec.placement.queue_name else {}),
    }
    gpus = spec.resources.gpu.count
    # the cluster's GPU pool, for GPU runs that name no placement of their own
    node_selector = dict(spec.placement.node_selector or (gpu_node_selector if gpus else None) or {})
    if spec.resources.gpu.type:
        node_selector[GPU_PRODUCT_LABEL] = spec.resources.gpu.type
    tolerations = [
        t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.placement.tolerations
    ]
    tolerations += [t for t in (gpu_tolerations if gpus else None) or [] if t not in tolerations]
    if gpus:  # GPU nodes carry this taint on AKS/EKS GPU pools with the NVIDIA device plugin
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    config = trainer_config(tj, attempt, default_output, base, work_dir)
    container_env = [
        {"name": "VISIONINAPP_TRAINER_CONFIG_JSON", "value": json.dumps(config, separators=(",", ":"))},
        *({"name": k, "value": v} for k, v in sorted((env or {}).items())),
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    resources: Obj = {
        "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
        "limits": {"memory": spec.resources.memory},
    }
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "containers": [
            {
                "name": "trainer",
                "image": image,
                "command": ["visioninapp-trainer"],
                "env": container_env,
                **({"envFrom": [{"secretRef": {"name": env_secret}}]} if env_secret else {}),
                "resources": resources,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    {"name": "scratch", "mountPath": work_dir},
                ],
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
            }
        ],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if spec.placement.priority_class_name:
        pod_spec["priorityClassName"] = spec.placement.priority_class_name
    job_spec: Obj = {
        "backoffLimit": spec.backoff_limit,
        # A pod lost to a disruption (node shutdown or drain, spot eviction, preemption) is retried
        # without using up the run's retries; it resumes from its last checkpoint.
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
            ]
        },
        "suspend": bool(spec.placement.queue_name),  # Kueue admits (unsuspends) queued Jobs
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": tj.metadata.namespace,
            "labels": job_labels,
            "finalizers": [JOB_FINALIZER],
            "ownerReferences": [controller_reference("TrainingJob", tj.metadata.name, uid)],
        },
        "spec": job_spec,
    }


# --- reading a Job and its pods ----------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    """What a Job and its pods say, in TrainingJob terms."""

    phase: str  # Pending | Queued | Running | Succeeded | Failed
    reason: str
    message: str
    termination_message: str | None = None
    unschedulable: str | None = None  # the scheduler's message while a pod waits for a node


def _true(obj: Obj, type_: str) -> Obj | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition  # type: ignore[no-any-return]
    return None


def job_finished(job: Obj) -> bool:
    return _true(job, "Complete") is not None or _true(job, "Failed") is not None


def _terminated(pod: Obj) -> Obj | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return terminated  # type: ignore[no-any-return]
    return None


def _condition(pod: Obj, kind: str) -> Obj:
    """The pod's condition of this type when it is True, else {}."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition  # type: ignore[no-any-return]
    return {}


def _newest(pods: list[Obj]) -> list[Obj]:
    return sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]), reverse=True
    )


def status_from_job(job: Obj, pods: list[Obj]) -> JobState:
    """The TrainingJob's view of a Job: finished (with the pod's message), queued, waiting or running."""
    if _true(job, "Complete"):
        for pod in _newest(pods):
            terminated = _terminated(pod)
            if (pod.get("status") or {}).get("phase") == "Succeeded" and terminated:
                return JobState(
                    "Succeeded", "Completed", "training finished", terminated.get("message") or ""
                )
        return JobState("Succeeded", "Completed", "training finished", None)
    failed = _true(job, "Failed")
    if failed:
        detail = ""
        for pod in _newest(pods):
            terminated = _terminated(pod)
            if terminated and terminated.get("message"):
                detail = terminated["message"].strip()
                break
        reason = failed.get("reason") or "JobFailed"
        message = failed.get("message") or "the Job failed"
        return JobState("Failed", reason, f"{message}: {detail}" if detail else message, detail or None)
    if (job.get("spec") or {}).get("suspend"):
        return JobState("Queued", "WaitingForAdmission", "the Job waits in its queue for admission (Kueue)")
    active = [p for p in _newest(pods) if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
    if any(p["status"]["phase"] == "Running" for p in active):
        failed_pods = (job.get("status") or {}).get("failed", 0)
        retry = f" (retry {failed_pods} of {job['spec'].get('backoffLimit', 0)})" if failed_pods else ""
        return JobState("Running", "PodRunning", f"trainer pod is running{retry}")
    for pod in active:
        for condition in pod["status"].get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                message = condition.get("message") or "no node fits the pod"
                return JobState("Pending", "Unschedulable", message, unschedulable=message)
    if active and active[0]["spec"].get("nodeName"):
        return JobState("Pending", "PodStarting", f"trainer pod scheduled on {active[0]['spec']['nodeName']}")
    # No pod runs, yet the Job has not concluded: the Job controller has not recorded the pod that
    # ended (it removes the pod's tracking finalizer first), or waits out the back-off before a retry.
    ended = _newest([p for p in pods if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")])
    if not active and ended and ended[0]["status"]["phase"] == "Succeeded":
        return JobState("Running", "PodCompleted", "trainer pod finished; the Job records its completion")
    if not active and ended and _condition(ended[0], "DisruptionTarget"):
        why = _condition(ended[0], "DisruptionTarget").get("message") or "a disruption"
        return JobState("Pending", "PodDisrupted", f"trainer pod stopped by {why!r}; the Job starts another")
    if not active and ended:
        terminated = _terminated(ended[0]) or {}
        why = (terminated.get("message") or "").strip() or f"exit code {terminated.get('exitCode', '?')}"
        failed_pods = (job.get("status") or {}).get("failed", 0) or len(ended)
        retry = f"retry {failed_pods} of {job['spec'].get('backoffLimit', 0)}"
        return JobState(
            "Pending", "BackoffLimitNotReached", f"trainer pod failed ({why}); {retry} after a back-off"
        )
    return JobState("Pending", "JobCreated", "waiting for the trainer pod to be scheduled")


# --- the artifact -------------------------------------------------------------------------------


def artifact_name(tj: TrainingJob) -> str:
    return tj.spec.output.artifact_name or tj.metadata.name


def artifact_from_result(tj: TrainingJob, result: TrainerResult) -> Obj:
    """The ModelArtifact of a successful run: lineage labels, and no owner so it outlives the job."""
    spec = tj.spec
    model_line = spec.output.model or to_dns_label(tj.metadata.name, 63)
    metrics = result.metrics.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelArtifact",
        "metadata": {
            "name": artifact_name(tj),
            "namespace": tj.metadata.namespace,
            "labels": {
                **MANAGED_BY,
                TRAINING_JOB_LABEL: to_dns_label(tj.metadata.name, 63),
                ATTEMPT_LABEL: str(result.attempt),
                "visioninapp.io/model": model_line,
                **(
                    {"visioninapp.io/project": tj.metadata.labels["visioninapp.io/project"]}
                    if "visioninapp.io/project" in tj.metadata.labels
                    else {}
                ),
            },
            "annotations": {"visioninapp.io/manifest": result.manifest_uri},
        },
        "spec": {
            "model": model_line,
            "version": to_dns_label(tj.metadata.name, 63),
            "formats": [f.model_dump(mode="json", by_alias=True, exclude_none=True) for f in result.formats],
            "task": "detect",
            "classNames": result.class_names or [],
            "imgsz": result.imgsz,
            **({"metrics": metrics} if metrics else {}),
            "source": {
                "trainingJob": tj.metadata.name,
                "attempt": result.attempt,
                "dataset": spec.dataset.uri,
                **({"baseModel": spec.model.base_model} if spec.model.base_model else {}),
            },
            "stage": "candidate",
        },
    }


# --- the plan -----------------------------------------------------------------------------------


def _status_patch(current: Obj, wanted: Obj) -> Obj:
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def plan_training(
    tj: TrainingJob,
    body: Obj,
    job: Obj | None,
    pods: list[Obj],
    now: datetime,
    *,
    make_job: Callable[[TrainingJob, int], Obj],
    base: BaseModel | None = None,
) -> TrainingPlan:
    """Decide one reconciliation of a TrainingJob (`body` as stored, `tj` the same validated) from
    its current Job and pods.

    `make_job(tj, attempt)` builds the desired Job (a closure over the operator's settings).
    """
    plan = _plan(tj, body, job, pods, now, make_job, base)
    if job is not None and JOB_FINALIZER in (job["metadata"].get("finalizers") or []):
        phase = plan.status.get("phase", (body.get("status") or {}).get("phase"))
        if job["metadata"].get("deletionTimestamp") or phase in TERMINAL:
            return replace(plan, release_job=job["metadata"]["name"])
    return plan


def _plan(
    tj: TrainingJob,
    body: Obj,
    job: Obj | None,
    pods: list[Obj],
    now: datetime,
    make_job: Callable[[TrainingJob, int], Obj],
    base: BaseModel | None,
) -> TrainingPlan:
    status = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 1)
    phase = status.get("phase", "Pending")
    attempts = int(status.get("attempts") or 0)
    conditions = list(status.get("conditions") or [])
    wanted: Obj = {"observedGeneration": generation}

    def condition(type_: str, value: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions, type_, "True" if value else "False", reason, message, now, generation, CONDITION_TYPES
        )

    def start(attempt: int, why: str) -> TrainingPlan:
        if base is not None and base.problem:
            condition("Scheduled", False, "BaseModelUnavailable", base.problem)
            wanted.update(phase="Pending", message=base.problem, conditions=conditions)
            return TrainingPlan(status=_status_patch(status, wanted))
        for type_ in ("Suspended", "Running", "Unschedulable"):
            if any(c["type"] == type_ for c in conditions):
                condition(type_, False, "NewAttempt", why)
        new_job = make_job(tj, attempt)
        condition("Scheduled", True, "JobCreated", f"Job {new_job['metadata']['name']} created ({why})")
        fresh = status_from_job(new_job, [])  # what the next look at the new Job will say anyway
        if fresh.phase == "Queued":
            condition("Queued", True, fresh.reason, fresh.message)
        wanted.update(
            phase=fresh.phase,
            attempts=attempt,
            jobName=new_job["metadata"]["name"],
            epochs=tj.spec.hyperparameters.epochs,
            message=fresh.message,
            conditions=conditions,
        )
        wanted.setdefault("startTime", status.get("startTime") or iso_time(now))
        return TrainingPlan(
            create_job=new_job,
            status=_status_patch(status, wanted),
            # The first Job is in the `Scheduled` condition; an Event for each of thousands of new
            # runs would double the API writes. Later attempts are notable: they get one.
            event=("Normal", "JobCreated", f"attempt {attempt}: {why}") if 1 < attempt > attempts else None,
        )

    if phase in TERMINAL:
        return TrainingPlan(status=_status_patch(status, wanted))
    if attempts == 0:
        if tj.spec.suspend:
            condition("Suspended", True, "Suspended", "suspended before the first attempt")
            wanted.update(
                phase="Suspended", message="suspended before the first attempt", conditions=conditions
            )
            return TrainingPlan(status=_status_patch(status, wanted))
        return start(1, "first attempt")

    current = job_name(tj.metadata.name, attempts)
    if job is None:
        if tj.spec.suspend:
            condition("Suspended", True, "Suspended", "suspended; the checkpoint is kept for resuming")
            condition("Running", False, "Suspended", "suspended")
            wanted.update(
                phase="Suspended", message="suspended; resumes from its checkpoint", conditions=conditions
            )
            return TrainingPlan(status=_status_patch(status, wanted))
        if phase == "Suspended":
            return start(attempts + 1, "resumed from the last checkpoint")
        return start(attempts, f"Job {current} is missing; recreated")  # idempotent: same name

    state = status_from_job(job, pods)
    if tj.spec.suspend and state.phase not in TERMINAL:
        condition("Suspended", True, "Suspended", "suspended; the checkpoint is kept for resuming")
        condition("Running", False, "Suspended", "suspended")
        wanted.update(
            phase="Suspended", message="suspended; resumes from its checkpoint", conditions=conditions
        )
        return TrainingPlan(
            delete_job=current,
            status=_status_patch(status, wanted),
            event=("Normal", "Suspended", f"deleted Job {current}; the checkpoint is kept"),
        )

    if state.phase == "Succeeded":
        try:
            result = TrainerResult.from_termination_message(state.termination_message or "")
        except (ValueError, ValidationError):
            text = (state.termination_message or "")[:200]
            message = f"the trainer succeeded but its result is unreadable: {text!r}"
            condition("Running", False, "Finished", "finished")
            condition("Failed", True, "ResultUnreadable", message)
            wanted.update(
                phase="Failed", message=message, completionTime=iso_time(now), conditions=conditions
            )
            return TrainingPlan(
                status=_status_patch(status, wanted), event=("Warning", "ResultUnreadable", message)
            )
        artifact = artifact_from_result(tj, result)
        condition("Running", False, "Finished", "finished")
        if any(c["type"] == "Unschedulable" for c in conditions):
            condition("Unschedulable", False, "Finished", "finished")
        condition(
            "Succeeded", True, "ArtifactCreated", f"ModelArtifact {artifact['metadata']['name']} created"
        )
        metrics = result.metrics.model_dump(mode="json", by_alias=True, exclude_none=True)
        wanted.update(
            phase="Succeeded",
            artifact=artifact["metadata"]["name"],
            epoch=result.epochs_run,
            completionTime=iso_time(now),
            message=f"trained {result.epochs_run} epochs; ModelArtifact {artifact['metadata']['name']}",
            conditions=conditions,
            **({"metrics": metrics} if metrics else {}),
        )
        return TrainingPlan(
            create_artifact=artifact,
            status=_status_patch(status, wanted),
            event=("Normal", "Succeeded", f"ModelArtifact {artifact['metadata']['name']} created"),
        )
    if state.phase == "Failed":
        condition("Running", False, "Finished", "finished")
        condition("Failed", True, state.reason, state.message)
        wanted.update(
            phase="Failed", message=state.message, completionTime=iso_time(now), conditions=conditions
        )
        return TrainingPlan(
            status=_status_patch(status, wanted), event=("Warning", state.reason, state.message)
        )

    # Not finished: Queued, Pending (maybe Unschedulable) or Running.
    if state.unschedulable is not None:
        condition("Unschedulable", True, "Unschedulable", state.unschedulable)
    elif any(c["type"] == "Unschedulable" for c in conditions):
        condition("Unschedulable", False, "Scheduled", "a node was found")
    if state.phase == "Queued":
        condition("Queued", True, state.reason, state.message)
    elif any(c["type"] == "Queued" for c in conditions):
        condition("Queued", False, "Admitted", "the queue admitted the Job")
    if state.phase == "Running":
        condition("Running", True, state.reason, state.message)
    wanted.update(phase=state.phase, message=state.message, conditions=conditions)
    return TrainingPlan(status=_status_patch(status, wanted))
