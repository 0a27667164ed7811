"""One step of a canary rollout as a pure function, and the views of the cluster it decides from.

`next_rollout_step` decides one step from views of the nodes, the pods and their health events:
`Advance` (replace the pods on these nodes), `Wait`, `Rollback` (with each failed node's reason) or
`Done`. rollout.py wraps it with everything around a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from visioninapp.events import EdgeEvent, EngineReport
from visioninapp.k8s import Obj, parse_time
from visioninapp.operator.daemonset import REVISION_LABEL
from visioninapp.resources.edgedeployment import RolloutStrategy

__all__ = [
    "Advance",
    "Decision",
    "Done",
    "EdgeHealthTracker",
    "NodeHealth",
    "NodeView",
    "PodView",
    "Rollback",
    "Wait",
    "next_rollout_step",
    "node_view",
    "pod_view",
]


@dataclass(frozen=True)
class NodeView:
    name: str
    ready: bool  # the node's Ready condition (offline Jetsons are not)
    heartbeat: datetime | None = None  # last EdgeEvent from it


@dataclass(frozen=True)
class PodView:
    node: str
    name: str
    revision: str | None
    ready: bool
    ready_since: datetime | None
    restarts: int


@dataclass(frozen=True)
class NodeHealth:
    """The newest EdgeEvent window of a node."""

    revision: str
    time: datetime
    requests: int
    errors: int
    p95_ms: float | None
    ready: bool
    reason: str | None = None
    engine: EngineReport | None = None  # the desired model's engine (engine formats)

    def engine_state(self, target: str) -> str | None:
        """`building`, `ready` or `failed` for revision `target`'s engine; None without one."""
        if self.engine is None or self.revision != target:
            return None
        return self.engine.state


def _since(report: EngineReport) -> datetime:
    return report.since if report.since.tzinfo else report.since.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Advance:
    nodes: tuple[str, ...]
    step: int


@dataclass(frozen=True)
class Wait:
    reason: str
    step: int


@dataclass(frozen=True)
class Rollback:
    failures: dict[str, str]


@dataclass(frozen=True)
class Done:
    nodes: tuple[str, ...] = ()  # nodes back online that still run an older revision


Decision = Advance | Wait | Rollback | Done


def _max_unavailable(value: int | str, total: int) -> int:
    if isinstance(value, str):
        return max(1, math.floor(total * int(value.rstrip("%")) / 100))
    return max(1, value)


def _failure(
    pod: PodView, health: NodeHealth | None, strategy: RolloutStrategy, target: str, now: datetime
) -> str | None:
    gate = strategy.health_gate
    if pod.restarts > gate.max_restarts:
        return f"restarted {pod.restarts} times (healthGate.maxRestarts {gate.max_restarts})"
    if health is None or health.revision != target:
        return None
    if health.engine_state(target) == "building" and health.engine is not None:
        # neither ready nor failed: bounded by the build's own timeout, not by the step's
        building = (now - _since(health.engine)).total_seconds()
        if building > strategy.engine_build_timeout_seconds:
            limit = strategy.engine_build_timeout_seconds
            why = health.reason or "engine building"
            return f"engine not built within engineBuildTimeoutSeconds ({limit} s): {why}"
        return None
    if not health.ready:
        return f"the runtime rejected the model: {health.reason or 'no reason given'}"
    if health.requests and health.errors / health.requests > gate.max_error_rate:
        rate = health.errors / health.requests
        return f"error rate {rate:.1%} > {gate.max_error_rate:.1%} (healthGate.maxErrorRate)"
    if health.p95_ms is not None and health.p95_ms > gate.max_p95_latency_ms:
        return f"p95 latency {health.p95_ms:.0f} ms > {gate.max_p95_latency_ms:.0f} ms"
    return None


def _step_clock(heard: NodeHealth | None, target: str, step_started: datetime) -> datetime | None:
    """When a node's step timeout starts: at the step's start, or when its engine became ready if
    that was later; None while its engine builds (the engine-build timeout bounds that)."""
    state = heard.engine_state(target) if heard is not None else None
    if state == "building":
        return None
    if state == "ready" and heard is not None and heard.engine is not None:
        return max(step_started, _since(heard.engine))
    return step_started


def _gate_failures(
    updated_online: list[NodeView],
    by_node: dict[str, PodView],
    health: dict[str, NodeHealth],
    strategy: RolloutStrategy,
    target: str,
    timed_out: Callable[[str], bool],
    now: datetime,
) -> dict[str, str]:
    """Why each updated, online node fails the health gate (none: the step may go on)."""
    failures: dict[str, str] = {}
    for node in updated_online:
        pod = by_node[node.name]
        reason = _failure(pod, health.get(node.name), strategy, target, now)
        if reason is None and not pod.ready and timed_out(node.name):
            reason = f"not Ready within stepTimeoutSeconds ({strategy.step_timeout_seconds} s)"
        if reason:
            failures[node.name] = reason
    return failures


