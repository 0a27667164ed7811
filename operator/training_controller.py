"""The training controller: TrainingJob → trainer Job → ModelArtifact, as read → plan → apply.

It reads the run, its current Job and that Job's pods from the cache (training_watches.py fills it),
plans with the pure `plan_training` and hands the plan to the apply layer. Nothing is stored on the
objects beyond their status, so a restarted operator simply re-plans everything from what it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from visioninapp.k8s import Obj
from visioninapp.kubeclient import KubeError
from visioninapp.operator.apply import Applier
from visioninapp.operator.cache import ObjectCache, Turns
from visioninapp.operator.context import Context, log
from visioninapp.operator.progress import ProgressTracker
from visioninapp.operator.streams import ProgressReader, keep_following
from visioninapp.operator.training import TERMINAL, TrainingPlan, job_finished, plan_training
from visioninapp.operator.training_objects import BaseModel, TrainerTemplate, resolve_artifact_file
from visioninapp.resources import API_VERSION, TrainingJob
from visioninapp.resources.base import ADMITTED

__all__ = ["JOB_LABEL", "TrainingController"]

JOB_LABEL = "batch.kubernetes.io/job-name"
# Job creates go before status writes: under a burst of new runs the API server's capacity goes
# first to what starts training, and a new run's status follows once the burst is over (no Job
# created for BURST_QUIET_SECONDS), STATUS_BEHIND_STARTS_SECONDS later at most.
BURST_QUIET_SECONDS = 0.5
STATUS_BEHIND_STARTS_SECONDS = 10.0


class BurstGate:
    """Open once no Job was created for BURST_QUIET_SECONDS."""

    def __init__(self) -> None:
        self.last_start = 0.0  # when the newest Job create was sent (monotonic)
        self.over = asyncio.Event()
        self.over.set()
        self.timer: asyncio.Task[None] | None = None

    def job_started(self) -> None:
        self.last_start = time.monotonic()
        self.over.clear()
        if self.timer is None or self.timer.done():
            self.timer = asyncio.ensure_future(self._end())

    async def _end(self) -> None:
        while (quiet := time.monotonic() - self.last_start) < BURST_QUIET_SECONDS:
            await asyncio.sleep(BURST_QUIET_SECONDS - quiet)
        self.over.set()

    async def wait(self) -> None:
        if not self.over.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.over.wait(), STATUS_BEHIND_STARTS_SECONDS)


class TrainingController:
    def __init__(self, context: Context, cache: ObjectCache, applier: Applier) -> None:
        self.context, self.cache, self.applier = context, cache, applier
        self.turns = Turns()  # a new run's Job, its pod and the scheduler's verdict come in a burst
        self.burst = BurstGate()
        self.validated: dict[str, tuple[str | None, TrainingJob]] = {}  # uid → (version, model)
        config = context.config
        self.template = TrainerTemplate(
            image=config.trainer_image,
            default_output=context.settings.resolved_artifacts_uri,
            service_account=config.trainer_service_account,
            env=context.trainer_env,
            env_secret=config.trainer_env_secret,
            work_dir=config.trainer_work_dir,
            gpu_node_selector=config.trainer_gpu_node_selector,
            gpu_tolerations=tuple(config.trainer_gpu_tolerations),
        )

    async def reconcile(self, namespace: str, name: str) -> None:
        """Re-plan a run; events that arrive while a plan waits or runs collapse into one more plan."""
        key = (namespace, name)

        async def replan() -> None:
            body = self.cache.training_jobs.get(key)
            if body is not None:
                await self.context.measured("TrainingJob", key, self._reconcile(body))

        await self.turns.run(key, replan)

    def deleted(self, meta: Mapping[str, Any]) -> None:
        self.cache.training_jobs.forget(meta)
        self.validated.pop(meta.get("uid", ""), None)

    async def _reconcile(self, body: Obj) -> None:
        if body["metadata"].get("deletionTimestamp"):
            return
        plan = await self._plan(body)
        if plan.create_job is None or not plan.status:
            await self._apply(body, plan)
            return
        # A new attempt: its Job first; its status once the burst of new Jobs is over, in one write
        # with what the Job controller and the scheduler said about it meanwhile.
        await self._apply(body, dataclasses.replace(plan, status={}, event=None))
        await self.burst.wait()
        ahead = {**body, "status": {**(body.get("status") or {}), **plan.status}}
        later = await self._plan(ahead)
        status, event = {**plan.status, **later.status}, plan.event or later.event
        await self._apply(body, dataclasses.replace(later, status=status, event=event))

    async def _apply(self, body: Obj, plan: TrainingPlan) -> None:
        if plan.create_job is not None:
            self.burst.job_started()
        await self.applier.apply_training(body, plan)

    async def _plan(self, body: Obj) -> TrainingPlan:
        """Plan a run from the cached Job and pods of its current attempt."""
        namespace, status = body["metadata"]["namespace"], body.get("status") or {}
        attempt = int(status.get("attempts") or 0)
        job = self.cache.jobs.get((namespace, status.get("jobName") or "")) if attempt else None
        pods: list[Obj] = []
        if job is not None:
            job_name = job["metadata"]["name"]
            pods = list(self.cache.trainer_pods.get((namespace, job_name), {}).values())
            if job_finished(job):  # the outcome is read from the pods themselves, not a possibly late cache
                pods = await self.context.kube.list("v1", "pods", namespace, f"{JOB_LABEL}={job_name}")
        tj = self.model(body)
        # a plan without a Job may start one (first, resumed or recreated): it needs the base model
        starts = job is None and status.get("phase") not in TERMINAL
        base = await self.base_model(tj) if starts else None
        baseline = await self.baseline(tj) if starts else None
        return plan_training(
            tj, body, job, pods, datetime.now(UTC), template=self.template, base=base, baseline=baseline
        )

    def model(self, body: Obj) -> TrainingJob:
        """`body` validated, once per stored version: the Job's and pods' events re-plan a run
        several times while the TrainingJob itself stays the same."""
        meta = body["metadata"]
        version, cached = self.validated.get(meta["uid"], (None, None))
        if cached is None or version != meta.get("resourceVersion"):
            cached = TrainingJob.model_validate(body, context=ADMITTED)
            self.validated[meta["uid"]] = (meta.get("resourceVersion"), cached)
        return cached

    async def base_model(self, tj: TrainingJob) -> BaseModel | None:
        """`spec.model.baseModel` resolved to its `pt` file, or why it cannot be used yet."""
        name = tj.spec.model.base_model
        if not name:
            return None
        artifact = await self.context.kube.get(API_VERSION, "modelartifacts", tj.metadata.namespace, name)
        if artifact is None:
            return BaseModel(problem=f"base model {name!r} (ModelArtifact) not found; create it first")
        if (artifact.get("status") or {}).get("phase") != "Available":
            return BaseModel(
                problem=f"base model {name!r} is not Available yet (verification pending or failed)"
            )
        for item in artifact["spec"]["formats"]:
            if item["format"] == "pt":
                return BaseModel(uri=item["uri"], sha256=item["sha256"])
        return BaseModel(problem=f"base model {name!r} has no `pt` format to fine-tune from")

    async def baseline(self, tj: TrainingJob) -> BaseModel | None:
        """`spec.evaluation.baseline` resolved to its `onnx` file, or why it cannot be used yet."""
        name = tj.spec.evaluation.baseline if tj.spec.evaluation is not None else None
        if not name:
            return None
        artifact = await self.context.kube.get(API_VERSION, "modelartifacts", tj.metadata.namespace, name)
        return resolve_artifact_file("baseline", name, artifact, ("onnx", "onnx-int8"))

    async def release_if_orphaned(self, job: Obj, owner: str) -> None:
        """A Job being deleted whose TrainingJob is gone has no outcome to record: let it go."""
        namespace = job["metadata"]["namespace"]
        if (namespace, owner) in self.cache.training_jobs:
            return
        if await self.context.kube.get(API_VERSION, "trainingjobs", namespace, owner) is not None:
            return  # not in the cache yet (just started): its reconciliation records the outcome first
        self.cache.jobs[(namespace, job["metadata"]["name"])] = job
        await self.applier.release_job(namespace, job["metadata"]["name"])

    async def patch_progress(self, namespace: str, name: str, patch: Obj) -> None:
        body = self.cache.training_jobs.get((namespace, name))
        if body is None or (body.get("status") or {}).get("phase") in TERMINAL:
            return  # gone, or finished (the final status has the final epoch)
        try:
            await self.applier.patch_status(self.cache.training_jobs, "trainingjobs", namespace, name, patch)
        except KubeError as error:
            log.warning("progress of %s/%s not recorded: %s", namespace, name, error)

    async def resync(self) -> None:
        """Re-plan every unfinished TrainingJob now and then: missed events, deadlines, retries."""
        while True:
            await asyncio.sleep(self.context.config.resync_seconds)
            for key, body in list(self.cache.training_jobs.items()):
                if (body.get("status") or {}).get("phase") not in TERMINAL:
                    await self.reconcile(*key)

    async def follow_progress(self) -> None:
        """training-events → live epoch and metrics in TrainingJob status."""
        context = self.context

        def reader() -> ProgressReader:
            tracker = ProgressTracker(context.config.status_interval_seconds)
            return ProgressReader(context.settings.training_stream, tracker, self.patch_progress)

        await keep_following(context.settings, reader)

    def stop(self) -> None:
        if self.burst.timer is not None:
            self.burst.timer.cancel()
