"""TrainingJobs, their Jobs and trainer pods through lean watches into the cache, each change asking
the training controller to re-plan the run it concerns.

Lean rather than kopf's: kopf's per-event pipeline costs about a millisecond an event, and every run
brings seven of them (its own create and two status writes, a Job and a pod each made and then
reported on by their controllers), which at a thousand runs at once delayed new runs' Jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from visioninapp.k8s import Obj
from visioninapp.operator.cache import ObjectCache, Store, newer
from visioninapp.operator.context import Context, Key
from visioninapp.operator.training_controller import JOB_LABEL, TrainingController
from visioninapp.operator.training_objects import JOB_FINALIZER, TRAINING_JOB_LABEL
from visioninapp.resources import API_VERSION, GROUP

__all__ = ["TrainingWatches", "owner_name"]


def owner_name(meta: Mapping[str, Any]) -> str | None:
    """The TrainingJob that owns an object (a Job)."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "TrainingJob" and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


def _relist(store: Store, items: list[Obj], changed: Callable[[str, Obj], None]) -> None:
    """A full listing: what is gone was deleted while the watch was down; the rest may have changed."""
    listed = {(item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}
    for key in [k for k in store if k not in listed]:
        changed("DELETED", store[key])
    for item in items:
        changed("MODIFIED", item)


class TrainingWatches:
    def __init__(self, context: Context, cache: ObjectCache, controller: TrainingController) -> None:
        self.context, self.cache, self.controller = context, cache, controller

    async def watch_training_jobs(self) -> None:
        await self.context.kube.watch(
            API_VERSION, "trainingjobs", "", self.reset_training_jobs, self.training_job_changed
        )

    async def watch_jobs(self) -> None:
        await self.context.kube.watch(
            "batch/v1", "jobs", TRAINING_JOB_LABEL, self.reset_jobs, self.job_changed
        )

    async def watch_pods(self) -> None:
        selector = f"{TRAINING_JOB_LABEL},{JOB_LABEL}"
        await self.context.kube.watch("v1", "pods", selector, self.reset_pods, self.pod_changed)

    def _replan(self, key: Key) -> None:
        self.context.spawn(self.controller.reconcile(*key))

    def reset_training_jobs(self, items: list[Obj]) -> None:
        typed = [{"apiVersion": API_VERSION, "kind": "TrainingJob", **body} for body in items]
        _relist(self.cache.training_jobs, typed, self.training_job_changed)

    def training_job_changed(self, kind: str, body: Obj) -> None:
        meta = body["metadata"]
        if not self.context.watched(meta.get("namespace", "")):
            return
        store = self.cache.training_jobs
        if kind == "DELETED":
            self.controller.deleted(meta)
            return
        if store.is_own_write(body):
            return
        store.remember(body)
        self._replan((meta["namespace"], meta["name"]))

    def reset_jobs(self, items: list[Obj]) -> None:
        _relist(self.cache.jobs, items, self.job_changed)

    def job_changed(self, kind: str, job: Obj) -> None:
        meta = job["metadata"]
        if not self.context.watched(meta.get("namespace", "")):
            return
        if kind == "DELETED":
            self.cache.jobs.forget(meta)
        elif self.cache.jobs.is_own_write(job):
            return
        else:
            self.cache.jobs.remember(job)
        owner = owner_name(meta)
        if not owner:
            return
        releasing = meta.get("deletionTimestamp") and JOB_FINALIZER in (meta.get("finalizers") or [])
        if kind != "DELETED" and releasing:
            self.context.spawn(self.controller.release_if_orphaned(job, owner))
        self._replan((meta["namespace"], owner))

    def reset_pods(self, items: list[Obj]) -> None:
        listed = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items}
        for (namespace, _job), pods in list(self.cache.trainer_pods.items()):
            for pod in [p for name, p in pods.items() if (namespace, name) not in listed]:
                self.pod_changed("DELETED", pod)
        for pod in items:
            self.pod_changed("MODIFIED", pod)

    def pod_changed(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        if not self.context.watched(meta.get("namespace", "")):
            return
        job = (meta["namespace"], meta["labels"][JOB_LABEL])
        pods = self.cache.trainer_pods[job]
        if kind == "DELETED":
            pods.pop(meta["name"], None)
            if not pods:
                del self.cache.trainer_pods[job]
        else:
            newest = newer(pod, pods.get(meta["name"]))
            assert newest is not None
            pods[meta["name"]] = newest
        owner = (self.cache.jobs.get(job) or {}).get("metadata", {})
        training_job = owner_name(owner) if owner else None
        if training_job:
            self._replan((meta["namespace"], training_job))