def next_rollout_step(
    strategy: RolloutStrategy,
    target: str,
    step: int,
    step_started: datetime,
    nodes: list[NodeView],
    pods: list[PodView],
    health: dict[str, NodeHealth],
    now: datetime,
) -> Decision:
    """One decision of the canary rollout towards revision `target`, at canary step `step`."""
    steps = strategy.canary.steps
    by_node = {p.node: p for p in pods}
    online = [n for n in nodes if n.ready]
    updated = [n for n in nodes if (p := by_node.get(n.name)) and p.revision == target]
    updated_online = [n for n in updated if n.ready]
    updated_names = {n.name for n in updated}
    not_updated_online = [n for n in online if n.name not in updated_names]

    def timed_out(name: str) -> bool:
        started = _step_clock(health.get(name), target, step_started)
        return started is not None and (now - started).total_seconds() > strategy.step_timeout_seconds

    failures = _gate_failures(updated_online, by_node, health, strategy, target, timed_out, now)
    if failures:
        return Rollback(failures)

    def healthy(node: NodeView) -> bool:
        pod = by_node[node.name]
        since = pod.ready_since or now
        return pod.ready and (now - since).total_seconds() >= strategy.health_gate.min_ready_seconds

    # Nodes being updated: new pods not yet healthy, and nodes whose old pod is gone but whose new
    # one is not there yet (they count against maxUnavailable and hold the step).
    settling = [n.name for n in updated_online if not healthy(n)]
    settling += [n.name for n in online if n.name not in by_node]
    reachable = len(updated) + len(not_updated_online)

    def wanted_at(index: int) -> int:
        return min(math.ceil(steps[index] * len(nodes) / 100), reachable)

    # A complete, healthy step moves on to the next; with no node reachable nothing is judged, so
    # a fleet that is offline keeps its canary step for when it comes back.
    while reachable and len(updated) >= wanted_at(step) and not settling and step + 1 < len(steps):
        step += 1
    wanted = wanted_at(step)
    if len(updated) >= wanted and not settling and step + 1 >= len(steps) and (updated or not nodes):
        returning = sorted(n.name for n in not_updated_online)
        return Done(tuple(returning[: _max_unavailable(strategy.max_unavailable, len(nodes))]))
    late = [name for name in settling if timed_out(name)]
    if late:
        return Rollback({name: "not healthy within stepTimeoutSeconds" for name in late})
    budget = _max_unavailable(strategy.max_unavailable, len(nodes)) - len(settling)
    candidates = sorted(
        not_updated_online,
        key=lambda n: (-(n.heartbeat.timestamp() if n.heartbeat else 0.0), n.name),
    )
    chosen = tuple(n.name for n in candidates[: max(0, min(wanted - len(updated), budget))])
    if chosen:
        return Advance(chosen, step)
    return _waiting(settling, health, target, step)


def _waiting(settling: list[str], health: dict[str, NodeHealth], target: str, step: int) -> Wait:
    building = [n for n in settling if (h := health.get(n)) and h.engine_state(target) == "building"]
    if building:
        return Wait(f"{len(building)} updated node(s) building their engine: {', '.join(building)}", step)
    if settling:
        return Wait(f"{len(settling)} updated node(s) becoming healthy (minReadySeconds)", step)
    return Wait("waiting for nodes to come online", step)


def _ready_condition(obj: Obj) -> Obj | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition  # type: ignore[no-any-return]
    return None


def node_view(node: Obj, health: dict[str, NodeHealth]) -> NodeView:
    ready = _ready_condition(node)
    name = node["metadata"]["name"]
    heard = health.get(name)
    return NodeView(name, bool(ready and ready.get("status") == "True"), heard.time if heard else None)


def pod_view(pod: Obj) -> PodView | None:
    """A pod of the DaemonSet as the planner sees it; None for pods being deleted or unbound."""
    if pod["metadata"].get("deletionTimestamp") or not pod["spec"].get("nodeName"):
        return None
    ready = _ready_condition(pod)
    is_ready = bool(ready and ready.get("status") == "True")
    restarts = sum(
        int(c.get("restartCount") or 0) for c in (pod.get("status") or {}).get("containerStatuses") or []
    )
    return PodView(
        node=pod["spec"]["nodeName"],
        name=pod["metadata"]["name"],
        revision=(pod["metadata"].get("labels") or {}).get(REVISION_LABEL),
        ready=is_ready,
        ready_since=parse_time(ready.get("lastTransitionTime")) if is_ready and ready else None,
        restarts=restarts,
    )


@dataclass
class EdgeHealthTracker:
    """The newest EdgeEvent window per node of each deployment (from the edge-events stream)."""

    _latest: dict[tuple[str, str], dict[str, NodeHealth]] = field(default_factory=dict)

    def add(self, event: EdgeEvent) -> None:
        nodes = self._latest.setdefault((event.namespace, event.deployment), {})
        current = nodes.get(event.node)
        moment = event.window_end if event.window_end.tzinfo else event.window_end.replace(tzinfo=UTC)
        if current is not None and current.time > moment:
            return
        nodes[event.node] = NodeHealth(
            revision=event.revision,
            time=moment,
            requests=event.requests,
            errors=event.errors,
            p95_ms=event.p95_ms,
            ready=event.ready,
            reason=event.reason,
            engine=event.engine,
        )

    def for_deployment(self, namespace: str, name: str) -> dict[str, NodeHealth]:
        return dict(self._latest.get((namespace, name), {}))
