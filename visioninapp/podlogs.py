"""Pod output for `visioninapp logs tj/NAME | ed/NAME | pod/NAME`, on a cluster or in local mode."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visioninapp.local.mode import local_kubeconfig
from visioninapp.settings import Settings

__all__ = ["LogError", "PodLogs", "api_client", "resolve_kubeconfig"]

TRAINING_JOB_LABEL = "visioninapp.io/training-job"
DEPLOYMENT_LABEL = "visioninapp.io/edge-deployment"
KINDS = {
    "tj": "trainingjob",
    "trainingjob": "trainingjob",
    "trainingjobs": "trainingjob",
    "ed": "edgedeployment",
    "edgedeployment": "edgedeployment",
    "edgedeployments": "edgedeployment",
    "pod": "pod",
    "pods": "pod",
    "po": "pod",
}


class LogError(RuntimeError):
    """The logs cannot be read; the message says why."""


def resolve_kubeconfig(explicit: Path | None) -> Path:
    """--kubeconfig, else $KUBECONFIG, else ~/.kube/config, else local mode's kubeconfig."""
    candidates = [explicit] if explicit else []
    candidates += [Path(p) for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    candidates += [Path.home() / ".kube" / "config", local_kubeconfig(Settings().data_dir)]
    for path in candidates:
        if path.is_file():
            return path
    raise LogError(
        "no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or start local mode (`visioninapp local up`)"
    )


def api_client(kubeconfig: Path) -> tuple[Any, str]:
    """A kubernetes ApiClient from a kubeconfig file, and its current context's namespace."""
    import kubernetes

    _, context = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return api, (context or {}).get("context", {}).get("namespace", "default")


@dataclass
class PodLogs:
    core: Any  # kubernetes.client.CoreV1Api
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: Path | None, namespace: str | None) -> PodLogs:
        import kubernetes

        api, default = api_client(resolve_kubeconfig(kubeconfig))
        return cls(kubernetes.client.CoreV1Api(api), namespace or default)

    def _pods(self, kind: str, name: str) -> list[Any]:
        import urllib3
        from kubernetes.client import ApiException

        try:
            if kind == "pod":
                return [self.core.read_namespaced_pod(name, self.namespace)]
            label = TRAINING_JOB_LABEL if kind == "trainingjob" else DEPLOYMENT_LABEL
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{label}={name}").items
        except ApiException as error:
            if error.status == 404:
                raise LogError(f"pod {name} not found in namespace {self.namespace}") from None
            raise LogError(f"cannot list pods: {error.reason}") from None
        except (OSError, urllib3.exceptions.HTTPError) as error:
            raise LogError(f"cannot reach the cluster: {error}") from None
        if not pods:
            raise LogError(
                f"{kind} {name} has no pods in namespace {self.namespace} (not started yet, or finished and "
                "cleaned up; `kubectl get pods -l " + f"{label}={name}` shows them)"
            )
        if kind == "trainingjob":  # the current attempt: the newest pod
            pods = [max(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))]
        return sorted(pods, key=lambda p: p.spec.node_name or "")

    def read(self, target: str) -> list[tuple[str, str, str]]:
        """(pod, its whole output so far, line prefix) for each pod of `target`."""
        kind_text, _, name = target.partition("/")
        kind = KINDS.get(kind_text.lower())
        if kind is None or not name:
            raise LogError(f"{target!r}: give tj/NAME, ed/NAME or pod/NAME")
        pods = self._pods(kind, name)
        result = []
        for pod in pods:
            text = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace)
            prefix = f"[{pod.spec.node_name}] " if kind == "edgedeployment" else ""
            result.append((pod.metadata.name, text or "", prefix))
        return result
