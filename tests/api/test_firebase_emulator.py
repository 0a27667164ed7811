"""Sign-in through the real Firebase Auth emulator (npm firebase-tools): its ID tokens reach the API.

Email/password sign-up does not prove that the address is the user's: until the email is verified,
it must grant nothing (neither the memberships that name it nor platform admin by email)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import build_settings
from tests.conftest import sign_up, verify_email
from visioninapp.local.cluster.cluster import Cluster

pytestmark = pytest.mark.services


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def emulated(
    auth_emulator: str, tmp_path: Path, api_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> Any:
    from fastapi.testclient import TestClient

    from visioninapp.api.app import create_app
    from visioninapp.api.container import ApiContainer

    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", auth_emulator)
    settings = build_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'api.db'}",
        redis_url=None,
        elasticsearch_url=None,
        s3_endpoint=None,
        rabbitmq=False,
        kubeconfig=api_cluster.kubeconfig,
        certs_url="",
    )
    settings.firebase_certs_url = None
    settings.api_admins = ["boss@example.com"]
    services = ApiContainer.build(settings)
    try:
        with TestClient(create_app(services)) as client:
            yield client, services
    finally:
        services.close()


def test_emulator_tokens_authenticate_and_map_to_roles(auth_emulator: str, emulated: Any) -> None:
    client, _ = emulated
    admin = bearer(verify_email(auth_emulator, sign_up(auth_emulator, "boss@example.com")))
    member = bearer(verify_email(auth_emulator, sign_up(auth_emulator, "dev@example.com")))
    created = client.post("/api/v1/projects", json={"name": "emulated"}, headers=admin)
    assert created.status_code == 201, created.text
    assert client.get("/api/v1/projects", headers=member).json()["items"] == []
    put = client.put(
        "/api/v1/projects/emulated/members/dev@example.com", json={"role": "member"}, headers=admin
    )
    assert put.status_code == 200
    mine = client.get("/api/v1/projects", headers=member).json()["items"]
    assert [(p["name"], p["role"]) for p in mine] == [("emulated", "member")]
    assert client.get("/api/v1/projects").status_code == 401


def test_an_unverified_email_grants_nothing(auth_emulator: str, emulated: Any, api_cluster: Cluster) -> None:
    """The attack: an account whose email is an admin's (or a member's) address, never verified."""
    client, services = emulated
    tag = uuid.uuid4().hex[:6]
    boss, lead, ops = (f"{who}-{tag}@example.com" for who in ("boss", "lead", "ops"))
    services.auth._admins.update({boss, lead})  # platform admins by email, as VISIONINAPP_API_ADMINS
    # Someone signs up with the platform admin's address before the admin does.
    squatter = sign_up(auth_emulator, boss)
    refused = client.post("/api/v1/projects", json={"name": "squatted"}, headers=bearer(squatter))
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "forbidden"
    assert api_cluster.get("", "namespaces", "", "squatted") is None  # nothing was written
    assert client.get("/api/v1/projects", headers=bearer(squatter)).json()["items"] == []

    # A member by email: the unverified holder of that address sees nothing of the project.
    admin = bearer(verify_email(auth_emulator, sign_up(auth_emulator, lead)))
    assert client.post("/api/v1/projects", json={"name": "secret"}, headers=admin).status_code == 201
    put = client.put(f"/api/v1/projects/secret/members/{ops}", json={"role": "admin"}, headers=admin)
    assert put.status_code == 200
    unverified = bearer(sign_up(auth_emulator, ops))
    assert client.get("/api/v1/projects/secret", headers=unverified).status_code == 404
    assert client.get("/api/v1/projects", headers=unverified).json()["items"] == []
    stolen = client.put("/api/v1/projects/secret/members/thief", json={"role": "admin"}, headers=unverified)
    assert stolen.status_code == 404
    members = client.get("/api/v1/projects/secret/members", headers=admin).json()
    assert "thief" not in {m["principal"] for m in members}  # nothing was written

    # Once verified (a fresh token), the same account is what the membership names.
    verified = bearer(verify_email(auth_emulator, unverified["Authorization"].removeprefix("Bearer ")))
    assert client.get("/api/v1/projects/secret", headers=verified).json()["role"] == "admin"
