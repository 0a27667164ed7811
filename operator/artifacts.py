"""ModelArtifact decisions: verify each format's object and checksum, record stage changes.

`verify_formats` streams every object through sha256 (the store computes it chunk by chunk, never
holding a model in memory). `check_evaluation` reads the quality gate's evaluation record, checks its
sha256 and that it evaluated this artifact's ONNX. `artifact_status` turns the findings into the status
patch, and `plan_artifact` adds what goes with it: the in-use finalizer, an Event, the copy for the
edge cluster. `promotion_blocked` says why a version must not be promoted (its gate failed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from visioninapp.backends.storage import ObjectNotFound
from visioninapp.evaluation import EvaluationRecord
from visioninapp.k8s import Obj, set_condition
from visioninapp.lines import promotion_blocked
from visioninapp.resources import ModelArtifact
from visioninapp.resources.edgedeployment import models_in_use
from visioninapp.resources.modelartifact import GateScores, QualityGateStatus

__all__ = [
    "IN_USE_FINALIZER",
    "MAX_RECORD_BYTES",
    "ArtifactPlan",
    "GateCheck",
    "Verification",
    "artifact_status",
    "artifact_users",
    "check_evaluation",
    "gate_summary",
    "mirror_copy",
    "needs_gate_check",
    "needs_verification",
    "plan_artifact",
    "promotion_blocked",
    "verify_formats",
]

# Keeps a ModelArtifact that an EdgeDeployment deploys, runs or may roll back to (`deployedTo`).
IN_USE_FINALIZER = "visioninapp.io/in-use"

# The findings of one verification: a problem per broken format (empty: all good).
Verification = list[str]


def needs_verification(body: Obj) -> bool:
    """Formats are immutable, so one definite verdict (True or False) is final."""
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Verified" and condition.get("status") in ("True", "False"):
            return False
    return True


def verify_formats(
    artifact: ModelArtifact, checksum: Callable[[str], str], size: Callable[[str], int | None]
) -> Verification:
    """One line per format whose object is missing, of another size or another sha256.

    Errors other than a missing object (the store is unreachable, credentials) propagate: they say
    nothing about the artifact and the check is retried.
    """
    problems = []
    for item in artifact.spec.formats:
        actual_size = size(item.uri)
        if actual_size is None:
            problems.append(f"{item.format}: {item.uri} does not exist")
            continue
        if actual_size != item.size:
            problems.append(f"{item.format}: {item.uri} has {actual_size} bytes, the spec says {item.size}")
            continue
        try:
            digest = checksum(item.uri)
        except ObjectNotFound:
            problems.append(f"{item.format}: {item.uri} does not exist")
            continue
        if digest != item.sha256:
            problems.append(f"{item.format}: sha256 of {item.uri} is {digest}, the spec says {item.sha256}")
    return problems


# --- the quality gate's record -------------------------------------------------------------------

MAX_RECORD_BYTES = 16 * 2**20  # an evaluation record is a few KB per class; never read a huge object


@dataclass(frozen=True)
class GateCheck:
    """What reading the evaluation record found: the record, a definite problem, or a transient error."""

    record: EvaluationRecord | None = None
    problem: str | None = None  # the record is missing, another size or checksum, or not a record
    error: str | None = None  # the store could not be read now: retried


def needs_gate_check(body: Obj) -> bool:
    """The record is immutable (its sha256 is in the spec), so one definite verdict is final."""
    if not (body.get("spec") or {}).get("evaluation"):
        return False
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "QualityGate" and condition.get("status") in ("True", "False"):
            return False
    return True


def check_evaluation(
    artifact: ModelArtifact, read: Callable[[str], bytes], size: Callable[[str], int | None]
) -> GateCheck:
    """The record of `spec.evaluation`, checked: present, its sha256, a record of this model's ONNX.

    Errors other than a missing object propagate (the store, not the record): the check is retried.
    """
    ref = artifact.spec.evaluation
    assert ref is not None  # needs_gate_check
    length = size(ref.uri)
    if length is None:
        return GateCheck(problem=f"evaluation record {ref.uri} does not exist")
    if length > MAX_RECORD_BYTES:
        return GateCheck(
            problem=f"evaluation record {ref.uri} has {length} bytes; at most {MAX_RECORD_BYTES}"
        )
    try:
        data = read(ref.uri)
    except ObjectNotFound:
        return GateCheck(problem=f"evaluation record {ref.uri} does not exist")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        return GateCheck(problem=f"sha256 of {ref.uri} is {digest}, the spec says {ref.sha256}")
    try:
        record = EvaluationRecord.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return GateCheck(problem=f"{ref.uri} is not an evaluation record: {where}: {first['msg']}")
    onnx = {f.sha256 for f in artifact.spec.formats if f.format == "onnx"}
    if onnx and record.candidate.sha256 not in onnx:
        return GateCheck(
            problem=f"{ref.uri} evaluated the ONNX file {record.candidate.sha256}, not this version's"
        )
    return GateCheck(record=record)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def gate_summary(record: EvaluationRecord) -> QualityGateStatus:
    """The status's short form of a record: the verdict, mAP50-95 both sides, and why it failed."""

    def scores(role: str) -> GateScores | None:
        found = next((d for d in record.datasets if d.role == role), None)
        if found is None:
            return None
        baseline = found.baseline.map50_95 if found.baseline is not None else None
        return GateScores(
            candidate=round(found.candidate.map50_95, 4),
            baseline=_rounded(baseline),
            drop=_rounded(found.drop),
        )

    held_out = scores("heldOut")
    assert held_out is not None  # the record's first dataset
    return QualityGateStatus(
        passed=record.verdict.passed,
        baseline=record.baseline.artifact if record.baseline is not None else None,
        held_out=held_out,
        new_frames=scores("newFrames"),
        max_drop=record.limits.max_drop,
        max_class_drop=record.limits.max_class_drop,
        reasons=[reason[:1024] for reason in record.verdict.reasons[:32]],
    )


