"""The health gate and engines built on the devices (`format: tensorrt`): a node whose engine builds
is neither ready nor failed, the step timeout counts from when its engine is ready, and the
engine-build timeout bounds the build."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

import tests.unit.test_operator_rollout as rollout
from visioninapp.events import EdgeEvent, EngineReport
from visioninapp.operator.edge_identity import edge_policy
from visioninapp.operator.engines import engine_prefix, engine_writes, plan_engines
from visioninapp.operator.rollout_step import (
    EdgeHealthTracker,
    NodeHealth,
    NodeView,
    PodView,
    Rollback,
    Wait,
    next_rollout_step,
)
from visioninapp.resources.edgedeployment import RolloutStrategy

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEY_HASH = "c" * 64


def strategy(**kw: Any) -> RolloutStrategy:
    return RolloutStrategy.model_validate(
        {"canary": {"steps": [50, 100]}, "stepTimeoutSeconds": 900, "engineBuildTimeoutSeconds": 3600, **kw}
    )


def engine(state: str, since: datetime, message: str | None = None) -> EngineReport:
    return EngineReport(key_hash=KEY_HASH, state=state, since=since, message=message)  # type: ignore[arg-type]


def health(report: EngineReport | None, revision: str = "new") -> dict[str, NodeHealth]:
    ready = report is not None and report.state == "ready"
    reason = None
    if report is not None and report.state == "building":
        reason = "engine building: tensorrt fp16 engine of v2 (key cccccccccccc, 1800 s)"
    elif report is not None and report.state == "failed":
        reason = f"model v2 rejected: {report.message}"
    return {"n0": NodeHealth(revision, NOW, 0, 0, None, ready, reason, report)}


def decide(heard: dict[str, NodeHealth], started: datetime, pod_ready: bool = False, **kw: Any) -> Any:
    nodes = [NodeView("n0", True), NodeView("n1", True)]
    pods = [
        PodView("n0", "n0-pod", "new", pod_ready, NOW - timedelta(hours=2) if pod_ready else None, 0),
        PodView("n1", "n1-pod", "old", True, NOW - timedelta(hours=5), 0),
    ]
    return next_rollout_step(strategy(**kw), "new", 0, started, nodes, pods, heard, NOW)


def test_a_node_building_its_engine_past_the_step_timeout_neither_fails_nor_times_out() -> None:
    started = NOW - timedelta(minutes=30)  # twice stepTimeoutSeconds
    decision = decide(health(engine("building", started)), started)
    assert decision == Wait("1 updated node(s) building their engine: n0", 0)


def test_without_an_engine_the_same_node_fails_the_step_timeout() -> None:
    started = NOW - timedelta(minutes=30)
    plain = {"n0": NodeHealth("new", NOW, 0, 0, None, True, None)}
    assert decide(plain, started) == Rollback({"n0": "not Ready within stepTimeoutSeconds (900 s)"})


def test_the_engine_build_timeout_bounds_the_build() -> None:
    started = NOW - timedelta(seconds=3601)
    decision = decide(health(engine("building", started)), started)
    assert isinstance(decision, Rollback)
    assert decision.failures["n0"].startswith(
        "engine not built within engineBuildTimeoutSeconds (3600 s): engine building: tensorrt fp16"
    )
    at_limit = NOW - timedelta(seconds=3600)
    assert isinstance(decide(health(engine("building", at_limit)), at_limit), Wait)


def test_the_step_timeout_starts_when_the_engine_is_ready() -> None:
    step_started = NOW - timedelta(hours=2)
    fresh = engine("ready", NOW - timedelta(seconds=899))
    assert decide(health(fresh), step_started) == Wait(
        "1 updated node(s) becoming healthy (minReadySeconds)", 0
    )
    late = engine("ready", NOW - timedelta(seconds=901))
    assert decide(health(late), step_started) == Rollback(
        {"n0": "not Ready within stepTimeoutSeconds (900 s)"}
    )


def test_an_engine_ready_before_the_step_began_counts_from_the_step() -> None:
    step_started = NOW - timedelta(seconds=100)
    early = engine("ready", NOW - timedelta(hours=3))  # built for an earlier attempt, cached
    assert isinstance(decide(health(early), step_started), Wait)


def test_a_failed_engine_fails_the_gate_with_its_reason() -> None:
    report = engine("failed", NOW, "engine build failed: TensorRT out of memory")
    decision = decide(health(report), NOW - timedelta(seconds=10))
    why = "model v2 rejected: engine build failed: TensorRT out of memory"
    assert decision == Rollback({"n0": f"the runtime rejected the model: {why}"})


def test_an_engine_of_another_revision_does_not_hold_the_step() -> None:
    started = NOW - timedelta(minutes=30)
    stale = health(engine("building", started), revision="old")
    assert decide(stale, started) == Rollback({"n0": "not Ready within stepTimeoutSeconds (900 s)"})


def test_a_ready_node_with_its_engine_ready_moves_the_rollout_on() -> None:
    report = engine("ready", NOW - timedelta(hours=2))
    decision = decide(health(report), NOW - timedelta(hours=3), pod_ready=True)
    assert decision.nodes == ("n1",)


def test_the_tracker_keeps_each_nodes_engine_report() -> None:
    tracker = EdgeHealthTracker()
    report = engine("building", NOW, "building")
    event = EdgeEvent(
        namespace="ns",
        deployment="d",
        node="n0",
        revision="new",
        window_start=NOW - timedelta(seconds=15),
        window_end=NOW,
        ready=False,
        reason="engine building",
        engine=report,
    )
    tracker.add(EdgeEvent.model_validate_json(event.to_bytes()))
    heard = tracker.for_deployment("ns", "d")["n0"]
    assert (
        heard.engine == report and heard.engine_state("new") == "building" and heard.engine_state("x") is None
    )


def test_the_engine_build_timeout_has_a_generous_default_and_bounds() -> None:
    assert RolloutStrategy().engine_build_timeout_seconds == 3600
    for bad in (59, 86401):
        with pytest.raises(ValidationError):
            RolloutStrategy.model_validate({"engineBuildTimeoutSeconds": bad})


# --- builders: designation and what is recorded (operator/engines.py) ----------------------------


def reported(
    state: str, uploaded: bool = False, sha256: str | None = None, key_hash: str = KEY_HASH
) -> EngineReport:
    return EngineReport(
        key_hash=key_hash,
        key={"device": "NVIDIA Jetson Orin Nano", "precision": "fp16"},
        state=state,  # type: ignore[arg-type]
        since=NOW,
        uploaded=uploaded,
        sha256=sha256,
    )


def heard(**reports: EngineReport) -> dict[str, NodeHealth]:
    return {node: NodeHealth("new", NOW, 0, 0, None, False, None, report) for node, report in reports.items()}


def test_the_first_node_to_report_a_key_is_its_builder_and_later_ones_change_nothing() -> None:
    records, claims = plan_engines([], heard(n2=reported("building"), n1=reported("building")), ["n1", "n2"])
    assert records == [
        {
            "keyHash": KEY_HASH,
            "builder": "n1",
            "phase": "Building",
            "device": "NVIDIA Jetson Orin Nano",
            "precision": "fp16",
        }
    ]
    assert claims == []
    again, _ = plan_engines(records, heard(n0=reported("building"), n1=reported("building")), ["n0", "n1"])
    assert again == records, "n0 comes later: n1 stays the builder"


def test_only_the_builders_uploaded_ready_report_is_a_claim() -> None:
    records, _ = plan_engines([], heard(n1=reported("building")), ["n1", "n2"])
    _, claims = plan_engines(records, heard(n2=reported("ready", True, "f" * 64)), ["n1", "n2"])
    assert claims == [], "n2 is not the builder"
    _, claims = plan_engines(records, heard(n1=reported("ready", False, "f" * 64)), ["n1", "n2"])
    assert claims == [], "built, not uploaded"
    _, claims = plan_engines(records, heard(n1=reported("ready", True, "f" * 64)), ["n1", "n2"])
    assert [(c.key_hash, c.builder, c.sha256) for c in claims] == [(KEY_HASH, "n1", "f" * 64)]
    recorded = [{**records[0], "phase": "Available", "sha256": "f" * 64}]
    assert plan_engines(recorded, heard(n1=reported("ready", True, "e" * 64)), ["n1"]) == (recorded, [])


def test_a_builder_gone_before_its_engine_is_recorded_is_replaced() -> None:
    records, _ = plan_engines([], heard(n1=reported("building")), ["n1", "n2"])
    replaced, _ = plan_engines(records, heard(n2=reported("building")), ["n2"])
    assert [r["builder"] for r in replaced] == ["n2"]
    recorded = [{**records[0], "phase": "Available", "sha256": "f" * 64}]
    kept, _ = plan_engines(recorded, heard(n2=reported("ready")), ["n2"])
    assert kept == recorded


def test_a_builder_may_write_only_while_its_engine_is_not_recorded() -> None:
    building = {"keyHash": KEY_HASH, "builder": "n1", "phase": "Building"}
    body = {"status": {"engines": [building, {"keyHash": "d" * 64, "builder": "n2", "phase": "Building"}]}}
    assert engine_writes([body], "n1") == [KEY_HASH]
    assert engine_writes([body], "n3") == []
    done = {"status": {"engines": [{**building, "phase": "Available", "sha256": "f" * 64}]}}
    assert engine_writes([done, {"status": {}}], "n1") == []


def test_the_builders_policy_writes_its_engine_and_claim_never_the_manifest() -> None:
    prefix = f"{engine_prefix('s3://store/artifacts', 'ns')}/{KEY_HASH}"
    assert prefix == f"s3://store/artifacts/ns/.engines/{KEY_HASH}"
    policy = edge_policy("ns", "n1", [], "s3://store/artifacts", "s3://store/feedback", (), [prefix])
    (builder,) = [s for s in policy["Statement"] if s["Sid"] == "DesignatedEngineBuilder"]
    arn = f"arn:aws:s3:::store/artifacts/ns/.engines/{KEY_HASH}"
    assert builder["Resource"] == [f"{arn}/engine.json", f"{arn}/engine.onnx"]
    assert builder["Action"] == ["s3:PutObject"]
    plain = edge_policy("ns", "n1", [], "s3://store/artifacts", "s3://store/feedback")
    assert all(s["Sid"] != "DesignatedEngineBuilder" for s in plain["Statement"])


# --- precision: FP16 engines on Jetsons by default, INT8 from the artifact's quantized model -------


def _env(body: dict[str, Any], formats: tuple[str, ...] = ("onnx", "onnx-int8")) -> dict[str, str]:
    result = rollout.plan(body, [], artifact=rollout.artifact("v2", formats=formats))
    container = result.daemonset["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_an_engine_without_a_precision_is_auto_and_other_formats_keep_fp32() -> None:
    assert _env(rollout.deployment(format="tensorrt"))["VISIONINAPP_EDGE_PRECISION"] == "auto"
    assert _env(rollout.deployment())["VISIONINAPP_EDGE_PRECISION"] == "fp32"
    explicit = rollout.deployment(format="tensorrt", runtime={"precision": "fp32"})
    assert _env(explicit)["VISIONINAPP_EDGE_PRECISION"] == "fp32"


def test_an_int8_engine_builds_from_the_artifacts_quantized_model() -> None:
    env = _env(rollout.deployment(format="tensorrt", runtime={"precision": "int8"}))
    assert env["VISIONINAPP_EDGE_MODEL_URI"] == "s3://models/v2.onnx-int8"
    assert env["VISIONINAPP_EDGE_PRECISION"] == "int8"
    fp16 = _env(rollout.deployment(format="tensorrt", runtime={"precision": "fp16"}))
    assert fp16["VISIONINAPP_EDGE_MODEL_URI"] == "s3://models/v2.onnx"
    waiting = rollout.plan(
        rollout.deployment(format="tensorrt", runtime={"precision": "int8"}),
        [],
        artifact=rollout.artifact("v2", formats=("onnx",)),
    )
    (ready,) = [c for c in waiting.status["conditions"] if c["type"] == "ModelReady"]
    assert ready["message"] == (
        "ModelArtifact 'v2' has no `onnx-int8` format, which `format: tensorrt` with `precision: int8` needs"
    )


# --- a fleet builds each key once: the next wave waits for the builder's engine --------------------


def _wave(heard_n0: NodeHealth | None, phase: str = "Building", fmt: str = "tensorrt", age: int = 120) -> Any:
    """Step 0 done on n0 (the designated builder, Ready for long); would n1 and n2 be updated now?"""
    from visioninapp.operator.daemonset import EdgeTemplate
    from visioninapp.operator.rollout import plan_rollout
    from visioninapp.resources import EdgeDeployment
    from visioninapp.resources.base import ADMITTED

    spec = {"format": fmt, "strategy": {"canary": {"steps": [33, 100]}, "maxUnavailable": 2}}
    revision = rollout.revision_of("v2", **spec)
    started = (rollout.NOW - timedelta(seconds=age)).isoformat()
    status = {"revision": revision, "currentStep": 0, "stepStartTime": started, "currentModel": "v2"}
    body = rollout.deployment("v2", status=status, **spec)
    pods = rollout.pods({"n0": revision, "n1": "old", "n2": "old"})
    heard = {} if heard_n0 is None else {"n0": dataclasses.replace(heard_n0, revision=revision)}
    record = {"keyHash": KEY_HASH, "builder": "n0", "phase": phase}
    return plan_rollout(
        EdgeDeployment.model_validate(body, context=ADMITTED),
        body,
        rollout.artifact("v2"),
        None,
        rollout.fleet(3),
        pods,
        heard,
        rollout.NOW,
        template=EdgeTemplate(image="edge:1"),
        engines=[record],
    )


def _progressing(result: Any) -> str:
    (condition,) = [c for c in result.status["conditions"] if c["type"] == "Progressing"]
    return str(condition["message"])


def test_the_next_wave_waits_until_the_builder_reports_its_engine() -> None:
    unheard = _wave(None)
    assert unheard.delete_pods == ()
    assert _progressing(unheard) == "step 1: waiting for the engine report of n0"
    plain = NodeHealth("new", rollout.NOW, 0, 0, None, True, None)
    assert _wave(plain).delete_pods == (), "a report without its engine is not one yet"
    building = NodeHealth("new", rollout.NOW, 0, 0, None, True, None, reported("building"))
    assert _progressing(_wave(building)) == (
        "step 1: waiting for n0 to build and upload the engine of key cccccccccccc, "
        "which the other nodes of its key download"
    )


def test_the_next_wave_goes_once_the_engine_is_recorded_or_will_not_be_uploaded() -> None:
    uploaded = NodeHealth("new", rollout.NOW, 0, 0, None, True, None, reported("ready", True, "f" * 64))
    assert _wave(uploaded, phase="Available").delete_pods == ("n1-pod", "n2-pod")
    refused = NodeHealth("new", rollout.NOW, 0, 0, None, True, None, reported("ready", False, "f" * 64))
    assert _wave(refused).delete_pods == ("n1-pod", "n2-pod"), "not uploaded: the others build their own"
    assert _wave(uploaded, phase="Failed").delete_pods == ("n1-pod", "n2-pod")


def test_only_engines_hold_a_wave_and_never_past_the_step_timeout() -> None:
    assert _wave(None, fmt="onnx").delete_pods == ("n1-pod", "n2-pod")
    assert _wave(None, age=901).delete_pods == ("n1-pod", "n2-pod")


def test_the_exchange_gives_the_designated_builder_its_write_and_nobody_else() -> None:
    from visioninapp.operator.identity_exchange import EdgeIdentities

    @dataclasses.dataclass
    class Fleet:
        nodes: dict[str, Any]
        edge_pods: dict[Any, Any]
        deployments: dict[tuple[str, str], Any]
        artifacts: dict[tuple[str, str], Any]

    building = {"keyHash": KEY_HASH, "builder": "n1", "phase": "Building"}
    deployment = {"spec": {"modelRef": "v2"}, "status": {"engines": [building]}}
    other_namespace = {"spec": {"modelRef": "v2"}, "status": {"engines": [{**building, "keyHash": "d" * 64}]}}
    fleet = Fleet({}, {}, {("ns", "d"): deployment, ("other", "d"): other_namespace}, {})
    identities = EdgeIdentities(None, None, fleet, "s3://store/artifacts", "s3://store/feedback")  # type: ignore[arg-type]

    def writes(node: str) -> list[str]:
        statements = identities.policy_for("ns", node)["Statement"]
        return [r for s in statements if s["Sid"] == "DesignatedEngineBuilder" for r in s["Resource"]]

    arn = f"arn:aws:s3:::store/artifacts/ns/.engines/{KEY_HASH}"
    assert writes("n1") == [f"{arn}/engine.json", f"{arn}/engine.onnx"]
    assert writes("n2") == []
    building["phase"] = "Available"
    assert writes("n1") == [], "recorded: the builder's write is gone at its next exchange"
