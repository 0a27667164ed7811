"""The rollout controller: EdgeDeployment → DaemonSet and canary waves, as read → plan → apply.

It reads the deployment's artifacts, the nodes it covers, its pods and their health (the edge pod
watch and the edge-events stream fill the cache and the health tracker), plans with the pure
`plan_rollout` and hands the plan to the apply layer. The artifacts it uses re-plan afterwards
(`deployedTo`, the in-use finalizer): it asks through the context's queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from visioninapp.k8s import Obj
from visioninapp.operator.apply import Applier
from visioninapp.operator.cache import ObjectCache, Turns
from visioninapp.operator.cameras import cameras_configmap_name, plan_cameras, running_cameras
from visioninapp.operator.context import Context, Key
from visioninapp.operator.daemonset import DEPLOYMENT_LABEL, EdgeTemplate
from visioninapp.operator.engines import engine_prefix, plan_engines, publish_engine
from visioninapp.operator.lines import LineTarget, follows, line_target
from visioninapp.operator.rollout import RolloutPlan, plan_rollout
from visioninapp.operator.rollout_step import (
    EdgeHealthTracker,
    NodeHealth,
    NodeView,
    PodView,
    node_view,
    pod_view,
)
from visioninapp.operator.scheduling import fits
from visioninapp.operator.streams import HealthReader, keep_following
from visioninapp.resources import API_VERSION, EdgeDeployment
from visioninapp.resources.base import ADMITTED
from visioninapp.resources.edgedeployment import models_in_use

__all__ = ["RolloutController"]

REPLAN_INTERVAL = 0.5  # seconds between two plans of one EdgeDeployment (rollout steps take minutes)


class RolloutController:
    def __init__(self, context: Context, cache: ObjectCache, applier: Applier) -> None:
        self.context, self.cache, self.applier = context, cache, applier
        self.turns = Turns(min_interval=REPLAN_INTERVAL)
        self.health = EdgeHealthTracker()
        config = context.config
        self.template = EdgeTemplate(
            image=config.edge_image,
            env=context.edge_env,
            cache_path=config.edge_cache_path,
            runtime_class=config.edge_runtime_class,
            identity_url=config.edge_identity_url if config.edge_identity else None,
            env_secret=config.edge_env_secret,
        )

    async def reconcile(self, namespace: str, name: str) -> None:
        """Re-plan a rollout; events that arrive while a plan waits or runs collapse into one more plan."""
        key = (namespace, name)

        async def replan() -> None:
            body = self.cache.deployments.get(key)
            if body is not None and not body["metadata"].get("deletionTimestamp"):
                await self.context.measured("EdgeDeployment", key, self._reconcile(body))

        await self.turns.run(key, replan)

    async def reconcile_all(self) -> None:
        for key in list(self.cache.deployments):
            await self.reconcile(*key)

    async def artifact_changed(self, namespace: str, name: str, line: str | None = None) -> None:
        """The deployments that use ModelArtifact `name`, or follow its model `line`, re-plan (it may
        have become Available, or been promoted)."""
        for key, deployment in list(self.cache.deployments.items()):
            followed = follows(deployment)
            if key[0] == namespace and (
                name in models_in_use(deployment) or (followed is not None and followed[0] == line)
            ):
                await self.reconcile(*key)

    def deleted(self, key: Key) -> None:
        self.turns.forget(key)
        self.cache.configmaps.pop((key[0], cameras_configmap_name(key[1])), None)  # collected with it

    async def _reconcile(self, body: Obj) -> None:
        meta, status = body["metadata"], body.get("status") or {}
        namespace, name = meta["namespace"], meta["name"]
        ed = EdgeDeployment.model_validate(body, context=ADMITTED)
        line = await self._line_target(namespace, body)
        if line is not None:  # plan as if the deployment named the version holding the stage
            ed = ed.model_copy(update={"spec": ed.spec.model_copy(update={"model_ref": line.model})})
        heartbeats = self.health.for_deployment(namespace, name)
        engines = await self._engines(body, heartbeats)
        plan = plan_rollout(
            ed,
            body,
            await self._artifact(namespace, ed.spec.model_ref),
            await self._artifact(namespace, status.get("previousModel")),
            sorted(self._nodes(body, heartbeats), key=lambda n: n.name),
            self._pods((namespace, name)),
            heartbeats,
            datetime.now(UTC),
            template=self.template,
            engines=engines,
            line=line,
        )
        plan = self._record_engines(body, engines, plan)
        # The cameras before the DaemonSet and the pods it replaces: a new pod finds its entry.
        await self._cameras(ed, body, plan.delete_pods)
        await self.applier.apply_rollout(body, plan)
        for model in models_in_use(body):
            if (namespace, model) in self.cache.artifacts:
                self.context.artifact_replans.put_nowait((namespace, model))

    async def _line_target(self, namespace: str, body: Obj) -> LineTarget | None:
        followed = follows(body)
        if followed is None:
            return None
        # A list, not the cache: after a start the watch may not have delivered every artifact yet,
        # and a holder resolved from half of them would roll the fleet to an older version.
        return line_target(*followed, await self.context.kube.list(API_VERSION, "modelartifacts", namespace))

    async def _engines(self, body: Obj, heartbeats: dict[str, NodeHealth]) -> list[Obj]:
        """Engine builders designated, and builders' uploads checked and recorded (operator/engines.py)."""
        namespace, current = body["metadata"]["namespace"], (body.get("status") or {}).get("engines") or []
        nodes = {node["metadata"]["name"] for node in self._covered(body)}
        records, claims = plan_engines(current, heartbeats, nodes)
        if claims:
            prefix = engine_prefix(self.context.settings.resolved_artifacts_uri, namespace)
            store = self.context.store_for(prefix)
            for claim in claims:
                index = next(i for i, r in enumerate(records) if r["keyHash"] == claim.key_hash)
                records[index] = await asyncio.to_thread(publish_engine, store, prefix, records[index], claim)
        return records

    @staticmethod
    def _record_engines(body: Obj, records: list[Obj], plan: RolloutPlan) -> RolloutPlan:
        current = (body.get("status") or {}).get("engines") or []
        if records == current:
            return plan
        before = {r["keyHash"]: r.get("phase") for r in current}
        events: list[tuple[str, str, str]] = []
        for record in records:
            key, phase = record["keyHash"], record["phase"]
            if key not in before:
                events.append(
                    ("Normal", "EngineBuilder", f"{record['builder']} builds the engine of key {key[:12]}")
                )
            if phase == before.get(key):
                continue
            if phase == "Available":
                events.append(
                    ("Normal", "EngineRecorded", f"engine {key[:12]} recorded, sha256 {record['sha256']}")
                )
            elif phase == "Failed":
                events.append(("Warning", "EngineRefused", f"engine {key[:12]}: {record.get('message')}"))
        return replace(plan, status={**plan.status, "engines": records}, events=(*plan.events, *events))

    async def _artifact(self, namespace: str, name: str | None) -> Obj | None:
        if not name:
            return None
        cached = self.cache.artifacts.get((namespace, name))
        if cached is not None:
            return cached
        return await self.context.kube.get(API_VERSION, "modelartifacts", namespace, name)

    async def _cameras(self, ed: EdgeDeployment, body: Obj, leaving: tuple[str, ...]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], cameras_configmap_name(meta["name"]))
        current = self.cache.configmaps.get(key)
        if current is None and ed.spec.cameras:  # first plan since the start: read what is there
            current = await self.context.kube.get("v1", "configmaps", *key)
            if current is not None:
                self.cache.configmaps.remember(current)
        desired = plan_cameras(
            ed,
            meta["uid"],
            {node["metadata"]["name"]: node["metadata"].get("labels") or {} for node in self._covered(body)},
            running_cameras(
                self.cache.edge_pods.get((meta["namespace"], meta["name"]), {}).values(), leaving
            ),
            current,
        )
        if desired is not None:
            await self.applier.apply_cameras(desired)

    def _covered(self, body: Obj) -> list[Obj]:
        """The nodes the deployment covers (its selector and tolerations)."""
        spec = body["spec"]
        return [
            node
            for node in self.cache.nodes.values()
            if fits(node, spec.get("nodeSelector") or {}, spec.get("tolerations") or [])
        ]

    def _nodes(self, body: Obj, heartbeats: dict[str, NodeHealth]) -> list[NodeView]:
        """The nodes the deployment covers, as the planner sees them."""
        return [node_view(node, heartbeats) for node in self._covered(body)]

    def _pods(self, key: Key) -> list[PodView]:
        views = (pod_view(p) for p in self.cache.edge_pods.get(key, {}).values())
        return [view for view in views if view is not None]

    # the edge pod watch and the health stream

    async def watch_edge_pods(self) -> None:
        """Edge pods through a lean watch: a fleet's rollout is thousands of pod events."""
        await self.context.kube.watch(
            "v1", "pods", DEPLOYMENT_LABEL, self.reset_edge_pods, self.edge_pod_changed
        )

    def reset_edge_pods(self, items: list[Obj]) -> None:
        self.cache.edge_pods.clear()
        for pod in items:
            self.edge_pod_changed("ADDED", pod)

    def edge_pod_changed(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        if not self.context.watched(meta.get("namespace", "")):
            return
        key = (meta["namespace"], meta["labels"][DEPLOYMENT_LABEL])
        pods = self.cache.edge_pods[key]
        if kind == "DELETED":
            pods.pop(meta["name"], None)
        else:
            pods[meta["name"]] = pod
        if not self.turns.queued(key):  # a re-plan not queued yet: queue one (bursts collapse into it)
            self.context.spawn(self.reconcile(*key))

    async def follow_health(self) -> None:
        """edge-events → per-node health of each deployment; the affected rollouts re-plan."""
        stream = self.context.settings.edge_stream
        await keep_following(self.context.settings, lambda: HealthReader(stream, self.health, self.reconcile))

    async def resync(self) -> None:
        """Step timeouts and minReadySeconds pass without events: look again now and then."""
        while True:
            await asyncio.sleep(self.context.config.rollout_resync_seconds)
            await self.reconcile_all()
