"""The apply layer: each kind's plan turned into API calls, in the order that makes a crash harmless
(a re-plan after it does the rest), and every write's answer kept in the cache as our own."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from visioninapp.k8s import Obj, iso_time
from visioninapp.kubeclient import KubeError
from visioninapp.operator.artifacts import ArtifactPlan
from visioninapp.operator.cache import ObjectCache, Store
from visioninapp.operator.context import Context, log
from visioninapp.operator.daemonset import REVISION_LABEL
from visioninapp.operator.rollout import ACTION_ANNOTATION, RolloutPlan
from visioninapp.operator.training import TrainingPlan
from visioninapp.operator.training_objects import JOB_FINALIZER
from visioninapp.resources import API_VERSION

__all__ = ["Applier"]

MIRROR_RETRY = 15  # seconds before a failed write to the edge cluster is tried again


CAMERAS_REREAD_SECONDS = 10.0


class Applier:
    """Writes plans; reads nothing but the cache (for the current state of what it changes)."""

    def __init__(self, context: Context, cache: ObjectCache) -> None:
        self.context, self.cache, self.kube = context, cache, context.kube
        self._cameras_read: dict[tuple[str, str], float] = {}  # when each cameras map was last read
        self._mirrored_stage: dict[tuple[str, str], str | None] = {}  # the stage last written there

    # shared

    async def post_event(self, body: Obj, kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event about `body` (for `kubectl describe`); never fails the reconciliation."""
        meta = body["metadata"]
        now = iso_time(datetime.now(UTC))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", API_VERSION),
                "kind": body.get("kind", ""),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "visioninapp-operator"},
            "reportingComponent": "visioninapp-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create("v1", "events", meta["namespace"], event)
        except KubeError as error:
            log.warning("event %s on %s/%s not posted: %s", reason, meta["namespace"], meta["name"], error)

    async def patch(
        self,
        store: Store,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: Obj,
        sub: str | None = None,
    ) -> Obj | None:
        """A merge patch (of `sub`, e.g. "status"), its answer cached; None when the object is gone."""
        try:
            updated = await self.kube.patch(api_version, plural, namespace, name, patch, sub)
        except KubeError as error:
            if error.code != 404:
                raise
            return None
        return store.remember(updated)

    async def patch_status(
        self, store: Store, plural: str, namespace: str, name: str, status: Obj
    ) -> Obj | None:
        """A merge patch of one of our resources' status; None when the resource is gone."""
        return await self.patch(store, API_VERSION, plural, namespace, name, {"status": status}, "status")

    # TrainingJob

    async def apply_training(self, body: Obj, plan: TrainingPlan) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if plan.create_artifact is not None:
            await self._create_artifact(namespace, plan.create_artifact)
        if plan.create_job is not None:
            await self._create_job(namespace, plan.create_job)
        if plan.delete_job is not None:
            await self.kube.delete("batch/v1", "jobs", namespace, plan.delete_job, "Background")
        if plan.status:
            await self.patch_status(self.cache.training_jobs, "trainingjobs", namespace, name, plan.status)
        if plan.release_job is not None:
            await self.release_job(namespace, plan.release_job)
        if plan.event is not None:
            await self.post_event(body, *plan.event)

    async def _create_artifact(self, namespace: str, artifact: Obj) -> None:
        if not artifact["spec"]["classNames"]:  # too many to fit the termination message
            manifest_uri = artifact["metadata"]["annotations"]["visioninapp.io/manifest"]
            store = self.context.store_for(manifest_uri)
            manifest = json.loads(await asyncio.to_thread(store.get_bytes, manifest_uri))
            artifact["spec"]["classNames"] = manifest["classNames"]
        await self.kube.create(API_VERSION, "modelartifacts", namespace, artifact)

    async def _create_job(self, namespace: str, job: Obj) -> None:
        created = await self.kube.create("batch/v1", "jobs", namespace, job)
        if created is None:  # it exists already: adopt it
            created = await self.kube.get("batch/v1", "jobs", namespace, job["metadata"]["name"])
        if created is not None:
            self.cache.jobs.remember(created)

    async def release_job(self, namespace: str, name: str) -> None:
        """Our finalizer off the Job: its outcome is recorded (or nobody needs it any more)."""
        job = self.cache.jobs.get((namespace, name))
        finalizers = [
            f for f in ((job or {}).get("metadata", {}).get("finalizers") or []) if f != JOB_FINALIZER
        ]
        await self.patch(
            self.cache.jobs,
            "batch/v1",
            "jobs",
            namespace,
            name,
            {"metadata": {"finalizers": finalizers or None}},
        )

    # ModelArtifact

    async def apply_artifact(self, body: Obj, plan: ArtifactPlan) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        artifacts = self.cache.artifacts
        if plan.status:
            patched = await self.patch_status(artifacts, "modelartifacts", namespace, name, plan.status)
            if patched is None:
                return
            if plan.event is not None:
                await self.post_event(patched, *plan.event)
        if plan.finalizers is not None:
            updated = await self.kube.patch(
                API_VERSION,
                "modelartifacts",
                namespace,
                name,
                {"metadata": {"finalizers": plan.finalizers or None}},
            )
            artifacts.remember(updated)
        if plan.mirror is not None and self.context.mirror is not None:
            await self._mirror(plan.mirror)

    async def _mirror(self, copy: Obj) -> None:
        """The artifact in the edge cluster, its stage following this cluster's: a promotion here
        rolls out there (deployments follow the mirrored stage), an archive here archives there."""
        mirror, meta, stage = self.context.mirror, copy["metadata"], copy["spec"].get("stage")
        assert mirror is not None
        key = (meta["namespace"], meta["name"])
        if self._mirrored_stage.get(key) == stage:
            return
        try:
            created = await mirror.create(API_VERSION, "modelartifacts", meta["namespace"], copy)
            if created is None:  # there already: only its stage may differ (the rest is immutable)
                await mirror.patch(API_VERSION, "modelartifacts", *key, {"spec": {"stage": stage}})
        except Exception as error:  # the edge cluster is away: try again (nothing else re-plans it)
            log.warning(
                "mirroring ModelArtifact %s/%s failed, retrying in %d s: %s", *key, MIRROR_RETRY, error
            )
            self.context.spawn(self._replan_later(key))
            return
        self._mirrored_stage[key] = stage

    async def _replan_later(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(MIRROR_RETRY)
        self.context.artifact_replans.put_nowait(key)

    # EdgeDeployment

    async def apply_rollout(self, body: Obj, plan: RolloutPlan) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if plan.daemonset is not None:
            await self._daemonset(plan.daemonset)
        if plan.status:  # the intent (step, revision) first: a crash after it re-plans the same step
            await self.patch_status(self.cache.deployments, "edgedeployments", namespace, name, plan.status)
        for pod in plan.delete_pods:
            await self.kube.delete("v1", "pods", namespace, pod)
        if plan.clear_action:
            await self.kube.patch(
                API_VERSION,
                "edgedeployments",
                namespace,
                name,
                {"metadata": {"annotations": {ACTION_ANNOTATION: None}}},
            )
        for kind, reason, message in plan.events:
            await self.post_event(body, kind, reason, message)

    async def apply_cameras(self, desired: Obj) -> None:
        """Create the cameras' ConfigMap, or replace its data when it changed (the cache holds what
        our last write or read returned)."""
        meta = desired["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        current = self.cache.configmaps.get((namespace, name))
        read = self._cameras_read.get((namespace, name), 0.0)
        if current is not None and time.monotonic() - read > CAMERAS_REREAD_SECONDS:
            # No watch on ConfigMaps: read it now and then, so that a map the garbage collector took
            # with a deleted deployment of the same name (or a hand deletion) is made again.
            current = await self.kube.get("v1", "configmaps", namespace, name)
            self._cameras_read[(namespace, name)] = time.monotonic()
            if current is None:
                self.cache.configmaps.forget(meta)
        if current is None:
            self._cameras_read[(namespace, name)] = time.monotonic()
            created = await self.kube.create("v1", "configmaps", namespace, desired)
            current = created or await self.kube.get("v1", "configmaps", namespace, name)
        if current is None:
            return
        # The owner too: a map left by a deleted deployment of the same name would be collected
        # under the new one's feet (json-patch `add` replaces a member, or sets a missing one).
        changes = [
            {"op": "add", "path": path, "value": value}
            for path, value, now in (
                ("/data", desired["data"], current.get("data") or {}),
                (
                    "/metadata/ownerReferences",
                    meta["ownerReferences"],
                    current["metadata"].get("ownerReferences"),
                ),
            )
            if value != now
        ]
        if changes:
            path = self.kube.path("v1", "configmaps", namespace, name)
            try:
                current = await self.kube.request("PATCH", path, changes, "application/json-patch+json")
            except KubeError as error:
                if error.code != 404:
                    raise
                self.cache.configmaps.forget(current["metadata"])  # gone meanwhile: made again next plan
                return
        self.cache.configmaps.remember(current)

    async def _daemonset(self, desired: Obj) -> None:
        """Create the DaemonSet, or replace its pod template when the revision changed (OnDelete: no
        pod changes until the rollout deletes it)."""
        meta = desired["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        current = self.cache.daemonsets.get((namespace, name))
        wanted_revision = desired["spec"]["template"]["metadata"]["labels"][REVISION_LABEL]
        if current is None:
            created = await self.kube.create("apps/v1", "daemonsets", namespace, desired)
            current = created or await self.kube.get("apps/v1", "daemonsets", namespace, name)
        if current is None:
            return
        if current["spec"]["template"]["metadata"]["labels"].get(REVISION_LABEL) != wanted_revision:
            current = await self.kube.request(
                "PATCH",
                self.kube.path("apps/v1", "daemonsets", namespace, name),
                [{"op": "replace", "path": "/spec/template", "value": desired["spec"]["template"]}],
                "application/json-patch+json",
            )
        self.cache.daemonsets.remember(current)
