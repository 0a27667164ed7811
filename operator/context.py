"""What every controller shares, below them all: settings, API clients, namespaces, metrics,
background tasks, and the queue through which one controller asks another for a re-plan.

Nothing here knows a controller; controllers depend on this module, never on each other.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import logging
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import kopf

from visioninapp.backends.storage import ArtifactStore
from visioninapp.factory import artifact_store_for
from visioninapp.kubeclient import Kube, load_connection
from visioninapp.operator.config import OperatorConfig
from visioninapp.operator.metrics import Metrics
from visioninapp.settings import Settings

__all__ = ["Context", "Key", "log", "mirror_client"]

log = logging.getLogger("visioninapp.operator")
Key = tuple[str, str]  # (namespace, name) of a namespaced object


class Context:
    """The operator's shared state in one process."""

    def __init__(self, config: OperatorConfig, settings: Settings) -> None:
        self.config, self.settings = config, settings
        self.kube = Kube(load_connection(context=config.context), config.api_concurrency)
        self.mirror: Kube | None = None  # the edge cluster's API, where ModelArtifacts are copied
        self.metrics = Metrics(self.kube)
        self.tasks: list[asyncio.Task[None]] = []  # long-running loops, cancelled at cleanup
        self.background: set[asyncio.Task[None]] = set()  # work started by watch callbacks
        # ModelArtifacts whose status (`deployedTo`, the in-use finalizer) other kinds changed
        self.artifact_replans: asyncio.Queue[Key] = asyncio.Queue()
        self.trainer_env = self.service_env(training=True)
        self.edge_env = self.service_env(training=False)
        self._stores: dict[str, ArtifactStore] = {}

    def service_env(self, training: bool) -> dict[str, str]:
        """Where pods find S3 and the streams: the operator's own settings, then configured extras."""
        settings = self.settings
        values = {
            # feedback frames of edge pods go to the platform's store unless the deployment names one
            "VISIONINAPP_ARTIFACTS_URI": settings.resolved_artifacts_uri,
            "VISIONINAPP_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "VISIONINAPP_S3_REGION": settings.s3_region,
            "VISIONINAPP_RABBITMQ_HOST": settings.rabbitmq_host,
            # where and as whom; the password comes from a Secret (trainerEnvSecret), never plain env
            **(
                {
                    "VISIONINAPP_RABBITMQ_STREAM_PORT": settings.rabbitmq_stream_port,
                    "VISIONINAPP_RABBITMQ_USER": settings.rabbitmq_user,
                    "VISIONINAPP_RABBITMQ_VHOST": settings.rabbitmq_vhost,
                }
                if settings.rabbitmq_host
                else {}
            ),
            "VISIONINAPP_TRAINING_STREAM" if training else "VISIONINAPP_EDGE_STREAM": (
                settings.training_stream if training else settings.edge_stream
            ),
        }
        extra = self.config.trainer_env if training else self.config.edge_env
        return {k: str(v) for k, v in values.items() if v is not None} | extra

    def store_for(self, uri: str) -> ArtifactStore:
        """The artifact store of `uri`'s scheme, made once."""
        scheme = uri.split("://", 1)[0]
        if scheme not in self._stores:
            self._stores[scheme] = artifact_store_for(uri, self.settings)
        return self._stores[scheme]

    def watched(self, namespace: str) -> bool:
        """Lean watches see every namespace: keep to the configured ones (kopf does so itself)."""
        return not self.config.namespaces or any(
            fnmatch.fnmatch(namespace, p) for p in self.config.namespaces
        )

    def spawn(self, work: Awaitable[None]) -> None:
        """Run `work` in the background (a watch callback cannot wait), keeping the task alive."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def measured(self, kind: str, key: Key, reconcile: Awaitable[None]) -> None:
        """One reconciliation, timed and counted; a failure is logged, never raised (the next event
        or resync tries again)."""
        started = time.perf_counter()
        try:
            await reconcile
            self.metrics.reconciled(kind, time.perf_counter() - started)
        except Exception:
            self.metrics.failed(kind)
            log.exception("reconciling %s %s/%s failed; retrying at the next event or resync", kind, *key)

    def start(self, loop: Awaitable[None]) -> None:
        """A loop that runs until cleanup."""
        self.tasks.append(asyncio.ensure_future(loop))

    async def close(self) -> None:
        for task in [*self.tasks, *self.background]:
            task.cancel()
        await self.kube.close()
        if self.mirror is not None:
            await self.mirror.close()


async def mirror_client(kube: Kube, secret_ref: str) -> Kube:
    """A client for the edge cluster from a kubeconfig Secret (`namespace/name`, key `kubeconfig`)."""
    namespace, _, name = secret_ref.partition("/")
    secret = await kube.get("v1", "secrets", namespace, name)
    if secret is None or "kubeconfig" not in (secret.get("data") or {}):
        raise kopf.PermanentError(f"mirror Secret {secret_ref} with a `kubeconfig` key not found")
    path = Path(tempfile.mkdtemp(prefix="visioninapp-mirror-")) / "kubeconfig"
    path.write_bytes(base64.b64decode(secret["data"]["kubeconfig"]))
    return Kube(load_connection(path))
