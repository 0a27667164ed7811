"""Model lines: which version of a line holds a stage (shared by the operator, which rolls it out and
keeps one version per stage, and the API, whose retrain policies fine-tune from it)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from visioninapp.k8s import Obj, parse_time

__all__ = ["promoted_at", "promotion_blocked", "stage_holder"]

_NOT_YET_RECORDED = datetime.max  # promoted after the last stage change the operator recorded


def promoted_at(artifact: Obj) -> tuple[datetime, str, str]:
    """When the artifact entered its stage, as the `Staged` condition recorded it for the current
    generation (only `spec.stage` changes one); a stage the operator has not recorded yet was entered
    just now. Ties (the condition has whole seconds): the newer object, then the name."""
    stage = artifact["spec"].get("stage", "candidate")
    staged = next(
        (c for c in (artifact.get("status") or {}).get("conditions") or [] if c.get("type") == "Staged"),
        None,
    )
    recorded = (
        staged is not None
        and staged.get("reason") == stage.capitalize()
        and staged.get("observedGeneration") == artifact["metadata"].get("generation")
    )
    when = parse_time(staged.get("lastTransitionTime")) if recorded and staged else None
    meta = artifact["metadata"]
    return (
        when.replace(tzinfo=None) if when else _NOT_YET_RECORDED,
        meta.get("creationTimestamp") or "",
        meta["name"],
    )


def _holders(artifacts: Iterable[Obj], line: str, stage: str) -> list[Obj]:
    """The line's versions in `stage` that can hold it (verified, and not refused by their quality
    gate), latest promoted first."""
    found = [
        a
        for a in artifacts
        if a["spec"].get("model") == line
        and a["spec"].get("stage") == stage
        and not a["metadata"].get("deletionTimestamp")
        and (a.get("status") or {}).get("phase") == "Available"
        and promotion_blocked(a) is None
    ]
    return sorted(found, key=promoted_at, reverse=True)


def stage_holder(artifacts: Iterable[Obj], line: str, stage: str) -> Obj | None:
    """The version holding `stage` of `line`: of those that can hold it, the one promoted last (one
    promoted before it is verified, or refused by its gate, takes nothing from the current holder)."""
    holders = _holders(artifacts, line, stage)
    return holders[0] if holders else None


def promotion_blocked(body: Obj) -> str | None:
    """Why this version must not be promoted (None: nothing against it). A version whose spec names
    an evaluation record is promotable only once the record is checked and its gate passed."""
    if not (body.get("spec") or {}).get("evaluation"):
        return None
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "QualityGate":
            if condition.get("status") == "True":
                return None
            if condition.get("status") == "False":
                return f"quality gate {condition.get('reason', '').lower()}: {condition.get('message', '')}"
    return "quality gate not checked yet"