def _gate(conditions: list[Obj], wanted: Obj, gate: GateCheck, now: datetime, generation: int) -> list[Obj]:
    """`QualityGate` and `qualityGate` from a check of the record."""
    if gate.error is not None:
        return set_condition(conditions, "QualityGate", "Unknown", "CheckFailed", gate.error, now, generation)
    if gate.problem is not None or gate.record is None:
        problem = gate.problem or "no evaluation record"
        return set_condition(conditions, "QualityGate", "False", "RecordInvalid", problem, now, generation)
    verdict = gate.record.verdict
    wanted["qualityGate"] = gate_summary(gate.record).wire()
    status, reason = ("True", "Passed") if verdict.passed else ("False", "Failed")
    return set_condition(conditions, "QualityGate", status, reason, verdict.summary, now, generation)


# --- status -------------------------------------------------------------------------------------


def artifact_status(
    body: Obj,
    verification: Verification | None,
    now: datetime,
    error: str | None = None,
    deployed_to: list[str] | None = None,
    gate: GateCheck | None = None,
) -> Obj:
    """The status patch: `Verified` and phase from a verification (None: keep), `Staged` from the spec,
    `QualityGate` and `qualityGate` from a check of the evaluation record (None: keep).

    `error` is a transient failure of the check itself (store unreachable): `Verified` is Unknown.
    """
    status = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 1)
    conditions = list(status.get("conditions") or [])
    wanted: Obj = {"observedGeneration": generation}
    if error is not None:
        conditions = set_condition(conditions, "Verified", "Unknown", "CheckFailed", error, now, generation)
        wanted["phase"] = status.get("phase") or "Pending"
    elif verification is not None:
        if verification:
            message = "; ".join(verification)
            conditions = set_condition(
                conditions, "Verified", "False", "ChecksumMismatch", message, now, generation
            )
            wanted.update(phase="Invalid", message=message)
        else:
            formats = ", ".join(f["format"] for f in body["spec"]["formats"])
            message = f"{formats}: present, sizes and sha256 match"
            conditions = set_condition(
                conditions, "Verified", "True", "ChecksumsMatch", message, now, generation
            )
            wanted.update(phase="Available")
    stage = body["spec"].get("stage", "candidate")
    current = next((c for c in conditions if c["type"] == "Staged"), None)
    # Recorded anew at each stage change, even back to the same stage (only the stage changes the
    # generation): its time is when the version entered the stage (visioninapp/lines.py).
    if (
        current is None
        or current["reason"] != stage.capitalize()
        or current.get("observedGeneration") != generation
    ):
        previous = (
            f" (was {current['reason'].lower()})"
            if current and current["reason"] != stage.capitalize()
            else ""
        )
        conditions = set_condition(
            [c for c in conditions if c["type"] != "Staged"],
            "Staged",
            "True",
            stage.capitalize(),
            f"stage {stage}{previous}",
            now,
            generation,
        )
    if gate is not None:
        conditions = _gate(conditions, wanted, gate, now, generation)
    wanted["conditions"] = conditions
    if deployed_to is not None:
        wanted["deployedTo"] = deployed_to
    return {k: v for k, v in wanted.items() if status.get(k) != v}


