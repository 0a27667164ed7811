"""Local mode: the whole platform on one machine (`visioninapp local up`).

One process tree: a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, built from source once per machine) with the node agent, which runs every pod as a
local process on two nodes (`local-cpu-0` takes trainer pods; `local-edge-0` is labelled and
tainted like a Jetson, so EdgeDeployments land there unchanged), and the real operator and the API
with the console as child processes. Every service a user has not configured falls back to its
embedded default (file store, local event log, SQLite, in-process cache, local admin on loopback);
configured ones are used as is.

With `edge_cluster`, the production topology: the edge nodes join a second control plane (the edge
cluster, as K3s at a site), with an operator of its own in the `rollout` role; the training
cluster's operator (role `training`) mirrors each ModelArtifact and its stage there, and the API
works with both (kubeconfig contexts `training` and `edge`).

What users made lives in etcd in the data directory, so it survives a restart; pods that were
running when the platform stopped are treated as a node restart treats them (a Job's pod is
replaced without using up its retries, a DaemonSet's pod restarts).

Nothing outlives it: children die with it (PR_SET_PDEATHSIG), and a later `up` in the same data
directory first stops whatever a crashed one left behind (processes carry the session marker).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import requests
import yaml

from visioninapp.backends.storage import join_uri
from visioninapp.factory import artifact_store_for
from visioninapp.local.cluster.build import BuildError
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.local.cluster.controlplane import ControlPlaneError
from visioninapp.local.processes import die_with_parent
from visioninapp.local.synth import generate_dataset
from visioninapp.settings import Settings

__all__ = [
    "EDGE_NODE",
    "LOCAL_NAMESPACE",
    "SHAPES_DATASET",
    "TRAINING_NODE",
    "LocalModeError",
    "LocalPlatform",
    "local_kubeconfig",
    "merge_kubeconfigs",
    "register_seeded_dataset",
    "seed_dataset",
    "session_processes",
    "shapes_copy",
]

TRAINING_NODE = "local-cpu-0"
EDGE_NODE = "local-edge-0"
LOCAL_NAMESPACE = "demo"  # the project the examples and the demo use
SHAPES_NAME = "shapes"  # the seeded dataset's name in the project
SHAPES_DATASET = "datasets/shapes/v1"  # the key manifests/examples/local/ trains on, in the artifact store
# Fewer, larger, contrasting, upright shapes than the default dataset: learnable from scratch in 40
# CPU epochs (mAP50 0.97 seen; rotated squares pass for circles at this size and budget).
SHAPES_STYLE: dict[str, Any] = {"max_objects": 2, "radius": (0.12, 0.25), "min_contrast": 80, "rotate": False}
SESSION_ENV = "VISIONINAPP_LOCAL_SESSION"  # marks every process of one local platform
EDGE_LABELS = {
    "visioninapp.io/edge": "true",
    "kubernetes.io/arch": "arm64",
    "nvidia.com/gpu.product": "Orin",
    "node-role.kubernetes.io/edge": "true",
}
EDGE_TAINT = {"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}


EDGE_CLUSTER_SECRET = "edge-cluster"  # the edge cluster's kubeconfig, for the training operator's mirror


def merge_kubeconfigs(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One kubeconfig with a context per cluster (named by the keys; the first is current), from
    single-context kubeconfigs whose cluster and user names may clash."""
    merged: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [],
        "users": [],
        "contexts": [],
    }
    for name, config in configs.items():
        context = config["contexts"][0]["context"]
        merged["clusters"].append({"name": name, "cluster": config["clusters"][0]["cluster"]})
        merged["users"].append({"name": name, "user": config["users"][0]["user"]})
        merged["contexts"].append({"name": name, "context": {**context, "cluster": name, "user": name}})
    merged["current-context"] = next(iter(configs))
    return merged


def seed_dataset(settings: Settings, local_copy: Path, on_image: Callable[[], None] | None = None) -> str:
    """The synthetic shapes dataset the local examples train on, in the artifact store at
    `datasets/shapes/v1` (drawn once; a configured S3 store gets it as well). Returns its URI."""
    uri = join_uri(settings.resolved_artifacts_uri, SHAPES_DATASET)
    store = artifact_store_for(uri, settings)
    if store.exists(join_uri(uri, "data.yaml")) and (local_copy / "data.yaml").is_file():
        return uri
    generate_dataset(local_copy, train=64, val=16, imgsz=128, seed=0, on_image=on_image, **SHAPES_STYLE)
    for path in sorted(p for p in local_copy.rglob("*") if p.is_file() and p.name != "data.yaml"):
        store.put_file(path, join_uri(uri, path.relative_to(local_copy).as_posix()))
    store.put_file(local_copy / "data.yaml", join_uri(uri, "data.yaml"))  # last: it marks the set complete
    return uri


