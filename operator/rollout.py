"""EdgeDeployment decisions as pure functions: the DaemonSet, each canary step, rollback.

`next_rollout_step` decides one step from views of the nodes, the pods and their health events:
`Advance` (replace the pods on these nodes), `Wait`, `Rollback` (with each failed node's reason) or
`Done`. `plan_rollout` wraps it with everything around a step — a new revision, pause, manual
promote/rollback, the rolled-back state, status and Events — so the handler only reads and writes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from visioninapp.k8s import MANAGED_BY, Obj, controller_reference, iso_time, parse_time, set_condition
from visioninapp.resources import EdgeDeployment
from visioninapp.resources.base import ADMITTED
from visioninapp.resources.edgedeployment import RolloutStrategy

__all__ = [
    "ACTION_ANNOTATION",
    "DEPLOYMENT_LABEL",
    "IN_USE_FINALIZER",
    "REVISION_LABEL",
    "Advance",
    "Done",
    "NodeHealth",
    "NodeView",
    "PodView",
    "Rollback",
    "RolloutPlan",
    "Wait",
    "desired_daemonset",
    "next_rollout_step",
    "plan_rollout",
]

DEPLOYMENT_LABEL = "visioninapp.io/edge-deployment"
REVISION_LABEL = "visioninapp.io/revision"
ACTION_ANNOTATION = "visioninapp.io/rollout-action"  # promote | rollback | retry
IN_USE_FINALIZER = "visioninapp.io/in-use"
ARTIFACT_FORMAT = {"onnx": "onnx", "tensorrt": "onnx", "onnx-int8": "onnx-int8"}
NODES_SHOWN = 100
IDENTITY_AUDIENCE = "visioninapp-edge"  # operator/edge_identity.py AUDIENCE
TOKEN_FILE = "/var/run/secrets/visioninapp/edge/token"
CONDITION_TYPES = ("ModelReady", "Progressing", "Available", "RolledBack", "Paused")


# --- views ---------------------------------------------------------------------------------------


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


# --- the DaemonSet ------------------------------------------------------------------------------


def template_revision(template: Obj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


def desired_daemonset(
    ed: EdgeDeployment,
    uid: str,
    artifact: str,
    model: Obj,
    *,
    image: str,
    env: dict[str, str] | None = None,
    cache_path: str = "/var/lib/visioninapp/models",
    runtime_class: str | None = None,
    identity_url: str | None = None,
    env_secret: str | None = None,
) -> tuple[Obj, str]:
    """The DaemonSet (updateStrategy OnDelete) serving `model` (a format entry of `artifact`).

    With `identity_url` the pods get no S3 keys at all: a projected token (audience
    `visioninapp-edge`, bound to the pod and so to its node) that the runtime trades at that URL for
    its node's own credentials (operator/edge_identity.py). Otherwise credentials come from
    `env_secret` (a Secret of the namespace, as envFrom), never from the plain `env`."""
    spec, name = ed.spec, ed.metadata.name
    runtime = spec.runtime
    feedback = spec.feedback
    node_dir = f"{cache_path}/$(VISIONINAPP_NODE_NAME)"  # hostPath: survives the pods on the node
    values = {
        "VISIONINAPP_EDGE_MODEL_URI": model["uri"],
        "VISIONINAPP_EDGE_MODEL_SHA256": model["sha256"],
        "VISIONINAPP_EDGE_MODEL_FORMAT": spec.format,
        "VISIONINAPP_EDGE_MODEL_VERSION": artifact,
        "VISIONINAPP_DEPLOYMENT": name,
        "VISIONINAPP_EDGE_PORT": str(runtime.port),
        "VISIONINAPP_EDGE_CONFIDENCE": str(runtime.confidence),
        "VISIONINAPP_EDGE_IOU": str(runtime.iou),
        "VISIONINAPP_EDGE_PRECISION": runtime.precision,
        "VISIONINAPP_EDGE_CACHE_DIR": node_dir,
        # the event and feedback spools on the node too, one per deployment: what a replaced pod
        # had not sent yet, its successor sends (the container's own disk goes with it)
        "VISIONINAPP_EDGE_STATE_DIR": f"{node_dir}/state/{ed.metadata.namespace}.{name}",
        "VISIONINAPP_FEEDBACK_ENABLED": str(feedback.enabled).lower(),
        "VISIONINAPP_FEEDBACK_MIN_SCORE": str(feedback.min_score),
        "VISIONINAPP_FEEDBACK_MAX_SCORE": str(feedback.max_score),
        "VISIONINAPP_FEEDBACK_SAMPLE_RATE": str(feedback.sample_rate),
        "VISIONINAPP_FEEDBACK_MAX_FRAMES_PER_HOUR": str(feedback.max_frames_per_hour),
        **({"VISIONINAPP_FEEDBACK_URI": feedback.uri} if feedback.uri else {}),
        **(env or {}),
        **(
            {
                "VISIONINAPP_EDGE_IDENTITY_URL": identity_url,
                "VISIONINAPP_EDGE_IDENTITY_TOKEN_FILE": TOKEN_FILE,
            }
            if identity_url
            else {}
        ),
    }
    downward = [
        {"name": "VISIONINAPP_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "VISIONINAPP_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    resources: Obj = {
        "requests": {"cpu": runtime.resources.cpu, "memory": runtime.resources.memory},
        "limits": {"memory": runtime.resources.memory},
    }
    if runtime.resources.gpu:
        resources["limits"]["nvidia.com/gpu"] = str(runtime.resources.gpu)
    labels = {**MANAGED_BY, "app.kubernetes.io/component": "edge-runtime", DEPLOYMENT_LABEL: name}
    template: Obj = {
        "metadata": {"labels": labels, "annotations": {"visioninapp.io/model": artifact}},
        "spec": {
            "nodeSelector": dict(spec.node_selector),
            "tolerations": [
                t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations
            ],
            "containers": [
                {
                    "name": "runtime",
                    "image": runtime.image or image,
                    "command": ["visioninapp-edge", "--host", "$(POD_IP)"],
                    "ports": [{"name": "http", "containerPort": runtime.port}],
                    "env": [*downward, *({"name": k, "value": v} for k, v in values.items())],
                    **({"envFrom": [{"secretRef": {"name": env_secret}}]} if env_secret else {}),
                    "resources": resources,
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                    "volumeMounts": [{"name": "model-cache", "mountPath": cache_path}],
                }
            ],
            "volumes": [
                {"name": "model-cache", "hostPath": {"path": cache_path, "type": "DirectoryOrCreate"}}
            ],
        },
    }
    if runtime_class:
        template["spec"]["runtimeClassName"] = runtime_class
    if identity_url:
        token = {"audience": IDENTITY_AUDIENCE, "expirationSeconds": 3600, "path": "token"}
        template["spec"]["automountServiceAccountToken"] = False  # the exchange token only, no API access
        template["spec"]["volumes"].append(
            {"name": "edge-identity", "projected": {"sources": [{"serviceAccountToken": token}]}}
        )
        template["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "edge-identity", "mountPath": TOKEN_FILE.rsplit("/", 1)[0], "readOnly": True}
        )
    revision = template_revision(template)
    template["metadata"]["labels"][REVISION_LABEL] = revision
    template["spec"]["containers"][0]["env"].append({"name": "VISIONINAPP_REVISION", "value": revision})
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": name,
            "namespace": ed.metadata.namespace,
            "labels": {**MANAGED_BY, DEPLOYMENT_LABEL: name},
            "ownerReferences": [controller_reference("EdgeDeployment", name, uid)],
        },
        "spec": {
            "selector": {"matchLabels": {DEPLOYMENT_LABEL: name}},
            "updateStrategy": {"type": "OnDelete"},
            "template": template,
        },
    }
    return daemonset, revision


# --- one step -----------------------------------------------------------------------------------


def _max_unavailable(value: int | str, total: int) -> int:
    if isinstance(value, str):
        return max(1, math.floor(total * int(value.rstrip("%")) / 100))
    return max(1, value)


def _failure(pod: PodView, health: NodeHealth | None, strategy: RolloutStrategy, target: str) -> str | None:
    gate = strategy.health_gate
    if pod.restarts > gate.max_restarts:
        return f"restarted {pod.restarts} times (healthGate.maxRestarts {gate.max_restarts})"
    if health is None or health.revision != target:
        return None
    if not health.ready:
        return f"the runtime rejected the model: {health.reason or 'no reason given'}"
    if health.requests and health.errors / health.requests > gate.max_error_rate:
        rate = health.errors / health.requests
        return f"error rate {rate:.1%} > {gate.max_error_rate:.1%} (healthGate.maxErrorRate)"
    if health.p95_ms is not None and health.p95_ms > gate.max_p95_latency_ms:
        return f"p95 latency {health.p95_ms:.0f} ms > {gate.max_p95_latency_ms:.0f} ms"
    return None


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
    timed_out = (now - step_started).total_seconds() > strategy.step_timeout_seconds

    failures: dict[str, str] = {}
    for node in updated_online:
        pod = by_node[node.name]
        reason = _failure(pod, health.get(node.name), strategy, target)
        if reason is None and not pod.ready and timed_out:
            reason = f"not Ready within stepTimeoutSeconds ({strategy.step_timeout_seconds} s)"
        if reason:
            failures[node.name] = reason
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
    if settling and timed_out:
        return Rollback({name: "not healthy within stepTimeoutSeconds" for name in settling})
    budget = _max_unavailable(strategy.max_unavailable, len(nodes)) - len(settling)
    candidates = sorted(
        not_updated_online,
        key=lambda n: (-(n.heartbeat.timestamp() if n.heartbeat else 0.0), n.name),
    )
    chosen = tuple(n.name for n in candidates[: max(0, min(wanted - len(updated), budget))])
    if chosen:
        return Advance(chosen, step)
    if settling:
        return Wait(f"{len(settling)} updated node(s) becoming healthy (minReadySeconds)", step)
    return Wait("waiting for nodes to come online", step)


# --- the whole reconciliation -------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutPlan:
    daemonset: Obj | None = None  # create or update the DaemonSet to this
    delete_pods: tuple[str, ...] = ()  # pod names: old pods whose nodes get the new revision
    status: Obj = field(default_factory=dict)  # merge patch of `.status`
    events: tuple[tuple[str, str, str], ...] = ()
    clear_action: bool = False


def _model_problem(artifact: Obj | None, name: str, fmt: str) -> tuple[Obj | None, str | None]:
    """The artifact's format entry for `fmt`, or why the deployment must wait."""
    if artifact is None:
        return None, f"ModelArtifact {name!r} not found"
    if (artifact.get("status") or {}).get("phase") != "Available":
        return None, f"ModelArtifact {name!r} is not Available (not verified yet, or invalid)"
    wanted = ARTIFACT_FORMAT[fmt]
    entry = next((f for f in artifact["spec"]["formats"] if f["format"] == wanted), None)
    if entry is None:
        return None, f"ModelArtifact {name!r} has no `{wanted}` format, which `format: {fmt}` needs"
    return entry, None


