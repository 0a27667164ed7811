"""The Helm chart and the manifests: linted and rendered by Helm's own engine (helm-python-sdk), every
built-in object checked against Kubernetes' OpenAPI schemas, every CR against our CRDs, and
values.schema.json rejecting wrong values at install time."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.services import kube_tools
from visioninapp.validation import validate

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "visioninapp"
VALUES_FILES = ["values.yaml", "values-aks.yaml", "values-eks.yaml", "values-k3s.yaml"]
KUBERNETES = "1.35"
OURS = "visioninapp.io/v1alpha1"
# Kinds that only a third-party CRD defines (no schema offline): checked by hand below.
THIRD_PARTY = {
    "argoproj.io/v1alpha1",
    "kustomize.toolkit.fluxcd.io/v1",
    "helm.toolkit.fluxcd.io/v2",
    "source.toolkit.fluxcd.io/v1",
    "kopf.dev/v1",
    "kustomize.config.k8s.io/v1beta1",
}


def values_of(name: str) -> dict[str, Any]:
    return {} if name == "values.yaml" else yaml.safe_load((CHART / name).read_text())


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values, name="visioninapp", namespace="visioninapp", is_install=True)
    documents = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            documents += [d for d in yaml.safe_load_all(text) if d]
    return documents


def check_object(obj: dict[str, Any]) -> None:
    """Built-ins against Kubernetes' schemas (strict: no unknown fields), ours against our CRDs."""
    api_version = obj.get("apiVersion", "")
    if api_version == OURS:
        assert validate(obj) == [], obj["metadata"]["name"]
    elif api_version in THIRD_PARTY:
        check_third_party(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def check_third_party(obj: dict[str, Any]) -> None:
    """Argo CD and Flux objects: their documented apiVersion, kind and required fields."""
    required: dict[tuple[str, str], list[str]] = {
        ("argoproj.io/v1alpha1", "Application"): ["spec.project", "spec.source.repoURL", "spec.destination"],
        ("source.toolkit.fluxcd.io/v1", "GitRepository"): ["spec.url", "spec.interval", "spec.ref"],
        ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"): [
            "spec.interval",
            "spec.sourceRef.kind",
            "spec.sourceRef.name",
            "spec.prune",
        ],
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease"): [
            "spec.interval",
            "spec.chart.spec.chart",
            "spec.chart.spec.sourceRef.name",
        ],
        ("kopf.dev/v1", "ClusterKopfPeering"): [],
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"): ["resources"],
    }
    key = (obj["apiVersion"], obj["kind"])
    assert key in required, f"unexpected third-party kind {key}"
    if obj["kind"] != "Kustomization" or obj["apiVersion"].startswith("kustomize.toolkit"):
        assert obj["metadata"]["name"]
    for path in required[key]:
        value: Any = obj
        for part in path.split("."):
            assert isinstance(value, dict) and part in value, f"{key}: {path} is required"
            value = value[part]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_the_chart_lints_and_renders_valid_objects(values_file: str) -> None:
    values = values_of(values_file)
    report = helm_python.lint(str(CHART), values, strict=True)
    assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report
    documents = render(values)
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap"} <= kinds
    for obj in documents:
        check_object(obj)
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        check_object(yaml.safe_load(crd.read_text()))


def test_the_charts_crds_are_the_generated_ones() -> None:
    # besides ours, kopf's peering CRD (operator.leaderElection), installed before the templates
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml") if p.name != "kopf-peering.yaml")
    assert chart == sorted(p.name for p in (REPO / "crds").glob("*.yaml") if p.name != "kustomization.yaml")
    for name in chart:
        assert (CHART / "crds" / name).read_text() == (REPO / "crds" / name).read_text(), name


