"""The REST API over real services (MariaDB or SQLite, Redis, Elasticsearch API, S3, RabbitMQ Streams,
the Kubernetes API emulator); every test runs on both SQL backends."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from tests.api.conftest import ApiEnv, Tokens
from visioninapp.resources import API_VERSION

pytestmark = pytest.mark.services

TJ_SPEC = {
    "model": {"architecture": "yolo11n"},
    "dataset": {"uri": "s3://datasets/helmets/v1"},
    "hyperparameters": {"epochs": 5, "imgsz": 320},
}


def member_spec(project: str) -> dict[str, Any]:
    """TJ_SPEC on a dataset of the project: what a member (not a platform admin) may train on."""
    return {**TJ_SPEC, "dataset": {"uri": f"datasets/{project}/helmets/v1"}}


def id_token_headers(tokens: Tokens, uid: str, **claims: Any) -> dict[str, str]:
    """A token of the test issuer with extra claims, e.g. `email=..., email_verified=True`."""
    base = jwt.decode(tokens.token(uid), options={"verify_signature": False})
    token = jwt.encode({**base, **claims}, tokens.key, algorithm="RS256", headers={"kid": "local-key"})
    return {"Authorization": f"Bearer {token}"}


def artifact(
    name: str, project: str, *, map5095: float, stage: str = "candidate", job: str = "run-1"
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelArtifact",
        "metadata": {"name": name, "namespace": project},
        "spec": {
            "model": "helmets",
            "version": name,
            "formats": [
                {"format": "onnx", "uri": f"s3://models/{name}.onnx", "sha256": "a" * 64, "size": 10}
            ],
            "classNames": ["helmet", "head"],
            "imgsz": 320,
            "metrics": {"mAP50": map5095 + 0.2, "mAP50_95": map5095},
            "source": {"trainingJob": job, "dataset": "s3://datasets/helmets/v1"},
            "stage": stage,
        },
    }


def test_projects_are_namespaces_and_members_see_only_theirs(api: ApiEnv) -> None:
    mine = api.new_project({"alice": "member"})
    api.new_project({"bob": "member"})
    assert api.cluster.get("", "namespaces", "", mine) is not None  # created in the cluster
    listed = api.client.get("/api/v1/projects", headers=api.as_user("alice")).json()
    assert [p["name"] for p in listed["items"]] == [mine]
    assert listed["items"][0]["role"] == "member"
    denied = api.client.post("/api/v1/projects", json={"name": "nope"}, headers=api.as_user("alice"))
    assert denied.status_code == 403
    assert "platform admins" in denied.json()["error"]["message"]


def test_training_job_lifecycle_through_the_api(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member", "vera": "viewer"})
    alice = id_token_headers(api.tokens, "alice", email="alice@example.com", email_verified=True)
    created = api.client.post(
        f"/api/v1/projects/{project}/training-jobs",
        json={"name": "run-1", "spec": member_spec(project)},
        headers=alice,
    )
    assert created.status_code == 201, created.text
    cr = api.cluster.get("visioninapp.io", "trainingjobs", project, "run-1")
    assert cr is not None and cr["spec"]["hyperparameters"]["epochs"] == 5
    assert cr["metadata"]["annotations"]["visioninapp.io/created-by"] == "alice@example.com"  # verified

    # A CR applied by kubectl or GitOps in the namespace appears as well.
    api.cluster.create(
        "visioninapp.io",
        "trainingjobs",
        project,
        {
            "apiVersion": API_VERSION,
            "kind": "TrainingJob",
            "metadata": {"name": "gitops-run"},
            "spec": TJ_SPEC,
        },
    )
    listed = api.client.get(
        f"/api/v1/projects/{project}/training-jobs?sort=name", headers=api.as_user("vera")
    )
    assert [j["name"] for j in listed.json()["items"]] == ["gitops-run", "run-1"]

    suspended = api.client.post(f"/api/v1/projects/{project}/training-jobs/run-1/suspend", headers=alice)
    assert suspended.status_code == 200
    assert api.cluster.get("visioninapp.io", "trainingjobs", project, "run-1")["spec"]["suspend"] is True
    viewer_write = api.client.post(
        f"/api/v1/projects/{project}/training-jobs/run-1/resume", headers=api.as_user("vera")
    )
    assert viewer_write.status_code == 403

    deleted = api.client.delete(f"/api/v1/projects/{project}/training-jobs/run-1", headers=alice)
    assert deleted.status_code == 204
    history = api.client.get(f"/api/v1/projects/{project}/training-jobs/run-1", headers=alice).json()
    assert history["inCluster"] is False  # the run history outlives the CR


def test_invalid_training_job_is_rejected_with_the_field(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    bad = {**TJ_SPEC, "hyperparameters": {"epochs": 0, "imgsz": 333}}
    response = api.client.post(
        f"/api/v1/projects/{project}/training-jobs",
        json={"name": "bad", "spec": bad},
        headers=api.as_user("alice"),
    )
    assert response.status_code == 422
    error = response.json()["error"]
    fields = {d["field"] for d in error["details"]}
    assert any("epochs" in f for f in fields) and any("imgsz" in f for f in fields)
    assert error["requestId"] and response.headers["x-request-id"] == error["requestId"]
    dataset = {**TJ_SPEC, "dataset": {"uri": "ftp://nowhere/x"}}  # a CEL rule, checked before sending
    response = api.client.post(
        f"/api/v1/projects/{project}/training-jobs",
        json={"name": "bad2", "spec": dataset},
        headers=api.as_user("alice"),
    )
    assert response.status_code == 422, response.text
    assert api.cluster.get("visioninapp.io", "trainingjobs", project, "bad2") is None


def test_models_registry_stage_compare_and_cache_invalidation(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    for name, score in (("helmets-v1", 0.41), ("helmets-v2", 0.47)):
        api.cluster.create(
            "visioninapp.io", "modelartifacts", project, artifact(name, project, map5095=score)
        )
    listed = api.client.get(f"/api/v1/projects/{project}/models?sort=-mAP50_95", headers=alice).json()
    assert [m["name"] for m in listed["items"]] == ["helmets-v2", "helmets-v1"]
    assert listed["items"][0]["lineage"]["trainingJob"] == "run-1"

    promoted = api.client.patch(
        f"/api/v1/projects/{project}/models/helmets-v2", json={"stage": "production"}, headers=alice
    )
    assert promoted.status_code == 200 and promoted.json()["stage"] == "production"
    # The write invalidated the cached list: the new stage shows at once.
    production = api.client.get(f"/api/v1/projects/{project}/models?stage=production", headers=alice).json()
    assert [m["name"] for m in production["items"]] == ["helmets-v2"]

    compared = api.client.get(
        f"/api/v1/projects/{project}/model-comparison?a=helmets-v1&b=helmets-v2", headers=alice
    ).json()
    assert compared["better"] == "helmets-v2"
    assert compared["metricDeltas"]["mAP50_95"] == pytest.approx(0.06)

    bad_sort = api.client.get(f"/api/v1/projects/{project}/models?sort=colour", headers=alice)
    assert bad_sort.status_code == 400 and "sort by one of" in bad_sort.json()["error"]["message"]


def test_deployments_actions_and_nodes(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    api.cluster.create(
        "visioninapp.io", "modelartifacts", project, artifact("helmets-v1", project, map5095=0.4)
    )
    spec = {
        "modelRef": "helmets-v1",
        "nodeSelector": {"visioninapp.io/edge": "true"},
        "strategy": {"canary": {"steps": [50, 100]}},
    }
    created = api.client.post(
        f"/api/v1/projects/{project}/deployments", json={"name": "gate", "spec": spec}, headers=alice
    )
    assert created.status_code == 201, created.text
    paused = api.client.patch(
        f"/api/v1/projects/{project}/deployments/gate", json={"paused": True}, headers=alice
    )
    assert paused.json()["paused"] is True
    action = api.client.post(f"/api/v1/projects/{project}/deployments/gate/rollback", headers=alice)
    assert action.status_code == 202
    stored = api.cluster.get("visioninapp.io", "edgedeployments", project, "gate")
    assert stored["metadata"]["annotations"]["visioninapp.io/rollout-action"] == "rollback"
    unknown = api.client.post(f"/api/v1/projects/{project}/deployments/gate/explode", headers=alice)
    assert unknown.status_code == 422

    api.cluster.patch(
        "visioninapp.io",
        "edgedeployments",
        project,
        "gate",
        {
            "status": {
                "phase": "Progressing",
                "nodes": [{"name": "jetson-0", "revision": "abc", "ready": True}],
            }
        },
        subresource="status",
    )
    nodes = api.client.get(f"/api/v1/projects/{project}/deployments/gate/nodes", headers=alice).json()
    assert nodes[0]["node"] == "jetson-0" and nodes[0]["ready"] is True


def test_search_finds_entities_of_your_projects_only(api: ApiEnv) -> None:
    mine = api.new_project({"alice": "member"})
    other = api.new_project({"bob": "member"})
    for project, owner in ((mine, "alice"), (other, "bob")):
        response = api.client.post(
            f"/api/v1/projects/{project}/datasets",
            json={"name": "forklifts", "description": "warehouse forklifts at night"},
            headers=api.as_user(owner),
        )
        assert response.status_code == 201
    hits = api.client.get("/api/v1/search?q=forklifts", headers=api.as_user("alice")).json()
    assert hits and {h["project"] for h in hits} == {mine}
    assert any("<em>" in h["highlight"] for h in hits)

    from visioninapp.api.sync import ClusterSync

    api.cluster.create("visioninapp.io", "modelartifacts", mine, artifact("helmets-v7", mine, map5095=0.5))
    ClusterSync(api.container).sync_once()  # CRs (runs, models, deployments) are indexed by the sync
    models = api.client.get(
        f"/api/v1/search?q=helmets&collections=models&project={mine}", headers=api.as_user("alice")
    ).json()
    assert [h["id"] for h in models] == [f"{mine}/helmets-v7"]
    foreign = api.client.get(f"/api/v1/search?q=helmets&project={other}", headers=api.as_user("alice"))
    assert foreign.status_code == 404


def test_migrations_build_exactly_the_models_schema(api: ApiEnv) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from visioninapp.api.db import Base

    api.container.db.migrate()  # a second run is a no-op
    with api.container.db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_search_rebuild_swaps_the_alias_atomically(elasticsearch_url: str) -> None:
    import uuid

    from visioninapp.backends.elastic import ElasticsearchIndex

    index = ElasticsearchIndex(elasticsearch_url, prefix=f"rb{uuid.uuid4().hex[:6]}", refresh=True)
    index.ensure_ready()
    index.index("runs", "p/old", {"project": "p", "name": "old", "title": "stale forklift run"})
    fresh = index.rebuild("runs", [("p/new", {"project": "p", "name": "new", "title": "fresh forklift run"})])
    assert fresh.endswith("-000002")
    assert [hit.id for hit in index.search("forklift", ["runs"])] == ["p/new"]
    assert index.count("runs") == 1
