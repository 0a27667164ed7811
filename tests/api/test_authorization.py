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
    "label_id": "b1",
    "fmt": "onnx",
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


class FrozenClock:
    """The rate limiter's clock (`visioninapp.api.security.time`), moved only by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_write_routes_are_rate_limited(api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from visioninapp.api import security

    # The limit is per calendar minute: freeze the clock one second before a minute ends, so the
    # requests never straddle a window boundary by accident; the test moves it over on purpose.
    clock = FrozenClock(60 * 29_000_000 + 59.0)
    monkeypatch.setattr(security, "time", clock)
    project = api.new_project({"alice": "member"})
    api.container.settings.api_write_rate_per_minute = 3
    alice = api.as_user("alice")

    def write(name: str) -> Any:
        return api.client.post(f"/api/v1/projects/{project}/datasets", json={"name": name}, headers=alice)

    statuses = [write(f"d{i}").status_code for i in range(5)]
    assert statuses[:3] == [201, 201, 201] and statuses[3:] == [429, 429]
    limited = write("x")
    # one second before the minute ends: Retry-After says so, not a whole minute
    assert limited.headers["retry-after"] == "1" and limited.json()["error"]["code"] == "rate_limited"
    assert api.client.get(f"/api/v1/projects/{project}/datasets", headers=alice).status_code == 200
    clock.now += 0.99  # still the same minute
    assert write("y").status_code == 429
    clock.now += 0.02  # the next minute: a fresh allowance of 3
    assert [write(f"e{i}").status_code for i in range(4)] == [201, 201, 201, 429]


def members_url(project: str, principal: str = "") -> str:
    return f"/api/v1/projects/{project}/members" + (f"/{principal}" if principal else "")


def roles(api: ApiEnv, project: str) -> dict[str, str]:
    listed = api.client.get(members_url(project), headers=api.admin)
    assert listed.status_code == 200, listed.text
    return {m["principal"]: m["role"] for m in listed.json()}


def test_member_routes_are_for_project_admins_only(api: ApiEnv) -> None:
    """A member (or viewer) can neither make themselves admin, nor add, change or remove anyone."""
    project = api.new_project({"alice": "member", "vera": "viewer", "bob": "member"})
    before = roles(api, project)
    for uid in ("alice", "vera"):
        caller = api.as_user(uid)
        attempts = {
            "promote self": api.client.put(members_url(project, uid), json={"role": "admin"}, headers=caller),
            "add someone": api.client.put(
                members_url(project, "eve"), json={"role": "admin"}, headers=caller
            ),
            "demote other": api.client.put(
                members_url(project, "bob"), json={"role": "viewer"}, headers=caller
            ),
            "remove other": api.client.delete(members_url(project, "bob"), headers=caller),
            "remove admin": api.client.delete(members_url(project, "platform-admin"), headers=caller),
        }
        for label, response in attempts.items():
            assert response.status_code == 403, f"{uid} could {label}: {response.status_code} {response.text}"
    assert roles(api, project) == before  # nothing changed
    own = api.client.get(f"/api/v1/projects/{project}", headers=api.as_user("alice")).json()
    assert own["role"] == "member"
    # ...while a project admin can.
    assert (
        api.client.put(members_url(project, "alice"), json={"role": "admin"}, headers=api.admin).status_code
        == 200
    )
    assert (
        api.client.put(
            members_url(project, "eve"), json={"role": "viewer"}, headers=api.as_user("alice")
        ).status_code
        == 200
    )


def test_the_strongest_of_a_users_roles_wins(api: ApiEnv) -> None:
    """A user may be a member by uid and by (verified) email: the stronger role applies, in every
    order of strength, for the project's own answer, the project list and what the caller may do."""
    from tests.api.test_api import id_token_headers

    project = api.new_project(
        {
            "carol": "viewer",
            "carol@example.com": "admin",
            "dan": "admin",
            "dan@example.com": "viewer",
            "erin": "member",
            "erin@example.com": "viewer",
        }
    )
    expected = {"carol": "admin", "dan": "admin", "erin": "member"}
    for uid, role in expected.items():
        headers = id_token_headers(api.tokens, uid, email=f"{uid}@example.com", email_verified=True)
        assert api.client.get(f"/api/v1/projects/{project}", headers=headers).json()["role"] == role, uid
        listed = api.client.get("/api/v1/projects", headers=headers).json()["items"]
        assert [(p["name"], p["role"]) for p in listed] == [(project, role)], uid
        write = api.client.post(
            f"/api/v1/projects/{project}/datasets", json={"name": f"ds-{uid}"}, headers=headers
        )
        assert write.status_code == 201, f"{uid}: {write.status_code} {write.text}"
        admin_only = api.client.put(
            members_url(project, f"guest-{uid}"), json={"role": "viewer"}, headers=headers
        )
        assert admin_only.status_code == (200 if role == "admin" else 403), uid


def test_membership_changes_take_effect_at_once_despite_the_role_cache(api: ApiEnv) -> None:
    """Roles are cached (for an hour here): demoting or removing a member, or adding one who was
    refused before, must clear the cached answer at once, not when it expires. Each change comes
    right after the affected answer was cached."""
    api.container.settings.api_cache_ttl_seconds = 3600
    project = api.new_project({"alice": "member", "bob": "member"})
    alice, bob, carl = api.as_user("alice"), api.as_user("bob"), api.as_user("carl")
    project_url = f"/api/v1/projects/{project}"

    def role(headers: dict[str, str]) -> str | None:
        response = api.client.get(project_url, headers=headers)
        assert response.status_code in (200, 404), response.text
        return response.json()["role"] if response.status_code == 200 else None

    def change(principal: str, new_role: str | None) -> None:
        if new_role is None:
            response = api.client.delete(members_url(project, principal), headers=api.admin)
        else:
            response = api.client.put(
                members_url(project, principal), json={"role": new_role}, headers=api.admin
            )
        assert response.status_code in (200, 204), response.text

    assert role(bob) == "member"  # cached now
    change("bob", "viewer")
    assert role(bob) == "viewer"
    assert (
        api.client.post(f"{project_url}/datasets", json={"name": "demoted"}, headers=bob).status_code == 403
    )

    assert role(carl) is None  # "not a member" is cached too
    change("carl", "member")
    assert role(carl) == "member"

    assert role(alice) == "member"
    change("alice", None)
    assert role(alice) is None
    assert api.client.post(f"{project_url}/datasets", json={"name": "gone"}, headers=alice).status_code == 404
