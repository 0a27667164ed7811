"""The artifact controller: ModelArtifact → verified formats, stage, `deployedTo` and the in-use
finalizer, as read → plan → apply. Other kinds ask it for a re-plan through the context's
`artifact_replans` queue (a rollout changes which artifacts its deployment uses)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from visioninapp.k8s import Obj
from visioninapp.operator.apply import Applier
from visioninapp.operator.artifacts import (
    ArtifactPlan,
    GateCheck,
    Verification,
    artifact_users,
    check_evaluation,
    needs_gate_check,
    needs_verification,
    plan_artifact,
    verify_formats,
)
from visioninapp.operator.cache import ObjectCache, Turns
from visioninapp.operator.context import Context
from visioninapp.operator.lines import EXCLUSIVE_STAGES, decide_stage, newer_holder
from visioninapp.resources import API_VERSION, ModelArtifact
from visioninapp.resources.base import ADMITTED

__all__ = ["ArtifactController"]


class ArtifactController:
    def __init__(self, context: Context, cache: ObjectCache, applier: Applier) -> None:
        self.context, self.cache, self.applier = context, cache, applier
        self.turns = Turns(coalesce=False)

    async def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)

        async def replan() -> None:
            body = self.cache.artifacts.get(key)
            if body is not None:
                await self.context.measured("ModelArtifact", key, self._reconcile(body))

        await self.turns.run(key, replan)

    async def serve_replans(self) -> None:
        """Re-plan the artifacts other controllers ask for, each in the background."""
        queue = self.context.artifact_replans
        while True:
            namespace, name = await queue.get()
            self.context.spawn(self.reconcile(namespace, name))

    async def _reconcile(self, body: Obj) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        verification: Verification | None = None
        error: str | None = None
        if needs_verification(body):
            try:
                verification = await asyncio.to_thread(self._verify, body)
            except Exception as failure:  # the store, not the artifact: retried at resync
                error = f"cannot check the objects now: {type(failure).__name__}: {failure}"
        gate: GateCheck | None = None
        if needs_gate_check(body):
            try:
                gate = await asyncio.to_thread(self._check_gate, body)
            except Exception as failure:  # the store, not the record: retried at resync
                gate = GateCheck(
                    error=f"cannot read the evaluation record now: {type(failure).__name__}: {failure}"
                )
        deployments = [d for (ns, _), d in self.cache.deployments.items() if ns == namespace]
        users = artifact_users(name, deployments)
        now = datetime.now(UTC)
        plan = plan_artifact(body, verification, error, users, now, gate=gate)
        await self._keep_stage_exclusive(body, plan, now)

    async def _keep_stage_exclusive(self, body: Obj, plan: ArtifactPlan, now: datetime) -> None:
        """One version per line in `staging` and in `production` (operator/lines.py)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        line = [a for (ns, _), a in self.cache.artifacts.items() if ns == namespace]
        newer = newer_holder(body, line)
        conditions = plan.status.get("conditions", (body.get("status") or {}).get("conditions") or [])
        decision = decide_stage(body, newer, conditions, now)
        if decision.conditions is not None:
            plan = replace(plan, status={**plan.status, "conditions": decision.conditions})
        await self.applier.apply_artifact(body, plan)
        if decision.event is not None:
            await self.applier.post_event(body, *decision.event)
        if decision.archive:
            # Not remembered in the cache: the watch's event then re-plans this artifact and the
            # deployments following its line like any other stage change.
            await self.context.kube.patch(
                API_VERSION, "modelartifacts", namespace, name, {"spec": {"stage": "archived"}}
            )
        if newer is None:  # it holds its stage: versions promoted before it give it up
            stage = body["spec"].get("stage")
            for other in line:
                other_meta = other["metadata"]
                if (
                    other_meta["name"] != name
                    and other["spec"].get("model") == body["spec"].get("model")
                    and other["spec"].get("stage") == stage
                    and stage in EXCLUSIVE_STAGES
                ):
                    self.context.artifact_replans.put_nowait((namespace, other_meta["name"]))

    def _check_gate(self, body: Obj) -> GateCheck:
        """The evaluation record read and checked against the spec (blocking: run in a thread)."""
        artifact = ModelArtifact.model_validate(body, context=ADMITTED)
        assert artifact.spec.evaluation is not None  # needs_gate_check
        store = self.context.store_for(artifact.spec.evaluation.uri)
        return check_evaluation(artifact, read=store.get_bytes, size=store.size)

    def _verify(self, body: Obj) -> Verification:
        """Every format's object checked against the spec (blocking: run in a thread)."""
        artifact = ModelArtifact.model_validate(body, context=ADMITTED)
        store_for = self.context.store_for
        return verify_formats(
            artifact,
            checksum=lambda uri: store_for(uri).checksum(uri),
            size=lambda uri: store_for(uri).size(uri),
        )
