"""The rollout planner: canary steps, budgets, health gate, rollback, offline nodes, pause, promote."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from visioninapp.operator.artifacts import artifact_users
from visioninapp.operator.daemonset import EdgeTemplate, desired_daemonset
from visioninapp.operator.rollout import plan_rollout
from visioninapp.operator.rollout_step import (
    Advance,
    Done,
    NodeHealth,
    NodeView,
    PodView,
    Rollback,
    Wait,
    next_rollout_step,
)
from visioninapp.resources import EdgeDeployment
from visioninapp.resources.base import ADMITTED
from visioninapp.resources.edgedeployment import RolloutStrategy
from visioninapp.validation import apply_defaults

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=1)
SHA = "b" * 64


def strategy(**kw: Any) -> RolloutStrategy:
    return RolloutStrategy.model_validate(
        {
            "canary": {"steps": [10, 50, 100]},
            "maxUnavailable": "50%",
            "healthGate": {"minReadySeconds": 60},
            **kw,
        }
    )


def fleet(count: int = 10, offline: tuple[str, ...] = ()) -> list[NodeView]:
    return [NodeView(f"n{i}", f"n{i}" not in offline) for i in range(count)]


def pods(revisions: dict[str, str], ready_since: datetime = LONG_AGO, ready: bool = True) -> list[PodView]:
    return [
        PodView(node, f"{node}-pod", rev, ready, ready_since if ready else None, 0)
        for node, rev in revisions.items()
    ]


def on(old: int, new: int, total: int = 10, **kw: Any) -> list[PodView]:
    revisions = {f"n{i}": ("new" if i < new else "old") for i in range(total)}
    return pods(revisions, **kw)


def step(pods_: list[PodView], current: int = 0, nodes: list[NodeView] | None = None, **kw: Any) -> Any:
    health = kw.pop("health", {})
    started = kw.pop("started", NOW - timedelta(seconds=10))
    return next_rollout_step(strategy(**kw), "new", current, started, nodes or fleet(), pods_, health, NOW)


def test_first_step_updates_ten_percent_and_waits_for_them() -> None:
    assert step(on(10, 0)) == Advance(("n0",), 0)
    fresh = pods({"n0": "new", **{f"n{i}": "old" for i in range(1, 10)}}, ready_since=NOW)
    assert isinstance(step(fresh), Wait)  # minReadySeconds not reached


def test_a_healthy_step_moves_on_within_the_unavailable_budget() -> None:
    decision = step(on(9, 1))
    assert decision == Advance(("n1", "n2", "n3", "n4"), 1)  # 50% wanted, 4 more; budget 5 (50% of 10)
    assert step(on(5, 5), current=1) == Advance(("n5", "n6", "n7", "n8", "n9"), 2)
    assert step(on(0, 10), current=2) == Done()


def test_nodes_seen_recently_go_first() -> None:
    nodes = [NodeView("a", True, LONG_AGO), NodeView("b", True, NOW), NodeView("c", True, None)]
    old = pods({"a": "old", "b": "old", "c": "old"})
    assert step(old, nodes=nodes, canary={"steps": [30, 100]}) == Advance(("b",), 0)


def test_failures_roll_back_with_each_nodes_reason() -> None:
    crashing = [PodView("n0", "p", "new", False, None, 5), *on(9, 0)[1:]]
    decision = step(crashing)
    assert isinstance(decision, Rollback) and "restarted 5 times" in decision.failures["n0"]
    bad = {"n0": NodeHealth("new", NOW, requests=100, errors=20, p95_ms=10, ready=True)}
    assert "error rate 20.0%" in step(on(9, 1), health=bad).failures["n0"]
    slow = {"n0": NodeHealth("new", NOW, requests=100, errors=0, p95_ms=900, ready=True)}
    assert "p95 latency 900 ms" in step(on(9, 1), health=slow).failures["n0"]
    rejected = {"n0": NodeHealth("new", NOW, 0, 0, None, ready=False, reason="sha256 mismatch")}
    assert "sha256 mismatch" in step(on(9, 1), health=rejected).failures["n0"]
    stale = {"n0": NodeHealth("old", NOW, 100, 90, 10, ready=True)}  # the old revision's events: ignored
    assert not isinstance(step(on(9, 1), health=stale), Rollback)


def test_a_step_that_never_becomes_ready_times_out() -> None:
    never = [PodView("n0", "p", "new", False, None, 0), *on(9, 0)[1:]]
    assert isinstance(step(never, started=NOW - timedelta(seconds=5)), Wait)
    decision = step(never, started=NOW - timedelta(seconds=2000))
    assert isinstance(decision, Rollback) and "stepTimeoutSeconds" in decision.failures["n0"]


def test_offline_nodes_are_skipped_not_failed_and_updated_when_back() -> None:
    nodes = fleet(offline=("n7", "n8", "n9"))
    revisions = {f"n{i}": "new" for i in range(7)} | {"n7": "old", "n8": "old", "n9": "old"}
    assert step(pods(revisions), current=2, nodes=nodes) == Done()
    back = fleet(offline=("n9",))
    assert step(pods(revisions), current=2, nodes=back) == Advance(("n7", "n8"), 2)  # gated like the rest


def test_nodes_between_pods_count_against_the_budget() -> None:
    revisions = {f"n{i}": "old" for i in range(2, 10)} | {"n0": "new"}  # n1's old pod is gone
    decision = step(pods(revisions, ready_since=LONG_AGO))
    assert isinstance(decision, Wait)  # n1 is still between pods: the step is not complete


def test_all_nodes_offline_is_not_done() -> None:
    assert isinstance(step([], nodes=fleet(offline=tuple(f"n{i}" for i in range(10)))), Wait)


# --- plan_rollout -----------------------------------------------------------------------------


def artifact(name: str, phase: str = "Available", formats: tuple[str, ...] = ("onnx",)) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "edge"},
        "spec": {
            "formats": [
                {"format": f, "uri": f"s3://models/{name}.{f}", "sha256": SHA, "size": 1} for f in formats
            ]
        },
        "status": {"phase": phase},
    }


def deployment(model: str = "v2", status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body = apply_defaults(
        {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": "EdgeDeployment",
            "metadata": {"name": "helmets", "namespace": "edge", "uid": "u", "generation": 1},
            "spec": {"modelRef": model, **spec},
        }
    )
    if status:
        body["status"] = status
    return body


def make(ed: EdgeDeployment, name: str, entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return desired_daemonset(ed, "u", name, entry, image="edge:1")


def plan(body: dict[str, Any], pods_: list[PodView], nodes: list[NodeView] | None = None, **kw: Any) -> Any:
    return plan_rollout(
        EdgeDeployment.model_validate(body, context=ADMITTED),
        body,
        kw.pop("artifact", artifact(body["spec"]["modelRef"])),
        kw.pop("previous", artifact("v1")),
        nodes or fleet(),
        pods_,
        kw.pop("health", {}),
        NOW,
        template=EdgeTemplate(image="edge:1"),
    )


def revision_of(model: str, **spec: Any) -> str:
    ed = EdgeDeployment.model_validate(deployment(model, **spec))
    return make(ed, model, artifact(model)["spec"]["formats"][0])[1]


def test_the_daemonset_carries_the_model_and_the_downward_api() -> None:
    ed = EdgeDeployment.model_validate(deployment("v2", format="tensorrt"))
    daemonset, revision = make(ed, "v2", artifact("v2")["spec"]["formats"][0])
    assert daemonset["spec"]["updateStrategy"] == {"type": "OnDelete"}
    template = daemonset["spec"]["template"]
    assert template["metadata"]["labels"]["visioninapp.io/revision"] == revision
    assert template["spec"]["nodeSelector"] == {"visioninapp.io/edge": "true"}
    container = template["spec"]["containers"][0]
    env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert (
        env["VISIONINAPP_EDGE_MODEL_URI"] == "s3://models/v2.onnx"
        and env["VISIONINAPP_EDGE_MODEL_FORMAT"] == "tensorrt"
    )
    assert env["VISIONINAPP_NODE_NAME"] == "spec.nodeName" and env["VISIONINAPP_REVISION"] == revision
    names = [e["name"] for e in container["env"]]
    assert names.index("VISIONINAPP_NODE_NAME") < names.index("VISIONINAPP_EDGE_STATE_DIR")  # $(...) expands
    assert (
        env["VISIONINAPP_EDGE_STATE_DIR"]
        == "/var/lib/visioninapp/models/$(VISIONINAPP_NODE_NAME)/state/edge.helmets"
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert template["spec"]["volumes"][0]["hostPath"]["path"] == "/var/lib/visioninapp/models"
    assert revision != revision_of("v1") and revision == revision_of("v2", format="tensorrt")
    assert "runtimeClassName" not in template["spec"]
    nvidia, _ = desired_daemonset(
        ed, "u", "v2", artifact("v2")["spec"]["formats"][0], image="e", runtime_class="nvidia"
    )
    assert nvidia["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_a_deployment_waits_for_an_available_artifact_with_its_format() -> None:
    for candidate, words in (
        (None, "not found"),
        (artifact("v2", phase="Pending"), "not Available"),
        (artifact("v2", formats=("pt",)), "no `onnx` format"),
    ):
        result = plan(deployment(), [], artifact=candidate)
        condition = next(c for c in result.status["conditions"] if c["type"] == "ModelReady")
        assert condition["status"] == "False" and words in condition["message"] and result.daemonset is None
    int8 = plan(deployment(format="onnx-int8"), [], artifact=artifact("v2", formats=("onnx",)))
    assert "onnx-int8" in int8.status["conditions"][0]["message"]


def test_a_new_model_starts_a_rollout_and_records_history() -> None:
    old = revision_of("v1")
    body = deployment(
        status={
            "revision": old,
            "currentModel": "v1",
            "phase": "Healthy",
            "history": [
                {
                    "revision": old,
                    "model": "v1",
                    "format": "onnx",
                    "time": "2026-11-22T00:00:00Z",
                    "outcome": "Completed",
                }
            ],
        }
    )
    result = plan(body, pods({f"n{i}": old for i in range(10)}))
    new = revision_of("v2")
    assert result.status["revision"] == new and result.status["currentStep"] == 0
    assert result.status["previousModel"] == "v1" and result.status["phase"] == "Progressing"
    assert [h["outcome"] for h in result.status["history"]] == ["Progressing", "Superseded"]
    assert result.delete_pods == ("n0-pod",)
    assert result.events[0][:2] == ("Normal", "RolloutStarted")


def v2_canary_started(new: str) -> dict[str, Any]:
    """The status of a rollout from v1 to v2 (revision `new`) ten seconds into its first step."""
    return {
        "revision": new,
        "currentModel": "v2",
        "previousModel": "v1",
        "phase": "Progressing",
        "currentStep": 0,
        "stepStartTime": "2026-11-23T11:59:50Z",
        "history": [
            {
                "revision": new,
                "model": "v2",
                "format": "onnx",
                "time": "2026-11-23T11:59:50Z",
                "outcome": "Progressing",
            }
        ],
    }


def crash_on_first_node(old: str, new: str) -> list[PodView]:
    """The first canary node's new pod crash-loops; the other nine still run `old`."""
    return [PodView("n0", "n0-pod", new, False, None, 9), *pods({f"n{i}": old for i in range(1, 10)})]


