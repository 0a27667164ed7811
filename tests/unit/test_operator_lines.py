"""Model lines: which version holds a stage, one version per exclusive stage, and deployments that
follow a line's stage (held back after their own rollback, moving on when the stage moves)."""

from __future__ import annotations

from typing import Any

from tests.unit.test_operator_rollout import (
    NOW,
    crash_on_first_node,
    deployment,
    fleet,
    pods,
    revision_of,
    v2_canary_started,
)
from visioninapp.k8s import MANAGED_BY
from visioninapp.lines import stage_holder
from visioninapp.operator.daemonset import EdgeTemplate
from visioninapp.operator.lines import (
    STAGE_CONFLICT,
    decide_stage,
    line_target,
    newer_holder,
)
from visioninapp.operator.rollout import plan_rollout
from visioninapp.operator.rollout_step import PodView
from visioninapp.resources import EdgeDeployment
from visioninapp.resources.base import ADMITTED

SHA = "b" * 64


def version(
    name: str,
    stage: str = "production",
    recorded: str | None = "2026-11-23T10:00:00Z",
    ours: bool = True,
    mirrored: bool = False,
    line: str = "shapes",
) -> dict[str, Any]:
    """A version of a line; `recorded`: when the operator recorded its stage (None: not yet)."""
    labels = {**(MANAGED_BY if ours else {}), **({"visioninapp.io/mirrored": "true"} if mirrored else {})}
    staged = [
        {"type": "Staged", "status": "True", "reason": stage.capitalize(), "lastTransitionTime": recorded}
    ]
    return {
        "metadata": {
            "name": name,
            "namespace": "edge",
            "labels": labels,
            "creationTimestamp": "2026-11-01T00:00:00Z",
        },
        "spec": {
            "model": line,
            "stage": stage,
            "formats": [{"format": "onnx", "uri": f"s3://models/{name}.onnx", "sha256": SHA, "size": 1}],
        },
        "status": {"phase": "Available", "conditions": staged if recorded else []},
    }


def test_the_version_promoted_last_holds_the_stage() -> None:
    early, late = (
        version("v1", recorded="2026-11-23T10:00:00Z"),
        version("v2", recorded="2026-11-23T11:00:00Z"),
    )
    assert stage_holder([late, early], "shapes", "production") is late
    assert stage_holder([early, late], "shapes", "production") is late
    # Promoted a moment ago, before the operator recorded it: it is the newest.
    just_now = version("v0", recorded=None)
    assert stage_holder([early, late, just_now], "shapes", "production") is just_now
    # A stage recorded for an earlier stage does not count as the promotion time.
    stale = version("v0", recorded="2026-11-23T12:00:00Z")
    stale["status"]["conditions"][0]["reason"] = "Staging"
    assert stage_holder([late, stale], "shapes", "production") is stale
    # Other lines, other stages and versions being deleted never hold it.
    other = version("x9", line="helmets", recorded="2026-11-23T13:00:00Z")
    staging = version("v3", stage="staging", recorded="2026-11-23T13:00:00Z")
    gone = version("v4", recorded="2026-11-23T13:00:00Z")
    gone["metadata"]["deletionTimestamp"] = "2026-11-23T13:00:01Z"
    assert stage_holder([early, other, staging, gone], "shapes", "production") is early
    assert stage_holder([other], "shapes", "production") is None


def test_a_version_that_cannot_serve_takes_nothing_from_the_holder() -> None:
    holder = version("v1", recorded="2026-11-23T10:00:00Z")
    verifying = version("v2", recorded=None)
    verifying["status"]["phase"] = "Pending"
    refused = version("v3", recorded=None)
    refused["spec"]["evaluation"] = {"uri": "s3://models/v3/evaluation.json", "sha256": SHA}
    refused["status"]["conditions"] = [{"type": "QualityGate", "status": "False", "reason": "Failed"}]
    unchecked = version("v4", recorded=None)
    unchecked["spec"]["evaluation"] = refused["spec"]["evaluation"]
    assert stage_holder([holder, verifying, refused, unchecked], "shapes", "production") is holder
    assert newer_holder(holder, [holder, verifying, refused, unchecked]) is None  # nothing archived
    # ...and the later one, still being verified, is not archived for the holder promoted before it.
    assert newer_holder(verifying, [holder, verifying]) is None


