"""kopf registration: which events reach which controller. No reconcile logic lives here.

Run with `visioninapp-operator` (see main.py) or `kopf run -m visioninapp.operator.kopf_run`.
Handlers are kopf `on.event` handlers that keep the object cache and hand each change to the
controller of its kind (training_controller.py, artifact_controller.py, rollout_controller.py);
TrainingJobs, their Jobs and pods, and edge pods come through lean watches started here instead
(training_watches.py, rollout_controller.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from visioninapp.k8s import Obj
from visioninapp.kubeclient import load_connection
from visioninapp.operator.apply import Applier
from visioninapp.operator.artifact_controller import ArtifactController
from visioninapp.operator.cache import ObjectCache
from visioninapp.operator.config import OperatorConfig
from visioninapp.operator.context import Context, mirror_client
from visioninapp.operator.daemonset import DEPLOYMENT_LABEL
from visioninapp.operator.identity_exchange import EdgeIdentities
from visioninapp.operator.identity_exchange import start as start_identities
from visioninapp.operator.rollout_controller import RolloutController
from visioninapp.operator.training_controller import TrainingController
from visioninapp.operator.training_watches import TrainingWatches
from visioninapp.resources import GROUP, VERSION
from visioninapp.resources.edgedeployment import models_in_use
from visioninapp.settings import Settings

__all__ = ["register"]


@dataclasses.dataclass
class Operator:
    """What one operator process runs, kept in kopf's memo."""

    context: Context
    cache: ObjectCache
    training: TrainingController
    training_watches: TrainingWatches
    artifacts: ArtifactController
    rollout: RolloutController
    identities: EdgeIdentities | None = None  # per-node edge credentials (config.edge_identity)

    @classmethod
    def build(cls, config: OperatorConfig, settings: Settings) -> Operator:
        context, cache = Context(config, settings), ObjectCache()
        applier = Applier(context, cache)
        training = TrainingController(context, cache, applier)
        return cls(
            context,
            cache,
            training,
            TrainingWatches(context, cache, training),
            ArtifactController(context, cache, applier),
            RolloutController(context, cache, applier),
        )


def _plain(body: Mapping[str, Any]) -> Obj:
    """A deep, plain copy of an event's body (kopf may change its own afterwards); JSON is quicker
    than copy.deepcopy for JSON data."""
    return json.loads(json.dumps(dict(body)))  # type: ignore[no-any-return]


def _operator(memo: kopf.Memo) -> Operator:
    return memo["operator"]  # type: ignore[no-any-return]


class WatchOnlyDiffBase(kopf.DiffBaseStorage):
    """No diff base: every handler here is an `on.event` handler, so kopf's per-event deep copy of
    each body (to diff it for on.create/on.update handlers) is pure cost (a third of the CPU at scale)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


# --- lifecycle ----------------------------------------------------------------------------------


async def _start(config: OperatorConfig, settings: kopf.OperatorSettings, memo: kopf.Memo) -> None:
    settings.posting.level = logging.WARNING  # our own Events only; no per-handler chatter
    settings.persistence.diffbase_storage = WatchOnlyDiffBase()
    # No worker limit: kopf keeps each object's idle worker for a while, so a limit throttles
    # big batches (32 workers gave 6 CRs/s); concurrency is bounded by the API client instead.
    settings.watching.server_timeout = 300
    operator = Operator.build(config, Settings())
    memo["operator"] = operator
    context = operator.context
    if config.mirror_kubeconfig_secret:
        context.mirror = await mirror_client(context.kube, config.mirror_kubeconfig_secret)
    if config.metrics_port:
        context.metrics.serve(config.metrics_port)
    context.start(operator.artifacts.serve_replans())
    if "training" in config.roles:
        watches = operator.training_watches
        if not config.peering:  # with leader election kopf's handler below follows them
            context.start(watches.watch_training_jobs())
        context.start(watches.watch_jobs())
        context.start(watches.watch_pods())
        context.start(operator.training.resync())
        context.start(operator.training.follow_progress())
    if "rollout" in config.roles:
        context.start(operator.rollout.resync())
        context.start(operator.rollout.watch_edge_pods())
        context.start(operator.rollout.follow_health())
        if config.edge_identity:
            operator.identities, _ = await start_identities(
                context.kube, operator.cache, config, context.settings
            )


async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    operator = _operator(memo)
    operator.training.stop()
    await operator.context.close()


# --- events -------------------------------------------------------------------------------------


async def _on_artifact(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    operator = _operator(memo)
    meta, artifacts, line = body["metadata"], operator.cache.artifacts, body["spec"].get("model")
    if type == "DELETED":
        artifacts.forget(meta)
        await operator.rollout.artifact_changed(meta["namespace"], meta["name"], line)
        return
    if artifacts.is_own_write(body):
        return
    artifacts.remember(_plain(body))
    await operator.artifacts.reconcile(meta["namespace"], meta["name"])
    await operator.rollout.artifact_changed(meta["namespace"], meta["name"], line)


async def _on_deployment(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    operator = _operator(memo)
    meta, deployments = body["metadata"], operator.cache.deployments
    key = (meta["namespace"], meta["name"])
    if type == "DELETED":
        gone = deployments.forget(meta)
        if key not in deployments:  # not when a newer deployment of the same name is already there
            operator.rollout.deleted(key)
        for model in models_in_use(gone or _plain(body)):  # `deployedTo` and the in-use finalizer
            await operator.artifacts.reconcile(key[0], model)
        return
    if deployments.is_own_write(body):
        return
    deployments.remember(_plain(body))
    await operator.rollout.reconcile(*key)


async def _on_daemonset(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    daemonsets = _operator(memo).cache.daemonsets
    if type == "DELETED":
        daemonsets.forget(body["metadata"])
    else:
        daemonsets.remember(_plain(body))


async def _on_node(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    operator = _operator(memo)
    name, nodes = body["metadata"]["name"], operator.cache.nodes
    if type == "DELETED":
        nodes.pop(name, None)
    else:
        nodes[name] = _plain(body)
    if operator.identities is not None:
        operator.identities.node_changed(name, nodes.get(name))
    await operator.rollout.reconcile_all()


async def _on_training_job(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _operator(memo).training_watches.training_job_changed(type or "MODIFIED", _plain(body))


# --- registration -------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register the handlers of the configured roles: ModelArtifacts always, EdgeDeployments with
    `rollout`; TrainingJobs (role `training`) through the lean watch started at startup, or through
    kopf with leader election."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        await _start(config, settings, memo)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**dataclasses.asdict(load_connection(context=config.context)))

    kopf.on.cleanup(registry=registry)(_cleanup)
    kopf.on.event(GROUP, VERSION, "modelartifacts", registry=registry)(_on_artifact)
    if "rollout" in config.roles:  # EdgeDeployments → DaemonSets and canary waves
        kopf.on.event(GROUP, VERSION, "edgedeployments", registry=registry)(_on_deployment)
        daemonsets = kopf.on.event(
            "apps", "v1", "daemonsets", labels={DEPLOYMENT_LABEL: kopf.PRESENT}, registry=registry
        )
        daemonsets(_on_daemonset)
        kopf.on.event("", "v1", "nodes", registry=registry)(_on_node)
    if "training" in config.roles and config.peering:
        # Leader election is kopf's peering, which pauses kopf's handlers on a standby replica but
        # not our lean watches: there TrainingJobs come through kopf, so a standby does nothing
        # (the Job and pod watches only re-plan runs already known).
        kopf.on.event(GROUP, VERSION, "trainingjobs", registry=registry)(_on_training_job)