def test_a_failed_gate_rolls_back_to_the_previous_model_at_once() -> None:
    old, new = revision_of("v1"), revision_of("v2")
    body = deployment(status=v2_canary_started(new))
    crashing = crash_on_first_node(old, new)
    result = plan(body, crashing)
    assert result.status["phase"] == "RolledBack" and result.status["revision"] == old
    assert result.status["currentModel"] == "v1" and result.delete_pods == ("n0-pod",)
    assert result.daemonset["spec"]["template"]["metadata"]["annotations"]["visioninapp.io/model"] == "v1"
    assert result.status["history"][0]["outcome"] == "RolledBack"
    # Rolled back stays rolled back: the same spec does not retry the bad revision.
    after = deployment(status={**body["status"], **result.status})
    again = plan(after, pods({f"n{i}": old for i in range(10)}))
    assert again.delete_pods == () and again.daemonset is None and "phase" not in again.status
    no_auto = plan(deployment(status=body["status"], strategy={"autoRollback": False}), crashing)
    assert no_auto.status["phase"] == "Degraded" and no_auto.delete_pods == ()


def test_pause_and_promote() -> None:
    new = revision_of("v2")
    status = {
        "revision": new,
        "currentModel": "v2",
        "previousModel": "v1",
        "phase": "Progressing",
        "currentStep": 0,
        "stepStartTime": "2026-11-23T11:59:50Z",
    }
    paused = plan(deployment(status=status, paused=True), pods({f"n{i}": "old" for i in range(10)}))
    assert paused.status["phase"] == "Paused" and paused.delete_pods == ()
    body = deployment(status=status)
    body["metadata"]["annotations"] = {"visioninapp.io/rollout-action": "promote"}
    promoted = plan(body, pods({f"n{i}": "old" for i in range(10)}))
    assert len(promoted.delete_pods) == 10 and promoted.clear_action


