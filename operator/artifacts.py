"""ModelArtifact decisions: verify each format's object and checksum, record stage changes.

`verify_formats` streams every object through sha256 (the store computes it chunk by chunk, never
holding a model in memory). `artifact_status` turns the findings into the status patch, and
`plan_artifact` adds what goes with it: the in-use finalizer, an Event, the copy for the edge cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from visioninapp.backends.storage import ObjectNotFound
from visioninapp.k8s import Obj, set_condition
from visioninapp.resources import ModelArtifact
from visioninapp.resources.edgedeployment import models_in_use

__all__ = [
    "IN_USE_FINALIZER",
    "ArtifactPlan",
    "Verification",
    "artifact_status",
    "artifact_users",
    "mirror_copy",
    "needs_verification",
    "plan_artifact",
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


def artifact_status(
    body: Obj,
    verification: Verification | None,
    now: datetime,
    error: str | None = None,
    deployed_to: list[str] | None = None,
) -> Obj:
    """The status patch: `Verified` and phase from a verification (None: keep), `Staged` from the spec.

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
    if current is None or current["reason"] != stage.capitalize():
        previous = f" (was {current['reason'].lower()})" if current else ""
        conditions = set_condition(
            [c for c in conditions if c["type"] != "Staged"],
            "Staged",
            "True",
            stage.capitalize(),
            f"stage {stage}{previous}",
            now,
            generation,
        )
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
    body: Obj, verification: Verification | None, error: str | None, users: list[str], now: datetime
) -> ArtifactPlan:
    """The status from a verification (None: none was needed) or its failure `error`; `deployedTo`
    and the in-use finalizer from `users` (the EdgeDeployments that need it)."""
    meta = body["metadata"]
    status = artifact_status(body, verification, now, error, deployed_to=users)
    event = ("Warning", "VerificationFailed", status.get("message", "")) if status and verification else None
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
