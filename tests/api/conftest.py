"""Fixtures of the API tests: real MariaDB, Redis, Elasticsearch API (noida-db), S3 (moto), RabbitMQ
Streams, the Kubernetes API emulator, and Firebase ID tokens signed against a local key set."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.conftest import FIREBASE_PROJECT
from tests.services import free_port
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.local.cluster.controlplane import ControlPlane
from visioninapp.settings import Settings

ADMIN_UID = "platform-admin"


@pytest.fixture(scope="session")
def api_cluster(tmp_path_factory: pytest.TempPathFactory, control_plane: ControlPlane) -> Iterator[Cluster]:
    """The session's control plane for the API tests; each test works in namespaces of its own."""
    with Cluster(tmp_path_factory.mktemp("api-cluster"), plane=control_plane) as cluster:
        yield cluster


def _self_signed(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Tokens:
    """Firebase-shaped RS256 ID tokens, signed with a key whose certificate a local server publishes."""

    key: rsa.RSAPrivateKey
    forger: rsa.RSAPrivateKey  # a key the server does not publish
    certs_url: str

    def token(
        self,
        uid: str,
        email: str | None = None,
        *,
        admin: bool = False,
        expired: bool = False,
        forged: bool = False,
        audience: str = FIREBASE_PROJECT,
    ) -> str:
        now = int(time.time())
        issued = now - 7200 if expired else now - 10
        claims: dict[str, Any] = {
            "iss": f"https://securetoken.google.com/{audience}",
            "aud": audience,
            "sub": uid,
            "user_id": uid,
            "iat": issued,
            "auth_time": issued,
            "exp": issued + 3600,
            "firebase": {"sign_in_provider": "password", "identities": {}},
        }
        if email:
            claims["email"] = email
        if admin:
            claims["admin"] = True
        key = self.forger if forged else self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "local-key"})

    def headers(self, uid: str, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(uid, **kwargs)}"}


@pytest.fixture(scope="session")
def tokens() -> Iterator[Tokens]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = json.dumps({"local-key": _self_signed(key)}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Tokens(key, forger, f"http://127.0.0.1:{port}/certs")
    server.shutdown()


@dataclass
class ApiEnv:
    settings: Settings
    client: Any  # fastapi.testclient.TestClient
    app: Any  # the FastAPI app
    container: Any  # visioninapp.api.container.ApiContainer
    cluster: Cluster
    tokens: Tokens

    def as_user(self, uid: str, **kwargs: Any) -> dict[str, str]:
        return self.tokens.headers(uid, **kwargs)

    @property
    def admin(self) -> dict[str, str]:
        return self.tokens.headers(ADMIN_UID, email="admin@example.com")

    def new_project(self, members: dict[str, str] | None = None) -> str:
        """A fresh project (namespace) created through the API, with `uid: role` members."""
        name = f"p-{uuid.uuid4().hex[:8]}"
        response = self.client.post("/api/v1/projects", json={"name": name}, headers=self.admin)
        assert response.status_code == 201, response.text
        for uid, role in (members or {}).items():
            put = self.client.put(
                f"/api/v1/projects/{name}/members/{uid}", json={"role": role}, headers=self.admin
            )
            assert put.status_code == 200, put.text
        return name


def _database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'api.db'}"
        return
    import sqlalchemy

    server = request.getfixturevalue("mariadb_server")
    name = f"vt_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(f"{server}/")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        yield f"{server}/{name}?charset=utf8mb4"
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        engine.dispose()


def build_settings(
    tmp_path: Path,
    database_url: str,
    *,
    redis_url: str | None,
    elasticsearch_url: str | None,
    s3_endpoint: str | None,
    rabbitmq: bool,
    kubeconfig: Path,
    certs_url: str,
) -> Settings:
    bucket = f"api-{uuid.uuid4().hex[:8]}"
    if s3_endpoint:
        import boto3

        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=redis_url,
        elasticsearch_url=elasticsearch_url,
        search_index_prefix=f"t{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_endpoint,
        artifacts_uri=f"s3://{bucket}/vision" if s3_endpoint else None,
        rabbitmq_host="127.0.0.1" if rabbitmq else None,
        training_stream=f"training-events-{uuid.uuid4().hex[:6]}",
        edge_stream=f"edge-events-{uuid.uuid4().hex[:6]}",
        firebase_project_id=FIREBASE_PROJECT,
        firebase_certs_url=certs_url,
        api_admins=[ADMIN_UID],
        kubeconfig=kubeconfig,
        api_write_rate_per_minute=10_000,
    )


@pytest.fixture(params=["mariadb", "sqlite"])
def api(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    elasticsearch_url: str,
    s3_endpoint: str,
    rabbitmq_stream_port: int,
    api_cluster: Cluster,
    tokens: Tokens,
) -> Iterator[ApiEnv]:
    """The API over every real service, on MariaDB and on SQLite (the same tests run on both)."""
    from fastapi.testclient import TestClient

    from visioninapp.api.app import create_app
    from visioninapp.api.container import ApiContainer

    os.environ.pop("FIREBASE_AUTH_EMULATOR_HOST", None)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    for database_url in _database_url(request, request.param, tmp_path):
        settings = build_settings(
            tmp_path,
            database_url,
            redis_url=redis_url,
            elasticsearch_url=elasticsearch_url,
            s3_endpoint=s3_endpoint,
            rabbitmq=True,
            kubeconfig=api_cluster.kubeconfig,
            certs_url=tokens.certs_url,
        )
        container = ApiContainer.build(settings, search_refresh=True)
        try:
            app = create_app(container)
            with TestClient(app) as client:
                yield ApiEnv(settings, client, app, container, api_cluster, tokens)
        finally:
            container.close()