def test_a_stage_entered_again_counts_from_its_new_promotion() -> None:
    """Archived and set back to production (two generations later): the old record does not count."""
    earlier = version("v1", recorded="2026-11-23T09:00:00Z")
    earlier["metadata"]["generation"] = 3
    earlier["status"]["conditions"][0]["observedGeneration"] = 1  # recorded before the two changes
    other = version("v2", recorded="2026-11-23T10:00:00Z")
    assert stage_holder([earlier, other], "shapes", "production") is earlier


def test_a_superseded_version_of_the_operator_is_archived() -> None:
    early, late = version("v1", recorded="2026-11-23T10:00:00Z"), version("v2", recorded=None)
    assert newer_holder(early, [early, late]) is late
    assert newer_holder(late, [early, late]) is None
    decision = decide_stage(early, late, early["status"]["conditions"], NOW)
    assert decision.archive and decision.conditions is None
    assert decision.event == ("Normal", "Archived", "v2 is now production of shapes: v1 archived")
    # Candidates and archived versions are never exclusive.
    assert newer_holder(version("c1", stage="candidate"), [version("c2", stage="candidate")]) is None


def test_a_users_version_is_never_rewritten_but_says_why_in_a_condition() -> None:
    early, late = version("v1", ours=False), version("v2", recorded=None)
    decision = decide_stage(early, late, early["status"]["conditions"], NOW)
    assert not decision.archive
    assert decision.conditions is not None
    conflict = next(c for c in decision.conditions if c["type"] == STAGE_CONFLICT)
    assert conflict["status"] == "True" and "v2 was promoted to production of shapes" in conflict["message"]
    assert "spec.stage to archived" in conflict["message"] and decision.event is not None
    # Said once: the same conflict again changes nothing.
    again = decide_stage(early, late, decision.conditions, NOW)
    assert again.conditions is None and again.event is None
    # Resolved (archived by its owner): the condition goes.
    cleared = decide_stage(early, None, decision.conditions, NOW)
    assert cleared.conditions == early["status"]["conditions"]


def test_a_mirrored_copy_waits_for_the_training_cluster() -> None:
    early, late = version("v1", mirrored=True), version("v2", mirrored=True, recorded=None)
    decision = decide_stage(early, late, early["status"]["conditions"], NOW)
    assert not decision.archive and decision.conditions is None and decision.event is None


# --- a deployment following a line ----------------------------------------------------------------


def following(status: dict[str, Any] | None = None) -> dict[str, Any]:
    body = deployment(status=status)
    del body["spec"]["modelRef"]
    body["spec"]["model"] = {"line": "shapes", "stage": "production"}
    return body


def plan_following(body: dict[str, Any], artifacts: list[dict[str, Any]], pods_: list[PodView]) -> Any:
    line = line_target("shapes", "production", artifacts)
    ed = EdgeDeployment.model_validate(body, context=ADMITTED)
    ed = ed.model_copy(update={"spec": ed.spec.model_copy(update={"model_ref": line.model})})
    by_name = {a["metadata"]["name"]: a for a in artifacts}
    return plan_rollout(
        ed,
        body,
        by_name.get(line.model or ""),
        by_name.get((body.get("status") or {}).get("previousModel") or ""),
        fleet(),
        pods_,
        {},
        NOW,
        template=EdgeTemplate(image="edge:1"),
        line=line,
    )


def conditions(result: Any) -> dict[str, Any]:
    return {c["type"]: c for c in result.status.get("conditions", [])}


