"""The routes the console's "why" and fleet views read: Kubernetes Events of a run and of a
deployment, what the training cluster's nodes offer, and a deployment's traffic over time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import ApiEnv
from tests.api.test_api import artifact
from visioninapp.api.domain.insight import node_capacity

GROUP = "visioninapp.io"
SPEC = {"modelRef": "helmets-v1", "strategy": {"canary": {"steps": [50, 100]}}}


def _event(
    project: str, name: str, kind: str, reason: str, message: str, when: datetime, **extra: Any
) -> dict[str, Any]:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": name},
        "involvedObject": {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": kind,
            "name": "gate",
            "namespace": project,
        },
        "reason": reason,
        "message": message,
        "type": extra.get("type", "Normal"),
        "count": extra.get("count", 1),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": "visioninapp-operator"},
    }


def test_events_of_a_deployment_newest_first_and_only_its_own(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    api.cluster.create(GROUP, "modelartifacts", project, artifact("helmets-v1", project, map5095=0.4))
    created = api.client.post(
        f"/api/v1/projects/{project}/deployments", json={"name": "gate", "spec": SPEC}, headers=alice
    )
    assert created.status_code == 201, created.text
    now = datetime.now(UTC).replace(microsecond=0)
    api.cluster.create(
        "",
        "events",
        project,
        _event(project, "gate.1", "EdgeDeployment", "StepStarted", "wave 1: 1 node", now),
    )
    api.cluster.create(
        "",
        "events",
        project,
        _event(
            project,
            "gate.2",
            "EdgeDeployment",
            "GateFailed",
            "error rate 0.2 > 0.05",
            now + timedelta(seconds=5),
            type="Warning",
            count=3,
        ),
    )
    # Same name, other kind: not the deployment's.
    api.cluster.create("", "events", project, _event(project, "gate.3", "TrainingJob", "Scheduled", "x", now))

    events = api.client.get(f"/api/v1/projects/{project}/deployments/gate/events", headers=alice)
    assert events.status_code == 200, events.text
    body = events.json()
    assert [e["reason"] for e in body] == ["GateFailed", "StepStarted"]
    assert body[0]["type"] == "Warning" and body[0]["count"] == 3
    assert body[0]["source"] == "visioninapp-operator"
    assert body[0]["message"] == "error rate 0.2 > 0.05"

    missing = api.client.get(f"/api/v1/projects/{project}/deployments/nothing/events", headers=alice)
    assert missing.status_code == 404 and "nothing" in missing.json()["error"]["message"]


def test_events_of_a_training_run(api: ApiEnv) -> None:
    project = api.new_project({"alice": "viewer"})
    api.cluster.create(
        GROUP,
        "trainingjobs",
        project,
        {
            "metadata": {"name": "gate"},
            "spec": {"model": {"architecture": "yolo11n"}, "dataset": {"uri": "s3://datasets/helmets/v1"}},
        },
    )
    now = datetime.now(UTC)
    api.cluster.create(
        "",
        "events",
        project,
        _event(
            project,
            "gate.t",
            "TrainingJob",
            "FailedScheduling",
            "Insufficient nvidia.com/gpu",
            now,
            type="Warning",
        ),
    )
    events = api.client.get(
        f"/api/v1/projects/{project}/training-jobs/gate/events", headers=api.as_user("alice")
    ).json()
    assert [(e["reason"], e["message"]) for e in events] == [
        ("FailedScheduling", "Insufficient nvidia.com/gpu")
    ]


def _node(name: str, *, gpus: int = 0, taint: bool = False, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "Orin"} if gpus else {}},
        "spec": {"taints": [{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}]}
        if taint
        else {},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_node_capacity_says_what_a_trainer_pod_can_get() -> None:
    edge = node_capacity(_node("local-edge-0", gpus=1, taint=True))
    assert edge["schedulable"] is False and edge["gpus"] == 1
    assert edge["taints"] == ["visioninapp.io/edge=true:NoSchedule"]
    cpu = node_capacity(_node("local-cpu-0"))
    assert cpu == {
        "name": "local-cpu-0",
        "schedulable": True,
        "gpus": 0,
        "gpuProduct": None,
        "cpu": "4",
        "memory": "8Gi",
        "taints": [],
    }
    assert node_capacity(_node("down", gpus=2, ready=False))["schedulable"] is False


def test_training_capacity_lists_the_clusters_nodes(api: ApiEnv) -> None:
    project = api.new_project({"alice": "viewer"})
    answer = api.client.get(f"/api/v1/projects/{project}/training-capacity", headers=api.as_user("alice"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    names = {n["metadata"]["name"] for n in api.cluster.list("", "nodes", None)}
    assert {n["name"] for n in body["nodes"]} == names
    usable = [n["gpus"] for n in body["nodes"] if n["schedulable"]]
    assert body["maxGpus"] == max(usable, default=0)


def test_fleet_history_sums_windows_per_bucket_per_node(api: ApiEnv) -> None:
    from visioninapp.api.db import EdgeWindow
    from visioninapp.api.domain.deployments import fleet_history

    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    api.cluster.create(GROUP, "modelartifacts", project, artifact("helmets-v1", project, map5095=0.4))
    assert (
        api.client.post(
            f"/api/v1/projects/{project}/deployments", json={"name": "gate", "spec": SPEC}, headers=alice
        ).status_code
        == 201
    )
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    rows = [  # (node, seconds before now, requests, errors, p95)
        ("jetson-a", 30, 100, 0, 4.0),
        ("jetson-a", 45, 50, 5, 9.5),
        ("jetson-b", 50, 10, 10, 20.0),
        ("jetson-a", 700, 7, 0, 3.0),  # the bucket before
        ("jetson-a", 4000, 999, 999, 999.0),  # older than the hour asked for
    ]
    with api.container.db.session() as session:
        for offset, (node, ago, requests, errors, p95) in enumerate(rows):
            end = now - timedelta(seconds=ago)
            session.add(
                EdgeWindow(
                    project_name=project,
                    deployment="gate",
                    node=node,
                    revision="r1",
                    model_version="helmets-v1",
                    window_start=end - timedelta(seconds=15),
                    window_end=end,
                    requests=requests,
                    errors=errors,
                    p95_ms=p95,
                    stream_offset=10_000_000 + hash(project) % 1_000_000 * 10 + offset,
                )
            )
    history = fleet_history(api.container, project, "gate", 3600, 6, now=now)
    assert history["stepSeconds"] == 600
    total, node_a, node_b = history["series"]
    assert [total["node"], node_a["node"], node_b["node"]] == [None, "jetson-a", "jetson-b"]
    last = total["points"][-1]
    assert (last["requests"], last["errors"], last["p95Ms"]) == (160, 15, 20.0)
    assert last["errorRate"] == pytest.approx(15 / 160)
    assert total["points"][-2]["requests"] == 7
    assert sum(p["requests"] for p in total["points"]) == 167  # the old window is out
    assert node_a["points"][-1]["requests"] == 150 and node_a["points"][-1]["p95Ms"] == 9.5
    assert node_b["points"][-1]["errorRate"] == 1.0
    assert total["points"][0]["errorRate"] is None  # no traffic: no rate, not 0

    route = api.client.get(
        f"/api/v1/projects/{project}/deployments/gate/history?seconds=3600&buckets=60", headers=alice
    )
    assert route.status_code == 200, route.text
    assert len(route.json()["series"][0]["points"]) == 60
    bad = api.client.get(f"/api/v1/projects/{project}/deployments/gate/history?seconds=5", headers=alice)
    assert bad.status_code == 422


def test_local_mode_registers_its_seeded_dataset_once(api: ApiEnv, tmp_path: Path) -> None:
    from visioninapp.local.mode import register_seeded_dataset
    from visioninapp.local.synth import generate_dataset

    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    seeded = tmp_path / "shapes"
    generate_dataset(seeded, train=6, val=2, imgsz=64, seed=0)
    url = f"/api/v1/projects/{project}"
    register_seeded_dataset(api.client, url, seeded, alice)
    register_seeded_dataset(api.client, url, seeded, alice)  # a restart: it has its version already
    shapes = api.client.get(f"{url}/datasets/shapes", headers=alice).json()
    assert [v["version"] for v in shapes["versions"]] == [1]
    assert shapes["versions"][0]["images"] == {"train": 6, "val": 2}
    assert "datasets/shapes/v1" in shapes["description"]


def _console(root: Path, *, bundle_first: bool = False) -> None:
    import gzip
    import json
    import os

    (root / "js" / "views").mkdir(parents=True)
    (root / "vendor").mkdir()
    (root / "index.html").write_text(
        '<html><head><link rel="stylesheet" href="vendor/bootstrap.css">'
        '<script id="console-config" type="application/json"></script></head>'
        '<body><script type="module" src="js/main.js"></script></body></html>'
    )
    (root / "js" / "main.js").write_text("import './views/a.js';")
    (root / "js" / "views" / "a.js").write_text("export const a = 1;")
    files = {
        "bootstrap.css": "vendor/bootstrap.0123456789ab.css",
        "firebase.js": "vendor/firebase.aaaaaaaaaaaa.js",
    }
    files["console.js"] = "vendor/console.bbbbbbbbbbbb.js"
    for path in files.values():
        (root / path).write_text("body{}" * 300)
        (root / f"{path}.gz").write_bytes(gzip.compress(("body{}" * 300).encode()))
    (root / "vendor" / "manifest.json").write_text(json.dumps(files))
    if bundle_first:  # the modules changed after the bundle was built
        old = (root / "js" / "main.js").stat().st_mtime - 60
        os.utime(root / files["console.js"], (old, old))


def test_the_console_index_inlines_config_and_serves_the_bundle(tmp_path: Path) -> None:
    from visioninapp.api.console import index_html

    _console(tmp_path)
    page = index_html(tmp_path, {"version": "1", "firebase": None})
    assert 'href="vendor/bootstrap.0123456789ab.css"' in page
    assert 'src="vendor/console.bbbbbbbbbbbb.js"' in page and "modulepreload" not in page
    assert (
        '"firebase": null' in page and 'vendor/firebase.aaaaaaaaaaaa.js">' not in page
    )  # no sign-in: no SDK
    signed = index_html(tmp_path, {"version": "1", "firebase": {"projectId": "p"}})
    assert '<link rel="preload" as="script" href="vendor/firebase.aaaaaaaaaaaa.js">' in signed


def test_a_stale_bundle_gives_way_to_the_modules(tmp_path: Path) -> None:
    from visioninapp.api.console import index_html

    _console(tmp_path, bundle_first=True)
    page = index_html(tmp_path, {"firebase": None})
    assert 'src="js/main.js"' in page
    assert '<link rel="modulepreload" href="js/main.js">' in page
    assert '<link rel="modulepreload" href="js/views/a.js">' in page


def test_vendor_files_are_sent_gzipped_and_immutable(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from visioninapp.api.console import ConsoleFiles

    _console(tmp_path)
    app = FastAPI()
    app.mount("/", ConsoleFiles(tmp_path, lambda: {"firebase": None}))
    with TestClient(app) as client:
        css = client.get("/vendor/bootstrap.0123456789ab.css", headers={"Accept-Encoding": "gzip"})
        assert css.status_code == 200 and css.text == "body{}" * 300  # decoded by the client
        assert css.headers["content-encoding"] == "gzip" and css.headers["content-type"].startswith(
            "text/css"
        )
        assert "immutable" in css.headers["cache-control"]
        plain = client.get("/vendor/bootstrap.0123456789ab.css", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and "immutable" in plain.headers["cache-control"]
        index = client.get("/")
        assert index.headers["cache-control"] == "no-cache" and "console-config" in index.text
        module = client.get("/js/main.js")
        assert module.headers["cache-control"] == "no-cache"