def register_seeded_dataset(
    http: Any, project_url: str, local_copy: Path, headers: dict[str, str] | None = None
) -> None:
    """The seeded shapes dataset as a dataset of the project, with a version (ingested by the API
    like any upload), so the console lists it and edge frames can be added to it; nothing to do
    when it has a version already. `http`: the `requests` module, or a test client (get, post)."""
    datasets = f"{project_url}/datasets"
    auth = headers or {}
    found = http.get(f"{datasets}/{SHAPES_NAME}", headers=auth, timeout=30)
    if found.status_code == 200 and found.json()["versions"]:
        return
    if found.status_code == 404:
        description = f"the synthetic shapes local mode seeds ({SHAPES_DATASET})"
        created = http.post(
            datasets, json={"name": SHAPES_NAME, "description": description}, headers=auth, timeout=30
        )
        if created.status_code not in (201, 409):
            raise LocalModeError(f"creating the {SHAPES_NAME} dataset failed: {created.text}")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(p for p in local_copy.rglob("*") if p.is_file()):
            zipped.write(path, path.relative_to(local_copy).as_posix())
    uploaded = http.post(
        f"{datasets}/{SHAPES_NAME}/versions",
        files={"archive": ("shapes.zip", archive.getvalue(), "application/zip")},
        data={"note": f"seeded by local mode (the examples train on {SHAPES_DATASET})"},
        headers=auth,
        timeout=300,
    )
    if uploaded.status_code not in (201, 409):  # 409: the same files are already its newest version
        raise LocalModeError(f"registering the {SHAPES_NAME} dataset failed: {uploaded.text}")


class LocalModeError(RuntimeError):
    """Local mode cannot start; the message says why and what to do."""


def local_kubeconfig(data_dir: Path) -> Path:
    return data_dir / "local" / "kubeconfig"


