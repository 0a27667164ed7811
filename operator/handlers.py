"""kopf handlers: read what is needed, call the pure planners, write the result. Nothing else.

Run with `visioninapp-operator` (see main.py) or `kopf run -m visioninapp.operator.kopf_run`.
Watching uses kopf's `on.event` handlers and in-memory indexes (no state is stored on the objects,
so a restarted operator simply re-plans everything from what it sees); names derive from the
TrainingJob and its attempt, so a plan applied twice creates nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf

from visioninapp.backends.events import EventBus
from visioninapp.backends.storage import ArtifactStore
from visioninapp.events import EdgeEvent
from visioninapp.factory import artifact_store_for, build_event_bus
from visioninapp.k8s import Obj, iso_time
from visioninapp.kubeclient import Kube, KubeError, load_connection
from visioninapp.operator.artifacts import artifact_status, mirror_copy, needs_verification, verify_formats
from visioninapp.operator.config import OperatorConfig
from visioninapp.operator.edge_identity import EdgeIdentities
from visioninapp.operator.edge_identity import start as start_identities
from visioninapp.operator.metrics import Metrics
from visioninapp.operator.progress import CONSUMER, ProgressTracker, consume_progress
from visioninapp.operator.rollout import (
    ACTION_ANNOTATION,
    DEPLOYMENT_LABEL,
    IN_USE_FINALIZER,
    REVISION_LABEL,
    EdgeHealthTracker,
    artifact_users,
    desired_daemonset,
    node_view,
    plan_rollout,
    pod_view,
)
from visioninapp.operator.scheduling import fits
from visioninapp.operator.training import (
    JOB_FINALIZER,
    TRAINING_JOB_LABEL,
    BaseModel,
    TrainingPlan,
    desired_job,
    job_finished,
    plan_training,
)
from visioninapp.resources import API_VERSION, GROUP, VERSION, EdgeDeployment, ModelArtifact, TrainingJob
from visioninapp.resources.base import ADMITTED
from visioninapp.settings import Settings

log = logging.getLogger("visioninapp.operator")
JOB_LABEL = "batch.kubernetes.io/job-name"
DELETED_UIDS_KEPT = 100_000  # deletions remembered; a late write's answer comes within seconds
# Job creates go before status writes: under a burst of new runs the API server's capacity goes
# first to what starts training, and a new run's status follows once the burst is over (no Job
# created for BURST_QUIET_SECONDS), STATUS_BEHIND_STARTS_SECONDS later at most.
BURST_QUIET_SECONDS = 0.5
STATUS_BEHIND_STARTS_SECONDS = 10.0
REPLAN_INTERVAL = 0.5  # seconds between two plans of one EdgeDeployment (rollout steps take minutes)


def _plain(body: Mapping[str, Any]) -> Obj:
    """A deep, plain copy of an event's body (kopf may change its own afterwards); JSON is quicker
    than copy.deepcopy for JSON data."""
    return json.loads(json.dumps(dict(body)))  # type: ignore[no-any-return]


def _newer(a: Obj | None, b: Obj | None) -> Obj | None:
    """The fresher of two copies of one object (our own write's response vs. the watch's)."""
    if a is None or b is None:
        return a or b
    rv_a, rv_b = a["metadata"].get("resourceVersion", ""), b["metadata"].get("resourceVersion", "")
    if rv_a.isdigit() and rv_b.isdigit():
        return a if int(rv_a) >= int(rv_b) else b
    return b


class Operator:
    """The operator's state in one process: settings, API client, caches, locks and metrics."""

    def __init__(self, config: OperatorConfig, settings: Settings) -> None:
        self.config, self.settings = config, settings
        self.kube = Kube(load_connection(context=config.context), config.api_concurrency)
        self.mirror: Kube | None = None
        self.metrics = Metrics(self.kube)
        self.locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.training_jobs: dict[tuple[str, str], Obj] = {}  # (ns, name) → newest body seen
        self.validated: dict[str, tuple[str | None, TrainingJob]] = {}  # uid → (version, model)
        self.jobs: dict[tuple[str, str], Obj] = {}  # (ns, job name) → newest body seen
        self.pods: dict[tuple[str, str], dict[str, Obj]] = defaultdict(dict)  # (ns, job) → pods by name
        self.stores: dict[str, ArtifactStore] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.artifacts: dict[tuple[str, str], Obj] = {}
        self.deployments: dict[tuple[str, str], Obj] = {}
        self.daemonsets: dict[tuple[str, str], Obj] = {}
        self.edge_pods: dict[tuple[str, str], dict[str, Obj]] = defaultdict(dict)  # (ns, deployment) → pods
        self.nodes: dict[str, Obj] = {}
        self.health = EdgeHealthTracker()
        self.pending: set[tuple[str, str]] = set()  # runs and deployments with a re-plan queued
        self.background: set[asyncio.Task[None]] = set()  # work started by watch callbacks
        self.deleted: dict[str, None] = {}  # uids of objects seen deleted, oldest first
        self.replan_at: dict[tuple[str, str], float] = {}  # earliest time of the next re-plan
        self.last_start = 0.0  # when the newest Job create was sent (monotonic)
        self.burst_over = asyncio.Event()  # set once no Job was created for BURST_QUIET_SECONDS
        self.burst_over.set()
        self.burst_timer: asyncio.Task[None] | None = None
        self.trainer_env, self.edge_env = self.service_env(training=True), self.service_env(training=False)
        self.identities: EdgeIdentities | None = None  # per-node edge credentials (config.edge_identity)

    # reading

    def remember(self, cache: dict[tuple[str, str], Obj], body: Obj) -> Obj:
        """Keep the newer of `body` and the cached copy; never an object whose deletion was seen
        (a write's answer can arrive after the watch reported the object gone)."""
        key = (body["metadata"].get("namespace", ""), body["metadata"]["name"])
        if body["metadata"].get("uid") in self.deleted:
            return body
        newest = _newer(body, cache.get(key))
        assert newest is not None
        cache[key] = newest
        return newest

    def forget(self, cache: dict[tuple[str, str], Obj], meta: Mapping[str, Any]) -> Obj | None:
        """The watch saw `meta`'s object deleted: drop it, and remember that it is gone."""
        if meta.get("uid"):
            self.deleted[meta["uid"]] = None
            while len(self.deleted) > DELETED_UIDS_KEPT:
                del self.deleted[next(iter(self.deleted))]  # the oldest
        return cache.pop((meta.get("namespace", ""), meta["name"]), None)

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

    @staticmethod
    def is_own_write(cache: dict[tuple[str, str], Obj], body: Mapping[str, Any]) -> bool:
        """The event shows exactly what our last write returned: it was planned on already."""
        meta = body["metadata"]
        known = cache.get((meta.get("namespace", ""), meta["name"]))
        return known is not None and known["metadata"].get("resourceVersion") == meta.get("resourceVersion")

    async def base_model(self, tj: TrainingJob) -> BaseModel | None:
        name = tj.spec.model.base_model
        if not name:
            return None
        artifact = await self.kube.get(API_VERSION, "modelartifacts", tj.metadata.namespace, name)
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

    def service_env(self, training: bool) -> dict[str, str]:
        """Where pods find S3 and the streams: the operator's own settings, then configured extras."""
        values = {
            # feedback frames of edge pods go to the platform's store unless the deployment names one
            "VISIONINAPP_ARTIFACTS_URI": self.settings.resolved_artifacts_uri,
            "VISIONINAPP_S3_ENDPOINT_URL": self.settings.s3_endpoint_url,
            "VISIONINAPP_S3_REGION": self.settings.s3_region,
            "VISIONINAPP_RABBITMQ_HOST": self.settings.rabbitmq_host,
            # where and as whom; the password comes from a Secret (trainerEnvSecret), never plain env
            **(
                {
                    "VISIONINAPP_RABBITMQ_STREAM_PORT": self.settings.rabbitmq_stream_port,
                    "VISIONINAPP_RABBITMQ_USER": self.settings.rabbitmq_user,
                    "VISIONINAPP_RABBITMQ_VHOST": self.settings.rabbitmq_vhost,
                }
                if self.settings.rabbitmq_host
                else {}
            ),
            "VISIONINAPP_TRAINING_STREAM" if training else "VISIONINAPP_EDGE_STREAM": (
                self.settings.training_stream if training else self.settings.edge_stream
            ),
        }
        extra = self.config.trainer_env if training else self.config.edge_env
        return {k: str(v) for k, v in values.items() if v is not None} | extra

    def make_job(self, uid: str, base: BaseModel | None) -> Callable[[TrainingJob, int], Obj]:
        env = self.trainer_env

        def build(tj: TrainingJob, attempt: int) -> Obj:
            return desired_job(
                tj,
                uid,
                attempt,
                image=self.config.trainer_image,
                default_output=self.settings.resolved_artifacts_uri,
                base=base,
                service_account=self.config.trainer_service_account,
                env=env,
                env_secret=self.config.trainer_env_secret,
                work_dir=self.config.trainer_work_dir,
                gpu_node_selector=self.config.trainer_gpu_node_selector,
                gpu_tolerations=self.config.trainer_gpu_tolerations,
            )

        return build

    # TrainingJob

    async def reconcile_training_job(self, namespace: str, name: str) -> None:
        """Re-plan a run; events that arrive while a plan waits or runs collapse into one more plan
        (a new run's Job, its pod and the scheduler's verdict come in a burst)."""
        key = (namespace, name)
        if key in self.pending:
            return  # a re-plan is already queued: it will see this event's state too
        self.pending.add(key)
        async with self.locks[key]:
            self.pending.discard(key)
            body = self.training_jobs.get(key)
            if body is None:
                return
            started = time.perf_counter()
            try:
                await self._reconcile_training_job(body)
                self.metrics.reconciled("TrainingJob", time.perf_counter() - started)
            except Exception:
                self.metrics.failed("TrainingJob")
                log.exception(
                    "reconciling TrainingJob %s/%s failed; retrying at the next event or resync",
                    namespace,
                    name,
                )

    def training_job_model(self, body: Obj) -> TrainingJob:
        """`body` validated, once per stored version: the Job's and pods' events re-plan a run
        several times while the TrainingJob itself stays the same."""
        meta = body["metadata"]
        version, cached = self.validated.get(meta["uid"], (None, None))
        if cached is None or version != meta.get("resourceVersion"):
            cached = TrainingJob.model_validate(body, context=ADMITTED)
            self.validated[meta["uid"]] = (meta.get("resourceVersion"), cached)
        return cached

    async def _reconcile_training_job(self, body: Obj) -> None:
        if body["metadata"].get("deletionTimestamp"):
            return
        plan = await self.plan_run(body)
        if plan.create_job is None or not plan.status:
            await self.apply(body, plan)
            return
        # A new attempt: its Job first; its status once the burst of new Jobs is over, in one write
        # with what the Job controller and the scheduler said about it meanwhile.
        await self.apply(body, dataclasses.replace(plan, status={}, event=None))
        if not self.burst_over.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.burst_over.wait(), STATUS_BEHIND_STARTS_SECONDS)
        ahead = {**body, "status": {**(body.get("status") or {}), **plan.status}}
        later = await self.plan_run(ahead)
        await self.apply(
            body,
            dataclasses.replace(
                later, status={**plan.status, **later.status}, event=plan.event or later.event
            ),
        )

    def job_started(self) -> None:
        """A Job create goes out: the burst of new runs goes on (see `burst_over`)."""
        self.last_start = time.monotonic()
        self.burst_over.clear()
        if self.burst_timer is None or self.burst_timer.done():
            self.burst_timer = asyncio.ensure_future(self._end_burst())

    async def _end_burst(self) -> None:
        while (quiet := time.monotonic() - self.last_start) < BURST_QUIET_SECONDS:
            await asyncio.sleep(BURST_QUIET_SECONDS - quiet)
        self.burst_over.set()

    async def plan_run(self, body: Obj) -> TrainingPlan:
        """Plan a run from the cached Job and pods of its current attempt."""
        meta = body["metadata"]
        namespace, status = meta["namespace"], body.get("status") or {}
        attempt = int(status.get("attempts") or 0)
        job = self.jobs.get((namespace, status.get("jobName") or "")) if attempt else None
        pods: list[Obj] = []
        if job is not None:
            job_name = job["metadata"]["name"]
            pods = list(self.pods.get((namespace, job_name), {}).values())
            if job_finished(job):  # the outcome is read from the pods themselves, not a possibly late cache
                pods = await self.kube.list("v1", "pods", namespace, f"{JOB_LABEL}={job_name}")
        tj = self.training_job_model(body)
        base = await self.base_model(tj) if attempt == 0 or status.get("phase") == "Suspended" else None
        return plan_training(
            tj, body, job, pods, datetime.now(UTC), make_job=self.make_job(meta["uid"], base), base=base
        )

    async def apply(self, body: Obj, plan: TrainingPlan) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if plan.create_artifact is not None:
            artifact = plan.create_artifact
            if not artifact["spec"]["classNames"]:  # too many to fit the termination message
                manifest_uri = artifact["metadata"]["annotations"]["visioninapp.io/manifest"]
                manifest = json.loads(
                    await asyncio.to_thread(self.store_for(manifest_uri).get_bytes, manifest_uri)
                )
                artifact["spec"]["classNames"] = manifest["classNames"]
            await self.kube.create(API_VERSION, "modelartifacts", namespace, artifact)
        if plan.create_job is not None:
            self.job_started()
            created = await self.kube.create("batch/v1", "jobs", namespace, plan.create_job)
            if created is None:  # it exists already: adopt it
                created = await self.kube.get(
                    "batch/v1", "jobs", namespace, plan.create_job["metadata"]["name"]
                )
            if created is not None:
                self.remember(self.jobs, created)
        if plan.delete_job is not None:
            await self.kube.delete("batch/v1", "jobs", namespace, plan.delete_job, "Background")
        if plan.status:
            try:
                updated = await self.kube.patch(
                    API_VERSION, "trainingjobs", namespace, name, {"status": plan.status}, "status"
                )
                self.remember(self.training_jobs, updated)
            except KubeError as error:
                if error.code != 404:
                    raise
        if plan.release_job is not None:
            job = self.jobs.get((namespace, plan.release_job))
            finalizers = [
                f for f in ((job or {}).get("metadata", {}).get("finalizers") or []) if f != JOB_FINALIZER
            ]
            try:
                released = await self.kube.patch(
                    "batch/v1",
                    "jobs",
                    namespace,
                    plan.release_job,
                    {"metadata": {"finalizers": finalizers or None}},
                )
                self.remember(self.jobs, released)
            except KubeError as error:
                if error.code != 404:
                    raise
        if plan.event is not None:
            kind, reason, message = plan.event
            await self.post_event(body, kind, reason, message)

    async def release_if_orphaned(self, job: Obj, owner: str) -> None:
        """A Job being deleted whose TrainingJob is gone has no outcome to record: let it go."""
        namespace = job["metadata"]["namespace"]
        if (namespace, owner) in self.training_jobs:
            return
        if await self.kube.get(API_VERSION, "trainingjobs", namespace, owner) is not None:
            return  # not in the cache yet (just started): its reconciliation records the outcome first
        self.jobs[(namespace, job["metadata"]["name"])] = job
        await self.apply(
            {"metadata": {"namespace": namespace, "name": owner}},
            TrainingPlan(release_job=job["metadata"]["name"]),
        )

    async def patch_progress(self, namespace: str, name: str, patch: Obj) -> None:
        body = self.training_jobs.get((namespace, name))
        if body is None or (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # gone, or finished (the final status has the final epoch)
        try:
            updated = await self.kube.patch(
                API_VERSION, "trainingjobs", namespace, name, {"status": patch}, "status"
            )
            self.remember(self.training_jobs, updated)
        except KubeError as error:
            if error.code != 404:
                log.warning("progress of %s/%s not recorded: %s", namespace, name, error)

    # ModelArtifact

    def store_for(self, uri: str) -> ArtifactStore:
        scheme = uri.split("://", 1)[0]
        if scheme not in self.stores:
            self.stores[scheme] = artifact_store_for(uri, self.settings)
        return self.stores[scheme]

    def _verify(self, body: Obj) -> list[str]:
        artifact = ModelArtifact.model_validate(body, context=ADMITTED)
        return verify_formats(
            artifact,
            checksum=lambda uri: self.store_for(uri).checksum(uri),
            size=lambda uri: self.store_for(uri).size(uri),
        )

    async def reconcile_artifact(self, namespace: str, name: str) -> None:
        async with self.locks[(namespace, f"ma/{name}")]:
            body = self.artifacts.get((namespace, name))
            if body is None:
                return
            started = time.perf_counter()
            try:
                await self._reconcile_artifact(body)
                self.metrics.reconciled("ModelArtifact", time.perf_counter() - started)
            except Exception:
                self.metrics.failed("ModelArtifact")
                log.exception(
                    "reconciling ModelArtifact %s/%s failed; retrying at the next event", namespace, name
                )

    async def _reconcile_artifact(self, body: Obj) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        verification, error = None, None
        if needs_verification(body):
            try:
                verification = await asyncio.to_thread(self._verify, body)
            except Exception as failure:  # the store, not the artifact: retried at resync
                error = f"cannot check the objects now: {type(failure).__name__}: {failure}"
        users = artifact_users(name, [d for (ns, _), d in self.deployments.items() if ns == namespace])
        patch = artifact_status(body, verification, datetime.now(UTC), error, deployed_to=users)
        if patch:
            try:
                body = await self.kube.patch(
                    API_VERSION, "modelartifacts", namespace, name, {"status": patch}, "status"
                )
            except KubeError as failure:
                if failure.code != 404:
                    raise
                return
            self.remember(self.artifacts, body)
            if verification:
                await self.post_event(body, "Warning", "VerificationFailed", patch.get("message", ""))
        finalizers = list(meta.get("finalizers") or [])
        if bool(users) != (IN_USE_FINALIZER in finalizers):  # the in-use finalizer follows deployedTo
            finalizers = (
                [*finalizers, IN_USE_FINALIZER] if users else [f for f in finalizers if f != IN_USE_FINALIZER]
            )
            updated = await self.kube.patch(
                API_VERSION,
                "modelartifacts",
                namespace,
                name,
                {"metadata": {"finalizers": finalizers or None}},
            )
            self.remember(self.artifacts, updated)
        available = (body.get("status") or {}).get("phase") == "Available"
        mirrored = (meta.get("labels") or {}).get("visioninapp.io/mirrored") == "true"
        if self.mirror is not None and available and not mirrored:
            await self.mirror.create(API_VERSION, "modelartifacts", namespace, mirror_copy(body))

    # EdgeDeployment

    async def artifact(self, namespace: str, name: str | None) -> Obj | None:
        if not name:
            return None
        cached = self.artifacts.get((namespace, name))
        return (
            cached
            if cached is not None
            else await self.kube.get(API_VERSION, "modelartifacts", namespace, name)
        )

    def make_daemonset(self, uid: str) -> Any:
        env = self.edge_env

        def build(ed: EdgeDeployment, artifact: str, entry: Obj) -> tuple[Obj, str]:
            return desired_daemonset(
                ed,
                uid,
                artifact,
                entry,
                image=self.config.edge_image,
                env=env,
                cache_path=self.config.edge_cache_path,
                runtime_class=self.config.edge_runtime_class,
                identity_url=self.config.edge_identity_url if self.config.edge_identity else None,
                env_secret=self.config.edge_env_secret,
            )

        return build

    async def reconcile_deployment(self, namespace: str, name: str) -> None:
        """Re-plan a rollout; events that arrive while a plan runs collapse into one more plan."""
        key = (namespace, f"ed/{name}")
        if key in self.pending:
            return  # a re-plan is already queued: it will see this event's state too
        self.pending.add(key)
        async with self.locks[key]:
            loop = asyncio.get_running_loop()
            delay = self.replan_at.get(key, 0.0) - loop.time()
            if delay > 0:  # a fleet sends events in bursts: plan at most every REPLAN_INTERVAL
                await asyncio.sleep(delay)
            self.pending.discard(key)
            self.replan_at[key] = loop.time() + REPLAN_INTERVAL
            body = self.deployments.get((namespace, name))
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            started = time.perf_counter()
            try:
                await self._reconcile_deployment(body)
                self.metrics.reconciled("EdgeDeployment", time.perf_counter() - started)
            except Exception:
                self.metrics.failed("EdgeDeployment")
                log.exception(
                    "reconciling EdgeDeployment %s/%s failed; retrying at the next event", namespace, name
                )

    async def _reconcile_deployment(self, body: Obj) -> None:
        meta, spec, status = body["metadata"], body["spec"], body.get("status") or {}
        namespace, name = meta["namespace"], meta["name"]
        artifact = await self.artifact(namespace, spec["modelRef"])
        previous = await self.artifact(namespace, status.get("previousModel"))
        heartbeats = self.health.for_deployment(namespace, name)
        nodes = [
            node_view(node, heartbeats)
            for node in self.nodes.values()
            if fits(node, spec.get("nodeSelector") or {}, spec.get("tolerations") or [])
        ]
        pods = [pod_view(p) for p in self.edge_pods.get((namespace, name), {}).values()]
        pods = [p for p in pods if p is not None]
        plan = plan_rollout(
            body,
            artifact,
            previous,
            self.daemonsets.get((namespace, name)),
            sorted(nodes, key=lambda n: n.name),
            pods,
            heartbeats,
            datetime.now(UTC),
            make_daemonset=self.make_daemonset(meta["uid"]),
        )
        if plan.daemonset is not None:
            await self.apply_daemonset(plan.daemonset)
        if plan.status:  # the intent (step, revision) first: a crash after it re-plans the same step
            try:
                updated = await self.kube.patch(
                    API_VERSION, "edgedeployments", namespace, name, {"status": plan.status}, "status"
                )
                self.remember(self.deployments, updated)
            except KubeError as error:
                if error.code != 404:
                    raise
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
        for model in {spec["modelRef"], status.get("currentModel"), status.get("previousModel")} - {None}:
            if (namespace, model) in self.artifacts:
                asyncio.get_running_loop().create_task(self.reconcile_artifact(namespace, model))

    async def apply_daemonset(self, desired: Obj) -> None:
        meta = desired["metadata"]
        key = (meta["namespace"], meta["name"])
        current = self.daemonsets.get(key)
        wanted_revision = desired["spec"]["template"]["metadata"]["labels"][REVISION_LABEL]
        if current is None:
            created = await self.kube.create("apps/v1", "daemonsets", meta["namespace"], desired)
            current = created or await self.kube.get("apps/v1", "daemonsets", meta["namespace"], meta["name"])
        if current is None:
            return
        if current["spec"]["template"]["metadata"]["labels"].get(REVISION_LABEL) != wanted_revision:
            current = await self.kube.request(
                "PATCH",
                self.kube.path("apps/v1", "daemonsets", meta["namespace"], meta["name"]),
                [{"op": "replace", "path": "/spec/template", "value": desired["spec"]["template"]}],
                "application/json-patch+json",
            )
        self.remember(self.daemonsets, current)

    def watched_namespace(self, namespace: str) -> bool:
        return not self.config.namespaces or any(
            fnmatch.fnmatch(namespace, p) for p in self.config.namespaces
        )

    def spawn(self, work: Awaitable[None]) -> None:
        """Run `work` in the background (a watch callback cannot wait), keeping the task alive."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # TrainingJobs, their Jobs and trainer pods through lean watches: kopf's per-event pipeline
    # costs about a millisecond an event, and every run brings seven of them (its own create and
    # two status writes, a Job and a pod each made and then reported on by their controllers),
    # which at a thousand runs at once delayed new runs' Jobs.

    async def watch_training_jobs(self) -> None:
        await self.kube.watch(
            API_VERSION, "trainingjobs", "", self.reset_training_jobs, self.training_job_changed
        )

    def reset_training_jobs(self, items: list[Obj]) -> None:
        listed = {(t["metadata"]["namespace"], t["metadata"]["name"]) for t in items}
        for key in [k for k in self.training_jobs if k not in listed]:  # gone while the watch was down
            self.training_job_changed("DELETED", self.training_jobs[key])
        for body in items:
            self.training_job_changed("MODIFIED", {"apiVersion": API_VERSION, "kind": "TrainingJob", **body})

    def training_job_changed(self, kind: str, body: Obj) -> None:
        meta = body["metadata"]
        if not self.watched_namespace(meta.get("namespace", "")):
            return
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.forget(self.training_jobs, meta)
            self.validated.pop(meta.get("uid", ""), None)
            self.locks.pop(key, None)
            return
        if self.is_own_write(self.training_jobs, body):
            return
        self.remember(self.training_jobs, body)
        self.spawn(self.reconcile_training_job(*key))

    async def watch_trainer_jobs(self) -> None:
        await self.kube.watch("batch/v1", "jobs", TRAINING_JOB_LABEL, self.reset_jobs, self.job_changed)

    async def watch_trainer_pods(self) -> None:
        selector = f"{TRAINING_JOB_LABEL},{JOB_LABEL}"
        await self.kube.watch("v1", "pods", selector, self.reset_trainer_pods, self.trainer_pod_changed)

    def reset_jobs(self, items: list[Obj]) -> None:
        listed = {(j["metadata"]["namespace"], j["metadata"]["name"]) for j in items}
        for key in [k for k in self.jobs if k not in listed]:  # gone while the watch was down
            self.job_changed("DELETED", self.jobs[key])
        for job in items:
            self.job_changed("MODIFIED", job)

    def job_changed(self, kind: str, job: Obj) -> None:
        meta = job["metadata"]
        if not self.watched_namespace(meta.get("namespace", "")):
            return
        if kind == "DELETED":
            self.forget(self.jobs, meta)
        elif self.is_own_write(self.jobs, job):
            return
        else:
            self.remember(self.jobs, job)
        owner = _owner_name(meta)
        if not owner:
            return
        if (
            kind != "DELETED"
            and meta.get("deletionTimestamp")
            and JOB_FINALIZER in (meta.get("finalizers") or [])
        ):
            self.spawn(self.release_if_orphaned(job, owner))
        self.spawn(self.reconcile_training_job(meta["namespace"], owner))

    def reset_trainer_pods(self, items: list[Obj]) -> None:
        listed = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items}
        for (namespace, _job), pods in list(self.pods.items()):
            for pod in [p for name, p in pods.items() if (namespace, name) not in listed]:
                self.trainer_pod_changed("DELETED", pod)
        for pod in items:
            self.trainer_pod_changed("MODIFIED", pod)

    def trainer_pod_changed(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        if not self.watched_namespace(meta.get("namespace", "")):
            return
        job = meta["labels"][JOB_LABEL]
        pods = self.pods[(meta["namespace"], job)]
        if kind == "DELETED":
            pods.pop(meta["name"], None)
        else:
            newest = _newer(pod, pods.get(meta["name"]))
            assert newest is not None
            pods[meta["name"]] = newest
        owner = (self.jobs.get((meta["namespace"], job)) or {}).get("metadata", {})
        training_job = _owner_name(owner) if owner else None
        if training_job:
            self.spawn(self.reconcile_training_job(meta["namespace"], training_job))

    def reset_edge_pods(self, items: list[Obj]) -> None:
        self.edge_pods.clear()
        for pod in items:
            self.edge_pod_changed("ADDED", pod)

    def edge_pod_changed(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        if not self.watched_namespace(meta.get("namespace", "")):
            return
        key = (meta["namespace"], meta["labels"][DEPLOYMENT_LABEL])
        pods = self.edge_pods[key]
        if kind == "DELETED":
            pods.pop(meta["name"], None)
        else:
            pods[meta["name"]] = pod
        if key not in self.pending:  # a re-plan not queued yet: queue one (bursts collapse into it)
            asyncio.get_running_loop().create_task(self.reconcile_deployment(*key))

    async def watch_edge_pods(self) -> None:
        """Edge pods through a lean watch: a fleet's rollout is thousands of pod events."""
        await self.kube.watch("v1", "pods", DEPLOYMENT_LABEL, self.reset_edge_pods, self.edge_pod_changed)

    async def consume_health(self) -> None:
        """edge-events → per-node health of each deployment; the affected rollouts re-plan."""
        await self.keep_consuming("edge-events", self._consume_health)

    async def _consume_health(self, bus: EventBus) -> None:
        stream = self.settings.edge_stream
        offset = await asyncio.to_thread(bus.query_offset, stream, CONSUMER)
        while True:
            messages = await asyncio.to_thread(bus.read, stream, offset, 1000)
            touched = set()
            for message in messages:
                try:
                    event = EdgeEvent.model_validate_json(message.body)
                except ValueError:
                    continue
                self.health.add(event)
                touched.add((event.namespace, event.deployment))
            for key in touched:
                await self.reconcile_deployment(*key)
            if messages:
                offset = messages[-1].offset + 1
                await asyncio.to_thread(bus.store_offset, stream, CONSUMER, offset)
            else:
                await asyncio.sleep(0.5)

    async def keep_consuming(self, what: str, consume: Callable[[EventBus], Awaitable[None]]) -> None:
        """Run a stream consumer forever: on any failure log it and start again from the stored offset."""
        while True:
            bus: EventBus | None = None
            try:
                bus = await asyncio.to_thread(build_event_bus, self.settings)
                await consume(bus)
            except Exception:
                log.exception("the %s consumer failed; restarting it in 5 s", what)
                await asyncio.sleep(5)
            finally:
                if bus is not None:
                    await asyncio.to_thread(bus.close)

    async def resync_rollouts(self) -> None:
        """Step timeouts and minReadySeconds pass without events: look again now and then."""
        while True:
            await asyncio.sleep(self.config.rollout_resync_seconds)
            for namespace, name in list(self.deployments):
                await self.reconcile_deployment(namespace, name)

    # background work

    async def resync(self) -> None:
        """Re-plan every unfinished TrainingJob now and then: missed events, deadlines, retries."""
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for (namespace, name), body in list(self.training_jobs.items()):
                if (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    await self.reconcile_training_job(namespace, name)

    async def progress(self) -> None:
        """training-events → live epoch and metrics in TrainingJob status."""

        async def consume(bus: EventBus) -> None:
            tracker = ProgressTracker(self.config.status_interval_seconds)
            await consume_progress(bus, self.settings.training_stream, tracker, self.patch_progress)

        await self.keep_consuming("training-events", consume)


class WatchOnlyDiffBase(kopf.DiffBaseStorage):
    """No diff base: every handler here is an `on.event` handler, so kopf's per-event deep copy of
    each body (to diff it for on.create/on.update handlers) is pure cost (a third of the CPU at scale)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def _operator(memo: kopf.Memo) -> Operator:
    return memo["operator"]  # type: ignore[no-any-return]


# --- registration -------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the handlers of the configured roles: ModelArtifacts always, EdgeDeployments with
    `rollout`; TrainingJobs (role `training`) through the lean watch started at startup, or through
    kopf with leader election."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own Events only; no per-handler chatter
        settings.persistence.diffbase_storage = WatchOnlyDiffBase()
        # No worker limit: kopf keeps each object's idle worker for a while, so a limit throttles
        # big batches (32 workers gave 6 CRs/s); concurrency is bounded by the API client instead.
        settings.watching.server_timeout = 300
        operator = Operator(config, Settings())
        memo["operator"] = operator
        if config.mirror_kubeconfig_secret:
            operator.mirror = await _mirror_client(operator.kube, config.mirror_kubeconfig_secret)
        if config.metrics_port:
            operator.metrics.serve(config.metrics_port)
        if "training" in config.roles:
            if not config.peering:  # with leader election kopf's handler below follows them
                operator.tasks.append(asyncio.create_task(operator.watch_training_jobs()))
            operator.tasks.append(asyncio.create_task(operator.watch_trainer_jobs()))
            operator.tasks.append(asyncio.create_task(operator.watch_trainer_pods()))
            operator.tasks.append(asyncio.create_task(operator.resync()))
            operator.tasks.append(asyncio.create_task(operator.progress()))
        if "rollout" in config.roles:
            operator.tasks.append(asyncio.create_task(operator.resync_rollouts()))
            operator.tasks.append(asyncio.create_task(operator.watch_edge_pods()))
            operator.tasks.append(asyncio.create_task(operator.consume_health()))
            if config.edge_identity:
                operator.identities, _ = await start_identities(
                    operator.kube, operator, config, operator.settings
                )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        operator = _operator(memo)
        for task in [*operator.tasks, *([operator.burst_timer] if operator.burst_timer else [])]:
            task.cancel()
        await operator.kube.close()
        if operator.mirror is not None:
            await operator.mirror.close()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**dataclasses.asdict(load_connection(context=config.context)))

    @kopf.on.event(GROUP, VERSION, "modelartifacts", registry=registry)
    async def on_artifact(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        operator = _operator(memo)
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if type == "DELETED":
            operator.forget(operator.artifacts, meta)
            return
        if operator.is_own_write(operator.artifacts, body):
            return
        operator.remember(operator.artifacts, _plain(body))
        await operator.reconcile_artifact(*key)
        for (namespace, name), deployment in list(operator.deployments.items()):
            if namespace == key[0] and key[1] in artifact_users_of(deployment):
                await operator.reconcile_deployment(namespace, name)

    if "rollout" in config.roles:
        register_rollout(registry)

    if "training" in config.roles and config.peering:
        # Leader election is kopf's peering, which pauses kopf's handlers on a standby replica but
        # not our lean watches: there TrainingJobs come through kopf, so a standby does nothing
        # (the Job and pod watches only re-plan runs already known).
        @kopf.on.event(GROUP, VERSION, "trainingjobs", registry=registry)
        async def on_training_job(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
            _operator(memo).training_job_changed(type or "MODIFIED", _plain(body))


def artifact_users_of(deployment: Obj) -> set[str]:
    status = deployment.get("status") or {}
    return {deployment["spec"]["modelRef"], status.get("currentModel"), status.get("previousModel")} - {None}


def register_rollout(registry: kopf.OperatorRegistry) -> None:
    """EdgeDeployments → DaemonSets and canary waves (the `rollout` role)."""

    @kopf.on.event(GROUP, VERSION, "edgedeployments", registry=registry)
    async def on_deployment(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        operator = _operator(memo)
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if type == "DELETED":
            gone = operator.forget(operator.deployments, meta)
            for model in artifact_users_of(gone or _plain(body)):
                await operator.reconcile_artifact(key[0], model)
            return
        if operator.is_own_write(operator.deployments, body):
            return
        operator.remember(operator.deployments, _plain(body))
        await operator.reconcile_deployment(*key)

    @kopf.on.event("apps", "v1", "daemonsets", labels={DEPLOYMENT_LABEL: kopf.PRESENT}, registry=registry)
    async def on_daemonset(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        operator = _operator(memo)
        meta = body["metadata"]
        if type == "DELETED":
            operator.forget(operator.daemonsets, meta)
        else:
            operator.remember(operator.daemonsets, _plain(body))

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def on_node(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        operator = _operator(memo)
        name = body["metadata"]["name"]
        if type == "DELETED":
            operator.nodes.pop(name, None)
        else:
            operator.nodes[name] = _plain(body)
        if operator.identities is not None:
            operator.identities.node_changed(name, operator.nodes.get(name))
        for namespace, deployment in list(operator.deployments):
            await operator.reconcile_deployment(namespace, deployment)


def _owner_name(meta: Mapping[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "TrainingJob" and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(ref["name"])
    return None


async def _mirror_client(kube: Kube, secret_ref: str) -> Kube:
    """A client for the edge cluster from a kubeconfig Secret (`namespace/name`, key `kubeconfig`)."""
    import base64
    import tempfile

    namespace, _, name = secret_ref.partition("/")
    secret = await kube.get("v1", "secrets", namespace, name)
    if secret is None or "kubeconfig" not in (secret.get("data") or {}):
        raise kopf.PermanentError(f"mirror Secret {secret_ref} with a `kubeconfig` key not found")
    path = Path(tempfile.mkdtemp(prefix="visioninapp-mirror-")) / "kubeconfig"
    path.write_bytes(base64.b64decode(secret["data"]["kubeconfig"]))
    return Kube(load_connection(path))
