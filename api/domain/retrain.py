"""RetrainPolicies, run by the cluster sync (and on request): gather the facts of the policy's line
from SQL and the cluster, decide (`visioninapp.retrain`), act, and write the policy's status.

Acting is: publish the frames with labels ready as the next version of the policy's dataset, create
the fine-tune's TrainingJob (from the line's production version, gated against it on the held-out
set), and promote a candidate that passed its gate. The reviewed frames and the fleet's confidence
live in the API's database, which is why the API, not the operator, runs the policies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import EdgeWindow, FeedbackFrame
from visioninapp.api.domain.feedback import accept_frames
from visioninapp.api.domain.scopes import check_dataset_ref, check_output_uri
from visioninapp.api.security import Access
from visioninapp.k8s import Obj, iso_time, parse_time, set_condition
from visioninapp.lines import stage_holder
from visioninapp.resources.base import ADMITTED
from visioninapp.resources.retrainpolicy import RetrainPolicySpec
from visioninapp.retrain import (
    RUN_UID_LABEL,
    ConfidenceWindow,
    LineFacts,
    RetrainStep,
    decide_retrain,
    retrain_job,
)
from visioninapp.web.errors import ApiError

__all__ = ["KIND", "check_references", "evaluate_policy", "run_policies"]

log = logging.getLogger(__name__)
KIND = "RetrainPolicy"
MAX_FRAMES_PER_RUN = 10_000  # one dataset version takes at most this many new frames


def check_references(container: ApiContainer, spec: RetrainPolicySpec, access: Access) -> None:
    """What the policy's runs read and write stays in its project, as for a TrainingJob
    (`api/domain/training.py`): the held-out set, the output URI, and the dataset by name."""
    if not access.user.is_platform_admin:
        check_dataset_ref(container, spec.gate.held_out, access.project, "spec.gate.heldOut")
        check_output_uri(container, access.project, spec.training.output_uri, "spec.training.outputUri")


def run_policies(container: ApiContainer, project: str, artifacts: list[Obj]) -> list[Obj]:
    """Every policy of the project, once, as stored afterwards; one policy's failure is logged and
    does not stop the others."""
    try:
        policies = container.clusters.training.list(KIND, project)
    except ApiError as error:
        if error.status == 404:  # a cluster whose CRDs predate RetrainPolicy
            return []
        raise
    after = []
    for policy in policies:
        try:
            after.append(_run(container, policy, artifacts, datetime.now(UTC)))
        except Exception:
            log.exception("retrain policy %s/%s failed", project, policy["metadata"]["name"])
            after.append(policy)
    return after


def evaluate_policy(container: ApiContainer, project: str, name: str) -> Obj:
    """One pass of one policy now (the console's "evaluate now"); returns the policy as stored."""
    policy = container.clusters.training.get(KIND, project, name)
    artifacts = container.clusters.training.list("ModelArtifact", project)
    return _run(container, policy, artifacts, datetime.now(UTC))


def _run(container: ApiContainer, policy: Obj, artifacts: list[Obj], now: datetime) -> Obj:
    meta, status = policy["metadata"], dict(policy.get("status") or {})
    project, name = meta["namespace"], meta["name"]
    spec = RetrainPolicySpec.model_validate(policy["spec"], context=ADMITTED)
    facts = _gather(container, policy, spec, status, artifacts, now)
    step = decide_retrain(spec, status, facts, now, parse_time(meta.get("creationTimestamp")) or now)
    patch = dict(step.status)
    version = meta.get("resourceVersion")
    if step.start:
        started = _start(container, policy, spec, facts, step, now)
        if started is None:  # another API replica claimed this trigger first: it starts the run
            return policy
        fields, version = started
        patch |= fields
    if step.promote is not None:
        container.clusters.training.patch(
            "ModelArtifact", project, step.promote, {"spec": {"stage": spec.promote_to}}
        )
    conditions = list(status.get("conditions") or [])
    generation = int(meta.get("generation") or 1)
    for type_, value, reason, message in step.conditions:
        conditions = set_condition(
            conditions, type_, "True" if value else "False", reason, message[:4096], now, generation
        )
    patch |= {"conditions": conditions, "observedGeneration": generation}
    changed = {k: v for k, v in patch.items() if status.get(k) != v}
    if not changed:
        return policy
    try:  # only over the version this pass decided from: another replica's newer write wins
        return container.clusters.training.patch_status(KIND, project, name, changed, version)
    except ApiError as error:
        if error.status == 409:
            return policy
        raise


def _start(
    container: ApiContainer,
    policy: Obj,
    spec: RetrainPolicySpec,
    facts: LineFacts,
    step: RetrainStep,
    now: datetime,
) -> tuple[Obj, str | None] | None:
    """Claim the run (a status write conditional on the version this pass read: of several API
    replicas one wins, the others return None), then publish the frames as the dataset's next
    version and create the TrainingJob; returns what the status then records, and the policy's
    version after the claim (the status write that follows is conditional on it)."""
    meta, status = policy["metadata"], policy.get("status") or {}
    project, name = meta["namespace"], meta["name"]
    run, number = _free_run_name(container, project, name, int(status.get("runs") or 0) + 1)
    frames = list(step.start[:MAX_FRAMES_PER_RUN])
    reason = step.event[2] if step.event else "triggered"
    claim = {
        "runs": number,
        "run": run,
        "candidate": None,
        "result": None,
        "datasetVersion": None,
        "baseline": facts.production,
        "phase": "Training",
        "message": f"starting {run}: publishing {len(frames)} frame(s) into {spec.training.dataset}",
        "lastTrigger": {"time": iso_time(now), "reason": reason[:1024]},
    }
    try:
        claimed = container.clusters.training.patch_status(
            KIND, project, name, claim, meta.get("resourceVersion")
        )
    except ApiError as error:
        if error.status == 409:
            return None
        raise
    version = claimed["metadata"].get("resourceVersion")
    try:
        published = accept_frames(
            container,
            project,
            spec.training.dataset,
            frames,
            f"{len(frames)} frame(s) for {run} ({reason})",
            f"retrain-policy/{name}",
            spec.labels.auto_accept_min_score,
        )
    except ApiError as error:  # e.g. the dataset is gone: nothing was trained, the frames stay ready
        message = f"cannot publish the frames into {spec.training.dataset}: {error.message}"
        return _start_failed(claim, message), version
    assert facts.production is not None  # decide_retrain starts nothing without it
    job = retrain_job(policy, spec, run, facts.production, published["uri"])
    try:
        container.clusters.training.create(job)
    except ApiError as error:
        message = (
            f"dataset version {version['version']} published, but TrainingJob {run} could not be created"
        )
        return _start_failed(claim, f"{message}: {error.message}"), version
    return {
        **claim,
        "datasetVersion": published["version"],
        "message": f"{run} fine-tunes {facts.production} on {spec.training.dataset} v{published['version']} "
        f"({len(frames)} new frame(s)); triggered: {reason}",
    }, version


def _start_failed(claim: Obj, message: str) -> Obj:
    """No run: the trigger is recorded (the next waits for it to age), the frames stay ready."""
    return {**claim, "run": None, "phase": "Failed", "message": message, "result": message}


def _free_run_name(container: ApiContainer, project: str, policy: str, number: int) -> tuple[str, int]:
    """`<policy>-r<n>` for the first n from `number` that no TrainingJob has (a policy deleted and
    created again starts counting anew, and never adopts an earlier policy's run)."""
    for candidate in range(number, number + 100):
        run = f"{policy[:230]}-r{candidate}"
        if container.clusters.training.find("TrainingJob", project, run) is None:
            return run, candidate
    raise ApiError(409, f"TrainingJobs {policy}-r{number} to -r{number + 99} all exist: delete old runs")


def _gather(
    container: ApiContainer,
    policy: Obj,
    spec: RetrainPolicySpec,
    status: Obj,
    artifacts: list[Obj],
    now: datetime,
) -> LineFacts:
    project, uid = policy["metadata"]["namespace"], policy["metadata"].get("uid")
    versions = {a["metadata"]["name"] for a in artifacts if a["spec"].get("model") == spec.line}
    production = stage_holder(artifacts, spec.line, "production")
    production_name = production["metadata"]["name"] if production else None
    with container.db.session() as session:
        ready, pending = _frames(session, project, versions, spec.labels.auto_accept_min_score)
        reference, recent = (
            _confidence(session, project, production_name, spec.triggers.confidence_drop.window_minutes, now)
            if spec.triggers.confidence_drop is not None and production_name
            else (None, None)
        )
    run = (
        container.clusters.training.find("TrainingJob", project, status["run"]) if status.get("run") else None
    )
    if run is not None and (run["metadata"].get("labels") or {}).get(RUN_UID_LABEL) != uid:
        run = None  # a TrainingJob of that name that this policy did not create
    candidate_name = status.get("candidate") or ((run or {}).get("status") or {}).get("artifact")
    candidate = next((a for a in artifacts if a["metadata"]["name"] == candidate_name), None)
    return LineFacts(tuple(ready), pending, production_name, run, candidate, reference, recent)


def _frames(
    session: Session, project: str, versions: set[str], auto_accept: float | None
) -> tuple[list[int], int]:
    """Ids of the line's frames not in a dataset version yet whose labels are ready (reviewed; or
    pending with a proposal at the auto-accept score), and how many still wait for a person."""
    rows = session.execute(
        select(FeedbackFrame.id, FeedbackFrame.review_status, FeedbackFrame.top_score)
        .where(
            FeedbackFrame.project_name == project,
            FeedbackFrame.status == "new",
            FeedbackFrame.model.in_(sorted(versions)),
        )
        .order_by(FeedbackFrame.id)
    ).all()
    ready, pending = [], 0
    for frame_id, review, top in rows:
        if review == "reviewed" or (
            review == "pending" and auto_accept is not None and top is not None and top >= auto_accept
        ):
            ready.append(frame_id)
        elif review == "pending":
            pending += 1
    return ready, pending


def _confidence(
    session: Session, project: str, production: str, minutes: int, now: datetime
) -> tuple[ConfidenceWindow | None, ConfidenceWindow | None]:
    """The fleet's mean confidence on the production version: over its first `minutes` of windows,
    and over the last `minutes`."""
    first = session.scalar(
        select(func.min(EdgeWindow.window_start)).where(
            EdgeWindow.project_name == project, EdgeWindow.model_version == production
        )
    )
    if first is None:
        return None, None
    span = timedelta(minutes=minutes)
    return (
        _mean(session, project, production, first, first + span),
        _mean(session, project, production, now - span, now),
    )


def _mean(
    session: Session, project: str, production: str, start: datetime, end: datetime
) -> ConfidenceWindow | None:
    rows: Sequence[Any] = session.execute(
        select(EdgeWindow.mean_confidence, EdgeWindow.detections_per_class).where(
            EdgeWindow.project_name == project,
            EdgeWindow.model_version == production,
            EdgeWindow.window_start >= start,
            EdgeWindow.window_end <= end,
            EdgeWindow.mean_confidence.is_not(None),
        )
    ).all()
    weighted = [(mean, sum(counts.values())) for mean, counts in rows]
    detections = sum(count for _, count in weighted)
    if not detections:
        return None
    return ConfidenceWindow(sum(mean * count for mean, count in weighted) / detections, detections)