def _deployment(documents: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return next(
        d
        for d in documents
        if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    )


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_the_operator_runs_as_non_root_on_a_read_only_root_filesystem(values_file: str) -> None:
    documents = render(values_of(values_file))
    for component in ("operator", "api"):
        pod = _deployment(documents, component)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/visioninapp"} <= mounted  # where it writes
    operator = _deployment(documents, "operator")
    assert operator["spec"]["strategy"]["type"] == "Recreate" and operator["spec"]["replicas"] == 1


def test_targets_place_gpu_runs_and_federate_s3() -> None:
    def operator_env(values_file: str) -> dict[str, str]:
        container = _deployment(render(values_of(values_file)), "operator")["spec"]["template"]["spec"]
        return {e["name"]: e.get("value", "") for e in container["containers"][0]["env"]}

    aks = operator_env("values-aks.yaml")
    assert '"agentpool":"gpupool"' in aks["VISIONINAPP_OPERATOR_TRAINER_GPU_NODE_SELECTOR"]
    assert "sku" in aks["VISIONINAPP_OPERATOR_TRAINER_GPU_TOLERATIONS"]
    assert "scalesetpriority" in aks["VISIONINAPP_OPERATOR_TRAINER_GPU_TOLERATIONS"]
    assert aks["VISIONINAPP_OPERATOR_ROLES"] == '["training"]'
    eks = render(values_of("values-eks.yaml"))
    accounts = [d for d in eks if d["kind"] == "ServiceAccount"]
    assert all("eks.amazonaws.com/role-arn" in (a["metadata"].get("annotations") or {}) for a in accounts)
    k3s = render(values_of("values-k3s.yaml"))
    assert any(d["kind"] == "RuntimeClass" and d["handler"] == "nvidia" for d in k3s)
    claim = next(d for d in k3s if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "local-path"
    assert operator_env("values-k3s.yaml")["VISIONINAPP_OPERATOR_EDGE_RUNTIME_CLASS"] == "nvidia"


def test_leader_election_brings_kopf_peering_and_rolling_updates() -> None:
    documents = render(
        {"operator": {"replicas": 2, "leaderElection": True, "podDisruptionBudget": {"enabled": True}}}
    )
    operator = _deployment(documents, "operator")
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"
    assert operator["spec"]["template"]["spec"]["containers"][0]["args"] == ["--peering=visioninapp"]
    assert {"ClusterKopfPeering", "PodDisruptionBudget"} <= {
        d["kind"] for d in documents
    }  # its CRD is in crds/
    for obj in documents:
        check_object(obj)


BAD_VALUES = [
    ({"operator": {"roles": ["training", "inference"]}}, "roles"),
    ({"operator": {"replicas": 0}}, "replicas"),
    ({"config": {"artifactsUri": "gs://models"}}, "artifactsUri"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"api": {"ingress": {"enabled": True}}}, "host"),
    ({"api": {"replicaz": 3}}, "replicaz"),
    ({"operator": {"trainer": {"gpuTolerations": [{"key": "sku", "effect": "Never"}]}}}, "effect"),
    ({"networkPolicy": {"egressCidrs": ["everywhere"]}}, "egressCidrs"),
    ({"secrets": {"databaseUrl": "postgres://db"}}, "databaseUrl"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_wrong_values_fail_at_install_time(values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm_python.HelmError) as failure:
        render(values)
    assert field in str(failure.value)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"operator": {"replicas": 2}}, "leaderElection"),
        ({"api": {"persistence": {"enabled": True}}}, "replicas: 1"),
        ({"operator": {"leaderElection": True, "namespaces": ["ml"]}}, "cluster-wide"),
    ],
)
def test_inconsistent_values_fail_with_what_to_do(values: dict[str, Any], words: str) -> None:
    with pytest.raises(helm_python.HelmError) as failure:
        render(values)
    assert words in str(failure.value)


def manifest_documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "manifests").rglob("*.yaml")):
        found += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def test_every_manifest_validates() -> None:
    documents = manifest_documents()
    assert documents
    for path, obj in documents:
        try:
            check_object(obj)
        except Exception as error:
            raise AssertionError(f"{path.relative_to(REPO)}: {error}") from error


@pytest.mark.parametrize("overlay", sorted(p.name for p in (REPO / "manifests" / "overlays").iterdir()))
def test_kustomize_overlays_build_to_valid_objects(overlay: str) -> None:
    built = subprocess.run(
        [str(kube_tools() / "kubectl"), "kustomize", str(REPO / "manifests" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    documents = [d for d in yaml.safe_load_all(built) if d]
    assert any(d["kind"] == "CustomResourceDefinition" for d in documents)
    for obj in documents:
        check_object(copy.deepcopy(obj))


def _operator_env(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (deployment,) = [
        d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_edge_credentials_come_from_secrets_never_plain_values() -> None:
    # without identity: a Secret of each namespace (envFrom of the edge pods), named to the operator
    env = _operator_env(render({"operator": {"edge": {"envSecret": "edge-credentials"}}}))
    assert env["VISIONINAPP_OPERATOR_EDGE_ENV_SECRET"]["value"] == "edge-credentials"
    # credential keys in the plain edge env are refused at install time
    for key in ("AWS_SECRET_ACCESS_KEY", "VISIONINAPP_RABBITMQ_PASSWORD"):
        with pytest.raises(helm_python.HelmError):
            render({"operator": {"edge": {"env": {key: "leaked"}}}})
    # per-node identity with broker users: the management admin's credentials from a Secret
    identity = {"enabled": True, "rabbitmq": {"managementUrl": "http://mq:15672", "adminSecret": "mq-admin"}}
    documents = render({"operator": {"edge": {"identity": identity}}})
    for document in documents:
        check_object(document)
    env = _operator_env(documents)
    assert env["VISIONINAPP_OPERATOR_EDGE_IDENTITY_RABBITMQ_MANAGEMENT_URL"]["value"] == "http://mq:15672"
    for name, key in (("USER", "username"), ("PASSWORD", "password")):
        ref = env[f"VISIONINAPP_OPERATOR_EDGE_IDENTITY_RABBITMQ_ADMIN_{name}"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mq-admin", "key": key}
    with pytest.raises(helm_python.HelmError, match="adminSecret"):
        render(
            {
                "operator": {
                    "edge": {"identity": {"enabled": True, "rabbitmq": {"managementUrl": "http://mq"}}}
                }
            }
        )


def test_the_network_policy_lets_edge_pods_reach_the_exchange_only_with_identity() -> None:
    def operator_ingress(values: dict[str, Any]) -> list[dict[str, Any]]:
        (policy,) = [
            d
            for d in render({"networkPolicy": {"enabled": True}, **values})
            if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-operator")
        ]
        check_object(policy)
        return list(policy["spec"]["ingress"])

    ports = [{p["port"] for p in rule["ports"]} for rule in operator_ingress({})]
    assert 8443 not in set().union(*ports)
    rules = operator_ingress({"operator": {"edge": {"identity": {"enabled": True}}}})
    (exchange,) = [r for r in rules if r["ports"] == [{"port": 8443}]]
    assert exchange["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/managed-by": "visioninapp-operator",
                    "app.kubernetes.io/component": "edge-runtime",
                }
            },
        }
    ]
