"""The operator's own settings (environment `VISIONINAPP_OPERATOR_*`, or command-line flags)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OperatorConfig", "Role", "plain_credentials"]

Role = Literal["training", "rollout"]
ROLES: tuple[Role, ...] = ("training", "rollout")


CREDENTIAL_KEYS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "VISIONINAPP_RABBITMQ_PASSWORD"}
)


def plain_credentials(env: dict[str, str]) -> list[str]:
    """The credential keys of a plain environment (they belong in a Secret, or per node)."""
    return sorted(k for k in env if k in CREDENTIAL_KEYS)


class OperatorConfig(BaseSettings):
    """What the operator needs beyond the shared `Settings` (which it also reads)."""

    model_config = SettingsConfigDict(env_prefix="VISIONINAPP_OPERATOR_", extra="ignore")

    roles: list[Role] = Field(
        default_factory=lambda: list(ROLES),
        description="Controllers to run: `training` (TrainingJob → Job → ModelArtifact) on the GPU "
        "cluster, `rollout` (EdgeDeployment) on the edge cluster; both on a single cluster.",
    )
    context: str | None = Field(None, description="kubeconfig context to use (default: the current one).")
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch (globs allowed); every namespace when empty."
    )
    trainer_image: str = Field(
        "ghcr.io/visioninapp/trainer:latest",
        description="Image of the trainer pods (pin a digest in production).",
    )
    trainer_service_account: str | None = Field(
        None, description="ServiceAccount of the trainer pods (e.g. with IRSA / workload identity for S3)."
    )
    trainer_env_secret: str | None = Field(
        None,
        description="Secret in the TrainingJob's namespace whose keys become the trainer's environment "
        "(AWS_ACCESS_KEY_ID, VISIONINAPP_RABBITMQ_PASSWORD, ...).",
    )
    trainer_env: dict[str, str] = Field(
        default_factory=dict,
        description="Plain environment for the trainer pods (e.g. VISIONINAPP_S3_ENDPOINT_URL, "
        "VISIONINAPP_RABBITMQ_HOST); the operator's own values of those settings are passed on by default.",
    )
    trainer_gpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node selector of GPU trainer pods whose TrainingJob sets none (the GPU node pool, e.g. "
        "`agentpool: gpupool` on AKS).",
    )
    trainer_gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations added to GPU trainer pods (e.g. `sku=gpu:NoSchedule` and spot on AKS).",
    )
    trainer_work_dir: str = Field(
        "/scratch", description="Scratch directory inside the trainer pod (emptyDir)."
    )
    edge_image: str = Field(
        "ghcr.io/visioninapp/edge:latest",
        description="Image of the edge runtime pods (L4T arm64 on Jetsons).",
    )
    edge_env: dict[str, str] = Field(
        default_factory=dict,
        description="Plain environment for the edge pods (no credentials: those come from `edge_env_secret` "
        "or, in production, per node from `edge_identity`).",
    )

    @field_validator("edge_env")
    @classmethod
    def _no_plain_credentials(cls, env: dict[str, str]) -> dict[str, str]:
        found = plain_credentials(env)
        if found:
            raise ValueError(
                f"{', '.join(found)} in the edge pods' plain environment: put them in `edge_env_secret` "
                "(a Secret), or enable `edge_identity` for per-node credentials"
            )
        return env

    edge_env_secret: str | None = Field(
        None,
        description="Secret in the EdgeDeployment's namespace whose keys become the edge pods' environment "
        "(AWS_ACCESS_KEY_ID, VISIONINAPP_RABBITMQ_PASSWORD, ...) when `edge_identity` is off: shared by "
        "every node of the namespace; per-node identity is the production setting.",
    )
    edge_identity: bool = Field(
        False,
        description="Per-node edge credentials: each edge pod trades its projected token at the operator "
        "(`edge_identity_port`) for an IAM access key of its node in its namespace, scoped to that node's "
        "feedback prefixes and the namespace's models; a Node labelled `visioninapp.io/edge-revoked=true` "
        "is cut off. Keep S3 keys out of `edge_env` then.",
    )
    edge_identity_port: int = Field(8443, ge=1, le=65535, description="Port of the credential exchange.")
    edge_identity_url: str | None = Field(
        None,
        description="URL edge pods reach the exchange at (the operator's Service, "
        "`https://…:8443/v1/edge/credentials`).",
    )
    edge_identity_tls_cert: str | None = Field(
        None, description="Certificate (PEM) of the exchange; plain HTTP without it (tests only)."
    )
    edge_identity_tls_key: str | None = Field(None, description="Private key (PEM) of that certificate.")
    edge_identity_iam_endpoint_url: str | None = Field(
        None, description="IAM endpoint issuing the node keys; AWS IAM when empty."
    )
    edge_identity_rabbitmq_management_url: str | None = Field(
        None,
        description="RabbitMQ management HTTP API (`http://rabbitmq:15672`) where the operator makes a "
        "broker user per (namespace, node) allowed only to publish to the edge-events stream; edge pods "
        "keep the broker user of their environment when empty.",
    )
    edge_identity_rabbitmq_admin_user: str | None = Field(
        None, description="Management user allowed to create users and set permissions (from a Secret)."
    )
    edge_identity_rabbitmq_admin_password: str | None = Field(
        None, description="Its password (from a Secret, never plain values)."
    )
    edge_runtime_class: str | None = Field(
        None, description="RuntimeClass of the edge pods (`nvidia` on Jetsons without it as default)."
    )
    edge_cache_path: str = Field(
        "/var/lib/visioninapp/models",
        description="hostPath of the model cache on each edge node (shared by successive pods).",
    )
    rollout_resync_seconds: float = Field(
        5.0, gt=0, description="Rollouts are re-planned at least this often (step timeouts, minReadySeconds)."
    )
    status_interval_seconds: float = Field(
        2.0,
        ge=0,
        description="At most one progress (epoch/metrics) status patch per TrainingJob per interval.",
    )
    resync_seconds: float = Field(
        60.0, gt=0, description="Every object is reconciled at least this often (missed events, deadlines)."
    )
    api_concurrency: int = Field(
        64, ge=1, le=1000, description="Concurrent API requests of the operator at most."
    )
    mirror_kubeconfig_secret: str | None = Field(
        None,
        description="`namespace/name` of a Secret with a `kubeconfig` key: new ModelArtifacts are copied "
        "to that (edge) cluster.",
    )
    peering: str | None = Field(
        None,
        description="kopf peering object name for leader election between replicas; standalone when empty "
        "(run a single replica with the Recreate strategy then).",
    )
    liveness_port: int = Field(8080, ge=0, le=65535, description="Port of `/healthz`; 0 disables it.")
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Port of the Prometheus `/metrics`; 0 disables it."
    )
