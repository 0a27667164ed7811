"""RetrainPolicies run by the API over the real services: no trigger at N-1 frames with labels ready
and a fine-tune at N (the frames published as the dataset's next version, reviewed labels only; a
TrainingJob from the line's production version, gated against it on the held-out set); one run at
a time; a candidate that fails its gate promotes nothing and says why; one that passes is promoted."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api import test_reviews
from tests.api.test_api import artifact
from tests.api.test_reviews import Seeded, _with_dataset
from tests.helpers import wait_for
from visioninapp.api.sync import ClusterSync

seeded = test_reviews.seeded  # the fixture: a project whose deployment sent three hard frames

pytestmark = pytest.mark.services

GROUP = "visioninapp.io"


def held_out(project: str) -> str:
    return f"datasets/{project}/helmets-held-out/v1"  # a dataset of the project: never trained on


def policy(project: str, name: str = "helmets-loop", **spec: Any) -> dict[str, Any]:
    return {
        "name": name,
        "spec": {
            "line": "helmets",
            "triggers": {"reviewedFrames": 2},
            "minIntervalMinutes": 0,
            "training": {"dataset": "shapes", "hyperparameters": {"epochs": 3, "imgsz": 96}},
            "gate": {"heldOut": {"uri": held_out(project)}, "maxDrop": 0.02},
            "promoteTo": "production",
            **spec,
        },
    }


def evaluate(seeded: Seeded, name: str = "helmets-loop") -> dict[str, Any]:
    response = seeded.api.client.post(
        f"/api/v1/projects/{seeded.project}/retrain-policies/{name}/evaluate",
        headers=seeded.api.as_user("alice"),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def runs(seeded: Seeded) -> list[dict[str, Any]]:
    jobs = seeded.api.cluster.list(GROUP, "trainingjobs", seeded.project)
    return [j for j in jobs if (j["metadata"].get("labels") or {}).get("visioninapp.io/retrain-policy")]


def finish(seeded: Seeded, run: str, candidate: str, gate: dict[str, Any] | None) -> None:
    """As the operator would: the run succeeded, its ModelArtifact exists and its gate was checked."""
    cluster, project = seeded.api.cluster, seeded.project
    cluster.patch(
        GROUP,
        "trainingjobs",
        project,
        run,
        {"status": {"phase": "Succeeded", "artifact": candidate}},
        "status",
    )
    cluster.create(GROUP, "modelartifacts", project, artifact(candidate, project, map5095=0.4, job=run))
    if gate is not None:
        passed = gate["passed"]
        condition = {
            "type": "QualityGate",
            "status": "True" if passed else "False",
            "reason": "Passed" if passed else "Failed",
            "message": "; ".join(gate["reasons"]) or "passed",
            "lastTransitionTime": "2026-11-30T21:00:00Z",
        }
        status = {"phase": "Available", "conditions": [condition], "qualityGate": gate}
        cluster.patch(GROUP, "modelartifacts", project, candidate, {"status": status}, "status")


def gate(passed: bool, reasons: list[str]) -> dict[str, Any]:
    return {
        "passed": passed,
        "baseline": "m1",
        "heldOut": {"candidate": 0.29 if not passed else 0.31, "baseline": 0.3},
        "maxDrop": 0.02,
        "reasons": reasons,
    }


def stage(seeded: Seeded, name: str) -> str:
    return str(seeded.api.cluster.get(GROUP, "modelartifacts", seeded.project, name)["spec"]["stage"])


def start(seeded: Seeded, tmp_path: Any, **spec: Any) -> None:
    _with_dataset(seeded, tmp_path)
    alice = seeded.api.as_user("alice")
    verified = {"status": {"phase": "Available"}}  # as the operator leaves it: it can hold a stage
    seeded.api.cluster.patch(GROUP, "modelartifacts", seeded.project, "m1", verified, "status")
    promoted = seeded.api.client.patch(
        f"/api/v1/projects/{seeded.project}/models/m1", json={"stage": "production"}, headers=alice
    )
    assert promoted.status_code == 200, promoted.text
    created = seeded.api.client.post(
        f"/api/v1/projects/{seeded.project}/retrain-policies",
        json=policy(seeded.project, **spec),
        headers=alice,
    )
    assert created.status_code == 201, created.text


def test_no_trigger_at_n_minus_1_frames_a_fine_tune_at_n(seeded: Seeded, tmp_path: Any) -> None:
    start(seeded, tmp_path)
    first, second, third = seeded.frames
    seeded.ok("POST", f"/{first}/accept", json={"revision": 0})
    waiting = evaluate(seeded)
    assert waiting["phase"] == "Waiting" and waiting["status"]["readyFrames"] == 1
    assert waiting["status"]["pendingFrames"] == 2
    assert "1 of 2 frames have labels ready (2 wait for review)" in waiting["message"]
    assert runs(seeded) == []
    seeded.ok("POST", f"/{second}/reject", json={"revision": 0})  # a rejected frame never counts
    assert evaluate(seeded)["status"]["readyFrames"] == 1 and runs(seeded) == []

    seeded.ok("POST", f"/{third}/accept", json={"revision": 0})
    triggered = evaluate(seeded)
    status = triggered["status"]
    assert triggered["phase"] == "Training" and status["runs"] == 1 and status["run"] == "helmets-loop-r1"
    assert "2 frames with labels ready (trigger at 2)" in status["lastTrigger"]["reason"]
    assert status["datasetVersion"] == 2 and status["baseline"] == "m1"
    [job] = runs(seeded)
    spec = job["spec"]
    assert spec["model"] == {"baseModel": "m1"}  # fine-tuned from the line's production version
    version = seeded.api.client.get(
        f"/api/v1/projects/{seeded.project}/datasets/shapes/versions/2", headers=seeded.api.as_user("alice")
    ).json()
    assert spec["dataset"]["uri"] == version["uri"]
    assert version["provenance"]["addedFrames"] == [first, third]
    assert version["provenance"]["autoAcceptedLabels"] == 0  # the review path: people's labels only
    assert spec["evaluation"] == {
        "heldOut": {"uri": held_out(seeded.project), "dataYaml": "data.yaml"},
        "baseline": "m1",
        "maxDrop": 0.02,
    }
    assert spec["output"] == {"model": "helmets", "artifactName": "helmets-loop-r1"}
    assert spec["hyperparameters"]["epochs"] == 3
    # One run at a time: passes while it trains start nothing more.
    again = evaluate(seeded)
    assert again["phase"] == "Training" and again["status"]["runs"] == 1 and len(runs(seeded)) == 1
    assert "helmets-loop-r1 is" in again["message"]


def test_a_failing_gate_promotes_nothing_and_says_why(seeded: Seeded, tmp_path: Any) -> None:
    start(seeded, tmp_path)
    for frame in seeded.frames[:2]:
        seeded.ok("POST", f"/{frame}/accept", json={"revision": 0})
    evaluate(seeded)
    finish(seeded, "helmets-loop-r1", "bad-r1", None)
    checking = evaluate(seeded)
    assert checking["phase"] == "Training" and "waiting for its quality gate" in checking["message"]
    dropped = "held-out mAP50-95 dropped 0.010 (0.300 → 0.290), more than maxDrop 0.020 allows"
    finish_gate = gate(False, [dropped])
    seeded.api.cluster.patch(
        GROUP,
        "modelartifacts",
        seeded.project,
        "bad-r1",
        {
            "status": {
                "qualityGate": finish_gate,
                "conditions": [
                    {
                        "type": "QualityGate",
                        "status": "False",
                        "reason": "Failed",
                        "message": dropped,
                        "lastTransitionTime": "2026-11-30T21:00:00Z",
                    }
                ],
            }
        },
        "status",
    )
    failed = evaluate(seeded)
    assert failed["phase"] == "GateFailed" and dropped in failed["message"]
    promoted = {c["type"]: c for c in failed["status"]["conditions"]}["Promoted"]
    assert promoted["status"] == "False" and promoted["reason"] == "GateFailed"
    assert stage(seeded, "bad-r1") == "candidate" and stage(seeded, "m1") == "production"
    settled = evaluate(seeded)  # later passes keep the outcome while they wait for new frames
    assert settled["phase"] == "GateFailed" and dropped in settled["status"]["result"]
    assert settled["message"].startswith("waiting: 0 of 2 frames")
    # The outcome reaches the notifications once, however many passes see it.
    ClusterSync(seeded.api.container).sync_once()
    ClusterSync(seeded.api.container).sync_once()
    notes = seeded.api.client.get(
        f"/api/v1/projects/{seeded.project}/notifications", headers=seeded.api.as_user("alice")
    ).json()["items"]
    gated = [n for n in notes if n["kind"] == "retrain-gate-failed"]
    assert len(gated) == 1 and dropped in gated[0]["message"]


def test_a_passing_candidate_is_promoted(seeded: Seeded, tmp_path: Any) -> None:
    start(seeded, tmp_path)
    for frame in seeded.frames[:2]:
        seeded.ok("POST", f"/{frame}/accept", json={"revision": 0})
    evaluate(seeded)
    finish(seeded, "helmets-loop-r1", "good-r1", gate(True, []))
    done = evaluate(seeded)
    assert done["phase"] == "Promoted" and done["status"]["candidate"] == "good-r1"
    assert stage(seeded, "good-r1") == "production"
    # Settled: with no new frames nothing starts, and the outcome stays visible.
    later = evaluate(seeded)
    assert later["phase"] == "Promoted" and later["status"]["runs"] == 1 and len(runs(seeded)) == 1


def test_auto_accept_counts_pending_frames_above_the_threshold(seeded: Seeded, tmp_path: Any) -> None:
    start(seeded, tmp_path, labels={"autoAcceptMinScore": 0.5})
    # Two frames propose a box at >= 0.5 (0.62, 0.55); the third (0.12) waits for a person.
    triggered = evaluate(seeded)
    assert triggered["phase"] == "Training" and triggered["status"]["pendingFrames"] == 1
    version = seeded.api.client.get(
        f"/api/v1/projects/{seeded.project}/datasets/shapes/versions/2", headers=seeded.api.as_user("alice")
    ).json()
    assert version["provenance"]["autoAcceptedFrames"] == 2 and version["provenance"]["reviewedFrames"] == 0


def test_the_evaluation_record_is_served_checked_and_a_failed_gate_is_not_promoted(api: Any) -> None:
    from tests.unit.test_evaluation import record

    project = api.new_project({"alice": "member"})
    data = record(passed=False).model_dump_json(by_alias=True).encode()
    uri = f"{api.settings.resolved_artifacts_uri}/{project}/bad/evaluation.json"
    store = api.container.store_for(uri)
    store.put_bytes(data, uri)
    model = artifact("bad", project, map5095=0.4)
    model["spec"]["evaluation"] = {"uri": uri, "sha256": hashlib.sha256(data).hexdigest()}
    api.cluster.create(GROUP, "modelartifacts", project, model)
    verdict = record(passed=False).verdict
    gate = {
        "passed": False,
        "heldOut": {"candidate": 0.4, "baseline": 0.6},
        "maxDrop": 0.01,
        "reasons": verdict.reasons,
    }
    alice = api.as_user("alice")
    unchecked = api.client.patch(
        f"/api/v1/projects/{project}/models/bad", json={"stage": "staging"}, headers=alice
    )
    assert unchecked.status_code == 409 and "not checked yet" in unchecked.json()["error"]["message"]
    condition = {
        "type": "QualityGate",
        "status": "False",
        "reason": "Failed",
        "message": verdict.summary,
        "lastTransitionTime": "2026-11-30T21:00:00Z",
    }
    status = {"qualityGate": gate, "conditions": [condition]}
    api.cluster.patch(GROUP, "modelartifacts", project, "bad", {"status": status}, "status")
    served = api.client.get(f"/api/v1/projects/{project}/models/bad/evaluation", headers=alice)
    assert served.status_code == 200, served.text
    body = served.json()
    assert body["schemaVersion"] == 1 and body["verdict"]["passed"] is False
    assert body["datasets"][0]["role"] == "heldOut" and body["datasets"][0]["classes"][0]["baseline"]
    shown = api.client.get(f"/api/v1/projects/{project}/models/bad", headers=alice).json()
    assert shown["qualityGate"]["passed"] is False and shown["evaluation"]["uri"] == uri
    refused = api.client.patch(
        f"/api/v1/projects/{project}/models/bad", json={"stage": "production"}, headers=alice
    )
    assert refused.status_code == 409 and "quality gate failed" in refused.json()["error"]["message"]
    assert (
        api.client.patch(
            f"/api/v1/projects/{project}/models/bad", json={"stage": "archived"}, headers=alice
        ).status_code
        == 200
    )
    store.put_bytes(data + b" ", uri)  # changed after the operator checked it
    tampered = api.client.get(f"/api/v1/projects/{project}/models/bad/evaluation", headers=alice)
    assert tampered.status_code == 409 and "does not match its sha256" in tampered.json()["error"]["message"]
    plain = artifact("plain", project, map5095=0.4)
    api.cluster.create(GROUP, "modelartifacts", project, plain)
    missing = api.client.get(f"/api/v1/projects/{project}/models/plain/evaluation", headers=alice)
    assert missing.status_code == 404 and "without a quality gate" in missing.json()["error"]["message"]


def test_two_replicas_seeing_one_trigger_start_one_run(seeded: Seeded, tmp_path: Any) -> None:
    from visioninapp.api.domain import retrain

    start(seeded, tmp_path)
    for frame in seeded.frames[:2]:
        seeded.ok("POST", f"/{frame}/accept", json={"revision": 0})
    container, project = seeded.api.container, seeded.project
    stale = container.clusters.training.get("RetrainPolicy", project, "helmets-loop")  # read by both
    artifacts = container.clusters.training.list("ModelArtifact", project)
    now = datetime.now(UTC)
    first = retrain._run(container, stale, artifacts, now)
    second = retrain._run(container, stale, artifacts, now)  # its claim is refused: it does nothing
    assert first["status"]["run"] == "helmets-loop-r1", first["status"]
    assert second == stale, second.get("status")
    assert len(runs(seeded)) == 1
    versions = seeded.api.client.get(
        f"/api/v1/projects/{project}/datasets/shapes", headers=seeded.api.as_user("alice")
    ).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]  # one dataset version for the one run


def test_a_policy_created_again_never_adopts_an_earlier_run(seeded: Seeded, tmp_path: Any) -> None:
    start(seeded, tmp_path)
    for frame in seeded.frames[:2]:
        seeded.ok("POST", f"/{frame}/accept", json={"revision": 0})
    evaluate(seeded)
    finish(seeded, "helmets-loop-r1", "old-r1", gate(True, []))
    alice = seeded.api.as_user("alice")
    seeded.api.cluster.delete(GROUP, "retrainpolicies", seeded.project, "helmets-loop")
    wait_for(
        lambda: seeded.api.cluster.get(GROUP, "retrainpolicies", seeded.project, "helmets-loop") is None,
        30,
        "the policy to be deleted",
    )
    again = seeded.api.client.post(
        f"/api/v1/projects/{seeded.project}/retrain-policies",
        json=policy(seeded.project, triggers={"reviewedFrames": 1}),
        headers=alice,
    )
    assert again.status_code == 201, again.text
    seeded.ok("POST", f"/{seeded.frames[2]}/accept", json={"revision": 0})
    started = evaluate(seeded)  # its first run is r2: r1 (and its candidate) belong to the earlier policy
    assert started["status"]["run"] == "helmets-loop-r2" and started["status"]["runs"] == 2
    followed = evaluate(seeded)
    assert followed["phase"] == "Training" and stage(seeded, "old-r1") == "candidate"


def test_the_confidence_trigger_reads_the_fleets_windows(seeded: Seeded, tmp_path: Any) -> None:
    from visioninapp.api.db import EdgeWindow

    start(
        seeded, tmp_path, triggers={"confidenceDrop": {"windowMinutes": 10, "drop": 0.1, "minDetections": 20}}
    )
    seeded.ok("POST", f"/{seeded.frames[0]}/accept", json={"revision": 0})
    now = datetime.now(UTC)
    with seeded.api.container.db.session() as session:
        for minutes_ago, mean in ((50, 0.81), (48, 0.79), (5, 0.62), (3, 0.60)):  # first windows, last ones
            end = now - timedelta(minutes=minutes_ago)
            session.add(
                EdgeWindow(
                    project_name=seeded.project,
                    deployment="dock",
                    node="jetson-0",
                    revision="r",
                    model_version="m1",
                    window_start=end - timedelta(seconds=15),
                    window_end=end,
                    requests=10,
                    errors=0,
                    detections_per_class={"circle": 15},
                    mean_confidence=mean,
                    stream_offset=10_000 + minutes_ago,
                )
            )
    triggered = evaluate(seeded)
    assert triggered["phase"] == "Training", triggered["message"]
    assert "mean confidence fell from 0.800 to 0.610" in triggered["status"]["lastTrigger"]["reason"]


def test_a_policy_reads_and_writes_only_in_its_project(seeded: Seeded) -> None:
    other = seeded.api.new_project({"alice": "member"})
    url = f"/api/v1/projects/{seeded.project}/retrain-policies"
    alice = seeded.api.as_user("alice")
    foreign = policy(seeded.project)
    foreign["spec"]["gate"]["heldOut"]["uri"] = held_out(other)
    refused = seeded.api.client.post(url, json=foreign, headers=alice)
    assert refused.status_code == 403 and "spec.gate.heldOut.uri" in refused.json()["error"]["message"]
    elsewhere = policy(seeded.project)
    elsewhere["spec"]["training"]["outputUri"] = "s3://somebody-elses-bucket/runs"
    refused = seeded.api.client.post(url, json=elsewhere, headers=alice)
    assert refused.status_code == 403 and "spec.training.outputUri" in refused.json()["error"]["message"]
    reader = seeded.api.client.post(url, json=policy(seeded.project), headers=seeded.api.as_user("vera"))
    assert reader.status_code == 403
    viewer_evaluate = seeded.api.client.post(
        f"{url}/helmets-loop/evaluate", headers=seeded.api.as_user("vera")
    )
    assert viewer_evaluate.status_code == 403
