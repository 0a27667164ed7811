"""EdgeDeployment decisions as pure functions: a rollout's whole reconciliation around each step.

`plan_rollout` wraps `next_rollout_step` (rollout_step.py) with everything around a step — a new
revision, pause, manual promote/rollback, the rolled-back state, status and Events — so the
controller only reads and writes. Its inputs are typed: the validated EdgeDeployment, views of the
cluster and the operator's DaemonSet settings (`EdgeTemplate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from visioninapp.k8s import Obj, StatusDraft, iso_time, parse_time
from visioninapp.operator.daemonset import EdgeTemplate
from visioninapp.operator.lines import LineTarget
from visioninapp.operator.rollout_step import (
    Advance,
    Decision,
    Done,
    NodeHealth,
    NodeView,
    PodView,
    Rollback,
    Wait,
    next_rollout_step,
)
from visioninapp.resources import EdgeDeployment

__all__ = ["ACTION_ANNOTATION", "RolloutPlan", "plan_rollout"]

ACTION_ANNOTATION = "visioninapp.io/rollout-action"  # promote | rollback | retry
ARTIFACT_FORMAT = {"onnx": "onnx", "tensorrt": "onnx", "onnx-int8": "onnx-int8"}
NODES_SHOWN = 100
CONDITION_TYPES = ("ModelReady", "FollowsLine", "Progressing", "Available", "RolledBack", "Paused")
Event = tuple[str, str, str]  # (type, reason, message) of a Kubernetes Event


@dataclass(frozen=True)
class RolloutPlan:
    daemonset: Obj | None = None  # create or update the DaemonSet to this
    delete_pods: tuple[str, ...] = ()  # pod names: old pods whose nodes get the new revision
    status: Obj = field(default_factory=dict)  # merge patch of `.status`
    events: tuple[Event, ...] = ()
    clear_action: bool = False


def _artifact_format(fmt: str, precision: str | None) -> str:
    """The artifact file a deployment format serves: an INT8 TensorRT engine builds from the
    quantized model (its QDQ scales are the calibration), every other engine from the ONNX one."""
    return "onnx-int8" if fmt == "tensorrt" and precision == "int8" else ARTIFACT_FORMAT[fmt]


def _model_entry(artifact: Obj | None, name: str, fmt: str, precision: str | None = None) -> Obj | str:
    """The artifact's format entry for `fmt`, or why the deployment must wait."""
    if artifact is None:
        return f"ModelArtifact {name!r} not found"
    if (artifact.get("status") or {}).get("phase") != "Available":
        return f"ModelArtifact {name!r} is not Available (not verified yet, or invalid)"
    wanted = _artifact_format(fmt, precision)
    entry = next((f for f in artifact["spec"]["formats"] if f["format"] == wanted), None)
    if entry is None:
        needs = f"`format: {fmt}`" + (" with `precision: int8`" if wanted != ARTIFACT_FORMAT[fmt] else "")
        return f"ModelArtifact {name!r} has no `{wanted}` format, which {needs} needs"
    return entry  # type: ignore[no-any-return]


def plan_rollout(
    ed: EdgeDeployment,
    body: Obj,
    artifact: Obj | None,
    previous: Obj | None,
    nodes: list[NodeView],
    pods: list[PodView],
    health: dict[str, NodeHealth],
    now: datetime,
    *,
    template: EdgeTemplate,
    engines: Sequence[Obj] = (),
    line: LineTarget | None = None,
) -> RolloutPlan:
    """Everything one reconciliation of an EdgeDeployment does. `ed` is `body` (as stored) validated,
    with `spec.modelRef` set to `line.model` when the deployment follows a line's stage (`line`);
    `previous` is status.previousModel's artifact (the rollback target); `engines` the engine
    records of this pass (operator/engines.py)."""
    rollout = _Rollout(ed, body, nodes, pods, health, now)
    rollout.engines, rollout.line = engines, line
    spec = ed.spec
    rollout.wanted["lineModel"] = line.holder if line is not None else None
    entry = (
        _model_entry(artifact, spec.model_ref, spec.format, spec.runtime.precision)
        if spec.model_ref
        else (line.message if line is not None else "no model to deploy")
    )
    if isinstance(entry, str):
        rollout.condition(
            "ModelReady", False, line.reason if line and not line.model else "ModelUnavailable", entry
        )
        rollout.wanted.update(phase=rollout.status.get("phase") or "Progressing")
        return rollout.finish()
    assert spec.model_ref is not None
    rollout.condition(
        "ModelReady",
        True,
        "Available",
        f"{spec.model_ref} ({_artifact_format(spec.format, spec.runtime.precision)}) verified",
    )
    desired, revision = template.daemonset(ed, rollout.uid, spec.model_ref, entry)
    if rollout.stays_rolled_back(revision):
        return rollout.rolled_back(revision)
    step, step_started = rollout.enter(revision)
    if spec.paused and rollout.action is None:
        return rollout.pause(desired, revision, step)
    if rollout.status.get("phase") == "Paused":
        step_started = rollout.resume(step)
    decision = rollout.decide(revision, step, step_started)
    if isinstance(decision, Rollback):
        return rollout.roll_back(decision, desired, revision, previous, template)
    if isinstance(decision, Done):
        return rollout.complete(decision, desired, revision)
    return rollout.progress(decision, desired, revision, step)


