"""api/security.py without services: roles, the role cache, the rate limit and the access checks.

A fast selection for mutation testing (tools/mutate.py, docs/mutation.md): an in-process SQLite
database, a dict for the cache and a fake authenticator stand in for MariaDB, Redis and Firebase.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from visioninapp.api import security
from visioninapp.api.db import Base, Database, Membership, Project
from visioninapp.api.security import Access, highest, role_cache_prefix, role_in
from visioninapp.backends.auth import AuthError, Principal
from visioninapp.web.errors import ApiError


class FakeCache:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.ttls: dict[str, int] = {}

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.values[key], self.ttls[key] = value, ttl

    def incr(self, key: str, ttl: int) -> int:
        count = int(self.values.get(key, b"0")) + 1
        self.values[key], self.ttls[key] = str(count).encode(), ttl
        return count


class FakeAuth:
    def __init__(self, principal: Principal | None = None) -> None:
        self.principal = principal
        self.calls: list[tuple[str | None, str | None]] = []

    def authenticate(self, token: str | None, host: str | None) -> Principal:
        self.calls.append((token, host))
        if self.principal is None:
            raise AuthError("no valid token")
        return self.principal


@pytest.fixture
def services(tmp_path: Path) -> Any:
    db = Database(f"sqlite:///{tmp_path / 'api.sqlite'}")
    Base.metadata.create_all(db.engine)
    with db.session() as session:
        for name in ("vision", "other"):
            session.add(Project(name=name, display_name=name, created_by="root"))
    return SimpleNamespace(
        db=db,
        cache=FakeCache(),
        auth=FakeAuth(Principal("alice")),
        settings=SimpleNamespace(api_cache_ttl_seconds=17, api_write_rate_per_minute=2),
    )


def member(services: Any, project: str, principal: str, role: str) -> None:
    with services.db.session() as session:
        session.add(Membership(project_name=project, principal=principal, role=role))


def request(method: str = "GET", authorization: str | None = None, client: bool = True) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    scope = {"type": "http", "method": method, "path": "/", "headers": headers, "query_string": b""}
    if client:
        scope["client"] = ("10.0.0.7", 5000)
    return Request(scope)


# --- roles --------------------------------------------------------------------------------------


def test_highest_is_the_strongest_role_in_any_order() -> None:
    assert highest(["viewer", "admin", "member"]) == "admin"
    assert highest(["member", "viewer"]) == "member"
    assert highest(["viewer", "member"]) == "member"
    assert highest(["viewer"]) == "viewer"


@pytest.mark.parametrize(
    ("role", "needed", "allowed"),
    [
        ("viewer", "viewer", True),
        ("viewer", "member", False),
        ("viewer", "admin", False),
        ("member", "viewer", True),
        ("member", "member", True),
        ("member", "admin", False),
        ("admin", "viewer", True),
        ("admin", "member", True),
        ("admin", "admin", True),
    ],
)
def test_access_can_do_what_its_role_or_a_weaker_one_may(role: str, needed: str, allowed: bool) -> None:
    assert Access(Principal("alice"), "vision", role).can(needed) is allowed


# --- the role, from the database and the cache ----------------------------------------------------


def test_a_role_comes_from_the_memberships_of_that_project_only(services: Any) -> None:
    member(services, "vision", "alice", "viewer")
    member(services, "other", "alice", "admin")
    member(services, "vision", "bob", "admin")
    assert role_in(services, Principal("alice"), "vision") == "viewer"
    assert role_in(services, Principal("carol"), "vision") is None


def test_member_roles_answers_for_the_projects_asked_where_the_user_is_a_member(services: Any) -> None:
    member(services, "vision", "alice", "viewer")
    member(services, "vision", "alice@example.com", "admin")
    member(services, "other", "alice", "member")
    alice = Principal("alice", email="alice@example.com", email_verified=True)
    with services.db.session() as session:
        assert security.member_roles(session, alice, ["vision"]) == {"vision": "admin"}
        assert security.member_roles(session, alice, ["vision", "other", "gone"]) == {
            "vision": "admin",
            "other": "member",
        }
        assert security.member_roles(session, Principal("bob"), ["vision"]) == {}


def test_a_verified_email_adds_its_memberships_and_the_strongest_wins(services: Any) -> None:
    member(services, "vision", "alice", "viewer")
    member(services, "vision", "alice@example.com", "member")
    verified = Principal("alice", email="alice@example.com", email_verified=True)
    unverified = Principal("alice", email="alice@example.com", email_verified=False)
    assert role_in(services, verified, "vision") == "member"
    assert role_in(services, unverified, "vision") == "viewer"


def test_a_platform_admin_is_admin_of_every_existing_project_only(services: Any) -> None:
    admin = Principal("root", is_platform_admin=True)
    assert role_in(services, admin, "vision") == "admin"
    assert role_in(services, admin, "missing") is None
    assert role_in(services, Principal("alice"), "missing") is None


def test_the_role_is_cached_under_the_projects_prefix_with_the_settings_ttl(services: Any) -> None:
    assert role_cache_prefix("vision") == "role:vision:"
    member(services, "vision", "alice", "member")
    user = Principal("alice", email="alice@example.com", email_verified=True)
    assert role_in(services, user, "vision") == "member"
    key = "role:vision:alice|alice@example.com:0"
    assert services.cache.values == {key: b"member"}
    assert services.cache.ttls == {key: 17}
    admin = Principal("root", is_platform_admin=True)
    role_in(services, admin, "vision")
    assert services.cache.values["role:vision:root:1"] == b"admin"


def test_a_cached_role_wins_over_the_database_and_an_empty_one_means_none(services: Any) -> None:
    services.cache.values["role:vision:alice:0"] = b"admin"
    assert role_in(services, Principal("alice"), "vision") == "admin"
    services.cache.values["role:vision:bob:0"] = b""
    member(services, "vision", "bob", "member")
    assert role_in(services, Principal("bob"), "vision") is None


def test_no_role_is_cached_as_empty(services: Any) -> None:
    assert role_in(services, Principal("carol"), "vision") is None
    assert services.cache.values == {"role:vision:carol:0": b""}


# --- the rate limit -----------------------------------------------------------------------------


def test_writes_are_limited_per_user_per_minute(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security.time, "time", lambda: 60 * 1000 + 59.9)
    user = Principal("alice")
    security._rate_limit(services, user)
    security._rate_limit(services, user)  # the limit (2) itself is allowed
    assert services.cache.values == {"rate:alice:1000": b"2"}
    assert services.cache.ttls == {"rate:alice:1000": 60}
    with pytest.raises(ApiError) as caught:
        security._rate_limit(services, user)
    assert caught.value.status == 429
    assert caught.value.message == (
        "too many write requests: at most 2 per minute; retry after the time in Retry-After"
    )
    security._rate_limit(services, Principal("bob"))  # another user has their own count


# --- the caller ---------------------------------------------------------------------------------


def test_the_bearer_token_and_the_client_address_go_to_the_authenticator(services: Any) -> None:
    req = request(authorization="Bearer  tok-1 ")
    assert security.current_user(req, services) == Principal("alice")
    assert req.state.user == "alice"
    security.current_user(request(authorization="bearer tok-2"), services)
    security.current_user(request(authorization="Basic abc"), services)
    security.current_user(request(), services)
    security.current_user(request(authorization="Bearer tok-3", client=False), services)
    assert services.auth.calls == [
        ("tok-1", "10.0.0.7"),
        ("tok-2", "10.0.0.7"),
        (None, "10.0.0.7"),
        (None, "10.0.0.7"),
        ("tok-3", None),
    ]


def test_a_failed_authentication_is_401_with_the_reason(services: Any) -> None:
    services.auth = FakeAuth(None)
    with pytest.raises(ApiError) as caught:
        security.current_user(request(authorization="Bearer bad"), services)
    assert (caught.value.status, caught.value.message) == (401, "no valid token")


# --- the access dependency ----------------------------------------------------------------------


def test_a_project_you_are_not_in_is_404_and_a_weaker_role_is_403(services: Any) -> None:
    member(services, "vision", "alice", "viewer")
    writer = security._access("member")
    with pytest.raises(ApiError) as missing:
        writer(request(), services, Principal("alice"), "other")
    assert missing.value.status == 404
    assert missing.value.message == "project 'other' not found (or you are not a member)"
    with pytest.raises(ApiError) as weak:
        writer(request(), services, Principal("alice"), "vision")
    assert weak.value.status == 403
    assert "is viewer; this needs member or higher" in weak.value.message
    access = security._access("viewer")(request(), services, Principal("alice"), "vision")
    assert access == Access(Principal("alice"), "vision", "viewer")


def test_only_writes_count_against_the_rate_limit(services: Any) -> None:
    member(services, "vision", "alice", "member")
    writer = security._access("member")
    for method in ("GET", "HEAD", "OPTIONS"):
        for _ in range(3):
            writer(request(method), services, Principal("alice"), "vision")
    assert not any(k.startswith("rate:") for k in services.cache.values)
    writer(request("POST"), services, Principal("alice"), "vision")
    writer(request("DELETE"), services, Principal("alice"), "vision")
    with pytest.raises(ApiError) as caught:
        writer(request("PUT"), services, Principal("alice"), "vision")
    assert caught.value.status == 429
