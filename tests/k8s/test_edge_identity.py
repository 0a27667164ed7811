"""The per-node credential exchange against the real kube-apiserver (bound pod tokens, TokenReview)
and a moto server enforcing IAM: a pod gets its own node's keys only, a revoked node is refused."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

from tests.integration.test_edge_identity import ARTIFACTS, BUCKET, FEEDBACK, IamS3, _refused, iam_s3
from tests.k8s.test_rollout import deployment
from visioninapp.cluster.cluster import Cluster
from visioninapp.edge.identity import EdgeCredentials
from visioninapp.feedback import feedback_prefix
from visioninapp.kubeclient import Kube, load_connection
from visioninapp.operator.edge_identity import (
    AUDIENCE,
    REVOKED_LABEL,
    EdgeIdentities,
    IamIssuer,
    secret_name,
)
from visioninapp.operator.rollout import DEPLOYMENT_LABEL, desired_daemonset
from visioninapp.resources import EdgeDeployment
from visioninapp.resources.base import ADMITTED

__all__ = ["iam_s3"]  # the moto server enforcing IAM, shared with the integration tests

Obj = dict[str, Any]


@dataclass
class Fleet:
    """The operator's caches, filled from the cluster as its watches would."""

    nodes: dict[str, Obj] = field(default_factory=dict)
    edge_pods: dict[tuple[str, str], dict[str, Obj]] = field(default_factory=dict)
    deployments: dict[tuple[str, str], Obj] = field(default_factory=dict)
    artifacts: dict[tuple[str, str], Obj] = field(default_factory=dict)


def _pod(cluster: Cluster, name: str, node: str, deployment: str | None = "dock") -> Obj:
    labels = {DEPLOYMENT_LABEL: deployment} if deployment else {}
    body = {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "runtime", "image": "edge:test"}]},
    }
    return cluster.create("", "pods", cluster.namespace, body)