class _Rollout(StatusDraft):
    """One reconciliation's working state: what was read, and the status, history and Events that
    the plan builds up."""

    order = CONDITION_TYPES
    engines: Sequence[Obj] = ()
    line: LineTarget | None = None
    held_back: str | None = None  # why this deployment stays off the line's version, when it does

    def __init__(
        self,
        ed: EdgeDeployment,
        body: Obj,
        nodes: list[NodeView],
        pods: list[PodView],
        health: dict[str, NodeHealth],
        now: datetime,
    ) -> None:
        super().__init__(body, now)
        self.ed, self.spec = ed, ed.spec
        self.history = [dict(item) for item in self.status.get("history") or []]  # copies: `record` edits
        self.action: str | None = (body["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
        self.events: list[Event] = []
        self.nodes, self.pods, self.health = nodes, pods, health
        counted = {n.name for n in nodes}
        self.by_node = {p.node: p for p in pods if p.node in counted}

    def record(self, revision: str, outcome: str) -> None:
        for item in self.history:
            if item["revision"] == revision:
                item.update(outcome=outcome)
                return

    def stale(self, target: str) -> tuple[str, ...]:
        """Online nodes whose pod runs another revision than `target`."""
        return tuple(
            sorted(
                n.name
                for n in self.nodes
                if n.ready and (p := self.by_node.get(n.name)) and p.revision != target
            )
        )

    def summarise(self, target: str, failures: dict[str, str]) -> None:
        _summarise(self.wanted, self.nodes, self.by_node, self.health, target, failures)

    def finish(
        self, daemonset: Obj | None = None, replace: tuple[str, ...] = (), keep: str | None = None
    ) -> RolloutPlan:
        """The plan; `replace` names nodes whose pod goes (never one already on revision `keep`)."""
        self.follows_line()
        self.wanted["conditions"] = self.conditions
        self.wanted["history"] = self.history[: self.spec.revision_history_limit or 1]
        patch = {k: v for k, v in self.wanted.items() if self.status.get(k) != v}
        doomed = tuple(
            self.by_node[n].name for n in replace if n in self.by_node and self.by_node[n].revision != keep
        )
        return RolloutPlan(
            daemonset=daemonset,
            delete_pods=doomed,
            status=patch,
            events=tuple(self.events),
            clear_action=self.action is not None,
        )

    def stays_rolled_back(self, revision: str) -> bool:
        """`revision` was rolled back, and no `retry` action asks for it again."""
        if not any(h["revision"] == revision and h["outcome"] == "RolledBack" for h in self.history):
            return False
        if self.action != "retry":
            return True
        self.history[:] = [h for h in self.history if h["revision"] != revision]
        self.events.append(("Normal", "Retry", f"retrying revision {revision} ({self.spec.model_ref})"))
        return False

    def hold_back(self, running: str | None) -> None:
        """The line's version failed the gate here: this deployment alone stays on its model (the
        line's stage is not touched, so other deployments keep following it)."""
        if self.line is None or self.spec.model is None:
            return
        stage, name = self.spec.model.stage, self.spec.model.line
        self.held_back = (
            f"{self.line.holder} ({stage} of {name}) was rolled back here (see RolledBack); this "
            f"deployment stays on {running or 'its previous model'} until the line's {stage} changes, or "
            f"annotate {ACTION_ANNOTATION}=retry"
        )

    def follows_line(self) -> None:
        """`FollowsLine`, set once per pass (its time moves only when its value does); gone from a
        deployment that names one artifact again."""
        if self.line is None:
            self.conditions = [c for c in self.conditions if c["type"] != "FollowsLine"]
        elif self.held_back is not None:
            self.condition("FollowsLine", False, "HeldBack", self.held_back)
        else:
            self.condition("FollowsLine", self.line.model is not None, self.line.reason, self.line.message)

    def rolled_back(self, revision: str) -> RolloutPlan:
        """Rolled back: the fleet goes back to the previous model at once, and stays there."""
        target = self.status.get("revision") or revision
        self.hold_back(self.status.get("currentModel"))
        self.wanted.update(phase="RolledBack")
        self.summarise(target, {})
        return self.finish(replace=self.stale(target), keep=target)

    def enter(self, revision: str) -> tuple[int, datetime]:
        """The canary step and when it started; a new revision starts its rollout at step 0."""
        status = self.status
        if status.get("revision") == revision:
            return int(status.get("currentStep") or 0), parse_time(status.get("stepStartTime")) or self.now
        if status.get("revision") and status.get("currentModel"):
            self.record(status["revision"], "Superseded")
            self.wanted["previousModel"] = status["currentModel"]
        model, started = self.spec.model_ref, iso_time(self.now)
        self.history.insert(
            0,
            {
                "revision": revision,
                "model": model,
                "format": self.spec.format,
                "time": started,
                "outcome": "Progressing",
            },
        )
        self.wanted.update(revision=revision, currentModel=model, currentStep=0, stepStartTime=started)
        self.events.append(("Normal", "RolloutStarted", f"rolling out {model} as revision {revision}"))
        return 0, self.now

    def pause(self, desired: Obj, revision: str, step: int) -> RolloutPlan:
        self.condition("Paused", True, "Paused", "spec.paused is true: no node is updated")
        self.wanted.update(phase="Paused")
        self.summarise(revision, {})
        if self.status.get("phase") != "Paused":
            self.events.append(("Normal", "Paused", f"rollout paused at step {step}"))
        return self.finish(daemonset=desired)

    def resume(self, step: int) -> datetime:
        """Resumed after a pause: the step's clock starts again."""
        self.condition("Paused", False, "Resumed", "rollout resumed")
        self.wanted["stepStartTime"] = iso_time(self.now)
        self.events.append(("Normal", "Resumed", f"rollout resumed at step {step}"))
        return self.now

    def decide(self, revision: str, step: int, step_started: datetime) -> Decision:
        """The step's decision: the action annotation's, else the canary's."""
        if self.action == "promote":
            remaining = self.stale(revision)
            self.events.append(
                ("Normal", "Promoted", f"promoted by annotation: {len(remaining)} node(s) updated now")
            )
            return Advance(remaining, len(self.spec.strategy.canary.steps) - 1)
        if self.action == "rollback":
            return Rollback({"*": "rolled back by annotation"})
        decision = next_rollout_step(
            self.spec.strategy, revision, step, step_started, self.nodes, self.pods, self.health, self.now
        )
        if isinstance(decision, Advance) and (pending := self.engine_pending(revision, step_started)):
            return Wait(pending, decision.step)
        return decision

    def engine_pending(self, revision: str, step_started: datetime) -> str | None:
        """Why the next nodes wait for an engine (None: they need not). A fleet builds each engine
        key once: until every updated node has reported its engine, and each designated builder
        among them has reported its engine ready (and uploaded: recorded in this same pass), the
        nodes that would download it wait; never past stepTimeoutSeconds."""
        strategy = self.spec.strategy
        elapsed = (self.now - step_started).total_seconds()
        if self.spec.format != "tensorrt" or elapsed > strategy.step_timeout_seconds:
            return None
        updated = sorted(
            n.name
            for n in self.nodes
            if n.ready and (p := self.by_node.get(n.name)) and p.revision == revision
        )
        unheard = [
            name
            for name in updated
            if (h := self.health.get(name)) is None or h.revision != revision or h.engine is None
        ]
        if unheard:
            return f"waiting for the engine report of {', '.join(unheard)}"
        for record in self.engines:
            builder, key_hash = str(record.get("builder")), str(record.get("keyHash"))
            if record.get("phase") != "Building" or builder not in updated:
                continue
            engine = self.health[builder].engine
            if engine is not None and engine.key_hash == key_hash and engine.state != "ready":
                return (
                    f"waiting for {builder} to build and upload the engine of key {key_hash[:12]}, "
                    "which the other nodes of its key download"
                )
        return None

    def roll_back(
        self, decision: Rollback, desired: Obj, revision: str, previous: Obj | None, template: EdgeTemplate
    ) -> RolloutPlan:
        """Back to the previous model when allowed and possible; else the rollout stops (Degraded)."""
        spec = self.spec
        failed = "; ".join(f"{node}: {reason}" for node, reason in sorted(decision.failures.items()))
        previous_model: str | None = self.wanted.get("previousModel", self.status.get("previousModel"))
        allowed = spec.strategy.auto_rollback or self.action == "rollback"
        entry = (
            _model_entry(previous, previous_model, spec.format, spec.runtime.precision)
            if allowed and previous_model
            else None
        )
        if previous_model is None or not isinstance(entry, dict):
            return self.degrade(decision, desired, revision, failed)
        rollback_ds, rollback_revision = template.daemonset(self.ed, self.uid, previous_model, entry)
        self.record(revision, "RolledBack")
        self.condition("RolledBack", True, "HealthGateFailed", failed)
        self.condition("Progressing", False, "RolledBack", f"back on {previous_model}")
        self.hold_back(previous_model)
        self.wanted.update(
            phase="RolledBack",
            revision=rollback_revision,
            currentModel=previous_model,
            previousModel=spec.model_ref,
        )
        self.events.append(
            ("Warning", "RolledBack", f"{spec.model_ref} rolled back to {previous_model}: {failed}")
        )
        self.summarise(rollback_revision, decision.failures)
        return self.finish(
            daemonset=rollback_ds, replace=self.stale(rollback_revision), keep=rollback_revision
        )

    def degrade(self, decision: Rollback, desired: Obj, revision: str, failed: str) -> RolloutPlan:
        why = (
            "autoRollback is false" if not self.spec.strategy.auto_rollback else "there is no previous model"
        )
        self.condition("Progressing", False, "HealthGateFailed", f"{failed} (paused: {why})")
        self.wanted.update(phase="Degraded")
        if self.status.get("phase") != "Degraded":
            self.events.append(("Warning", "HealthGateFailed", f"{failed}; paused: {why}"))
        self.summarise(revision, decision.failures)
        return self.finish(daemonset=desired)

    def complete(self, decision: Done, desired: Obj, revision: str) -> RolloutPlan:
        model = self.spec.model_ref
        self.record(revision, "Completed")
        self.condition("Progressing", False, "Complete", f"every reachable node runs {model}")
        self.condition("Available", True, "Healthy", f"revision {revision} serves on the fleet")
        if self.status.get("phase") != "Healthy":
            self.events.append(("Normal", "RolloutComplete", f"{model} runs on every reachable node"))
        self.wanted.update(phase="Healthy", currentStep=len(self.spec.strategy.canary.steps) - 1)
        self.summarise(revision, {})
        return self.finish(daemonset=desired, replace=decision.nodes, keep=revision)

    def progress(self, decision: Advance | Wait, desired: Obj, revision: str, step: int) -> RolloutPlan:
        if decision.step != step:
            self.wanted.update(currentStep=decision.step, stepStartTime=iso_time(self.now))
            percent = self.spec.strategy.canary.steps[decision.step]
            self.events.append(
                ("Normal", "StepStarted", f"canary step {decision.step}: {percent}% of the nodes")
            )
        if isinstance(decision, Advance):
            reason, message = "Updating", f"step {decision.step}: updating {', '.join(decision.nodes)}"
            replace = decision.nodes
        else:
            reason, message, replace = "Waiting", f"step {decision.step}: {decision.reason}", ()
        self.condition("Progressing", True, reason, message)
        self.wanted.update(phase="Progressing")
        self.summarise(revision, {})
        return self.finish(daemonset=desired, replace=replace, keep=revision)


def _summarise(
    wanted: Obj,
    nodes: list[NodeView],
    by_node: dict[str, PodView],
    health: dict[str, NodeHealth],
    target: str,
    failures: dict[str, str],
) -> None:
    """Counts always; the per-node list failing and pending first, capped for large fleets."""
    rows = []
    for node in nodes:
        pod = by_node.get(node.name)
        updated = pod is not None and pod.revision == target
        heard = health.get(node.name)
        row: Obj = {"name": node.name, "ready": bool(pod and pod.ready and node.ready)}
        if pod is not None and pod.revision:
            row["revision"] = pod.revision
        if heard is not None:
            row["lastHeartbeat"] = iso_time(heard.time)
        if node.name in failures:
            row["failureReason"] = failures[node.name][:1024]
        elif not node.ready and not updated:
            row["failureReason"] = "offline: updated when it is back"
        rows.append((0 if node.name in failures else 1 if not node.ready else 2, node.name, row))
    wanted.update(
        desiredNodes=len(nodes),
        updatedNodes=sum(1 for n in nodes if (p := by_node.get(n.name)) and p.revision == target),
        readyNodes=sum(
            1 for n in nodes if (p := by_node.get(n.name)) and p.revision == target and p.ready and n.ready
        ),
        failedNodes=len([f for f in failures if f != "*"]),
        pendingNodes=sum(
            1 for n in nodes if not n.ready and not ((p := by_node.get(n.name)) and p.revision == target)
        ),
        nodes=[row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))][:NODES_SHOWN],
    )
