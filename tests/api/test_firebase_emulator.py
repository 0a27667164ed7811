"""Sign-in through the real Firebase Auth emulator (npm firebase-tools): its ID tokens reach the API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import build_settings
from tests.conftest import sign_up
from visioninapp.cluster.cluster import Cluster

pytestmark = pytest.mark.services


def test_emulator_tokens_authenticate_and_map_to_roles(
    auth_emulator: str, tmp_path: Path, api_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from visioninapp.api.app import create_app
    from visioninapp.api.services import Services

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
    services = Services.build(settings)
    admin = {"Authorization": f"Bearer {sign_up(auth_emulator, 'boss@example.com')}"}
    member = {"Authorization": f"Bearer {sign_up(auth_emulator, 'dev@example.com')}"}
    try:
        with TestClient(create_app(services)) as client:
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
    finally:
        services.close()
