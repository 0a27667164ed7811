"""TrainingJob decisions as pure functions: no I/O, so every branch is tested without a cluster.

`plan_training(tj, body, job, pods, now, template=..., base=...)` looks at a TrainingJob, the Job of its
current attempt and that Job's pods, and says what to do: create a Job, delete one, create the
ModelArtifact, and which status fields change. The controller reads, calls it, and writes. Every name
is derived from the TrainingJob and its attempt, so running a plan twice (after a crash, or from two
events) creates nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from pydantic import ValidationError

from visioninapp.events import TrainerResult
from visioninapp.k8s import Obj, StatusDraft, iso_time
from visioninapp.operator.names import job_name
from visioninapp.operator.training_objects import (
    JOB_FINALIZER,
    BaseModel,
    TrainerTemplate,
    artifact_from_result,
)
from visioninapp.resources import TrainingJob

__all__ = ["TERMINAL", "JobState", "TrainingPlan", "job_finished", "plan_training", "status_from_job"]

TERMINAL = ("Succeeded", "Failed")
CONDITION_TYPES = (
    "Scheduled",
    "Unschedulable",
    "Queued",
    "Running",
    "Suspended",
    "Succeeded",
    "Failed",
    "QualityGate",
)
SUSPENDED_KEEPING_CHECKPOINT = "suspended; the checkpoint is kept for resuming"
Event = tuple[str, str, str]  # (type, reason, message) of a Kubernetes Event


@dataclass(frozen=True)
class TrainingPlan:
    """What one reconciliation does; empty when everything is as it should be."""

    create_job: Obj | None = None
    delete_job: str | None = None
    create_artifact: Obj | None = None
    release_job: str | None = None  # remove our finalizer from this Job (its outcome is recorded)
    status: Obj = field(default_factory=dict)  # a merge patch for `.status`
    event: Event | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.create_job or self.delete_job or self.create_artifact or self.release_job or self.status
        )


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


def _newest(pods: list[Obj]) -> list[Obj]:
    return sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]), reverse=True
    )


def status_from_job(job: Obj, pods: list[Obj]) -> JobState:
    """The TrainingJob's view of a Job: finished (with the pod's message), queued, waiting or running."""
    finished = _finished(job, pods)
    if finished is not None:
        return finished
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
    ended = _newest([p for p in pods if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")])
    if not active and ended:
        return _after_pod_ended(job, ended)
    return JobState("Pending", "JobCreated", "waiting for the trainer pod to be scheduled")


def _finished(job: Obj, pods: list[Obj]) -> JobState | None:
    """The outcome of a Job that has concluded (None: it has not), with its pod's message."""
    if _true(job, "Complete"):
        for pod in _newest(pods):
            terminated = _terminated(pod)
            if (pod.get("status") or {}).get("phase") == "Succeeded" and terminated:
                return JobState(
                    "Succeeded", "Completed", "training finished", terminated.get("message") or ""
                )
        return JobState("Succeeded", "Completed", "training finished", None)
    failed = _true(job, "Failed")
    if failed is None:
        return None
    detail = ""
    for pod in _newest(pods):
        terminated = _terminated(pod)
        if terminated and terminated.get("message"):
            detail = terminated["message"].strip()
            break
    reason = failed.get("reason") or "JobFailed"
    message = failed.get("message") or "the Job failed"
    return JobState("Failed", reason, f"{message}: {detail}" if detail else message, detail or None)


def _after_pod_ended(job: Obj, ended: list[Obj]) -> JobState:
    """No pod runs, yet the Job has not concluded: the Job controller has not recorded the pod that
    ended (it removes the pod's tracking finalizer first), or waits out the back-off before a retry."""
    newest = ended[0]
    if newest["status"]["phase"] == "Succeeded":
        return JobState("Running", "PodCompleted", "trainer pod finished; the Job records its completion")
    disruption = _true(newest, "DisruptionTarget")
    if disruption is not None:
        why = disruption.get("message") or "a disruption"
        return JobState("Pending", "PodDisrupted", f"trainer pod stopped by {why!r}; the Job starts another")
    terminated = _terminated(newest) or {}
    why = (terminated.get("message") or "").strip() or f"exit code {terminated.get('exitCode', '?')}"
    failed_pods = (job.get("status") or {}).get("failed", 0) or len(ended)
    retry = f"retry {failed_pods} of {job['spec'].get('backoffLimit', 0)}"
    return JobState(
        "Pending", "BackoffLimitNotReached", f"trainer pod failed ({why}); {retry} after a back-off"
    )


# --- the plan -----------------------------------------------------------------------------------


