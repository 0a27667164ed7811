"""The attacks of the security probe, each as a request: the expected 4xx, and nothing written.

Identities (unverified emails), TrainingJob and EdgeDeployment URIs outside the project, malformed
parameters (NUL, cursors), the last admin's demotion, label syntax and control characters in names."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from tests.api.conftest import ApiEnv
from tests.api.test_api import TJ_SPEC, artifact, id_token_headers, member_spec

pytestmark = pytest.mark.services


def runs_in_sql(api: ApiEnv, project: str) -> int:
    from visioninapp.api.db import TrainingRun

    with api.container.db.session() as session:
        query = select(func.count()).select_from(TrainingRun).where(TrainingRun.project_name == project)
        return int(session.scalar(query) or 0)


def assert_error(response: Any, status: int, *words: str) -> dict[str, Any]:
    """The one error model: `{"error": {status, code, message, details, requestId}}`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and error["requestId"]
    for word in words:
        assert word in error["message"], error["message"]
    return dict(error)


# --- 2: an unverified email grants nothing ------------------------------------------------------


def test_an_unverified_email_is_neither_member_nor_platform_admin(api: ApiEnv) -> None:
    owner = "owner@example.com"
    project = api.new_project({owner: "admin"})  # a membership that names an email
    api.container.auth._admins.add("chief@example.com")  # a platform admin listed by email
    try:
        for email in (owner, "chief@example.com"):
            attacker = id_token_headers(api.tokens, "mallory", email=email, email_verified=False)
            created = api.client.post("/api/v1/projects", json={"name": f"x-{project}"}, headers=attacker)
            assert_error(created, 403, "platform admins")
            assert api.cluster.get("", "namespaces", "", f"x-{project}") is None
            assert_error(api.client.get(f"/api/v1/projects/{project}", headers=attacker), 404)
            assert api.client.get("/api/v1/projects", headers=attacker).json()["items"] == []
            hijack = api.client.put(
                f"/api/v1/projects/{project}/members/mallory", json={"role": "admin"}, headers=attacker
            )
            assert_error(hijack, 404)
            # A token with no email_verified claim at all is no better.
            silent = id_token_headers(api.tokens, "mallory", email=email)
            assert_error(api.client.get(f"/api/v1/projects/{project}", headers=silent), 404)
        members = api.client.get(f"/api/v1/projects/{project}/members", headers=api.admin).json()
        assert "mallory" not in {m["principal"] for m in members}

        # The same address, verified: the membership and the admin list apply.
        verified = id_token_headers(api.tokens, "olivia", email=owner, email_verified=True)
        assert api.client.get(f"/api/v1/projects/{project}", headers=verified).json()["role"] == "admin"
        chief = id_token_headers(api.tokens, "carl", email="chief@example.com", email_verified=True)
        made = api.client.post("/api/v1/projects", json={"name": f"y-{project}"}, headers=chief)
        assert made.status_code == 201, made.text
    finally:
        api.container.auth._admins.discard("chief@example.com")


def test_a_cached_role_is_not_shared_with_an_unverified_token_of_the_same_uid(api: ApiEnv) -> None:
    project = api.new_project({"ann@example.com": "member"})
    verified = id_token_headers(api.tokens, "ann", email="ann@example.com", email_verified=True)
    assert api.client.get(f"/api/v1/projects/{project}", headers=verified).status_code == 200
    unverified = id_token_headers(api.tokens, "ann", email="ann@example.com", email_verified=False)
    assert_error(api.client.get(f"/api/v1/projects/{project}", headers=unverified), 404)


# --- 5: what a run reads and writes stays in its project ----------------------------------------


@pytest.fixture
def two_projects(api: ApiEnv) -> tuple[str, str]:
    mine = api.new_project({"alice": "member"})
    other = api.new_project({"bob": "admin"})
    api.cluster.create("visioninapp.io", "modelartifacts", other, artifact("theirs", other, map5095=0.5))
    api.cluster.create("visioninapp.io", "modelartifacts", mine, artifact("ours", mine, map5095=0.4))
    return mine, other


