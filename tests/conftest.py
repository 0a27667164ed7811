"""Shared fixtures for every test folder (unit, k8s, integration, e2e)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import ensure_rabbitmq_streams, s3_server

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every embedded backend at a fresh directory for one test."""
    monkeypatch.setenv("VISIONINAPP_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto server) over HTTP; boto3 talks to it as to AWS."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def rabbitmq_stream_port() -> int:
    return ensure_rabbitmq_streams()