def plan_training(
    tj: TrainingJob,
    body: Obj,
    job: Obj | None,
    pods: list[Obj],
    now: datetime,
    *,
    template: TrainerTemplate,
    base: BaseModel | None = None,
    baseline: BaseModel | None = None,
) -> TrainingPlan:
    """Decide one reconciliation of a TrainingJob (`body` as stored, `tj` the same validated) from
    its current Job and pods; a new Job is built from `template` (the operator's settings). `base`
    and `baseline` are `model.baseModel` and `evaluation.baseline` resolved (needed to start a Job)."""
    plan = _plan(_Run(tj, body, now, template, base, baseline), job, pods)
    if job is not None and JOB_FINALIZER in (job["metadata"].get("finalizers") or []):
        phase = plan.status.get("phase", (body.get("status") or {}).get("phase"))
        if job["metadata"].get("deletionTimestamp") or phase in TERMINAL:
            return replace(plan, release_job=job["metadata"]["name"])
    return plan


def _plan(run: _Run, job: Obj | None, pods: list[Obj]) -> TrainingPlan:
    suspend = run.tj.spec.suspend
    if run.phase in TERMINAL:
        return run.plan()
    if run.attempts == 0:
        return run.suspend_before_start() if suspend else run.start(1, "first attempt")
    current = job_name(run.tj.metadata.name, run.attempts)
    if job is None:
        if suspend:
            return run.suspend()
        if run.phase == "Suspended":
            return run.start(run.attempts + 1, "resumed from the last checkpoint")
        return run.start(run.attempts, f"Job {current} is missing; recreated")  # idempotent: same name
    state = status_from_job(job, pods)
    if suspend and state.phase not in TERMINAL:
        event = ("Normal", "Suspended", f"deleted Job {current}; the checkpoint is kept")
        return replace(run.suspend(), delete_job=current, event=event)
    if state.phase == "Succeeded":
        return run.succeeded(state)
    if state.phase == "Failed":
        return run.failed(state)
    return run.unfinished(state)