def test_a_member_trains_only_on_the_projects_datasets_and_writes_only_under_its_prefix(
    api: ApiEnv, two_projects: tuple[str, str]
) -> None:
    mine, other = two_projects
    store = api.settings.resolved_artifacts_uri.rstrip("/")
    alice = api.as_user("alice")
    attacks: list[tuple[dict[str, Any], int, str, str]] = [
        ({"dataset": {"uri": f"datasets/{other}/shapes/v1"}}, 403, "spec.dataset.uri", f"datasets/{mine}/"),
        ({"dataset": {"uri": f"{store}/datasets/{other}/shapes/v1"}}, 403, "spec.dataset.uri", mine),
        ({"dataset": {"uri": f"{store}/datasets/{mine}/../{other}/x"}}, 403, "spec.dataset.uri", mine),
        ({"dataset": {"uri": f"{store}/datasets/{mine}2/x"}}, 403, "spec.dataset.uri", mine),
        ({"dataset": {"uri": "s3://datasets/helmets/v1"}}, 403, "spec.dataset.uri", "platform admins"),
        ({"dataset": {"uri": "file:///etc"}}, 403, "spec.dataset.uri", mine),
        ({"dataset": {"uri": "datasets"}}, 403, "spec.dataset.uri", mine),
        (
            {
                "dataset": {
                    "uri": f"datasets/{mine}/shapes/v1",
                    "dataYaml": f"../../{other}/shapes/v1/data.yaml",
                }
            },
            422,
            "spec.dataset.dataYaml",
            "no `..`",
        ),
        ({"output": {"uri": "file:///etc"}}, 403, "spec.output.uri", f"{store}/{mine}/"),
        ({"output": {"uri": f"{store}/{other}"}}, 403, "spec.output.uri", mine),
        ({"output": {"uri": f"{store}/{mine}2/x"}}, 403, "spec.output.uri", mine),
        ({"output": {"uri": f"{store}/{mine}/../{other}"}}, 403, "spec.output.uri", mine),
        ({"output": {"uri": f"{store}/datasets/{mine}"}}, 403, "spec.output.uri", mine),
        ({"output": {"uri": store}}, 403, "spec.output.uri", mine),
        (
            {"model": {"baseModel": "theirs"}},
            422,
            "spec.model.baseModel",
            f"no ModelArtifact 'theirs' in project {mine!r}",
        ),
    ]
    for index, (change, status, field, hint) in enumerate(attacks):
        spec = {**member_spec(mine), **change}
        if "dataset" in change or "output" in change:
            spec["model"] = TJ_SPEC["model"]
        response = api.client.post(
            f"/api/v1/projects/{mine}/training-jobs", json={"name": f"a{index}", "spec": spec}, headers=alice
        )
        error = assert_error(response, status, field, hint)
        assert [d["field"] for d in error["details"]] == [field]
        assert api.cluster.get("visioninapp.io", "trainingjobs", mine, f"a{index}") is None
    assert runs_in_sql(api, mine) == 0  # nothing was written, in the cluster or in SQL

    # What is allowed: the project's datasets (as a key or a full URI), its prefix, its models.
    allowed = [
        member_spec(mine),
        {
            **member_spec(mine),
            "dataset": {"uri": f"{store}/datasets/{mine}/helmets/v2", "dataYaml": "a/d.yaml"},
        },
        {**member_spec(mine), "output": {"uri": f"{store}/{mine}/experiments"}},
        {**member_spec(mine), "output": {"uri": f"{store}/{mine}"}},
        {**member_spec(mine), "model": {"baseModel": "ours"}},
    ]
    for index, spec in enumerate(allowed):
        response = api.client.post(
            f"/api/v1/projects/{mine}/training-jobs", json={"name": f"ok{index}", "spec": spec}, headers=alice
        )
        assert response.status_code == 201, response.text
    # A platform admin may name other stores (shared datasets, other buckets); never another
    # project's models, which the operator would look up in this namespace anyway.
    admin = api.client.post(
        f"/api/v1/projects/{mine}/training-jobs",
        json={"name": "by-admin", "spec": {**TJ_SPEC, "output": {"uri": "s3://elsewhere/runs"}}},
        headers=api.admin,
    )
    assert admin.status_code == 201, admin.text
    foreign = api.client.post(
        f"/api/v1/projects/{mine}/training-jobs",
        json={"name": "by-admin-2", "spec": {**TJ_SPEC, "model": {"baseModel": "theirs"}}},
        headers=api.admin,
    )
    assert_error(foreign, 422, "spec.model.baseModel")


