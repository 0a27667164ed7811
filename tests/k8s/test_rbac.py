"""The chart's RBAC is exactly what the code calls: the real operator and the real API run a whole
scenario against the emulated cluster, each with its own bearer token; the emulator records every
(verb, group, resource) each one used, and the ClusterRoles the chart renders must allow all of them
(nothing missing) and nothing else (least privilege)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import requests
import yaml

from tests.k8s.conftest import wait_for
from tests.k8s.test_operator import successful_trainer, training_job
from tests.services import free_port
from visioninapp.cluster.agent import Outcome
from visioninapp.cluster.cluster import Cluster

GROUP = "visioninapp.io"
REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.services, pytest.mark.slow]

Access = set[tuple[str, str, str]]  # (verb, API group, resource[/subresource])
# Calls on paths a scenario cannot reach on purpose: after races and restarts. Each names its code.
RACE_PATHS = {
    ("get", "batch", "jobs"): "handlers.apply: adopt a Job whose create answered 409 (made before a restart)",
    ("get", "apps", "daemonsets"): "handlers.apply_daemonset: the same for a DaemonSet",
    ("get", "visioninapp.io", "trainingjobs"): "handlers.release_if_orphaned: a TrainingJob not cached yet",
}


def kubeconfig_with_token(cluster: Cluster, path: Path, token: str) -> Path:
    config = cluster.kubeconfig_dict(cluster.namespace)
    config["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def chart_rules(values: dict[str, Any], role: str) -> Access:
    chart = helm_python.Chart.load(str(REPO / "charts" / "visioninapp"))
    rendered = chart.render(values, name="visioninapp", namespace="visioninapp", is_install=True)
    documents = [
        d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d
    ]
    cluster_role = next(
        d for d in documents if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(role)
    )
    return {
        (verb, group, resource)
        for rule in cluster_role["rules"]
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def used_by(cluster: Cluster, token: str) -> Access:
    access = cluster.call(lambda: set(cluster.emulator.access))
    return {(verb, group, resource) for who, verb, group, resource in access if who == token}


@pytest.fixture
def api_process(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """`visioninapp-api serve` on its embedded defaults, talking to the cluster as "api"."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONINAPP_")}
    env |= {
        "KUBECONFIG": str(kubeconfig_with_token(cluster, tmp_path / "api.kubeconfig", "api")),
        "VISIONINAPP_DATA_DIR": str(tmp_path / "api-data"),
        "VISIONINAPP_API_PORT": str(port),
    }
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "visioninapp.api.main", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "the API")
        yield url
    finally:
        process.terminate()
        process.wait(20)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def test_the_operators_cluster_role_is_exactly_what_it_calls(
    cluster: Cluster, operator_factory: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"rbac-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    trainer = successful_trainer(s3)
    cluster.set_script(
        lambda pod: trainer(pod) if "job-name" in pod["metadata"]["labels"] else Outcome(math.inf)
    )
    cluster.add_node(
        "jetson-0",
        labels={"visioninapp.io/edge": "true"},
        taints=[{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}],
    )
    operator = operator_factory(
        cluster,
        KUBECONFIG=str(kubeconfig_with_token(cluster, tmp_path / "operator.kubeconfig", "operator")),
        VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint,
        VISIONINAPP_ARTIFACTS_URI=f"s3://{bucket}/runs",
        VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS="0.3",
    )

    def phase(plural: str, name: str) -> str | None:
        return ((cluster.get(GROUP, plural, cluster.namespace, name) or {}).get("status") or {}).get("phase")

    for name in ("v1", "v2"):  # two runs, two models
        cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job(name))
        wait_for(lambda n=name: phase("modelartifacts", n) == "Available", 60, f"model {name}", operator)
    tuned = training_job("v3")
    tuned["spec"]["model"] = {"baseModel": "v1"}  # fine-tuning reads its base model
    cluster.create(GROUP, "trainingjobs", cluster.namespace, tuned)
    cluster.create(GROUP, "trainingjobs", cluster.namespace, training_job("long"))
    wait_for(lambda: phase("trainingjobs", "long") == "Running", 60, "a long run", operator)
    cluster.patch(
        GROUP, "trainingjobs", cluster.namespace, "long", {"spec": {"suspend": True}}
    )  # deletes its Job
    wait_for(
        lambda: not cluster.list("batch", "jobs", cluster.namespace, "visioninapp.io/training-job=long"),
        30,
        "suspend",
    )
    wait_for(lambda: phase("modelartifacts", "v3") == "Available", 60, "the fine-tuned model", operator)

    deployment = {
        "metadata": {"name": "gate"},
        "spec": {"modelRef": "v1", "strategy": {"healthGate": {"minReadySeconds": 1}}},
    }
    cluster.create(GROUP, "edgedeployments", cluster.namespace, deployment)
    wait_for(lambda: phase("edgedeployments", "gate") == "Healthy", 60, "v1 on the fleet", operator)

    def serving(model: str) -> bool:
        status = (cluster.get(GROUP, "edgedeployments", cluster.namespace, "gate") or {}).get("status") or {}
        return status.get("currentModel") == model and status.get("phase") == "Healthy"

    cluster.patch(GROUP, "edgedeployments", cluster.namespace, "gate", {"spec": {"modelRef": "v2"}})
    wait_for(lambda: serving("v2"), 60, "v2 on the fleet (its pod replaced)", operator)
    action = {"metadata": {"annotations": {"visioninapp.io/rollout-action": "rollback"}}}
    cluster.patch(
        GROUP, "edgedeployments", cluster.namespace, "gate", action
    )  # the operator clears it when done
    wait_for(
        lambda: (
            "visioninapp.io/rollout-action"
            not in (
                (cluster.get(GROUP, "edgedeployments", cluster.namespace, "gate") or {})["metadata"].get(
                    "annotations"
                )
                or {}
            )
        ),
        60,
        "the rollback action to be taken",
        operator,
    )
    cluster.delete(GROUP, "edgedeployments", cluster.namespace, "gate")
    cluster.delete(GROUP, "trainingjobs", cluster.namespace, "v2")
    wait_for(
        lambda: cluster.get(GROUP, "trainingjobs", cluster.namespace, "v2") is None,
        30,
        "v2 deleted",
        operator,
    )
    time.sleep(1)

    used = used_by(cluster, "operator")
    allowed = chart_rules({}, "-operator")
    assert used - allowed == set(), (
        f"the operator calls what its ClusterRole does not allow: {used - allowed}"
    )
    unused = allowed - used - set(RACE_PATHS)
    assert unused == set(), f"the operator's ClusterRole allows what it never calls: {unused}"
    assert set(RACE_PATHS) <= allowed
    training_only = chart_rules({"operator": {"roles": ["training"]}}, "-operator")
    assert ("create", "apps", "daemonsets") not in training_only and (
        "create",
        "batch",
        "jobs",
    ) in training_only
    rollout_only = chart_rules({"operator": {"roles": ["rollout"]}}, "-operator")
    assert ("create", "batch", "jobs") not in rollout_only and ("list", "", "nodes") in rollout_only


