"""RetrainPolicy decisions without a cluster: each trigger at its threshold and not below, the
spacing between runs, suspension, a missing production version, and following a run to its
outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from visioninapp.resources.retrainpolicy import RetrainPolicySpec
from visioninapp.retrain import ConfidenceWindow, LineFacts, decide_retrain, retrain_job

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=3)


def spec(**triggers: Any) -> RetrainPolicySpec:
    return RetrainPolicySpec.model_validate(
        {
            "line": "shapes",
            "triggers": triggers or {"reviewedFrames": 3},
            "minIntervalMinutes": 60,
            "training": {"dataset": "shapes"},
            "gate": {"heldOut": {"uri": "s3://data/held-out"}},
        }
    )


def facts(ready: int = 0, **kw: Any) -> LineFacts:
    defaults: dict[str, Any] = {"pending_frames": 0, "production": "v1", "run": None, "candidate": None}
    return LineFacts(ready_frames=tuple(range(1, ready + 1)), **{**defaults, **kw})


def test_reviewed_frames_trigger_at_n_not_at_n_minus_1() -> None:
    below = decide_retrain(spec(), {}, facts(2, pending_frames=4), NOW, CREATED)
    assert not below.start and below.status["phase"] == "Waiting"
    assert below.status["message"] == "waiting: 2 of 3 frames have labels ready (4 wait for review)"
    at = decide_retrain(spec(), {}, facts(3), NOW, CREATED)
    assert at.start == (1, 2, 3) and at.status["phase"] == "Training"
    assert at.event == ("Normal", "Triggered", "3 frames with labels ready (trigger at 3)")


def test_runs_are_spaced_by_the_minimum_interval() -> None:
    status = {
        "phase": "Promoted",
        "run": "r1",
        "lastTrigger": {"time": "2026-11-30T11:30:00Z", "reason": "x"},
    }
    early = decide_retrain(spec(), status, facts(5), NOW, CREATED)
    assert not early.start and "next trigger from 2026-11-30T12:30:00Z" in early.status["message"]
    assert early.status["phase"] == "Promoted"  # the settled outcome stays visible
    later = decide_retrain(spec(), status, facts(5), NOW + timedelta(minutes=30), CREATED)
    assert later.start == (1, 2, 3, 4, 5)


def test_confidence_drop_triggers_only_with_enough_detections_and_a_big_enough_fall() -> None:
    policy = spec(confidenceDrop={"drop": 0.1, "minDetections": 50})
    reference = ConfidenceWindow(0.8, 500)
    small_fall = decide_retrain(
        policy, {}, facts(1, reference=reference, recent=ConfidenceWindow(0.71, 500)), NOW, CREATED
    )
    assert not small_fall.start and "mean confidence 0.710 (reference 0.800)" in small_fall.status["message"]
    fall = decide_retrain(
        policy, {}, facts(1, reference=reference, recent=ConfidenceWindow(0.69, 500)), NOW, CREATED
    )
    assert fall.start == (1,) and "fell from 0.800 to 0.690" in fall.status["message"]
    few = decide_retrain(
        policy, {}, facts(1, reference=reference, recent=ConfidenceWindow(0.2, 49)), NOW, CREATED
    )
    assert not few.start
    # Triggered, but nothing new has labels: nothing to train on, and it says so.
    empty = decide_retrain(
        policy, {}, facts(0, reference=reference, recent=ConfidenceWindow(0.5, 500)), NOW, CREATED
    )
    assert not empty.start and "no new frame has labels ready" in empty.status["message"]


def test_a_schedule_counts_from_the_last_trigger_or_the_policy() -> None:
    weekly = spec(schedule="0 3 * * 0")  # Sundays 03:00 UTC; 2026-11-29 was a Sunday
    created = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    due = decide_retrain(weekly, {}, facts(1), NOW, created)
    assert due.start and "was due at 2026-11-29T03:00:00Z" in due.status["message"]
    ran = {"lastTrigger": {"time": "2026-11-29T03:00:00Z", "reason": "x"}, "phase": "Promoted", "run": "r1"}
    assert not decide_retrain(weekly, ran, facts(1), NOW, created).start  # next: 2026-12-06
    broken = decide_retrain(spec(schedule="61 * * * *"), {}, facts(1), NOW, created)
    assert not broken.start and "is not a cron expression" in broken.status["message"]


def test_suspended_or_without_production_nothing_starts() -> None:
    suspended = spec().model_copy(update={"suspend": True})
    assert decide_retrain(suspended, {}, facts(9), NOW, CREATED).status["phase"] == "Suspended"
    orphan = decide_retrain(spec(), {}, facts(9, production=None), NOW, CREATED)
    assert not orphan.start and "no production version of line shapes" in orphan.status["message"]


def _candidate(passed: bool | None, unknown: bool = False) -> dict[str, Any]:
    value = "Unknown" if unknown else "True" if passed else "False"
    conditions = [] if passed is None else [{"type": "QualityGate", "status": value, "message": "m"}]
    gate = {"reasons": [] if passed else ["held-out mAP50-95 dropped 0.05"]}
    return {"metadata": {"name": "c1"}, "status": {"conditions": conditions, "qualityGate": gate}}


@pytest.mark.parametrize(
    ("run_phase", "candidate", "phase", "promote"),
    [
        ("Running", None, "Training", None),
        ("Failed", None, "Failed", None),
        ("Succeeded", None, "Training", None),  # its artifact not seen yet
        ("Succeeded", _candidate(None), "Training", None),  # the gate not checked yet
        ("Succeeded", _candidate(False), "GateFailed", None),
        ("Succeeded", _candidate(False, unknown=True), "Training", None),  # the check is retried
        ("Succeeded", _candidate(True), "Promoted", "c1"),
    ],
)
def test_a_run_is_followed_to_its_outcome(
    run_phase: str, candidate: dict[str, Any] | None, phase: str, promote: str | None
) -> None:
    run = {"status": {"phase": run_phase, "artifact": "c1", "message": "OOM"}}
    step = decide_retrain(
        spec(), {"run": "r1", "phase": "Training"}, facts(9, run=run, candidate=candidate), NOW, CREATED
    )
    assert step.status["phase"] == phase and step.promote == promote and not step.start
    if phase == "GateFailed":
        assert "held-out mAP50-95 dropped 0.05" in step.status["result"]


def test_the_fine_tune_is_gated_against_production_on_the_held_out_set() -> None:
    policy = {
        "apiVersion": "visioninapp.io/v1alpha1",
        "metadata": {"name": "loop", "namespace": "ml", "uid": "u-1"},
    }
    job = retrain_job(policy, spec(), "loop-r2", "v1", "s3://data/shapes/v3")
    assert job["metadata"]["labels"] == {
        "visioninapp.io/retrain-policy": "loop",
        "visioninapp.io/retrain-policy-uid": "u-1",
    }
    assert job["spec"]["model"] == {"baseModel": "v1"} and job["spec"]["dataset"] == {
        "uri": "s3://data/shapes/v3"
    }
    assert job["spec"]["evaluation"] == {
        "heldOut": {"uri": "s3://data/held-out", "dataYaml": "data.yaml"},
        "baseline": "v1",
        "maxDrop": 0.01,
    }


def test_a_candidate_gated_against_a_version_no_longer_in_production_is_not_promoted() -> None:
    run = {"status": {"phase": "Succeeded", "artifact": "c1"}}
    status = {"run": "r1", "phase": "Training", "baseline": "v1"}
    moved = decide_retrain(
        spec(), status, facts(0, run=run, candidate=_candidate(True), production="v7"), NOW, CREATED
    )
    assert moved.promote is None and moved.status["phase"] == "NotPromoted"
    assert "production is now v7" in moved.status["result"]


def test_a_run_that_could_not_start_is_retried_after_a_back_off_only() -> None:
    policy = spec().model_copy(update={"min_interval_minutes": 0})
    failed = {"phase": "Failed", "run": None, "lastTrigger": {"time": "2026-11-30T11:55:00Z", "reason": "x"}}
    assert not decide_retrain(policy, failed, facts(5), NOW, CREATED).start
    assert decide_retrain(policy, failed, facts(5), NOW + timedelta(minutes=6), CREATED).start