def test_a_member_cannot_point_edge_feedback_outside_the_project(
    api: ApiEnv, two_projects: tuple[str, str]
) -> None:
    mine, other = two_projects
    store = api.settings.resolved_artifacts_uri.rstrip("/")
    for uri in ("file:///etc", f"{store}/{other}/frames", f"{store}/feedback"):
        response = api.client.post(
            f"/api/v1/projects/{mine}/deployments",
            json={"name": "fleet", "spec": {"modelRef": "ours", "feedback": {"enabled": True, "uri": uri}}},
            headers=api.as_user("alice"),
        )
        assert_error(response, 403, "spec.feedback.uri", f"{store}/{mine}/")
        assert api.cluster.get("visioninapp.io", "edgedeployments", mine, "fleet") is None
    fine = api.client.post(
        f"/api/v1/projects/{mine}/deployments",
        json={"name": "fleet", "spec": {"modelRef": "ours", "feedback": {"uri": f"{store}/{mine}/frames"}}},
        headers=api.as_user("alice"),
    )
    assert fine.status_code == 201, fine.text


# --- 10: every parameter parsed; a 4xx in the one error model, never a 500 ----------------------


def test_malformed_parameters_are_4xx_in_the_error_model(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    base = f"/api/v1/projects/{project}"
    for url, params in (
        ("/api/v1/search", {"q": "a\x00b"}),
        ("/api/v1/search", {"q": "\x00"}),
        ("/api/v1/search", {"q": "helmets", "project": "no\x00pe"}),
        ("/api/v1/search", {"q": "helmets", "collections": "nope"}),
        (f"{base}/training-jobs/run-1/logs", {"q": "oom\x00"}),
        (f"{base}/training-jobs", {"phase": "Exploded"}),
        (f"{base}/training-jobs", {"sort": "-name\x00"}),
        (f"{base}/training-jobs/a%00b", {}),
        (f"{base}/deployments/a%1fb/nodes", {}),
        (f"{base}/training-jobs/UPPER", {}),
        (f"{base}/events", {"after": "epoch-\u00b2"}),  # a Unicode digit: int() refused it with a 500
        (f"{base}/events", {"after": "epoch-99999999999999999999999"}),  # overflowed SQL mid-stream
        (f"{base}/events", {"after": "garbage"}),
        (f"{base}/events", {"after": "epoch-1.epoch-2.epoch-3.epoch-4.epoch-5"}),
        (f"{base}/events", {"trainingJob": "a\x00"}),
    ):
        with api.client.stream("GET", url, params=params, headers=alice) as response:
            response.read()
            assert 400 <= response.status_code < 500, f"{url} {params!r} → {response.status_code}"
            assert response.json()["error"]["requestId"], response.text
    header = {**alice, "Last-Event-ID": "edge-1e9"}
    with api.client.stream("GET", f"{base}/events", headers=header) as response:
        response.read()
        assert_error(response, 422, "last-event-id")


def test_a_valid_cursor_still_streams_and_a_failing_store_ends_the_stream_with_an_error_event(
    api: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visioninapp.api.domain import activity

    project = api.new_project({"alice": "member"})
    url = f"/api/v1/projects/{project}/events"

    def broken(*args: Any) -> Any:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(activity, "fresh_events", broken)
    params = {"after": "epoch-3.log-99.notification-0.edge-7"}
    with api.client.stream("GET", url, params=params, headers=api.as_user("alice")) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    assert text.startswith("retry: 2000") and "event: error" in text and "reconnect" in text


# --- 11: the last admin, labels, control characters in display names ----------------------------


def test_the_last_admin_cannot_demote_themselves(api: ApiEnv) -> None:
    project = api.new_project({"alice": "admin"})
    admin = api.admin  # the creator is admin by uid
    alice = api.as_user("alice")
    assert api.client.delete(f"/api/v1/projects/{project}/members/alice", headers=admin).status_code == 204
    demoted = api.client.put(
        f"/api/v1/projects/{project}/members/platform-admin", json={"role": "viewer"}, headers=admin
    )
    assert_error(demoted, 409, "last admin")
    members = api.client.get(f"/api/v1/projects/{project}/members", headers=admin).json()
    assert {m["principal"]: m["role"] for m in members} == {"platform-admin": "admin"}  # nothing written
    # With a second admin, the first may step down.
    api.client.put(f"/api/v1/projects/{project}/members/alice", json={"role": "admin"}, headers=admin)
    stepped = api.client.put(
        f"/api/v1/projects/{project}/members/alice", json={"role": "member"}, headers=alice
    )
    assert stepped.status_code == 200, stepped.text
    alone = api.client.put(
        f"/api/v1/projects/{project}/members/platform-admin", json={"role": "member"}, headers=admin
    )
    assert_error(alone, 409, "last admin")
    bad = api.client.put(f"/api/v1/projects/{project}/members/a%20b", json={"role": "member"}, headers=admin)
    assert_error(bad, 422)


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_training_job_labels_follow_kubernetes_label_syntax(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    url = f"/api/v1/projects/{project}/training-jobs"
    for index, labels in enumerate(
        (
            {"bad key!": "x"},
            {"a": "x" * 64},
            {"x" * 64: "a"},
            {"a/b/c": "x"},
            {"Example.com/a": "x"},
            {f"{'a' * 254}/team": "x"},
            {"team": "-x"},
            {"team": "ünï"},
            {"visioninapp.io/phase": "Succeeded"},
            {"kubernetes.io/arch": "amd64"},
            {f"k{i}": "v" * 63 for i in range(65)},  # more labels than allowed
        )
    ):
        response = api.client.post(
            url,
            json={"name": f"l{index}", "spec": member_spec(project), "labels": labels},
            headers=api.as_user("alice"),
        )
        error = assert_error(response, 422)
        assert error["details"][0]["field"].startswith("labels"), error
    assert runs_in_sql(api, project) == 0
    assert api.cluster.list("visioninapp.io", "trainingjobs", project) == []
    good = {"team": "vision", "example.com/owner": "a.b-c_d", "empty": "", "x" * 63: "y" * 63}
    response = api.client.post(
        url, json={"name": "ok", "spec": member_spec(project), "labels": good}, headers=api.as_user("alice")
    )
    assert response.status_code == 201, response.text
    assert api.cluster.get("visioninapp.io", "trainingjobs", project, "ok")["metadata"]["labels"] == good


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_control_characters_and_reserved_names_are_refused_in_projects(api: ApiEnv) -> None:
    from visioninapp.api.db import Project

    for body in (
        {"name": "ctl-1", "displayName": "a\x00b"},
        {"name": "ctl-2", "displayName": "red\x1b[31m"},
        {"name": "ctl-3", "displayName": "line\nbreak"},
        {"name": "ctl-4", "displayName": "evil\u202etxt.exe"},
        {"name": "ctl-5", "description": "bell\x07"},
        {"name": "datasets"},
        {"name": "feedback"},
        {"name": "logs"},
    ):
        response = api.client.post("/api/v1/projects", json=body, headers=api.admin)
        assert_error(response, 422)
        assert api.cluster.get("", "namespaces", "", body["name"]) is None
        with api.container.db.session() as session:
            assert session.get(Project, body["name"]) is None
    fine = {"name": "ctl-ok", "displayName": "Vision: Ünïcode ✓", "description": "two\nlines\tand a tab"}
    assert api.client.post("/api/v1/projects", json=fine, headers=api.admin).status_code == 201
