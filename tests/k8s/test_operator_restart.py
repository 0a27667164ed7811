"""Crash safety: the operator is SIGKILLed at random points while TrainingJobs are processed."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

import pytest

from tests.k8s.conftest import wait_for
from visioninapp.events import TrainerResult
from visioninapp.local.cluster.agent import Outcome
from visioninapp.local.cluster.cluster import Cluster

GROUP = "visioninapp.io"
JOBS, KILLS = 50, 20
pytestmark = pytest.mark.slow


def outcome_for(pod: dict[str, Any]) -> Outcome:
    """Every 5th job fails; the others succeed with a result pointing at local files."""
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    config = json.loads(env["VISIONINAPP_TRAINER_CONFIG_JSON"])
    index = int(config["name"].rsplit("-", 1)[1])
    seconds = random.Random(index).uniform(0.2, 3.0)
    if index % 5 == 0:
        return Outcome(exit_code=1, message="error: scripted failure", seconds=seconds)
    result = TrainerResult(
        formats=[
            {"format": "pt", "uri": f"file:///nonexistent/{config['name']}.pt", "sha256": "0" * 64, "size": 1}
        ],
        manifest_uri=f"file:///nonexistent/{config['name']}.json",
        class_names=["circle"],
        imgsz=64,
        epochs_run=1,
        attempt=config["attempt"],
    )
    return Outcome(message=result.to_termination_message(), seconds=seconds)


def test_killed_operator_creates_nothing_twice_and_finishes_everything(
    cluster: Cluster, operator_factory: Any
) -> None:
    cluster.set_script(outcome_for)
    cluster.add_node("gpu-1", gpus=64, labels={"agentpool": "gpu"})
    operator = operator_factory(cluster)
    for index in range(JOBS):
        cluster.create(
            GROUP,
            "trainingjobs",
            cluster.namespace,
            {
                "apiVersion": "visioninapp.io/v1alpha1",
                "kind": "TrainingJob",
                "metadata": {"name": f"run-{index}"},
                "spec": {
                    "model": {"architecture": "yolo11n"},
                    "dataset": {"uri": "file:///data/shapes"},
                    "backoffLimit": 0,
                    "resources": {"gpu": {"count": 1}},
                },
            },
        )
    chaos = random.Random(7)
    for _ in range(KILLS):
        time.sleep(chaos.uniform(0.1, 0.8))
        operator.kill()
        operator.start()

    def phases() -> Counter[str]:
        return Counter(
            (tj.get("status") or {}).get("phase")
            for tj in cluster.list(GROUP, "trainingjobs", cluster.namespace)
        )

    wait_for(lambda: phases()["Succeeded"] + phases()["Failed"] == JOBS, 120, "every run to finish", operator)
    assert phases() == {"Succeeded": 40, "Failed": 10}
    # Nothing was made twice: nothing of the run's was ever deleted (the API server's audit record;
    # a create can be cut off by the kill after it took effect, so its answer proves nothing), and
    # one Job, one pod and (for a success) one ModelArtifact exist per run.
    deleted = [
        (r["objectRef"]["resource"], r["objectRef"].get("name"))
        for r in cluster.plane.audit_records(cluster.namespace)
        if r["verb"] in ("delete", "deletecollection")
        and r["objectRef"].get("resource") in ("jobs", "pods", "modelartifacts")
    ]
    assert deleted == [], deleted
    jobs = Counter(j["metadata"]["name"] for j in cluster.list("batch", "jobs", cluster.namespace))
    pods = Counter(
        p["metadata"]["labels"]["batch.kubernetes.io/job-name"]
        for p in cluster.list("", "pods", cluster.namespace)
    )
    artifacts = {a["metadata"]["name"] for a in cluster.list(GROUP, "modelartifacts", cluster.namespace)}
    for tj in cluster.list(GROUP, "trainingjobs", cluster.namespace):
        name = tj["metadata"]["name"]
        assert tj["status"]["attempts"] == 1, name
        assert jobs[f"{name}-1"] == 1 and pods[f"{name}-1"] == 1, (name, jobs[f"{name}-1"], pods[f"{name}-1"])
        assert (name in artifacts) == (tj["status"]["phase"] == "Succeeded"), name
    assert sum(jobs.values()) == JOBS and sum(pods.values()) == JOBS and len(artifacts) == 40
    assert operator.starts == KILLS + 1