def test_the_apis_cluster_role_is_exactly_what_it_calls(cluster: Cluster, api_process: str) -> None:
    cluster.add_node("jetson-0", labels={"visioninapp.io/edge": "true"})
    cluster.create(
        GROUP,
        "modelartifacts",
        cluster.namespace,
        {
            "metadata": {"name": "helmets-v1"},
            "spec": {
                "model": "helmets",
                "version": "v1",
                "formats": [{"format": "onnx", "uri": "s3://models/v1.onnx", "sha256": "a" * 64, "size": 10}],
                "classNames": ["helmet"],
            },
        },
    )
    base = f"{api_process}/api/v1"

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{base}{path}", timeout=30, **kwargs)
        assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    call("POST", "/projects", json={"name": cluster.namespace})
    spec = {
        "model": {"architecture": "yolo11n"},
        "dataset": {"uri": "s3://datasets/helmets/v3"},
        "resources": {"gpu": {"count": 1}},
    }
    call("POST", "/projects/vision/training-jobs", json={"name": "run-1", "spec": spec})
    call("GET", "/projects/vision/training-jobs")
    call("GET", "/projects/vision/training-jobs/run-1")
    call("POST", "/projects/vision/training-jobs/run-1/suspend")
    call("DELETE", "/projects/vision/training-jobs/run-1")
    call("GET", "/projects/vision/models")
    call("GET", "/projects/vision/models/helmets-v1")
    call("PATCH", "/projects/vision/models/helmets-v1", json={"stage": "staging"})
    call("POST", "/projects/vision/deployments", json={"name": "gate", "spec": {"modelRef": "helmets-v1"}})
    call("GET", "/projects/vision/deployments")
    call("PATCH", "/projects/vision/deployments/gate", json={"paused": True})
    call("POST", "/projects/vision/deployments/gate/rollback")
    call("GET", "/projects/vision/deployments/gate/nodes")
    call("DELETE", "/projects/vision/deployments/gate")
    time.sleep(3)  # a round of the cluster sync

    used = used_by(cluster, "api")
    allowed = chart_rules({}, "-api")
    assert used - allowed == set(), f"the API calls what its ClusterRole does not allow: {used - allowed}"
    assert allowed - used == set(), f"the API's ClusterRole allows what it never calls: {allowed - used}"