def plan_rollout(
    body: Obj,
    artifact: Obj | None,
    previous: Obj | None,
    daemonset: Obj | None,
    nodes: list[NodeView],
    pods: list[PodView],
    health: dict[str, NodeHealth],
    now: datetime,
    *,
    make_daemonset: Any,
) -> RolloutPlan:
    """Everything one reconciliation of an EdgeDeployment does. `make_daemonset(ed, artifact, entry)`
    returns (DaemonSet, revision) with the operator's settings; `previous` is status.previousModel's
    artifact (the rollback target)."""
    ed = EdgeDeployment.model_validate(body, context=ADMITTED)
    spec, status = ed.spec, dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 1)
    conditions = list(status.get("conditions") or [])
    history = [dict(item) for item in status.get("history") or []]  # copies: `record` edits them
    action = (body["metadata"].get("annotations") or {}).get(ACTION_ANNOTATION)
    wanted: Obj = {"observedGeneration": generation}
    events: list[tuple[str, str, str]] = []

    def condition(type_: str, value: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions, type_, "True" if value else "False", reason, message, now, generation
        )
        conditions.sort(
            key=lambda c: CONDITION_TYPES.index(c["type"]) if c["type"] in CONDITION_TYPES else 99
        )

    def finish(
        daemonset: Obj | None = None, replace: tuple[str, ...] = (), keep: str | None = None
    ) -> RolloutPlan:
        """The plan; `replace` names nodes whose pod goes (never one already on revision `keep`)."""
        wanted["conditions"] = conditions
        wanted["history"] = history[: spec.revision_history_limit or 1]
        patch = {k: v for k, v in wanted.items() if status.get(k) != v}
        doomed = tuple(by_node[n].name for n in replace if n in by_node and by_node[n].revision != keep)
        return RolloutPlan(
            daemonset=daemonset,
            delete_pods=doomed,
            status=patch,
            events=tuple(events),
            clear_action=action is not None,
        )

    entry, problem = _model_problem(artifact, spec.model_ref, spec.format)
    if problem:
        condition("ModelReady", False, "ModelUnavailable", problem)
        wanted.update(phase=status.get("phase") or "Progressing")
        return finish()
    condition("ModelReady", True, "Available", f"{spec.model_ref} ({ARTIFACT_FORMAT[spec.format]}) verified")
    desired, desired_revision = make_daemonset(ed, spec.model_ref, entry)

    def record(revision: str, outcome: str) -> None:
        for item in history:
            if item["revision"] == revision:
                item.update(outcome=outcome)
                return

    rolled_back = {h["revision"] for h in history if h["outcome"] == "RolledBack"}
    if action == "retry" and desired_revision in rolled_back:
        rolled_back.discard(desired_revision)
        history[:] = [h for h in history if h["revision"] != desired_revision]
        events.append(("Normal", "Retry", f"retrying revision {desired_revision} ({spec.model_ref})"))

    counts_nodes = {n.name for n in nodes}
    by_node = {p.node: p for p in pods if p.node in counts_nodes}

    # Rolled back: the fleet goes back to the previous model at once, and stays there.
    if desired_revision in rolled_back:
        target = status.get("revision") or desired_revision
        stale = tuple(
            sorted(n.name for n in nodes if n.ready and (p := by_node.get(n.name)) and p.revision != target)
        )
        wanted.update(phase="RolledBack")
        _summarise(wanted, nodes, by_node, health, target, {})
        return finish(replace=stale, keep=target)

    if status.get("revision") != desired_revision:  # a new revision: start its rollout at step 0
        if status.get("revision") and status.get("currentModel"):
            record(status["revision"], "Superseded")
            wanted["previousModel"] = status["currentModel"]
        history.insert(
            0,
            {
                "revision": desired_revision,
                "model": spec.model_ref,
                "format": spec.format,
                "time": iso_time(now),
                "outcome": "Progressing",
            },
        )
        wanted.update(
            revision=desired_revision, currentModel=spec.model_ref, currentStep=0, stepStartTime=iso_time(now)
        )
        events.append(
            ("Normal", "RolloutStarted", f"rolling out {spec.model_ref} as revision {desired_revision}")
        )
        status_step, step_started = 0, now
    else:
        status_step = int(status.get("currentStep") or 0)
        step_started = parse_time(status.get("stepStartTime")) or now
    previous_model = wanted.get("previousModel", status.get("previousModel"))

    if spec.paused and action is None:
        condition("Paused", True, "Paused", "spec.paused is true: no node is updated")
        wanted.update(phase="Paused")
        _summarise(wanted, nodes, by_node, health, desired_revision, {})
        if status.get("phase") != "Paused":
            events.append(("Normal", "Paused", f"rollout paused at step {status_step}"))
        return finish(daemonset=desired)
    if status.get("phase") == "Paused":  # resumed: the step's clock starts again
        condition("Paused", False, "Resumed", "rollout resumed")
        step_started = now
        wanted["stepStartTime"] = iso_time(now)
        events.append(("Normal", "Resumed", f"rollout resumed at step {status_step}"))

    if action == "promote":
        remaining = tuple(
            sorted(
                n.name
                for n in nodes
                if n.ready
                and by_node.get(n.name) is not None
                and by_node[n.name].revision != desired_revision
            )
        )
        decision: Decision = Advance(remaining, len(spec.strategy.canary.steps) - 1)
        events.append(("Normal", "Promoted", f"promoted by annotation: {len(remaining)} node(s) updated now"))
    elif action == "rollback":
        decision = Rollback({"*": "rolled back by annotation"})
    else:
        decision = next_rollout_step(
            spec.strategy, desired_revision, status_step, step_started, nodes, pods, health, now
        )

    if isinstance(decision, Rollback):
        failed = "; ".join(f"{node}: {reason}" for node, reason in sorted(decision.failures.items()))
        if (spec.strategy.auto_rollback or action == "rollback") and previous is not None and previous_model:
            prev_entry, _prev_problem = _model_problem(previous, previous_model, spec.format)
            if prev_entry is not None:
                rollback_ds, rollback_revision = make_daemonset(ed, previous_model, prev_entry)
                record(desired_revision, "RolledBack")
                condition("RolledBack", True, "HealthGateFailed", failed)
                condition("Progressing", False, "RolledBack", f"back on {previous_model}")
                wanted.update(
                    phase="RolledBack",
                    revision=rollback_revision,
                    currentModel=previous_model,
                    previousModel=spec.model_ref,
                )
                events.append(
                    ("Warning", "RolledBack", f"{spec.model_ref} rolled back to {previous_model}: {failed}")
                )
                stale = tuple(
                    sorted(
                        n.name
                        for n in nodes
                        if n.ready and (p := by_node.get(n.name)) and p.revision != rollback_revision
                    )
                )
                _summarise(wanted, nodes, by_node, health, rollback_revision, decision.failures)
                return finish(daemonset=rollback_ds, replace=stale, keep=rollback_revision)
        why = "autoRollback is false" if not spec.strategy.auto_rollback else "there is no previous model"
        condition("Progressing", False, "HealthGateFailed", f"{failed} (paused: {why})")
        wanted.update(phase="Degraded")
        if status.get("phase") != "Degraded":
            events.append(("Warning", "HealthGateFailed", f"{failed}; paused: {why}"))
        _summarise(wanted, nodes, by_node, health, desired_revision, decision.failures)
        return finish(daemonset=desired)

    if isinstance(decision, Done):
        record(desired_revision, "Completed")
        condition("Progressing", False, "Complete", f"every reachable node runs {spec.model_ref}")
        condition("Available", True, "Healthy", f"revision {desired_revision} serves on the fleet")
        if status.get("phase") != "Healthy":
            events.append(("Normal", "RolloutComplete", f"{spec.model_ref} runs on every reachable node"))
        wanted.update(phase="Healthy", currentStep=len(spec.strategy.canary.steps) - 1)
        _summarise(wanted, nodes, by_node, health, desired_revision, {})
        return finish(daemonset=desired, replace=decision.nodes, keep=desired_revision)

    if decision.step != status_step:
        wanted.update(currentStep=decision.step, stepStartTime=iso_time(now))
        events.append(
            (
                "Normal",
                "StepStarted",
                f"canary step {decision.step}: {spec.strategy.canary.steps[decision.step]}% of the nodes",
            )
        )
    message = (
        f"step {decision.step}: updating {', '.join(decision.nodes)}"
        if isinstance(decision, Advance)
        else f"step {decision.step}: {decision.reason}"
    )
    condition("Progressing", True, "Updating" if isinstance(decision, Advance) else "Waiting", message)
    wanted.update(phase="Progressing")
    _summarise(wanted, nodes, by_node, health, desired_revision, {})
    replace = decision.nodes if isinstance(decision, Advance) else ()
    return finish(daemonset=desired, replace=replace, keep=desired_revision)


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


# --- reading the cluster (pure helpers the handler uses) ---------------------------------------


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


def artifact_users(artifact: str, deployments: list[Obj]) -> list[str]:
    """EdgeDeployments (same namespace) that deploy, run or may roll back to `artifact`."""
    users = []
    for deployment in deployments:
        status = deployment.get("status") or {}
        # previousModel is what a rollback (automatic or by annotation) goes back to: keep it too.
        models = {deployment["spec"]["modelRef"], status.get("currentModel"), status.get("previousModel")}
        if artifact in models:
            users.append(deployment["metadata"]["name"])
    return sorted(users)


@dataclass
class EdgeHealthTracker:
    """The newest EdgeEvent window per node of each deployment (from the edge-events stream)."""

    _latest: dict[tuple[str, str], dict[str, NodeHealth]] = field(default_factory=dict)

    def add(self, event: Any) -> None:
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
        )

    def for_deployment(self, namespace: str, name: str) -> dict[str, NodeHealth]:
        return dict(self._latest.get((namespace, name), {}))