def test_large_fleets_keep_counts_and_a_capped_node_list() -> None:
    nodes = fleet(1000, offline=("n5",))
    result = plan(deployment(), pods({f"n{i}": "old" for i in range(1000)}), nodes=nodes)
    assert result.status["desiredNodes"] == 1000 and result.status["pendingNodes"] == 1
    assert len(result.status["nodes"]) == 100 and result.status["nodes"][0]["name"] == "n5"


def test_artifact_users() -> None:
    deployments = [
        {
            "metadata": {"name": "a"},
            "spec": {"modelRef": "v2"},
            "status": {"previousModel": "v1", "phase": "Progressing"},
        },
        {
            "metadata": {"name": "b"},
            "spec": {"modelRef": "v3"},
            "status": {"previousModel": "v1", "phase": "Healthy"},
        },
    ]
    assert artifact_users("v1", deployments) == ["a", "b"] and artifact_users("v3", deployments) == ["b"]
    assert artifact_users("v9", deployments) == []


def test_max_unavailable_limits_how_many_nodes_a_step_takes_at_once() -> None:
    # the 50% step wants 4 more nodes; a budget of 2 (absolute or 20% of 10) takes 2 at a time
    assert step(on(9, 1), maxUnavailable=2) == Advance(("n1", "n2"), 1)
    assert step(on(9, 1), maxUnavailable="20%") == Advance(("n1", "n2"), 1)
    # nodes still settling use the budget up: with one settling, one more at most
    settling = (
        pods({"n0": "new", "n1": "new"}, ready_since=LONG_AGO)
        + pods({"n2": "new"}, ready_since=NOW)
        + pods({f"n{i}": "old" for i in range(3, 10)})
    )
    assert step(settling, current=1, maxUnavailable=2) == Advance(("n3",), 1)
    two_settling = (
        pods({"n0": "new"}, ready_since=LONG_AGO)
        + pods({"n1": "new", "n2": "new"}, ready_since=NOW)
        + pods({f"n{i}": "old" for i in range(3, 10)})
    )
    assert isinstance(step(two_settling, current=1, maxUnavailable=2), Wait)
    # a budget never rounds down to zero: 5% of 10 nodes still moves one at a time
    assert step(on(9, 1), maxUnavailable="5%") == Advance(("n1",), 1)


