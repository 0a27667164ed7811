"""RetrainPolicy decisions, pure: from the policy, the facts the API gathered (frames with labels
ready, the fleet's confidence, the line's production version, the latest run and its candidate) and
the time, what happens next: wait, start a fine-tune, promote a candidate that passed its gate, or
record why it did not."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter

from visioninapp.k8s import Obj, iso_time, parse_time
from visioninapp.resources.retrainpolicy import RetrainPolicySpec

__all__ = [
    "RUN_LABEL",
    "RUN_UID_LABEL",
    "ConfidenceWindow",
    "LineFacts",
    "RetrainStep",
    "decide_retrain",
    "retrain_job",
]

RUN_LABEL = "visioninapp.io/retrain-policy"
RUN_UID_LABEL = "visioninapp.io/retrain-policy-uid"  # a run is the policy's only with its uid
SETTLED = ("Promoted", "GateFailed", "NotPromoted", "Failed")
FAILED_START_BACKOFF = timedelta(minutes=10)  # a run that could not start is not retried sooner


@dataclass(frozen=True)
class ConfidenceWindow:
    """Mean confidence of the fleet's detections over a window, and how many detections it averages."""

    mean: float
    detections: int


@dataclass(frozen=True)
class LineFacts:
    ready_frames: tuple[int, ...]  # ids of the line's frames with labels ready, in no dataset version yet
    pending_frames: int  # the line's frames still waiting for a person
    production: str | None  # the line's production version (fine-tuned from, compared with)
    run: Obj | None  # the latest run's TrainingJob, as stored
    candidate: Obj | None  # the ModelArtifact the latest run created, as stored
    reference: ConfidenceWindow | None = None  # the first window after production reached the fleet
    recent: ConfidenceWindow | None = None  # the last window


@dataclass(frozen=True)
class RetrainStep:
    """What to do now, and the status (a merge patch) that says it."""

    status: dict[str, Any]
    start: tuple[int, ...] = ()  # start a fine-tune with these frames
    promote: str | None = None  # promote this candidate to the policy's stage
    event: tuple[str, str, str] | None = None
    conditions: list[tuple[str, bool, str, str]] = field(default_factory=list)


def decide_retrain(
    spec: RetrainPolicySpec, status: Obj, facts: LineFacts, now: datetime, created: datetime
) -> RetrainStep:
    """`created`: when the policy was created (a schedule counts from its last trigger, else from it)."""
    counts = {"readyFrames": len(facts.ready_frames), "pendingFrames": facts.pending_frames}
    if status.get("run") and status.get("phase") not in SETTLED:
        return _follow_run(spec, status, facts, counts)
    if spec.suspend:
        return RetrainStep({**counts, "phase": "Suspended", "message": "suspended: no trigger is evaluated"})
    if facts.production is None:
        return _waiting(
            status,
            counts,
            f"no production version of line {spec.line} to fine-tune from: promote one first",
        )
    schedule = spec.triggers.schedule
    if schedule is not None and not croniter.is_valid(schedule):
        return _waiting(
            status,
            counts,
            f"spec.triggers.schedule {schedule!r} is not a cron expression: give 5 fields (minute hour "
            "day-of-month month day-of-week, UTC), e.g. '0 3 * * 0' for Sundays at 03:00",
        )
    last = parse_time((status.get("lastTrigger") or {}).get("time"))
    spacing = timedelta(minutes=spec.min_interval_minutes)
    if status.get("phase") == "Failed" and not status.get("run"):  # the last start failed
        spacing = max(spacing, FAILED_START_BACKOFF)
    if last is not None and now < last + spacing:
        ready_at = iso_time(last + spacing)
        return _waiting(
            status, counts, f"the last run started at {iso_time(last)}; next trigger from {ready_at}"
        )
    reason = _trigger(spec, facts, last or created, now)
    if reason is None:
        return _waiting(status, counts, _what_is_missing(spec, facts))
    if not facts.ready_frames:
        return _waiting(status, counts, f"{reason}, but no new frame has labels ready to train on")
    return RetrainStep(
        {**counts, "phase": "Training", "message": f"triggered: {reason}"},
        start=facts.ready_frames,
        event=("Normal", "Triggered", reason),
        conditions=[("Triggered", True, "Triggered", reason)],
    )


def _waiting(status: Obj, counts: dict[str, int], message: str) -> RetrainStep:
    """Waiting for a trigger; a settled run's phase stays (Promoted, GateFailed), and its outcome in
    `result`, until the next one."""
    phase = status.get("phase") if status.get("phase") in SETTLED else "Waiting"
    return RetrainStep({**counts, "phase": phase, "message": message})


def _trigger(spec: RetrainPolicySpec, facts: LineFacts, since: datetime, now: datetime) -> str | None:
    triggers = spec.triggers
    if triggers.reviewed_frames is not None and len(facts.ready_frames) >= triggers.reviewed_frames:
        return f"{len(facts.ready_frames)} frames with labels ready (trigger at {triggers.reviewed_frames})"
    drop = triggers.confidence_drop
    if drop is not None and facts.reference is not None and facts.recent is not None:
        enough = min(facts.reference.detections, facts.recent.detections) >= drop.min_detections
        fall = facts.reference.mean - facts.recent.mean
        if enough and fall >= drop.drop:
            return (
                f"mean confidence fell from {facts.reference.mean:.3f} to {facts.recent.mean:.3f} "
                f"(by {fall:.3f}; trigger at {drop.drop})"
            )
    if triggers.schedule is not None:
        due: datetime = croniter(triggers.schedule, since).get_next(datetime)
        if due <= now:
            return f"schedule {triggers.schedule!r} was due at {iso_time(due)}"
    return None


