"""The emulated cluster served over HTTP on a loopback port, with its controllers and a kubeconfig.

    with Harness(tmp_path) as cluster:            # API at cluster.url, kubeconfig at cluster.kubeconfig
        cluster.add_node("gpu-0", gpus=1, labels={...})
        cluster.create("visioninapp.io", "trainingjobs", "default", body)

It runs in a background thread with its own event loop, so synchronous tests, the CLI and local mode
can use it; clients (kubectl, the kubernetes client, kopf) talk to it over HTTP as to a cluster.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import yaml
from kmock._internal.apps import Server

from visioninapp.cluster.controllers import Controllers, PodScript
from visioninapp.cluster.emulator import DEFAULT_NAMESPACES, ClusterEmulator
from visioninapp.cluster.store import Obj, Store
from visioninapp.crds import crd_for
from visioninapp.resources import RESOURCES

__all__ = ["Harness"]

T = TypeVar("T")
# What a restart of local mode keeps: namespaces, their secrets and config maps, and our resources.
# Jobs, pods and DaemonSets are not kept: the operator recreates them from the resources.
PERSISTED = [
    ("", "namespaces"),
    ("", "secrets"),
    ("", "configmaps"),
    ("visioninapp.io", "trainingjobs"),
    ("visioninapp.io", "modelartifacts"),
    ("visioninapp.io", "edgedeployments"),
]


class Harness:
    """One emulated cluster: API server, Job controller, scheduler and pod runner."""

    def __init__(
        self,
        work_dir: Path,
        script: PodScript | None = None,
        *,
        name: str = "visioninapp-local",
        host: str = "127.0.0.1",
        port: int | None = None,
        install_crds: bool = True,
        history_limit: int = 10_000,
        run_controllers: bool = True,
        state_file: Path | None = None,
    ) -> None:
        self.work_dir, self.name, self._host, self._port = Path(work_dir), name, host, port
        self._script, self._install_crds, self._history_limit = script, install_crds, history_limit
        self._run_controllers = run_controllers  # False: an API server only (benchmarks of the operator)
        self._state_file = state_file  # local mode: what users made survives a restart
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-api", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._done: Future[None] = Future()
        self.url = ""
        self.kubeconfig = self.work_dir / "kubeconfig"

    # lifecycle

    def start(self) -> Self:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        ready: Future[None] = Future()
        asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        ready.result(timeout=30)
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()))
        return self

    async def _serve(self, ready: Future[None]) -> None:
        try:
            self.emulator = ClusterEmulator(store=Store(self._history_limit))
            self.controllers = Controllers(self.emulator.store, self.work_dir, self._script)
            self.emulator.log_reader = self.controllers.pod_log
            if self._install_crds:
                crds = self.emulator.store.types[("apiextensions.k8s.io", "customresourcedefinitions")]
                for kind in RESOURCES:
                    self.emulator.store.create(crds, None, crd_for(kind))
            if self._state_file is not None and self._state_file.is_file():
                self._load_state(self._state_file)
            self._stopping = asyncio.Event()
            async with self.emulator, Server(self.emulator, host=self._host, port=self._port) as server:
                self.url = str(server.url).rstrip("/")
                controllers = asyncio.create_task(
                    self.controllers.run() if self._run_controllers else asyncio.Event().wait()
                )
                saver = asyncio.create_task(self._save_state_periodically()) if self._state_file else None
                ready.set_result(None)
                await self._stopping.wait()
                if saver is not None:
                    saver.cancel()
                    self._save_state()
                self.emulator.store.close_watches()
                controllers.cancel()
                await self.controllers.stop()
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
            raise
        finally:
            self._done.set_result(None)

    # persistence (local mode): users' objects, not what controllers derive from them

    def _load_state(self, path: Path) -> None:
        saved = json.loads(path.read_text())
        for group, plural in PERSISTED:
            for obj in saved.get(f"{group}/{plural}", []):
                self.emulator.store.restore(self._type(group, plural), obj)

    def _save_state(self) -> None:
        assert self._state_file is not None
        store = self.emulator.store
        state = {
            f"{group}/{plural}": [
                obj
                for obj in store.select(self._type(group, plural))
                if plural != "namespaces" or obj["metadata"]["name"] not in DEFAULT_NAMESPACES
            ]
            for group, plural in PERSISTED
        }
        partial = self._state_file.with_suffix(".partial")
        partial.write_text(json.dumps(state))
        partial.replace(self._state_file)  # atomic: a crash leaves the previous state whole

    async def _save_state_periodically(self, seconds: float = 0.5) -> None:
        saved_at = -1
        while True:
            await asyncio.sleep(seconds)
            if self.emulator.store.resource_version != saved_at:
                saved_at = self.emulator.store.resource_version
                self._save_state()

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._done.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def kubeconfig_dict(self, namespace: str = "default") -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": {"server": self.url}}],
            "users": [{"name": "local-admin", "user": {}}],
            "contexts": [
                {
                    "name": self.name,
                    "context": {"cluster": self.name, "user": "local-admin", "namespace": namespace},
                }
            ],
            "current-context": self.name,
        }

    # thread-safe access for tests and tools (runs on the emulator's loop)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def set_script(self, script: PodScript | None) -> None:
        self.call(setattr, self.controllers, "script", script)

    def _type(self, group: str, plural: str) -> Any:
        return self.emulator.store.type_for(group, plural)

    def create(self, group: str, plural: str, namespace: str | None, body: Obj) -> Obj:
        return self.call(lambda: self.emulator.store.create(self._type(group, plural), namespace, body))

    def get(self, group: str, plural: str, namespace: str, name: str) -> Obj | None:
        def fetch() -> Obj | None:
            rtype = self._type(group, plural)
            obj = self.emulator.store.peek(rtype, namespace, name)
            return None if obj is None else self.emulator.store.get(rtype, namespace, name)

        return self.call(fetch)

    def list(
        self, group: str, plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        return self.call(
            lambda: self.emulator.store.list_objects(self._type(group, plural), namespace, label_selector)
        )

    def patch(
        self, group: str, plural: str, namespace: str, name: str, patch: Obj, subresource: str | None = None
    ) -> Obj:
        return self.call(
            lambda: self.emulator.store.patch(
                self._type(group, plural), namespace, name, patch, subresource=subresource
            )
        )

    def delete(self, group: str, plural: str, namespace: str, name: str) -> Obj:
        return self.call(lambda: self.emulator.store.delete(self._type(group, plural), namespace, name))

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        return self.create("", "namespaces", None, {"metadata": {"name": name, "labels": labels or {}}})

    def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        taints: builtins.list[Obj] | None = None,
        gpus: int = 0,
        cpu: str = "8",
        memory: str = "32Gi",
        ready: bool = True,
    ) -> Obj:
        capacity = {
            "cpu": cpu,
            "memory": memory,
            "pods": "110",
            **({"nvidia.com/gpu": str(gpus)} if gpus else {}),
        }
        node = {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": taints or []},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}
                ],
            },
        }
        nodes = self._type("", "nodes")
        return self.call(lambda: self.emulator.store.create(nodes, None, node, keep_status=True))

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
