"""The one settings model of every component, read from `VISIONINAPP_*` environment variables.

A service left unconfigured falls back to its embedded default (local directory, local event log,
SQLite, SQL full-text search, in-process cache, local admin on loopback), so a first run needs no
setup; production configures each service explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


def _default_data_dir() -> Path:
    return Path.home() / ".visioninapp"


class Settings(BaseSettings):
    """Configuration shared by the operator, trainer, edge runtime, API and CLI."""

    model_config = SettingsConfigDict(env_prefix="VISIONINAPP_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Directory of the embedded backends (artifacts, event log, SQLite) in local mode.",
    )
    # Object storage
    artifacts_uri: str | None = Field(
        None,
        description="Default base URI for training outputs and feedback (`s3://bucket/prefix`); "
        "`file://<data_dir>/artifacts` when empty.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto); empty means AWS S3 itself."
    )
    s3_region: str = Field("us-east-1", description="S3 region.")
    # Event streams
    rabbitmq_host: str | None = Field(
        None, description="RabbitMQ host with the stream plugin; the local event log when empty."
    )
    rabbitmq_stream_port: int = Field(5552, description="RabbitMQ Streams port.")
    rabbitmq_user: str = Field("guest", description="RabbitMQ user.")
    rabbitmq_password: str = Field("guest", description="RabbitMQ password.")
    rabbitmq_vhost: str = Field("/", description="RabbitMQ virtual host.")
    training_stream: str = Field("training-events", description="Stream of TrainingEvents.")
    edge_stream: str = Field("edge-events", description="Stream of EdgeEvents.")
    # SQL, cache, search, auth (API)
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. `mysql+pymysql://user:pw@host/db`; SQLite in data_dir when empty.",
    )
    redis_url: str | None = Field(None, description="Redis URL; an in-process cache when empty.")
    elasticsearch_url: str | None = Field(
        None, description="Elasticsearch 8/9 URL; SQL full-text search when empty."
    )
    firebase_project_id: str | None = Field(
        None, description="Firebase project whose ID tokens are accepted; local admin on loopback when empty."
    )
    # Kubernetes
    kube_context_training: str | None = Field(
        None, description="Kubeconfig context of the training cluster (in-cluster config when empty)."
    )
    kube_context_rollout: str | None = Field(
        None, description="Kubeconfig context of the edge cluster (same as training when empty)."
    )
    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="`json` for structured logs.")

    @property
    def resolved_artifacts_uri(self) -> str:
        return self.artifacts_uri or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'visioninapp.db').resolve()}"