def mirror_copy(body: Obj) -> Obj:
    """The artifact as it is created in the edge cluster: plain data, no server-set fields or status."""
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "labels": {**(meta.get("labels") or {}), "visioninapp.io/mirrored": "true"},
            "annotations": {
                k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("visioninapp.io/")
            },
        },
        "spec": body["spec"],
    }


def artifact_users(artifact: str, deployments: list[Obj]) -> list[str]:
    """EdgeDeployments (same namespace) that deploy, run or may roll back to `artifact`."""
    return sorted(d["metadata"]["name"] for d in deployments if artifact in models_in_use(d))


@dataclass(frozen=True)
class ArtifactPlan:
    """What one reconciliation of a ModelArtifact writes."""

    status: Obj  # a merge patch for `.status`
    finalizers: list[str] | None = None  # the new finalizers when the in-use one comes or goes
    event: tuple[str, str, str] | None = None  # (type, reason, message) for a Kubernetes Event
    mirror: Obj | None = None  # the copy for the edge cluster, once the artifact is Available


def plan_artifact(
    body: Obj,
    verification: Verification | None,
    error: str | None,
    users: list[str],
    now: datetime,
    gate: GateCheck | None = None,
) -> ArtifactPlan:
    """The status from a verification (None: none was needed) or its failure `error`, and from a check
    of the evaluation record (`gate`, None: none was needed); `deployedTo` and the in-use finalizer
    from `users` (the EdgeDeployments that need it)."""
    meta = body["metadata"]
    status = artifact_status(body, verification, now, error, deployed_to=users, gate=gate)
    event = ("Warning", "VerificationFailed", status.get("message", "")) if status and verification else None
    if event is None and gate is not None and gate.error is None and status.get("conditions"):
        failed = next(
            (c for c in status["conditions"] if c["type"] == "QualityGate" and c["status"] == "False"), None
        )
        if failed is not None:
            event = ("Warning", f"QualityGate{failed['reason']}", failed["message"])
    finalizers = list(meta.get("finalizers") or [])
    if bool(users) == (IN_USE_FINALIZER in finalizers):  # the in-use finalizer follows deployedTo
        new_finalizers = None
    elif users:
        new_finalizers = [*finalizers, IN_USE_FINALIZER]
    else:
        new_finalizers = [f for f in finalizers if f != IN_USE_FINALIZER]
    phase = status.get("phase", (body.get("status") or {}).get("phase"))
    mirrored = (meta.get("labels") or {}).get("visioninapp.io/mirrored") == "true"
    copy = mirror_copy(body) if phase == "Available" and not mirrored else None
    return ArtifactPlan(status=status, finalizers=new_finalizers, event=event, mirror=copy)
