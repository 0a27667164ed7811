"""A real Kubernetes cluster on this machine, driven synchronously: control plane + node agent.

    with Cluster(work_dir) as cluster:                   # its own control plane
        cluster.add_node("gpu-0", gpus=1, labels={...})
        cluster.create("visioninapp.io", "trainingjobs", "vision", body)

    Cluster(work_dir, plane=running_plane)               # nodes and a client on a shared one

Tests, benchmarks and local mode use it. The agent and the API client run on an event loop of their
own in a background thread, so synchronous code (and pod scripts written as plain functions) can
use them; everything goes through the API server, as any client's requests would.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import yaml

from visioninapp.crds import crd_for
from visioninapp.k8s import Obj
from visioninapp.kubeclient import Connection, Kube
from visioninapp.local.cluster.agent import NodeAgent, NodeSpec, PodScript
from visioninapp.local.cluster.controlplane import ControlPlane
from visioninapp.local.cluster.pki import CertificateAuthority
from visioninapp.resources import RESOURCES

__all__ = ["API_VERSIONS", "Cluster"]

T = TypeVar("T")
# The version served for each API group the project uses.
API_VERSIONS = {
    "": "v1",
    "apps": "apps/v1",
    "batch": "batch/v1",
    "coordination.k8s.io": "coordination.k8s.io/v1",
    "events.k8s.io": "events.k8s.io/v1",
    "apiextensions.k8s.io": "apiextensions.k8s.io/v1",
    "rbac.authorization.k8s.io": "rbac.authorization.k8s.io/v1",
    "node.k8s.io": "node.k8s.io/v1",
    "policy": "policy/v1",
    "networking.k8s.io": "networking.k8s.io/v1",
    "scheduling.k8s.io": "scheduling.k8s.io/v1",
    "visioninapp.io": "visioninapp.io/v1alpha1",
    "kopf.dev": "kopf.dev/v1",
}


class Cluster:
    """Nodes (a `NodeAgent`) and a synchronous client on a real control plane (see module docstring)."""

    def __init__(
        self,
        work_dir: Path,
        *,
        plane: ControlPlane | None = None,
        script: PodScript | None = None,
        run_pods: bool = True,
        install_crds: bool = True,
        lease_seconds: int = 40,
        renew_seconds: float = 10.0,
        **plane_options: Any,
    ) -> None:
        self.work_dir = Path(work_dir)
        self._own_plane = plane is None
        self.plane = plane or ControlPlane(self.work_dir / "control-plane", **plane_options)
        self._script, self._run_pods, self._install_crds = script, run_pods, install_crds
        self._lease_seconds, self._renew_seconds = lease_seconds, renew_seconds
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cluster-agent", daemon=True)
        self._kinds: dict[tuple[str, str], str] = {}
        self.namespace = "default"  # the namespace this user of the cluster works in
        self._namespaces: builtins.list[str] = []  # made here: `clean_up` removes them
        self.kube: Kube
        self.agent: NodeAgent

    # lifecycle

    def start(self) -> Self:
        if self._own_plane:
            self.plane.start()
        self._thread.start()
        try:
            self.run(self._start())
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        plane = self.plane
        self.kube = Kube(
            Connection(
                server=plane.url,
                ca_path=str(plane.ca_cert),
                certificate_path=str(plane.admin.cert),
                private_key_path=str(plane.admin.key),
            ),
            user_agent="visioninapp-node-agent",
        )
        serving = CertificateAuthority(plane.pki).issue(
            "node-agent", common_name="visioninapp-node-agent", hosts=("127.0.0.1",), server=True
        )
        self.agent = NodeAgent(
            self.kube,
            self.work_dir / "nodes",
            script=self._script,
            run_pods=self._run_pods,
            lease_seconds=self._lease_seconds,
            renew_seconds=self._renew_seconds,
            api_server=("127.0.0.1", plane.port),
            serving=(serving.cert, serving.key),
            client_ca=plane.ca_cert,
        )
        await self.agent.start()
        if self._install_crds:
            await self._apply_crds()

    async def _apply_crds(self) -> None:
        version = "apiextensions.k8s.io/v1"
        for kind in RESOURCES:
            crd = crd_for(kind)
            name = crd["metadata"]["name"]
            existing = await self.kube.get(version, "customresourcedefinitions", None, name)
            if existing is None:
                await self.kube.create(version, "customresourcedefinitions", None, crd)
            elif existing["spec"] != crd["spec"]:
                crd["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                await self.kube.request(
                    "PUT", Kube.path(version, "customresourcedefinitions", None, name), crd
                )
        for kind in RESOURCES:
            name = crd_for(kind)["metadata"]["name"]
            while True:
                stored = await self.kube.get(version, "customresourcedefinitions", None, name)
                conditions = ((stored or {}).get("status") or {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    break
                await asyncio.sleep(0.1)

    def stop(self, delete_nodes: bool = False, graceful: bool = False) -> None:
        """Stop the nodes (`graceful`: as a node shutdown, see `NodeAgent.stop`), then the control
        plane if it is this cluster's own."""
        if self._thread.is_alive():
            if hasattr(self, "agent"):
                self.run(self.agent.stop(delete_nodes=delete_nodes, graceful=graceful), timeout=90)
            if hasattr(self, "kube"):
                self.run(self.kube.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if self._own_plane:
            self.plane.stop()

    def clean_up(self) -> None:
        """Leave a shared control plane as found: the namespaces made here and the nodes, gone at once.

        Finalizers of our kinds and of Jobs are dropped (no operator is left to remove them) and
        pods are deleted with grace 0 (no node is left to confirm it), so nothing lingers where the
        next user's scheduler or operator would meet it.
        """
        if not self._thread.is_alive():
            return  # stopped already
        for namespace in self._namespaces:
            owned = [("visioninapp.io", p) for p in ("trainingjobs", "modelartifacts", "edgedeployments")]
            for group, plural in [*owned, ("batch", "jobs")]:
                for obj in self.list(group, plural, namespace):
                    if obj["metadata"].get("finalizers"):
                        name = obj["metadata"]["name"]
                        self.patch(group, plural, namespace, name, {"metadata": {"finalizers": None}})
            self.delete("", "namespaces", None, namespace)
            for pod in self.list("", "pods", namespace):
                self.run(self.kube.delete("v1", "pods", namespace, pod["metadata"]["name"], grace_seconds=0))
        self.stop(delete_nodes=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._own_plane:
            self.stop()
        else:  # a shared control plane outlives this user: leave nothing of ours on it
            self.clean_up()

    # access

    @property
    def url(self) -> str:
        return self.plane.url

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    def kubeconfig_dict(self, namespace: str = "default", token: str | None = None) -> Obj:
        return self.plane.kubeconfig_dict(namespace=namespace, token=token)

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the cluster's loop (where `self.kube` and `self.agent` live)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        return future.result(timeout=timeout)

    def set_script(self, script: PodScript | None) -> None:
        self.agent.script = script

    def _api_version(self, group: str) -> str:
        return API_VERSIONS[group]

    async def _kind(self, group: str, plural: str) -> str:
        """The kind of `plural` in `group`, from the server's discovery (bodies need it)."""
        if (group, plural) not in self._kinds:
            version = self._api_version(group)
            path = f"api/{version}" if "/" not in version else f"apis/{version}"
            listing = await self.kube.request("GET", path)
            for resource in listing.get("resources", []):
                self._kinds[(group, resource["name"])] = resource["kind"]
        return self._kinds[(group, plural)]

    # objects (what the kubernetes client would do, in one line each)

    def create(self, group: str, plural: str, namespace: str | None, body: Obj) -> Obj:
        async def create() -> Obj:
            full = {"apiVersion": self._api_version(group), "kind": await self._kind(group, plural), **body}
            return await self.kube.request("POST", Kube.path(full["apiVersion"], plural, namespace), full)

        return self.run(create())

    def get(self, group: str, plural: str, namespace: str | None, name: str) -> Obj | None:
        return self.run(self.kube.get(self._api_version(group), plural, namespace or None, name))

    def list(
        self, group: str, plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> builtins.list[Obj]:
        return self.run(self.kube.list(self._api_version(group), plural, namespace, label_selector or ""))

    def patch(
        self,
        group: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: Obj,
        subresource: str | None = None,
    ) -> Obj:
        return self.run(
            self.kube.patch(self._api_version(group), plural, namespace or None, name, patch, subresource)
        )

    def delete(
        self, group: str, plural: str, namespace: str | None, name: str, propagation: str = "Background"
    ) -> bool:
        return self.run(
            self.kube.delete(self._api_version(group), plural, namespace or None, name, propagation)
        )

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        created = self.create("", "namespaces", None, {"metadata": {"name": name, "labels": labels or {}}})
        self._namespaces.append(name)
        return created

    def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        taints: builtins.list[Obj] | None = None,
        gpus: int = 0,
        cpu: str = "8",
        memory: str = "32Gi",
    ) -> Obj:
        spec = NodeSpec(name, dict(labels or {}), list(taints or []), cpu=cpu, memory=memory, gpus=gpus)
        node = self.run(self.agent.add_node(spec))
        # Schedulable once the node lifecycle controller has seen it Ready and lifted the
        # `node.kubernetes.io/not-ready` taint that admission puts on every new node.
        self.wait_for(lambda: not self._not_ready_taint(name), 30, f"node {name} to be schedulable")
        return node

    def _not_ready_taint(self, name: str) -> bool:
        node = self.get("", "nodes", None, name) or {}
        return any(
            t["key"].startswith("node.kubernetes.io/") for t in (node.get("spec") or {}).get("taints") or []
        )

    def remove_node(self, name: str) -> None:
        self.run(self.agent.remove_node(name))

    def set_online(self, name: str, online: bool) -> None:
        """Cut a node off the API server (no heartbeats, no reports) or bring it back."""
        self.run(self.agent.set_online(name, online))

    def wait_for(self, predicate: Callable[[], T], timeout: float = 30, what: str = "condition") -> T:
        """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    def pod_log(self, namespace: str, name: str) -> str:
        """The pod's output, read as `kubectl logs` reads it (API server → the node's kubelet API)."""
        path = Kube.path("v1", "pods", namespace, name, "log")
        return self.run(self.kube.text(path))

    def write_kubeconfig(self, path: Path, namespace: str = "default", token: str | None = None) -> Path:
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(namespace, token)))
        return path

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token of a ServiceAccount (TokenRequest), to act as it."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        path = Kube.path("v1", "serviceaccounts", namespace, name, "token")
        return str(self.run(self.kube.request("POST", path, request))["status"]["token"])
