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
    firebase_certs_url: str | None = Field(
        None,
        description="Where ID-token signing certificates are fetched; Google's securetoken certificates "
        "when empty (set only to test signature checks against a local key set).",
    )
    firebase_api_key: str | None = Field(
        None, description="Firebase Web API key the console signs in with (public by design)."
    )
    firebase_auth_domain: str | None = Field(None, description="Firebase auth domain for the console.")
    console_auth_emulator_url: str | None = Field(
        None, description="Firebase Auth emulator URL the console uses instead of Google (tests, dev)."
    )
    # API
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, description="Port the API listens on.")
    api_admins: list[str] = Field(
        default_factory=list,
        description="Platform admins (Firebase uids or emails): admin of every project. A token with "
        "the custom claim `admin: true` is one as well.",
    )
    api_cache_ttl_seconds: float = Field(30.0, gt=0, description="Lifetime of cached hot reads.")
    api_write_rate_per_minute: int = Field(
        120, ge=1, description="Write requests allowed per user per minute (429 beyond)."
    )
    api_max_upload_mb: int = Field(512, ge=1, description="Largest dataset or image upload accepted.")
    console_dir: Path | None = Field(
        None, description="Directory of the web console's files; the checkout's frontend/ when empty."
    )
    webhook_url: str | None = Field(
        None, description="POST notifications (run finished or failed, rollback) here as JSON."
    )
    llm_model: str | None = Field(
        None,
        description="LangChain chat model for run summaries, `provider:model` (e.g. `openai:gpt-4o-mini`); "
        "a deterministic offline template when empty.",
    )
    search_index_prefix: str = Field(
        "visioninapp", description="Prefix of Elasticsearch indices and aliases."
    )
    # Kubernetes
    kubeconfig: Path | None = Field(
        None, description="Kubeconfig file; $KUBECONFIG or ~/.kube/config when empty (outside a pod)."
    )
    kube_context_training: str | None = Field(
        None, description="Kubeconfig context of the training cluster (in-cluster config when empty)."
    )
    kube_context_rollout: str | None = Field(
        None, description="Kubeconfig context of the edge cluster (same as training when empty)."
    )
    # Edge runtime (set by the operator in the pod template; by hand or a config file on a bare device)
    namespace: str = Field("default", description="Namespace of the EdgeDeployment (downward API).")
    deployment: str = Field("standalone", description="EdgeDeployment name this runtime serves.")
    node_name: str = Field("localhost", description="Node the runtime runs on (downward API).")
    revision: str = Field("none", description="Pod template revision of the rollout.")
    edge_model_uri: str | None = Field(None, description="Desired model: URI of its file.")
    edge_model_sha256: str | None = Field(None, description="Desired model: sha256 of its file.")
    edge_model_format: Literal["onnx", "onnx-int8", "tensorrt"] = Field("onnx", description="Desired format.")
    edge_model_version: str | None = Field(None, description="Desired model: ModelArtifact name.")
    edge_model_config: Path | None = Field(
        None, description="A watched YAML/JSON file with uri, sha256, format, version (bare devices)."
    )
    edge_cache_dir: Path | None = Field(
        None, description="Model cache shared by successive pods (hostPath); data_dir/edge-cache when empty."
    )
    edge_state_dir: Path | None = Field(
        None,
        description="Spools of unsent events and frames (a hostPath per node and deployment, so a "
        "replaced pod's successor sends them); data_dir/edge-state when empty.",
    )
    edge_cameras_dir: Path | None = Field(
        None,
        description="Directory of per-node camera lists (the EdgeDeployment's cameras ConfigMap): the "
        "runtime reads the file named after its node and follows its changes.",
    )
    edge_port: int = Field(8080, description="HTTP port of the edge runtime.")
    edge_confidence: float = Field(0.25, description="Default confidence threshold.")
    edge_iou: float = Field(0.45, description="Default NMS IoU threshold.")
    edge_precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "fp32",
        description="Precision on GPU providers; for engines `auto` is FP16 with TensorRT on a Jetson, "
        "FP32 elsewhere, and `int8` needs the artifact's quantized (`onnx-int8`) model.",
    )
    edge_engine: Literal["tensorrt", "ort-optimized"] = Field(
        "tensorrt",
        description="What `format: tensorrt` builds on the device: a TensorRT engine, or its CPU "
        "stand-in (an onnxruntime optimized-model file, keyed and cached the same way; tests).",
    )
    edge_engine_cache_uri: str | None = Field(
        None,
        description="The fleet's shared engine cache (`<uri>/<key hash>/`); "
        "artifacts_uri/<namespace>/.engines when empty; `none` turns sharing off.",
    )
    edge_engine_build_timeout_seconds: float = Field(
        3600.0, gt=0, description="An engine build taking longer fails (the current model keeps serving)."
    )
    edge_summary_interval_seconds: float = Field(15.0, description="EdgeEvent window length.")
    edge_admin_token: str | None = Field(
        None, description="Bearer token for the admin API (model swap); loopback only when empty."
    )
    feedback_enabled: bool = Field(False, description="Upload low-confidence frames.")
    feedback_min_score: float = Field(0.25, description="Low-confidence range, lower end.")
    feedback_max_score: float = Field(0.5, description="Low-confidence range, upper end.")
    feedback_sample_rate: float = Field(0.1, description="Fraction of low-confidence frames kept.")
    feedback_max_frames_per_hour: int = Field(60, description="Upload budget per hour.")
    feedback_uri: str | None = Field(
        None, description="Prefix for frames; artifacts_uri/feedback when empty."
    )
    edge_identity_url: str | None = Field(
        None,
        description="The operator's credential exchange (`https://…/v1/edge/credentials`): the edge pod "
        "trades its projected token for its node's own S3 credentials; the ambient ones when empty.",
    )
    edge_identity_token_file: Path = Field(
        Path("/var/run/secrets/visioninapp/edge/token"),
        description="The pod's projected ServiceAccount token (audience `visioninapp-edge`).",
    )
    edge_identity_ca_file: Path | None = Field(
        None, description="CA bundle that signs the exchange's certificate (https); the system's when empty."
    )
    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="`json` for structured logs.")

    @property
    def resolved_artifacts_uri(self) -> str:
        return self.artifacts_uri or (self.data_dir / "artifacts").resolve().as_uri()

    @property
    def resolved_edge_cache_dir(self) -> Path:
        return self.edge_cache_dir or self.data_dir / "edge-cache"

    @property
    def resolved_edge_state_dir(self) -> Path:
        return self.edge_state_dir or self.data_dir / "edge-state"

    @property
    def resolved_feedback_uri(self) -> str:
        return self.feedback_uri or self.resolved_artifacts_uri.rstrip("/") + "/feedback"

    @property
    def resolved_engine_cache_uri(self) -> str | None:
        if self.edge_engine_cache_uri == "none":
            return None
        return (
            self.edge_engine_cache_uri
            or f"{self.resolved_artifacts_uri.rstrip('/')}/{self.namespace}/.engines"
        )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'visioninapp.db').resolve()}"
