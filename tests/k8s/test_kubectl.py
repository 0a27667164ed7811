"""What users type, with the real kubectl 1.35 against the real API server and our CRDs: apply
(client- and server-side, as Argo CD and Flux do), get with our printer columns and category,
describe, explain, delete, and the imperative built-in commands."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import yaml

from tests.services import kube_tools
from visioninapp.local.cluster.build import KUBERNETES_VERSION
from visioninapp.local.cluster.cluster import Cluster

TRAINING_JOB = """
apiVersion: visioninapp.io/v1alpha1
kind: TrainingJob
metadata:
  name: helmets
spec:
  model: {architecture: yolo11n}
  dataset: {uri: s3://datasets/helmets/v3}
  hyperparameters: {epochs: 30, imgsz: 320}
  resources: {gpu: {count: 1}}
"""


def kubectl(
    cluster: Cluster, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [
        str(kube_tools() / "kubectl"),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "-n",
        cluster.namespace,
        *args,
    ]
    result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
    return result


def test_apply_get_describe_explain_delete(cluster: Cluster) -> None:
    applied = kubectl(cluster, "apply", "-f", "-", input=TRAINING_JOB).stdout
    assert "trainingjob.visioninapp.io/helmets created" in applied
    assert "unchanged" in kubectl(cluster, "apply", "-f", "-", input=TRAINING_JOB).stdout
    cluster.patch(
        "visioninapp.io",
        "trainingjobs",
        cluster.namespace,
        "helmets",
        {"status": {"phase": "Running", "epoch": 7, "metrics": {"mAP50_95": 0.41}}},
        "status",
    )
    table = kubectl(cluster, "get", "tj").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "EPOCH", "MAP50-95", "ARTIFACT", "AGE"]
    assert table[1].split()[:4] == ["helmets", "Running", "7", "0.41"]
    wide = kubectl(cluster, "get", "tj", "-o", "wide").stdout.splitlines()[0].split()
    assert "EPOCHS" in wide  # a priority-1 column
    assert "trainingjob.visioninapp.io/helmets" in kubectl(cluster, "get", "visioninapp").stdout  # category
    described = kubectl(cluster, "describe", "tj", "helmets").stdout
    assert "Kind:         TrainingJob" in described and "yolo11n" in described
    explained = kubectl(cluster, "explain", "trainingjob.spec.hyperparameters.epochs").stdout
    assert "FIELD: epochs <integer>" in explained and "DESCRIPTION" in explained
    invalid = kubectl(
        cluster, "apply", "-f", "-", input=TRAINING_JOB.replace("epochs: 30", "epochs: 0"), check=False
    )
    assert invalid.returncode != 0 and "spec.hyperparameters.epochs" in invalid.stderr
    assert (
        'trainingjob.visioninapp.io "helmets" deleted' in kubectl(cluster, "delete", "tj", "helmets").stdout
    )
    assert kubectl(cluster, "get", "tj", "helmets", check=False).returncode != 0


def test_server_side_apply_owns_fields_and_keeps_the_operators_status(cluster: Cluster) -> None:
    first = kubectl(
        cluster, "apply", "--server-side", "--field-manager=gitops", "-f", "-", input=TRAINING_JOB
    )
    assert "serverside-applied" in first.stdout
    # the operator writes status through the status subresource: no conflict with the spec's owner
    cluster.patch(
        "visioninapp.io",
        "trainingjobs",
        cluster.namespace,
        "helmets",
        {"status": {"phase": "Running"}},
        "status",
    )
    changed = TRAINING_JOB.replace("epochs: 30", "epochs: 40")
    kubectl(cluster, "apply", "--server-side", "--field-manager=gitops", "-f", "-", input=changed)
    obj: dict[str, Any] = json.loads(
        kubectl(cluster, "get", "tj", "helmets", "-o", "json", "--show-managed-fields").stdout
    )
    assert obj["spec"]["hyperparameters"]["epochs"] == 40 and obj["status"]["phase"] == "Running"
    managers = {m["manager"]: m.get("subresource") for m in obj["metadata"]["managedFields"]}
    assert managers["gitops"] is None
    # another manager changing gitops's field is a conflict, as a GitOps tool relies on
    conflict = kubectl(
        cluster,
        "apply",
        "--server-side",
        "--field-manager=someone",
        "-f",
        "-",
        input=TRAINING_JOB,
        check=False,
    )
    assert conflict.returncode != 0 and "conflict" in conflict.stderr.lower()


def test_imperative_commands_of_built_in_kinds_work(cluster: Cluster) -> None:
    name = f"{cluster.namespace}-extra"
    kubectl(cluster, "create", "namespace", name)
    cluster._namespaces.append(name)  # removed with the test's namespaces
    kubectl(cluster, "create", "secret", "generic", "creds", "--from-literal=KEY=value")
    kubectl(cluster, "create", "configmap", "settings", "--from-literal=mode=fast")
    secret = yaml.safe_load(kubectl(cluster, "get", "secret", "creds", "-o", "yaml").stdout)
    assert secret["data"]["KEY"] == "dmFsdWU="


def test_kubectl_and_the_control_plane_are_one_minor(cluster: Cluster) -> None:
    """The tests' kubectl (PyPI kubectl layer) and the built control plane move together."""
    versions = json.loads(kubectl(cluster, "version", "-o", "json").stdout)
    minor = KUBERNETES_VERSION.split(".")[1]
    assert versions["clientVersion"]["minor"] == versions["serverVersion"]["minor"] == minor, versions
    assert versions["serverVersion"]["gitVersion"] == f"v{KUBERNETES_VERSION}"