def _bound_token(cluster: Cluster, pod: Obj, audience: str = AUDIENCE) -> str:
    """What the kubelet mounts for the pod's projected serviceAccountToken volume."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience],
            "expirationSeconds": 600,
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            },
        },
    }
    path = Kube.path("v1", "serviceaccounts", cluster.namespace, "default", "token")
    return str(cluster.run(cluster.kube.request("POST", path, request))["status"]["token"])


def _upload(world: IamS3, keys: EdgeCredentials, namespace: str, node: str) -> None:
    key = feedback_prefix(FEEDBACK, namespace, "dock", node).split(f"{BUCKET}/", 1)[1] + "0-000000000001.jpg"
    world.client("s3", keys).put_object(Bucket=BUCKET, Key=key, Body=b"\xff\xd8")


def test_each_pod_gets_its_own_nodes_keys_and_a_revoked_node_is_refused(
    cluster: Cluster, iam_s3: IamS3
) -> None:
    ns = cluster.namespace
    for name in ("edge-a", "edge-b"):  # Node objects (Jetsons) as they registered
        cluster.create("", "nodes", None, {"metadata": {"name": name, "labels": {"fleet": "yes"}}})
    cluster.wait_for(
        lambda: cluster.get("", "serviceaccounts", ns, "default"), 30, "the default ServiceAccount"
    )
    pod_a, pod_b = _pod(cluster, "dock-a", "edge-a"), _pod(cluster, "dock-b", "edge-b")
    stranger = _pod(cluster, "stranger", "edge-a", deployment=None)  # not an edge runtime pod
    fleet = Fleet(
        nodes={n: cluster.get("", "nodes", None, n) or {} for n in ("edge-a", "edge-b")},
        edge_pods={(ns, "dock"): {p["metadata"]["name"]: p for p in (pod_a, pod_b)}},
        deployments={
            (ns, "dock"): {"metadata": {"name": "dock", "namespace": ns}, "spec": {"modelRef": "m"}}
        },
    )

    async def scenario() -> None:
        kube = Kube(load_connection(cluster.kubeconfig))
        identities = EdgeIdentities(kube, IamIssuer(iam_s3.client("iam")), fleet, ARTIFACTS, FEEDBACK)
        try:
            # bound tokens name their node (TokenReview user.extra): each pod gets its node's keys
            a = await identities.exchange(_bound_token(cluster, pod_a))
            b = await identities.exchange(_bound_token(cluster, pod_b))
            assert (a.status, a.body["node"], b.status, b.body["node"]) == (200, "edge-a", 200, "edge-b")
            keys_a = EdgeCredentials(a.body["s3"]["accessKeyId"], a.body["s3"]["secretAccessKey"])
            keys_b = EdgeCredentials(b.body["s3"]["accessKeyId"], b.body["s3"]["secretAccessKey"])
            assert keys_a != keys_b
            again = await identities.exchange(_bound_token(cluster, pod_a))  # a restarted pod: same keys
            assert again.body["s3"]["accessKeyId"] == keys_a.access_key_id
            # kept in a Secret of the namespace, per node
            secret = cluster.get("", "secrets", ns, secret_name("edge-a")) or {}
            assert base64.b64decode(secret["data"]["AWS_ACCESS_KEY_ID"]).decode() == keys_a.access_key_id
            _upload(iam_s3, keys_a, ns, "edge-a")
            assert _refused(lambda: _upload(iam_s3, keys_a, ns, "edge-b")) == "AccessDenied"

            # refused: another audience (e.g. the API server's own), no token, a pod that is no edge pod
            other = await identities.exchange(
                _bound_token(cluster, pod_a, audience="https://kubernetes.default.svc")
            )
            assert other.status == 401 and "audience" in other.body["message"]
            assert (await identities.exchange("")).status == 401
            plain = await identities.exchange(cluster.service_account_token(ns, "default"))
            assert plain.status == 401  # not bound to a pod (and not for our audience)
            denied = await identities.exchange(_bound_token(cluster, stranger))
            assert denied.status == 403 and "not an edge runtime pod" in denied.body["message"]

            # revoke edge-a: as the operator does on the Node's label
            labelled = cluster.patch(
                "", "nodes", None, "edge-a", {"metadata": {"labels": {REVOKED_LABEL: "true"}}}
            )
            fleet.nodes["edge-a"] = labelled
            identities.node_changed("edge-a", labelled)
            await asyncio.gather(*identities.tasks)
            assert cluster.get("", "secrets", ns, secret_name("edge-a")) is None
            refused = await identities.exchange(_bound_token(cluster, pod_a))
            assert refused.status == 403 and "revoked" in refused.body["message"]
            assert _refused(lambda: _upload(iam_s3, keys_a, ns, "edge-a")) == "InvalidAccessKeyId"
            # edge-b keeps working, with the keys it has and through the exchange
            _upload(iam_s3, keys_b, ns, "edge-b")
            assert (await identities.exchange(_bound_token(cluster, pod_b))).status == 200
        finally:
            await kube.close()

    try:
        asyncio.run(scenario())
    finally:
        for name in ("edge-a", "edge-b"):
            cluster.delete("", "nodes", None, name)


def test_the_daemonset_carries_a_bound_token_and_no_keys() -> None:
    body = {**deployment(), "metadata": {"name": "dock", "namespace": "plant-a"}}
    ed = EdgeDeployment.model_validate(body, context=ADMITTED)
    model = {"uri": "s3://b/a/ns/m/best.onnx", "sha256": "0" * 64}
    plain, _ = desired_daemonset(ed, "uid", "m", model, image="edge")
    ds, _ = desired_daemonset(
        ed, "uid", "m", model, image="edge", identity_url="https://op:8443/v1/edge/credentials"
    )
    spec = ds["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    (volume,) = [v for v in spec["volumes"] if v["name"] == "edge-identity"]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == AUDIENCE
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["VISIONINAPP_EDGE_IDENTITY_URL"].endswith("/v1/edge/credentials")
    assert not any(k.startswith("AWS_") for k in env)
    assert "edge-identity" not in {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]}
