"""Fixtures for tests against the real control plane (nodes from the node agent) and the real
operator process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.local.cluster.controlplane import ControlPlane

OPERATOR_LOG_TAIL = 4000


@pytest.fixture
def cluster(control_plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's control plane with a namespace of this test's own (`cluster.namespace`) and a
    GPU node `gpu-0`; pods run as local processes, or from `cluster.set_script(...)`."""
    with Cluster(tmp_path / "cluster", plane=control_plane, renew_seconds=2, lease_seconds=8) as real:
        real.namespace = (
            f"{request.node.name[5:25].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
        )
        real.create_namespace(real.namespace)
        real.add_node("gpu-0", gpus=1, labels={"agentpool": "gpu"})
        yield real  # leaving the block removes the namespace and the nodes


@pytest.fixture
def kube(cluster: Cluster) -> Any:
    """The official kubernetes client configured from the cluster's kubeconfig (as a user would)."""
    import kubernetes

    return kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))


class OperatorProcess:
    """`visioninapp-operator` as a real process connected to the cluster through a kubeconfig,
    watching the test's namespace."""

    def __init__(self, cluster: Cluster, work_dir: Path, env: dict[str, str]) -> None:
        self.cluster, self.log_path = cluster, work_dir / "operator.log"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "VISIONINAPP_OPERATOR_NAMESPACES": json.dumps([cluster.namespace]),
            "VISIONINAPP_OPERATOR_METRICS_PORT": "0",
            "VISIONINAPP_OPERATOR_LIVENESS_PORT": "0",
            "VISIONINAPP_OPERATOR_RESYNC_SECONDS": "2",
            "VISIONINAPP_OPERATOR_STATUS_INTERVAL_SECONDS": "0.5",
            "VISIONINAPP_DATA_DIR": str(work_dir / "data"),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "visioninapp.operator.main"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: the crash a restart must survive."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-OPERATOR_LOG_TAIL:]


@pytest.fixture
def operator_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[OperatorProcess] = []

    def start(cluster: Cluster, **env: str) -> OperatorProcess:
        work_dir = tmp_path / f"operator-{len(started)}"
        work_dir.mkdir()
        process = OperatorProcess(cluster, work_dir, env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def wait_for(predicate: Any, timeout: float, what: str, operator: OperatorProcess | None = None) -> Any:
    """`tests.helpers.wait_for`, failing at once with the operator's log if the operator exits."""
    if operator is None:
        return helpers.wait_for(predicate, timeout, what)

    def operator_alive_and_done() -> Any:
        result = predicate()
        if not result and not operator.alive():
            pytest.fail(f"the operator exited while waiting for {what}:\n{operator.log()}")
        return result

    return helpers.wait_for(
        operator_alive_and_done, timeout, what, lambda: f"operator log:\n{operator.log()}"
    )


def onnx_artifact(name: str, path: Path, imgsz: int = 640) -> dict[str, Any]:
    """A ModelArtifact of one `onnx` file, with its real size and sha256."""
    data = path.read_bytes()
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "ModelArtifact",
        "metadata": {"name": name},
        "spec": {
            "model": "shapes",
            "version": name,
            "formats": [
                {
                    "format": "onnx",
                    "uri": path.as_uri(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ],
            "classNames": ["circle", "square", "triangle", "cross"],
            "imgsz": imgsz,
        },
    }