class _Run(StatusDraft):
    """One reconciliation's working state: the stored status and the status it builds up."""

    order = CONDITION_TYPES

    def __init__(
        self,
        tj: TrainingJob,
        body: Obj,
        now: datetime,
        template: TrainerTemplate,
        base: BaseModel | None,
        baseline: BaseModel | None = None,
    ) -> None:
        super().__init__(body, now)
        self.tj, self.template, self.base, self.baseline = tj, template, base, baseline
        self.phase: str = self.status.get("phase", "Pending")
        self.attempts = int(self.status.get("attempts") or 0)

    def has(self, type_: str) -> bool:
        return any(c["type"] == type_ for c in self.conditions)

    def status_of(self, type_: str) -> str | None:
        return next((c["status"] for c in self.conditions if c["type"] == type_), None)

    def plan(
        self, create_job: Obj | None = None, create_artifact: Obj | None = None, event: Event | None = None
    ) -> TrainingPlan:
        """A plan with the status patch: the wanted fields that differ from the stored ones."""
        patch = {k: v for k, v in self.wanted.items() if self.status.get(k) != v}
        return TrainingPlan(create_job=create_job, create_artifact=create_artifact, status=patch, event=event)

    def start(self, attempt: int, why: str) -> TrainingPlan:
        """A Job for `attempt` (unless the base model or the gate's baseline cannot be used yet)."""
        base = self.base
        for resolved, reason in ((base, "BaseModelUnavailable"), (self.baseline, "BaselineUnavailable")):
            if resolved is not None and resolved.problem:
                self.condition("Scheduled", False, reason, resolved.problem)
                self.wanted.update(phase="Pending", message=resolved.problem, conditions=self.conditions)
                return self.plan()
        for type_ in ("Suspended", "Running", "Unschedulable"):
            if self.has(type_):
                self.condition(type_, False, "NewAttempt", why)
        try:
            new_job = self.template.job(self.tj, self.uid, attempt, base, self.baseline)
        except ValueError as error:  # a config the trainer would refuse: the run fails now, not in the pod
            return self.config_refused(error)
        name = new_job["metadata"]["name"]
        self.condition("Scheduled", True, "JobCreated", f"Job {name} created ({why})")
        fresh = status_from_job(new_job, [])  # what the next look at the new Job will say anyway
        if fresh.phase == "Queued":
            self.condition("Queued", True, fresh.reason, fresh.message)
        self.wanted.update(
            phase=fresh.phase,
            attempts=attempt,
            jobName=name,
            epochs=self.tj.spec.hyperparameters.epochs,
            message=fresh.message,
            conditions=self.conditions,
        )
        self.wanted.setdefault("startTime", self.status.get("startTime") or iso_time(self.now))
        # The first Job is in the `Scheduled` condition; an Event for each of thousands of new runs
        # would double the API writes. Later attempts are notable: they get one.
        notable = 1 < attempt > self.attempts
        return self.plan(
            create_job=new_job,
            event=("Normal", "JobCreated", f"attempt {attempt}: {why}") if notable else None,
        )

    def config_refused(self, error: ValueError) -> TrainingPlan:
        problem = error.errors()[0] if isinstance(error, ValidationError) else None
        where = ".".join(map(str, problem["loc"])) if problem else ""
        detail = (f"{where}: " if where else "") + (problem["msg"] if problem else str(error))
        message = f"the trainer's config is invalid: {detail}"
        self.condition("Failed", True, "InvalidTrainerConfig", message)
        self.wanted.update(
            phase="Failed", message=message, completionTime=iso_time(self.now), conditions=self.conditions
        )
        return self.plan(event=("Warning", "InvalidTrainerConfig", message))

    def suspend_before_start(self) -> TrainingPlan:
        self.condition("Suspended", True, "Suspended", "suspended before the first attempt")
        self.wanted.update(
            phase="Suspended", message="suspended before the first attempt", conditions=self.conditions
        )
        return self.plan()

    def suspend(self) -> TrainingPlan:
        self.condition("Suspended", True, "Suspended", SUSPENDED_KEEPING_CHECKPOINT)
        self.condition("Running", False, "Suspended", "suspended")
        self.wanted.update(
            phase="Suspended", message="suspended; resumes from its checkpoint", conditions=self.conditions
        )
        return self.plan()

    def succeeded(self, state: JobState) -> TrainingPlan:
        """The trainer's result becomes the ModelArtifact (unreadable: the run failed)."""
        try:
            result = TrainerResult.from_termination_message(state.termination_message or "")
        except (ValueError, ValidationError):
            text = (state.termination_message or "")[:200]
            message = f"the trainer succeeded but its result is unreadable: {text!r}"
            self.condition("Running", False, "Finished", "finished")
            self.condition("Failed", True, "ResultUnreadable", message)
            self.wanted.update(
                phase="Failed", message=message, completionTime=iso_time(self.now), conditions=self.conditions
            )
            return self.plan(event=("Warning", "ResultUnreadable", message))
        artifact = artifact_from_result(self.tj, result)
        name = artifact["metadata"]["name"]
        self.condition("Running", False, "Finished", "finished")
        if self.has("Unschedulable"):
            self.condition("Unschedulable", False, "Finished", "finished")
        self.condition("Succeeded", True, "ArtifactCreated", f"ModelArtifact {name} created")
        gate = ""
        if result.evaluation is not None:  # the artifact's status has the checked verdict; this is the news
            verdict = "Passed" if result.evaluation.passed else "Failed"
            self.condition("QualityGate", result.evaluation.passed, verdict, result.evaluation.summary)
            gate = f"; quality gate {result.evaluation.summary}"
        metrics = result.metrics.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.wanted.update(
            phase="Succeeded",
            artifact=name,
            epoch=result.epochs_run,
            completionTime=iso_time(self.now),
            message=f"trained {result.epochs_run} epochs; ModelArtifact {name}{gate}",
            conditions=self.conditions,
            **({"metrics": metrics} if metrics else {}),
        )
        event = ("Normal", "Succeeded", f"ModelArtifact {name} created")
        if result.evaluation is not None and not result.evaluation.passed:
            event = (
                "Warning",
                "QualityGateFailed",
                f"ModelArtifact {name} created; {result.evaluation.summary}",
            )
        return self.plan(create_artifact=artifact, event=event)

    def failed(self, state: JobState) -> TrainingPlan:
        self.condition("Running", False, "Finished", "finished")
        self.condition("Failed", True, state.reason, state.message)
        self.wanted.update(
            phase="Failed",
            message=state.message,
            completionTime=iso_time(self.now),
            conditions=self.conditions,
        )
        return self.plan(event=("Warning", state.reason, state.message))

    def unfinished(self, state: JobState) -> TrainingPlan:
        """Queued, Pending (maybe Unschedulable) or Running: the conditions follow the Job."""
        if self.status_of("Scheduled") == "False":  # a base-model problem seen before the Job was cached
            self.condition("Scheduled", True, "JobExists", f"Job {self.status.get('jobName')} exists")
        if state.unschedulable is not None:
            self.condition("Unschedulable", True, "Unschedulable", state.unschedulable)
        elif self.has("Unschedulable"):
            self.condition("Unschedulable", False, "Scheduled", "a node was found")
        if state.phase == "Queued":
            self.condition("Queued", True, state.reason, state.message)
        elif self.has("Queued"):
            self.condition("Queued", False, "Admitted", "the queue admitted the Job")
        if state.phase == "Running":
            self.condition("Running", True, state.reason, state.message)
        self.wanted.update(phase=state.phase, message=state.message, conditions=self.conditions)
        return self.plan()