def _what_is_missing(spec: RetrainPolicySpec, facts: LineFacts) -> str:
    parts = []
    if spec.triggers.reviewed_frames is not None:
        parts.append(
            f"{len(facts.ready_frames)} of {spec.triggers.reviewed_frames} frames have labels ready"
            + (f" ({facts.pending_frames} wait for review)" if facts.pending_frames else "")
        )
    if spec.triggers.confidence_drop is not None:
        if facts.reference is None or facts.recent is None:
            parts.append("not enough detections yet to compare confidence")
        else:
            parts.append(f"mean confidence {facts.recent.mean:.3f} (reference {facts.reference.mean:.3f})")
    if spec.triggers.schedule is not None:
        parts.append(f"schedule {spec.triggers.schedule!r} not due")
    return "waiting: " + "; ".join(parts)


def _follow_run(
    spec: RetrainPolicySpec, status: Obj, facts: LineFacts, counts: dict[str, int]
) -> RetrainStep:
    """A run in progress: its TrainingJob, then its candidate's gate, then the promotion."""
    run = status["run"]
    if facts.run is None:
        message = f"TrainingJob {run} was never created, or was deleted: the run is over"
        return RetrainStep({**counts, "phase": "Failed", "message": message, "result": message})
    run_status = facts.run.get("status") or {}
    phase = run_status.get("phase") or "Pending"
    if phase == "Failed":
        message = f"TrainingJob {run} failed: {run_status.get('message', '')}"
        return RetrainStep(
            {**counts, "phase": "Failed", "message": message, "result": message},
            event=("Warning", "RunFailed", message),
        )
    if phase != "Succeeded":
        return RetrainStep({**counts, "phase": "Training", "message": f"TrainingJob {run} is {phase}"})
    candidate = run_status.get("artifact")
    if facts.candidate is None:
        return RetrainStep(
            {**counts, "phase": "Training", "candidate": candidate, "message": f"waiting for {candidate}"}
        )
    gate = next(
        (
            c
            for c in (facts.candidate.get("status") or {}).get("conditions") or []
            if c["type"] == "QualityGate"
        ),
        None,
    )
    if gate is None:
        message = f"{candidate}: waiting for its quality gate to be checked"
        return RetrainStep({**counts, "phase": "Training", "candidate": candidate, "message": message})
    if gate["status"] == "Unknown":  # the operator could not read the record now, and retries
        message = f"{candidate}: waiting for its quality gate to be checked ({gate.get('message', '')})"
        return RetrainStep({**counts, "phase": "Training", "candidate": candidate, "message": message})
    if gate["status"] != "True":
        reasons = ((facts.candidate.get("status") or {}).get("qualityGate") or {}).get("reasons") or []
        message = f"{candidate} failed the quality gate: " + ("; ".join(reasons) or gate.get("message", ""))
        return RetrainStep(
            {**counts, "phase": "GateFailed", "candidate": candidate, "message": message, "result": message},
            event=("Warning", "GateFailed", message),
            conditions=[("Promoted", False, "GateFailed", message)],
        )
    baseline = status.get("baseline")
    if baseline and facts.production != baseline:  # gated against a version no longer in production
        message = (
            f"{candidate} passed the quality gate against {baseline}, but the line's production is now "
            f"{facts.production or 'none'}: not promoted (it was never compared with that version)"
        )
        return RetrainStep(
            {**counts, "phase": "NotPromoted", "candidate": candidate, "message": message, "result": message},
            event=("Warning", "NotPromoted", message),
            conditions=[("Promoted", False, "ProductionMoved", message)],
        )
    message = f"{candidate} passed the quality gate and was promoted to {spec.promote_to}"
    return RetrainStep(
        {**counts, "phase": "Promoted", "candidate": candidate, "message": message, "result": message},
        promote=candidate,
        event=("Normal", "Promoted", message),
        conditions=[("Promoted", True, "GatePassed", message)],
    )


def retrain_job(policy: Obj, spec: RetrainPolicySpec, name: str, production: str, dataset_uri: str) -> Obj:
    """The TrainingJob of one fine-tune: from the line's production version, on the dataset version
    with the new frames, gated against that production version on the held-out set."""
    template, gate = spec.training, spec.gate
    meta = policy["metadata"]
    return {
        "apiVersion": policy["apiVersion"],
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {RUN_LABEL: meta["name"], RUN_UID_LABEL: meta.get("uid", "")},
            "annotations": {"visioninapp.io/created-by": f"retrain-policy/{meta['name']}"},
        },
        "spec": {
            "model": {"baseModel": production},
            "dataset": {"uri": dataset_uri},
            "hyperparameters": template.hyperparameters.wire(),
            "resources": template.resources.wire(),
            "placement": template.placement.wire(),
            "export": template.export.wire(),
            "output": {
                "model": spec.line,
                "artifactName": name,
                **({"uri": template.output_uri} if template.output_uri else {}),
            },
            "evaluation": {
                "heldOut": gate.held_out.wire(),
                "baseline": production,
                "maxDrop": gate.max_drop,
                **({"maxClassDrop": gate.max_class_drop} if gate.max_class_drop is not None else {}),
            },
        },
    }
