"""Authorization matrix: every /api/v1 route x {no token, forged, expired, wrong audience, viewer,
member of another project, admin}. Nothing of another project leaks, in status or in body."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.api.conftest import ApiEnv
from tests.api.test_api import TJ_SPEC, artifact

pytestmark = pytest.mark.services

SECRET = "zebra-secret-run"  # a name that must never appear in another project's answers
VALUES = {
    "name": SECRET,
    "principal": "newcomer@example.com",
    "version": "1",
    "action": "promote",
    "frame_id": "1",
}


def routes(api: ApiEnv) -> list[tuple[str, str]]:
    """Every operation of the OpenAPI document under /api/v1."""
    paths = api.app.openapi()["paths"]
    return [
        (method.upper(), path) for path, ops in paths.items() if path.startswith("/api/v1") for method in ops
    ]


def concrete(path: str, project: str) -> str:
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "project":
            return project
        if key == "name" and "/deployments/" in path:
            return "fleet"
        if key == "name" and "/models/" in path:
            return "m1"
        if key == "name" and "/datasets/" in path:
            return "shapes"
        return VALUES[key]

    return re.sub(r"\{(\w+)\}", fill, path)


def call(api: ApiEnv, method: str, url: str, headers: dict[str, str]) -> Any:
    if url.endswith("/events"):
        with api.client.stream(method, url, headers=headers) as response:
            return response.status_code, ""
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    response = api.client.request(method, url, **kwargs)
    return response.status_code, response.text


@pytest.fixture
def target(api: ApiEnv) -> str:
    """A project with data in every collection, and its viewer `vera`; `mallory` is in another project."""
    project = api.new_project({"vera": "viewer"})
    api.new_project({"mallory": "admin"})
    admin = api.admin
    api.client.post(
        f"/api/v1/projects/{project}/training-jobs", json={"name": SECRET, "spec": TJ_SPEC}, headers=admin
    )
    api.cluster.create(
        "visioninapp.io", "modelartifacts", project, artifact("m1", project, map5095=0.3, job=SECRET)
    )
    api.client.post(
        f"/api/v1/projects/{project}/deployments",
        json={"name": "fleet", "spec": {"modelRef": "m1"}},
        headers=admin,
    )
    api.client.post(
        f"/api/v1/projects/{project}/datasets", json={"name": "shapes", "description": SECRET}, headers=admin
    )
    api.client.post(f"/api/v1/projects/{project}/training-jobs/{SECRET}/summary", headers=admin)
    return project


def test_every_route_requires_a_valid_token(api: ApiEnv, target: str) -> None:
    tokens = api.tokens
    bad = {
        "none": {},
        "forged": tokens.headers("vera", forged=True),
        "expired": tokens.headers("vera", expired=True),
        "wrong-audience": tokens.headers("vera", audience="someone-elses-project"),
        "garbage": {"Authorization": "Bearer not.a.jwt"},
    }
    checked = 0
    for method, path in routes(api):
        url = concrete(path, target)
        for label, headers in bad.items():
            status, body = call(api, method, url, headers)
            assert status == 401, f"{label}: {method} {url} → {status} {body[:200]}"
            assert SECRET not in body
            checked += 1
    assert checked >= 5 * 30  # every route was in the matrix


def test_roles_and_project_isolation(api: ApiEnv, target: str) -> None:
    viewer = api.as_user("vera")
    outsider = api.as_user("mallory")
    for method, path in routes(api):
        url = concrete(path, target)
        project_scoped = "{project}" in path
        writes = method != "GET"
        detect = path.endswith("/detect")  # a read served by POST (an upload)

        status, body = call(api, method, url, outsider)
        if project_scoped:
            assert status == 404, f"outsider: {method} {url} → {status}"
        assert SECRET not in body, f"outsider saw {SECRET} in {method} {url}"

        status, body = call(api, method, url, viewer)
        if project_scoped and writes and not detect:
            assert status == 403, f"viewer: {method} {url} → {status} {body[:200]}"
        else:
            assert status not in (401, 403), f"viewer: {method} {url} → {status} {body[:200]}"

        status, body = call(api, method, url, api.admin)
        assert status not in (401, 403, 500), f"admin: {method} {url} → {status} {body[:200]}"


def test_reads_that_must_succeed_for_a_viewer(api: ApiEnv, target: str) -> None:
    viewer = api.as_user("vera")
    for url in (
        f"/api/v1/projects/{target}",
        f"/api/v1/projects/{target}/training-jobs",
        f"/api/v1/projects/{target}/training-jobs/{SECRET}",
        f"/api/v1/projects/{target}/models/m1",
        f"/api/v1/projects/{target}/deployments/fleet/nodes",
        f"/api/v1/projects/{target}/datasets/shapes",
        f"/api/v1/projects/{target}/training-jobs/{SECRET}/summaries",
    ):
        assert api.client.get(url, headers=viewer).status_code == 200, url
    hits = api.client.get(f"/api/v1/search?q={SECRET}", headers=api.as_user("mallory")).json()
    assert hits == []
    assert api.client.get(f"/api/v1/search?q={SECRET}", headers=viewer).json()


def test_public_routes_need_no_token(api: ApiEnv) -> None:
    for url in ("/healthz", "/readyz", "/api/openapi.json"):
        assert api.client.get(url).status_code == 200, url


def test_write_routes_are_rate_limited(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    api.services.settings.api_write_rate_per_minute = 3
    statuses = [
        api.client.post(
            f"/api/v1/projects/{project}/datasets", json={"name": f"d{i}"}, headers=api.as_user("alice")
        ).status_code
        for i in range(5)
    ]
    assert statuses[:3] == [201, 201, 201] and statuses[3:] == [429, 429]
    limited = api.client.post(
        f"/api/v1/projects/{project}/datasets", json={"name": "x"}, headers=api.as_user("alice")
    )
    assert limited.headers["retry-after"] and limited.json()["error"]["code"] == "rate_limited"
    assert (
        api.client.get(f"/api/v1/projects/{project}/datasets", headers=api.as_user("alice")).status_code
        == 200
    )