def test_with_nothing_in_the_stage_the_fleet_is_left_alone_and_told_how_to_promote() -> None:
    result = plan_following(following(), [version("v1", stage="candidate")], [])
    assert result.daemonset is None and result.delete_pods == ()
    ready, follows = conditions(result)["ModelReady"], conditions(result)["FollowsLine"]
    assert ready["status"] == "False" and ready["reason"] == "NoArtifact"
    assert follows["status"] == "False" and "kubectl patch modelartifact" in follows["message"]


def test_the_holder_of_the_stage_rolls_out_and_a_new_holder_starts_a_new_rollout() -> None:
    v1, v2 = version("v1", recorded="2026-11-23T10:00:00Z"), version("v2", stage="staging")
    first = plan_following(following(), [v1, v2], pods({f"n{i}": "old" for i in range(10)}))
    annotations = first.daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["visioninapp.io/model"] == "v1" and first.status["lineModel"] == "v1"
    assert conditions(first)["FollowsLine"]["reason"] == "OnLine"
    # v1 everywhere; then v2 is promoted (not recorded yet): a new rollout towards v2.
    on_v1 = following(status={**first.status, "phase": "Healthy"})
    promoted = version("v2", recorded=None)
    second = plan_following(on_v1, [v1, promoted], pods({f"n{i}": revision_of("v1") for i in range(10)}))
    assert second.daemonset["spec"]["template"]["metadata"]["annotations"]["visioninapp.io/model"] == "v2"
    assert second.status["lineModel"] == "v2" and second.status["previousModel"] == "v1"
    assert ("Normal", "RolloutStarted") in [e[:2] for e in second.events]


def test_a_version_rolled_back_here_is_held_back_until_the_stage_moves_on() -> None:
    v1 = version("v1", stage="archived")
    v2 = version("v2", recorded="2026-11-23T11:00:00Z")
    old, new = revision_of("v1"), revision_of("v2")
    status = v2_canary_started(new)
    crashing = crash_on_first_node(old, new)
    rolled = plan_following(following(status), [v1, v2], crashing)
    assert rolled.status["phase"] == "RolledBack" and rolled.status["currentModel"] == "v1"
    held = conditions(rolled)["FollowsLine"]
    assert held["status"] == "False" and held["reason"] == "HeldBack"
    assert (
        "v2 (production of shapes) was rolled back here" in held["message"]
        and "stays on v1" in held["message"]
    )
    # The line still says v2: this deployment stays on v1, and says why, on every later pass.
    after = following({**status, **rolled.status})
    again = plan_following(after, [v1, v2], pods({f"n{i}": old for i in range(10)}))
    assert again.daemonset is None and again.delete_pods == ()
    assert "FollowsLine" not in conditions(again) or conditions(again)["FollowsLine"]["reason"] == "HeldBack"
    assert "conditions" not in again.status  # unchanged: still HeldBack
    # v3 is promoted: the deployment moves on to it through its canary.
    v3 = version("v3", recorded=None)
    moved = plan_following(after, [v1, v2, v3], pods({f"n{i}": old for i in range(10)}))
    assert moved.daemonset["spec"]["template"]["metadata"]["annotations"]["visioninapp.io/model"] == "v3"
    assert conditions(moved)["FollowsLine"]["reason"] == "OnLine"


def test_line_target_names_the_holder() -> None:
    target = line_target("shapes", "production", [version("v1")])
    assert (target.model, target.holder, target.reason) == ("v1", "v1", "OnLine")


def test_a_deployment_pinned_to_one_artifact_again_drops_the_line_from_its_status() -> None:
    on_line = plan_following(following(), [version("v1")], pods({f"n{i}": "old" for i in range(10)}))
    assert conditions(on_line)["FollowsLine"]["reason"] == "OnLine"
    pinned = deployment("v1", status={**on_line.status, "phase": "Progressing"})
    again = plan_rollout(
        EdgeDeployment.model_validate(pinned, context=ADMITTED),
        pinned,
        version("v1"),
        None,
        fleet(),
        pods({f"n{i}": "old" for i in range(10)}),
        {},
        NOW,
        template=EdgeTemplate(image="edge:1"),
    )
    assert again.status["lineModel"] is None and "FollowsLine" not in conditions(again)