def test_a_step_whose_nodes_never_settle_times_out() -> None:
    # Ready, but never for minReadySeconds in a row (it keeps restarting its readiness)
    flapping = pods({"n0": "new"}, ready_since=NOW - timedelta(seconds=10)) + on(9, 0)[1:]
    assert isinstance(step(flapping, started=NOW - timedelta(seconds=30)), Wait)
    decision = step(flapping, started=NOW - timedelta(seconds=2000))
    assert isinstance(decision, Rollback) and decision.failures == {
        "n0": "not healthy within stepTimeoutSeconds"
    }
    # a node whose old pod is gone and whose new one never comes
    between = pods({"n0": "new"}) + pods({f"n{i}": "old" for i in range(2, 10)})
    assert isinstance(step(between, started=NOW - timedelta(seconds=30)), Wait)
    decision = step(between, started=NOW - timedelta(seconds=2000))
    assert isinstance(decision, Rollback) and set(decision.failures) == {"n1"}


# --- exact boundaries and the reasons the status shows ------------------------------------------


def test_a_step_times_out_only_after_step_timeout_seconds_have_passed() -> None:
    never = [PodView("n0", "p", "new", False, None, 0), *on(9, 0)[1:]]
    at_limit = step(never, started=NOW - timedelta(seconds=900))  # stepTimeoutSeconds' default
    assert at_limit == Wait("1 updated node(s) becoming healthy (minReadySeconds)", 0)
    past = step(never, started=NOW - timedelta(seconds=900, microseconds=1))
    assert past == Rollback({"n0": "not Ready within stepTimeoutSeconds (900 s)"})
    assert step(never, started=NOW - timedelta(seconds=121), stepTimeoutSeconds=120) == Rollback(
        {"n0": "not Ready within stepTimeoutSeconds (120 s)"}
    )


