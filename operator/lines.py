"""Model lines and their stages: which version holds a stage, what a deployment following a line
deploys, and how one `production` per line is kept.

A CEL rule sees one object, so stage exclusivity is the operator's: of two versions of a line in
the same stage, the one promoted later holds it. The earlier one is archived when the operator
created it; an object a user or GitOps owns is never rewritten, only marked with a condition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from visioninapp.k8s import MANAGED_BY, Obj, set_condition
from visioninapp.lines import promoted_at, stage_holder

__all__ = [
    "EXCLUSIVE_STAGES",
    "STAGE_CONFLICT",
    "LineTarget",
    "StageDecision",
    "decide_stage",
    "follows",
    "is_operators",
    "line_target",
    "newer_holder",
]

STAGE_CONFLICT = "StageConflict"
MIRRORED_LABEL = "visioninapp.io/mirrored"
EXCLUSIVE_STAGES = ("staging", "production")


def follows(deployment: Obj) -> tuple[str, str] | None:
    """The (line, stage) an EdgeDeployment follows, or None when it names one artifact."""
    model = deployment["spec"].get("model")
    return (model["line"], model.get("stage", "production")) if model else None


def newer_holder(artifact: Obj, artifacts: Iterable[Obj]) -> Obj | None:
    """Another version of the artifact's line promoted to the same exclusive stage after it."""
    stage = artifact["spec"].get("stage", "candidate")
    if stage not in EXCLUSIVE_STAGES:
        return None
    holder = stage_holder(artifacts, artifact["spec"]["model"], stage)
    if holder is None or holder["metadata"]["name"] == artifact["metadata"]["name"]:
        return None
    # A version promoted later that cannot hold the stage yet (being verified) gives nothing up.
    return holder if promoted_at(holder) > promoted_at(artifact) else None


def is_operators(artifact: Obj) -> bool:
    """Created by this operator (from a TrainingJob), not a copy mirrored from another cluster:
    the only artifacts whose stage the operator may write."""
    labels = artifact["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in MANAGED_BY.items()) and not _mirrored(artifact)


def _mirrored(artifact: Obj) -> bool:
    return (artifact["metadata"].get("labels") or {}).get(MIRRORED_LABEL) == "true"


@dataclass(frozen=True)
class LineTarget:
    """What a deployment following a line deploys, and the `FollowsLine` condition saying why."""

    model: str | None  # the ModelArtifact to roll out; None: nothing holds the stage
    holder: str | None
    reason: str
    message: str


def line_target(line: str, stage: str, artifacts: Iterable[Obj]) -> LineTarget:
    holder = stage_holder(artifacts, line, stage)
    if holder is None:
        return LineTarget(
            None,
            None,
            "NoArtifact",
            f"no ModelArtifact of line {line!r} is in stage {stage}: promote one, e.g. kubectl patch "
            f'modelartifact NAME --type merge -p \'{{"spec":{{"stage":"{stage}"}}}}\'',
        )
    name = holder["metadata"]["name"]
    return LineTarget(name, name, "OnLine", f"follows {line} {stage}: {name}")


@dataclass(frozen=True)
class StageDecision:
    """What keeping one version per exclusive stage asks of one artifact."""

    archive: bool  # the operator's own artifact, superseded: its stage becomes `archived`
    conditions: list[Obj] | None  # the artifact's new conditions (StageConflict set or cleared), or None
    event: tuple[str, str, str] | None


def decide_stage(artifact: Obj, newer: Obj | None, conditions: list[Obj], now: datetime) -> StageDecision:
    """`newer` holds the artifact's stage since after it (`newer_holder`). The operator archives its
    own artifact; one a user or GitOps owns keeps its stage and says so in `StageConflict`."""
    had_conflict = any(c["type"] == STAGE_CONFLICT for c in conditions)
    if newer is None:
        cleared = [c for c in conditions if c["type"] != STAGE_CONFLICT]
        return StageDecision(False, cleared if had_conflict else None, None)
    if _mirrored(artifact):  # the training cluster archives it there, and the mirror follows
        return StageDecision(False, None, None)
    stage, line = artifact["spec"]["stage"], artifact["spec"]["model"]
    name, holder = artifact["metadata"]["name"], newer["metadata"]["name"]
    if is_operators(artifact):
        message = f"{holder} is now {stage} of {line}: {name} archived"
        return StageDecision(True, None, ("Normal", "Archived", message))
    message = (
        f"{holder} was promoted to {stage} of {line} after this version, which the operator did not "
        "create and so does not change: set this one's spec.stage to archived (or in your GitOps "
        "repository); deployments follow the later promotion"
    )
    generation = int(artifact["metadata"].get("generation") or 1)
    updated = set_condition(conditions, STAGE_CONFLICT, "True", "SameStage", message, now, generation)
    changed = updated != conditions
    return StageDecision(
        False, updated if changed else None, ("Warning", STAGE_CONFLICT, message) if changed else None
    )
