"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler built from source (build.py), with real certificates, service-account keys and
`--authorization-mode=Node,RBAC`, each a child process that dies with this one.

    with ControlPlane(work_dir) as plane:     # plane.url, plane.kubeconfig (cluster-admin)
        ...

Nodes are not part of it: `NodeAgent` (agent.py) registers them and runs their pods, or kwok
manages them for scale runs. `work_dir` keeps etcd's data and the certificates, so a control plane
started again in the same folder (local mode) has everything it had.
"""

from __future__ import annotations

import base64
import functools
import json
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from visioninapp.local.cluster.build import ensure_binaries
from visioninapp.local.cluster.pki import CertificateAuthority, KeyPair, write_service_account_key
from visioninapp.local.processes import die_with_parent, stop_group

__all__ = ["ControlPlane", "ControlPlaneError", "free_port"]

SERVICE_CIDR = "10.96.0.0/16"
# Audit every request once it is answered (watches also when they start): who did what, and the
# answer (tests read it: RBAC, "created once", live progress). Bodies are kept only for the status
# writes of our kinds, the record of what the operator reported and when.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Request",
            "verbs": ["patch", "update"],
            "resources": [
                {
                    "group": "visioninapp.io",
                    "resources": ["trainingjobs/status", "modelartifacts/status", "edgedeployments/status"],
                }
            ],
        },
        {"level": "Metadata"},
    ],
}


class ControlPlaneError(RuntimeError):
    """The control plane did not start; the message names the component and ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Component:
    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name, self.command, self.log_path = name, command, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Orphaned, a component serves nobody: SIGKILL rather than SIGTERM, on which the API
                # server drains its requests and watches for up to a minute (etcd survives a kill).
                preexec_fn=functools.partial(die_with_parent, signal.SIGKILL),
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 25) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, grace=10)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, on loopback, in `work_dir`."""

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        name: str = "visioninapp",
        node_monitor_grace_seconds: int = 40,
        audit: bool = False,
        admission_plugins: tuple[str, ...] = ("OwnerReferencesPermissionEnforcement",),
        api_qps: int = 100,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.name = name
        self.port = port or free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.node_monitor_grace_seconds = node_monitor_grace_seconds
        self.audit_log = self.work_dir / "audit.log" if audit else None
        self.admission_plugins = admission_plugins
        self.api_qps = api_qps
        self.say = say
        self.pki = self.work_dir / "pki"
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.components: list[_Component] = []
        self.started_seconds = 0.0

    # lifecycle

    def start(self) -> Self:
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - started
        return self

    def _start(self) -> None:
        binaries = ensure_binaries(self.say)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(self.pki)
        self.ca_cert = ca.pair.cert
        serving = ca.issue(
            "apiserver",
            common_name="kube-apiserver",
            hosts=(
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server=True,
        )
        kubelet_client = ca.issue(
            "apiserver-kubelet-client",
            common_name="kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        )
        self.admin = ca.issue("admin", common_name="admin", organizations=("system:masters",), client=True)
        service_accounts = write_service_account_key(self.pki)
        controller_manager = ca.issue(
            "controller-manager", common_name="system:kube-controller-manager", client=True
        )
        scheduler = ca.issue("scheduler", common_name="system:kube-scheduler", client=True)
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict(user=self.admin)))
        etcd_port, peer_port = free_port(), free_port()
        etcd = _Component(
            "etcd",
            [
                str(binaries / "etcd"),
                "--name=control-plane",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=control-plane=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # a test and local control plane: speed over crash safety
                "--auto-compaction-retention=1",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
            self.work_dir / "logs" / "etcd.log",
        )
        self._launch(etcd)
        self._wait(etcd, lambda: _port_open(etcd_port), 30, "etcd to listen")
        apiserver_args = [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.pki}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.pair.cert}",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca.pair.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={service_accounts.cert}",
            f"--service-account-signing-key-file={service_accounts.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
        ]
        if self.admission_plugins:  # on top of the default plugins
            apiserver_args.append(f"--enable-admission-plugins={','.join(self.admission_plugins)}")
        if self.audit_log is not None:
            policy = self.work_dir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY))
            apiserver_args += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",  # every answered request is on disk when the answer is
                "--audit-log-maxsize=0",
            ]
        apiserver = _Component(
            "kube-apiserver", apiserver_args, self.work_dir / "logs" / "kube-apiserver.log"
        )
        self._launch(apiserver)
        self._wait(apiserver, lambda: self._get_status("/readyz") == 200, 90, "/readyz to answer 200")
        common = [
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        ]
        cm_kubeconfig = self._component_kubeconfig("controller-manager", controller_manager)
        controller_manager_component = _Component(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                f"--cluster-name={self.name}",
                f"--root-ca-file={ca.pair.cert}",
                f"--service-account-private-key-file={service_accounts.key}",
                "--use-service-account-credentials=true",  # each controller with its own RBAC
                f"--cluster-signing-cert-file={ca.pair.cert}",
                f"--cluster-signing-key-file={ca.pair.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--node-monitor-period=1s",
                f"--node-monitor-grace-period={self.node_monitor_grace_seconds}s",
                f"--kube-api-qps={self.api_qps}",
                f"--kube-api-burst={self.api_qps * 2}",
            ],
            self.work_dir / "logs" / "kube-controller-manager.log",
        )
        sched_kubeconfig = self._component_kubeconfig("scheduler", scheduler)
        scheduler_port = free_port()
        scheduler_component = _Component(
            "kube-scheduler",
            [
                str(binaries / "kube-scheduler"),
                *common,
                f"--secure-port={scheduler_port}",
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
                f"--kube-api-qps={self.api_qps}",
                f"--kube-api-burst={self.api_qps * 2}",
            ],
            self.work_dir / "logs" / "kube-scheduler.log",
        )
        self._launch(controller_manager_component)
        self._launch(scheduler_component)
        # The service-account controller makes `default` in every namespace: the controllers run.
        self._wait(
            controller_manager_component,
            lambda: self._get_status("/api/v1/namespaces/default/serviceaccounts/default") == 200,
            90,
            "the `default` service account (made by the controller-manager)",
        )
        self._wait(scheduler_component, lambda: _port_open(scheduler_port), 60, "the scheduler to serve")

    def _launch(self, component: _Component) -> None:
        component.start()
        self.components.append(component)

    def _wait(self, component: _Component, ready: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if not component.alive():
                raise ControlPlaneError(
                    f"{component.name} exited while waiting for {what}; its log ({component.log_path}):\n"
                    f"{component.tail()}"
                )
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{component.name}: no {what} within {seconds:.0f} s; its log ({component.log_path}):\n"
                    f"{component.tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Scheduler and controller-manager first, etcd last (each SIGTERM, SIGKILL after 10 s)."""
        for component in reversed(self.components):
            component.stop()
        self.components.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def alive(self) -> bool:
        return bool(self.components) and all(c.alive() for c in self.components)

    # clients

    def kubeconfig_dict(
        self, *, user: KeyPair | None = None, token: str | None = None, namespace: str = "default"
    ) -> dict[str, Any]:
        """A kubeconfig for this cluster as a client certificate's user or a bearer token's; it
        carries its certificates (not paths), so it works wherever it is copied to."""
        pair = user or self.admin
        credentials: dict[str, Any] = (
            {"token": token}
            if token is not None
            else {
                "client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
                "client-key-data": base64.b64encode(pair.key.read_bytes()).decode(),
            }
        )
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_cert.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": "user", "user": credentials}],
            "contexts": [
                {"name": self.name, "context": {"cluster": self.name, "user": "user", "namespace": namespace}}
            ],
            "current-context": self.name,
        }

    def _component_kubeconfig(self, name: str, pair: KeyPair) -> Path:
        path = self.work_dir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(user=pair)))
        return path

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return context

    def _get_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", context=self.ssl_context(), timeout=5) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", context=self.ssl_context(), timeout=30) as answer:
            return json.loads(answer.read())

    def metrics(self) -> str:
        """The apiserver's Prometheus metrics (`apiserver_request_total`, ...)."""
        with urllib.request.urlopen(f"{self.url}/metrics", context=self.ssl_context(), timeout=30) as answer:
            return str(answer.read().decode())

    def version(self) -> str:
        return str(self.get_json("/version")["gitVersion"])

    def audit_records(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The audit events so far (one per answered request; watches also when they start), of one
        namespace's objects if given, in the order the API server answered them."""
        if self.audit_log is None:
            raise ControlPlaneError("this control plane was started without audit=True")
        if not self.audit_log.is_file():
            return []
        records = []
        needle = f'"namespace":"{namespace}"' if namespace else ""
        with self.audit_log.open() as lines:
            for line in lines:
                if needle in line:
                    record = json.loads(line)
                    if namespace is None or (record.get("objectRef") or {}).get("namespace") == namespace:
                        records.append(record)
        return records


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