def shapes_copy(data_dir: Path) -> Path:
    """Where local mode keeps its own copy of the seeded dataset (the demo's sample images)."""
    return data_dir.resolve() / "local" / "shapes"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port(port: int, what: str, option: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise LocalModeError(
                f"port {port} for {what} is in use; stop what listens there or pass {option} PORT"
            ) from None


def session_processes(data_dir: Path) -> dict[int, str]:
    """Processes (other than this one) of the local session in `data_dir`: pid → command line."""
    needle = f"{SESSION_ENV}={data_dir.resolve()}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def stop_leftovers(data_dir: Path, grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL, what a crashed session left running; returns how many there were."""
    pids = session_processes(data_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and session_processes(data_dir):
        time.sleep(0.1)
    for pid in session_processes(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class LocalPlatform:
    """A real cluster (control plane + node agent) + operator + API/console on this machine."""

    def __init__(
        self,
        data_dir: Path,
        *,
        api_port: int | None = 8000,
        kube_port: int | None = 6443,
        say: Callable[[str], None] = print,
        edge_cluster: bool = False,
        edge_nodes: int = 1,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.home = self.data_dir / "local"
        self.api_port = api_port or _free_port()
        self.kube_port = kube_port
        self.say = say
        self.edge_nodes = [f"local-edge-{index}" for index in range(edge_nodes)]
        self.with_edge_cluster = edge_cluster
        self.cluster: Cluster | None = None
        self.edge_cluster: Cluster | None = None  # with `edge_cluster`: where the edge nodes are
        self.children: list[_Child] = []
        self._lock: IO[str] | None = None
        self._saved_env: dict[str, str | None] = {}
        self.dataset_uri = ""

    @property
    def kubeconfig(self) -> Path:
        return local_kubeconfig(self.data_dir)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # lifecycle

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        left = stop_leftovers(self.data_dir)
        if left:
            self.say(f"stopped {left} process(es) an earlier local session left running")
        _check_port(self.api_port, "the API", "--port")
        if self.kube_port:
            _check_port(self.kube_port, "the Kubernetes API", "--kube-port")
        # Pods inherit this process's environment: the data directory and the session marker.
        self._set_env(
            {SESSION_ENV: str(self.data_dir), "VISIONINAPP_DATA_DIR": str(self.data_dir), "KUBECONFIG": None}
        )
        self._start_clusters()
        self._start_processes()
        self._create_project()
        self.dataset_uri = seed_dataset(Settings(data_dir=self.data_dir), shapes_copy(self.data_dir))
        self._register_dataset(shapes_copy(self.data_dir))

    def _start_clusters(self) -> None:
        try:
            self.cluster = Cluster(self.home / "cluster", port=self.kube_port, say=self.say).start()
        except (BuildError, ControlPlaneError) as error:
            raise LocalModeError(f"the Kubernetes control plane did not start: {error}") from None
        self.cluster.add_node(
            TRAINING_NODE, cpu=str(os.cpu_count() or 2), labels={"visioninapp.io/pool": "cpu"}
        )
        if self.with_edge_cluster:
            try:
                self.edge_cluster = Cluster(self.home / "edge-cluster", port=None, say=self.say).start()
            except (BuildError, ControlPlaneError) as error:
                raise LocalModeError(f"the edge cluster's control plane did not start: {error}") from None
        for node in self.edge_nodes:
            self.edge_side.add_node(
                node, cpu="6", memory="8Gi", gpus=1, labels=EDGE_LABELS, taints=[EDGE_TAINT]
            )
        for cluster in {id(c): c for c in (self.cluster, self.edge_side)}.values():
            if cluster.get("", "namespaces", None, LOCAL_NAMESPACE) is None:
                cluster.create_namespace(LOCAL_NAMESPACE, {"visioninapp.io/project": "true"})
        self._write_kubeconfigs()

    def _start_processes(self) -> None:
        """The operator(s) and the API, each ready."""
        env = {"KUBECONFIG": str(self.kubeconfig)}
        self.operator_liveness_port = _free_port()
        operator_env = {
            "VISIONINAPP_OPERATOR_METRICS_PORT": str(_free_port()),
            "VISIONINAPP_OPERATOR_TRAINER_WORK_DIR": str(self.home / "scratch"),
            "VISIONINAPP_OPERATOR_EDGE_CACHE_PATH": str(self.home / "node-cache"),
            "VISIONINAPP_OPERATOR_STATUS_INTERVAL_SECONDS": "1",
            "VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS": "1",
        }
        api_env = {
            **env,
            "VISIONINAPP_API_PORT": str(self.api_port),
            # One person (or their labelling script) on loopback: a shared API's 120 writes a minute
            # would only slow a review down here. A limit the user set stands.
            "VISIONINAPP_API_WRITE_RATE_PER_MINUTE": os.environ.get(
                "VISIONINAPP_API_WRITE_RATE_PER_MINUTE", "1200"
            ),
        }
        if self.edge_cluster is not None:
            self._mirror_secret()
            self.edge_operator_liveness_port = _free_port()
            self._spawn(
                "edge-operator",
                [sys.executable, "-m", "visioninapp.operator.main"],
                {
                    **operator_env,
                    "KUBECONFIG": str(self.edge_kubeconfig),
                    "VISIONINAPP_OPERATOR_ROLES": '["rollout"]',
                    "VISIONINAPP_OPERATOR_LIVENESS_PORT": str(self.edge_operator_liveness_port),
                    "VISIONINAPP_OPERATOR_METRICS_PORT": str(_free_port()),
                },
            )
            operator_env |= {
                "VISIONINAPP_OPERATOR_ROLES": '["training"]',
                "VISIONINAPP_OPERATOR_MIRROR_KUBECONFIG_SECRET": f"{LOCAL_NAMESPACE}/{EDGE_CLUSTER_SECRET}",
            }
            api_env |= {
                "VISIONINAPP_KUBE_CONTEXT_TRAINING": "training",
                "VISIONINAPP_KUBE_CONTEXT_ROLLOUT": "edge",
            }
        self._spawn(
            "operator",
            [sys.executable, "-m", "visioninapp.operator.main"],
            {**env, **operator_env, "VISIONINAPP_OPERATOR_LIVENESS_PORT": str(self.operator_liveness_port)},
        )
        self._spawn(
            "api", [sys.executable, "-m", "visioninapp.api.main", "serve", "--host", "127.0.0.1"], api_env
        )
        self._wait_ready("operator", f"http://127.0.0.1:{self.operator_liveness_port}/healthz", 60)
        if self.edge_cluster is not None:
            self._wait_ready(
                "edge-operator", f"http://127.0.0.1:{self.edge_operator_liveness_port}/healthz", 60
            )
        self._wait_ready("api", f"{self.api_url}/readyz", 90)

    @property
    def edge_side(self) -> Cluster:
        """The cluster the edge nodes are in: the edge cluster, else the one cluster."""
        cluster = self.edge_cluster or self.cluster
        assert cluster is not None, "the platform is not started"
        return cluster

    @property
    def edge_kubeconfig(self) -> Path:
        """The edge cluster's own kubeconfig (its operator's); the user's has it as context `edge`."""
        return self.home / "edge.kubeconfig"

    def _write_kubeconfigs(self) -> None:
        assert self.cluster is not None
        if self.edge_cluster is None:
            self.cluster.write_kubeconfig(self.kubeconfig, LOCAL_NAMESPACE)
            return
        self.edge_cluster.write_kubeconfig(self.edge_kubeconfig, LOCAL_NAMESPACE)
        merged = merge_kubeconfigs(
            {
                "training": self.cluster.kubeconfig_dict(LOCAL_NAMESPACE),
                "edge": self.edge_cluster.kubeconfig_dict(LOCAL_NAMESPACE),
            }
        )
        self.kubeconfig.write_text(yaml.safe_dump(merged))

    def _mirror_secret(self) -> None:
        """The edge cluster's kubeconfig as the Secret the training operator mirrors artifacts with."""
        assert self.cluster is not None
        secret = {
            "metadata": {"name": EDGE_CLUSTER_SECRET},
            "data": {"kubeconfig": base64.b64encode(self.edge_kubeconfig.read_bytes()).decode()},
        }
        if self.cluster.get("", "secrets", LOCAL_NAMESPACE, EDGE_CLUSTER_SECRET) is None:
            self.cluster.create("", "secrets", LOCAL_NAMESPACE, secret)
        else:
            self.cluster.patch("", "secrets", LOCAL_NAMESPACE, EDGE_CLUSTER_SECRET, {"data": secret["data"]})

    def _take_lock(self) -> None:
        self._lock = (self.home / "up.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise LocalModeError(
                f"local mode is already running in {self.data_dir}; use it, or stop it (Ctrl-C in its "
                "terminal) first, or pick another --data-dir"
            ) from None

    def _set_env(self, values: dict[str, str | None]) -> None:
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log_path = self.home / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start\n".encode())
            process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches only us; we stop children in order
                preexec_fn=die_with_parent,
            )
        self.children.append(_Child(name, process, log_path))

    def _wait_ready(self, name: str, url: str, timeout: float) -> None:
        child = next(c for c in self.children if c.name == name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise LocalModeError(f"the {name} exited at start ({child.log_path}):\n{child.tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise LocalModeError(
            f"the {name} did not become ready in {timeout:.0f} s ({child.log_path}):\n{child.tail()}"
        )

    def _create_project(self) -> None:
        """The examples' namespace as an API project, so the console lists what lands there."""
        response = requests.post(
            f"{self.api_url}/api/v1/projects",
            json={"name": LOCAL_NAMESPACE, "displayName": "Demo", "description": "local mode examples"},
            timeout=30,
        )
        if response.status_code not in (201, 409):
            raise LocalModeError(f"creating the {LOCAL_NAMESPACE} project failed: {response.text}")

    def _register_dataset(self, local_copy: Path) -> None:
        register_seeded_dataset(requests, f"{self.api_url}/api/v1/projects/{LOCAL_NAMESPACE}", local_copy)

    def wait(self) -> None:
        """Keep running until interrupted (KeyboardInterrupt) or until a child dies (raises)."""
        while True:
            self.check()
            time.sleep(1)

    def check(self) -> None:
        """Raise if a child died (the platform is then not whole)."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise LocalModeError(
                    f"the {child.name} exited with code {code} ({child.log_path}):\n{child.tail()}"
                )

    def stop(self) -> None:
        """API first, then the operator, then the cluster (which stops every pod)."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        self.children.clear()
        for cluster in (self.edge_cluster, self.cluster):
            if cluster is not None:
                cluster.stop(graceful=True)  # a node shutdown: runs resume without using a retry
        self.cluster = self.edge_cluster = None
        stop_leftovers(self.data_dir, grace=2.0)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def describe(self) -> list[tuple[str, str]]:
        """What runs where, for the banner."""
        assert self.cluster is not None
        edge = f"{', '.join(self.edge_nodes)} (edge, labelled and tainted like a Jetson)"
        clusters = (
            [("Kubernetes API", self.cluster.url)]
            if self.edge_cluster is None
            else [
                ("training cluster", f"{self.cluster.url} (context training; {TRAINING_NODE})"),
                ("edge cluster", f"{self.edge_cluster.url} (context edge; its own operator, role rollout)"),
            ]
        )
        return [
            ("console", f"{self.api_url}/"),
            ("API", f"{self.api_url}/api/v1 (OpenAPI: {self.api_url}/api/openapi.json)"),
            *clusters,
            ("kubeconfig", f"export KUBECONFIG={self.kubeconfig}"),
            ("nodes", f"{TRAINING_NODE} (training, CPU), {edge}"),
            ("data", f"{self.data_dir} (artifacts, event log, SQLite, pod logs)"),
            ("dataset", f"{self.dataset_uri} (what manifests/examples/local/ trains on)"),
            ("logs", ", ".join(str(c.log_path) for c in self.children)),
        ]
