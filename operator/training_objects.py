"""What the training controller creates: the batch/v1 Job of an attempt (with the trainer's
`TrainerConfig`) and the ModelArtifact of a successful run. Pure functions; names derive from the
TrainingJob and its attempt, so building them twice gives the same objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from visioninapp.backends.storage import join_uri
from visioninapp.events import EXIT_CONFIGURATION, TrainerResult
from visioninapp.k8s import MANAGED_BY, Obj, controller_reference
from visioninapp.operator.names import job_name
from visioninapp.resources import API_VERSION, TrainingJob
from visioninapp.resources.base import to_dns_label
from visioninapp.trainer.config import CONFIG_ENV, BaseWeights, TrainerConfig

__all__ = [
    "ATTEMPT_LABEL",
    "JOB_FINALIZER",
    "TRAINING_JOB_LABEL",
    "BaseModel",
    "TrainerTemplate",
    "artifact_from_result",
    "desired_job",
    "resolve_artifact_file",
    "trainer_config",
]

TRAINING_JOB_LABEL = "visioninapp.io/training-job"
ATTEMPT_LABEL = "visioninapp.io/attempt"
# Keeps a finished Job (and so its pods' termination message) until the operator has recorded the
# outcome, even when ttlSecondsAfterFinished or a user deletes it first.
JOB_FINALIZER = "visioninapp.io/training-result"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class BaseModel:
    """`spec.model.baseModel` resolved by the controller: its `pt` file, or why it cannot be used."""

    uri: str | None = None
    sha256: str | None = None
    problem: str | None = None


def resolve_artifact_file(role: str, name: str, artifact: Obj | None, formats: tuple[str, ...]) -> BaseModel:
    """A ModelArtifact named by a TrainingJob (`role`: "base model", "baseline") resolved to its first
    file among `formats` (in order of preference), or why it cannot be used yet."""
    if artifact is None:
        return BaseModel(problem=f"{role} {name!r} (ModelArtifact) not found; create it first")
    if (artifact.get("status") or {}).get("phase") != "Available":
        return BaseModel(problem=f"{role} {name!r} is not Available yet (verification pending or failed)")
    files = {item["format"]: item for item in artifact["spec"]["formats"]}
    for wanted in formats:
        if wanted in files:
            return BaseModel(uri=files[wanted]["uri"], sha256=files[wanted]["sha256"])
    return BaseModel(problem=f"{role} {name!r} has no {' or '.join(f'`{f}`' for f in formats)} format")


# --- the Job ------------------------------------------------------------------------------------


def output_uri(tj: TrainingJob, default_base: str) -> str:
    return join_uri(tj.spec.output.uri or default_base, tj.metadata.namespace or "default", tj.metadata.name)


def dataset_uri(tj: TrainingJob, store: str) -> str:
    """The dataset's URI; a key without a scheme (`datasets/shapes/v1`) lies in the artifact store."""
    return _in_store(tj.spec.dataset.uri, store)


def _in_store(uri: str, store: str) -> str:
    return uri if "://" in uri else join_uri(store, uri)


def _weights(resolved: BaseModel | None) -> BaseWeights | None:
    if resolved is None or not resolved.uri or not resolved.sha256:
        return None
    return BaseWeights(uri=resolved.uri, sha256=resolved.sha256)


def trainer_config(
    tj: TrainingJob,
    attempt: int,
    default_output: str,
    base: BaseModel | None,
    work_dir: str,
    baseline: BaseModel | None = None,
) -> TrainerConfig:
    """The trainer's config (trainer/config.py), passed inline in the pod's environment; dataset keys
    (the training data and the gate's fixed data) resolved against the artifact store."""
    dataset = tj.spec.dataset.model_copy(update={"uri": dataset_uri(tj, default_output)})
    evaluation = tj.spec.evaluation
    if evaluation is not None:
        held_out = evaluation.held_out
        new_frames = evaluation.new_frames
        evaluation = evaluation.model_copy(
            update={
                "held_out": held_out.model_copy(update={"uri": _in_store(held_out.uri, default_output)}),
                "new_frames": new_frames
                and new_frames.model_copy(update={"uri": _in_store(new_frames.uri, default_output)}),
            }
        )
    return TrainerConfig(
        name=tj.metadata.name,
        namespace=tj.metadata.namespace or "default",
        attempt=attempt,
        spec=tj.spec.model_copy(update={"dataset": dataset, "evaluation": evaluation}),
        output_uri=output_uri(tj, default_output),
        base_weights=_weights(base),
        baseline_weights=_weights(baseline),
        termination_log=Path(TERMINATION_LOG),
        work_dir=Path(work_dir),
    )


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
    baseline: BaseModel | None = None,
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
    config = trainer_config(tj, attempt, default_output, base, work_dir, baseline)
    container_env = [
        {"name": CONFIG_ENV, "value": config.model_dump_json(by_alias=True, exclude_none=True)},
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
                "terminationMessagePath": TERMINATION_LOG,
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
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # A configuration or dataset the trainer refused: a retry would be refused the same way.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "trainer",
                        "operator": "In",
                        "values": [EXIT_CONFIGURATION],
                    },
                },
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


@dataclass(frozen=True)
class TrainerTemplate:
    """The operator's settings that go into every trainer Job (the planner's typed input)."""

    image: str
    default_output: str  # where outputs go when the TrainingJob names no `output.uri`
    service_account: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    env_secret: str | None = None
    work_dir: str = "/scratch"
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Obj, ...] = ()

    def job(
        self,
        tj: TrainingJob,
        uid: str,
        attempt: int,
        base: BaseModel | None,
        baseline: BaseModel | None = None,
    ) -> Obj:
        """The Job of attempt `attempt` of `tj` (whose uid is `uid`); `baseline`: the gate's."""
        return desired_job(
            tj,
            uid,
            attempt,
            image=self.image,
            default_output=self.default_output,
            base=base,
            service_account=self.service_account,
            env=dict(self.env),
            env_secret=self.env_secret,
            work_dir=self.work_dir,
            gpu_node_selector=dict(self.gpu_node_selector),
            gpu_tolerations=list(self.gpu_tolerations),
            baseline=baseline,
        )


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
            **(
                {"evaluation": {"uri": result.evaluation.uri, "sha256": result.evaluation.sha256}}
                if result.evaluation is not None
                else {}
            ),
            "source": {
                "trainingJob": tj.metadata.name,
                "attempt": result.attempt,
                "dataset": spec.dataset.uri,
                **({"baseModel": spec.model.base_model} if spec.model.base_model else {}),
            },
            "stage": "candidate",
        },
    }