def test_a_node_is_healthy_once_ready_for_exactly_min_ready_seconds() -> None:
    ready_for = {
        seconds: pods({"n0": "new"}, ready_since=NOW - timedelta(seconds=seconds)) + on(9, 0)[1:]
        for seconds in (59, 60)
    }
    assert step(ready_for[59]) == Wait("1 updated node(s) becoming healthy (minReadySeconds)", 0)
    assert step(ready_for[60]) == Advance(("n1", "n2", "n3", "n4"), 1)


def test_the_wait_reason_counts_the_settling_nodes_and_keeps_the_step() -> None:
    two_settling = (
        pods({f"n{i}": "new" for i in range(5)}, ready_since=LONG_AGO)
        + pods({"n5": "new", "n6": "new"}, ready_since=NOW)
        + pods({f"n{i}": "old" for i in range(7, 10)})
    )
    assert step(two_settling, current=2, maxUnavailable=2) == Wait(
        "2 updated node(s) becoming healthy (minReadySeconds)", 2
    )


def test_with_every_node_offline_the_rollout_waits_for_them() -> None:
    offline = fleet(offline=tuple(f"n{i}" for i in range(10)))
    assert step([], nodes=offline, canary={"steps": [100]}) == Wait("waiting for nodes to come online", 0)


def test_a_fleet_offline_at_the_start_keeps_its_canary_step() -> None:
    # with no node reachable no step is judged complete: the fleet coming back starts at 10%
    offline = fleet(offline=tuple(f"n{i}" for i in range(10)))
    assert step(on(10, 0), nodes=offline) == Wait("waiting for nodes to come online", 0)
    assert step(on(10, 0), nodes=fleet()) == Advance(("n0",), 0)


def test_a_step_percentage_rounds_up_to_whole_nodes() -> None:
    # 1% of 101 nodes is 1.01 nodes: the step takes 2 (a step never covers less than it says)
    nodes = [NodeView(f"n{i:03}", True) for i in range(101)]
    old = pods({n.name: "old" for n in nodes})
    assert step(old, nodes=nodes, canary={"steps": [1, 100]}) == Advance(("n000", "n001"), 0)
    # 10% of 10 nodes is exactly 1
    assert step(on(10, 0)) == Advance(("n0",), 0)
