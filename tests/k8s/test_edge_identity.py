"""The per-node credential exchange against the real kube-apiserver (bound pod tokens, TokenReview)
and a moto server enforcing IAM: a pod gets its own node's keys only, a revoked node is refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from tests.integration.test_edge_identity import ARTIFACTS, BUCKET, FEEDBACK, IamS3, _refused, iam_s3
from tests.k8s.test_rollout import deployment
from tests.services import RABBITMQ_MANAGEMENT_PORT, delete_streams, free_port
from visioninapp.backends.rabbitmq import RabbitStreamBus
from visioninapp.edge.identity import EdgeCredentials, IdentityError, NodeIdentity
from visioninapp.feedback import feedback_prefix
from visioninapp.kubeclient import Kube, load_connection
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.operator.config import OperatorConfig, plain_credentials
from visioninapp.operator.daemonset import DEPLOYMENT_LABEL, desired_daemonset
from visioninapp.operator.edge_identity import AUDIENCE, REVOKED_LABEL, broker_user, secret_name
from visioninapp.operator.identity_exchange import EdgeIdentities, serve
from visioninapp.operator.identity_issuers import BrokerIssuer, IamIssuer
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


def test_the_exchange_over_http_hands_a_pod_its_nodes_keys_and_broker_user(
    cluster: Cluster, iam_s3: IamS3, rabbitmq_stream_port: int, tmp_path: Path
) -> None:
    """The operator's aiohttp server and the edge's client (edge/identity.py) over real HTTP: the
    node's S3 keys and broker user (which publishes edge events), a refused token's clear error,
    and after revocation a 403 for the node and an AuthenticationFailure for its broker user."""
    ns, node = cluster.namespace, "edge-h"
    cluster.create("", "nodes", None, {"metadata": {"name": node}})
    cluster.wait_for(
        lambda: cluster.get("", "serviceaccounts", ns, "default"), 30, "the default ServiceAccount"
    )
    pod = _pod(cluster, "dock-h", node)
    fleet = Fleet(
        nodes={node: cluster.get("", "nodes", None, node) or {}},
        edge_pods={(ns, "dock"): {"dock-h": pod}},
        deployments={
            (ns, "dock"): {"metadata": {"name": "dock", "namespace": ns}, "spec": {"modelRef": "m"}}
        },
    )
    stream = (
        f"edge-events-id-{uuid4().hex[:10]}"  # not one `delete_test_streams` of a parallel session deletes
    )
    admin = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port, "guest", "guest")
    admin.ensure_stream(stream)
    admin.close()
    broker = BrokerIssuer(f"http://127.0.0.1:{RABBITMQ_MANAGEMENT_PORT}", "guest", "guest")
    token_file, bogus_file = tmp_path / "token", tmp_path / "bogus"
    token_file.write_text(_bound_token(cluster, pod))
    bogus_file.write_text("not-a-token")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/edge/credentials"

    def publish(credentials: EdgeCredentials) -> int:
        assert credentials.broker_user and credentials.broker_password
        bus = RabbitStreamBus(
            "127.0.0.1", rabbitmq_stream_port, credentials.broker_user, credentials.broker_password
        )
        try:
            return bus.publish(stream, f"edge.{ns}.dock.{node}", [(1, b"hello")])
        finally:
            with contextlib.suppress(Exception):
                bus.close()

    async def scenario() -> None:
        kube = Kube(load_connection(cluster.kubeconfig))
        identities = EdgeIdentities(
            kube, IamIssuer(iam_s3.client("iam")), fleet, ARTIFACTS, FEEDBACK, broker, stream, 0
        )
        runner = await serve(identities, port)
        try:
            client = NodeIdentity(url, token_file)
            keys = await asyncio.to_thread(client.credentials)
            assert keys.broker_user == broker_user(ns, node)
            _upload(iam_s3, keys, ns, node)
            assert await asyncio.to_thread(publish, keys) == 1
            secret = cluster.get("", "secrets", ns, secret_name(node)) or {}
            assert set(secret["data"]) >= {"VISIONINAPP_RABBITMQ_USER", "VISIONINAPP_RABBITMQ_PASSWORD"}

            with pytest.raises(IdentityError, match=r"refused \(401\): .*not authenticated"):
                await asyncio.to_thread(NodeIdentity(url, bogus_file).credentials)

            labelled = cluster.patch(
                "", "nodes", None, node, {"metadata": {"labels": {REVOKED_LABEL: "true"}}}
            )
            fleet.nodes[node] = labelled
            identities.node_changed(node, labelled)
            await asyncio.gather(*identities.tasks)
            with pytest.raises(IdentityError, match=r"refused \(403\): .*revoked"):
                await asyncio.to_thread(NodeIdentity(url, token_file).credentials)
            with pytest.raises(Exception) as caught:
                await asyncio.to_thread(publish, keys)
            assert type(caught.value).__name__ == "AuthenticationFailure"
            assert broker.users(broker_user(ns, node)) == []
        finally:
            await runner.cleanup()
            await kube.close()

    try:
        asyncio.run(scenario())
    finally:
        cluster.delete("", "nodes", None, node)
        delete_streams([stream], rabbitmq_stream_port)


def test_without_identity_edge_credentials_come_from_a_secret_never_plain_env() -> None:
    body = {**deployment(), "metadata": {"name": "dock", "namespace": "plant-a"}}
    ed = EdgeDeployment.model_validate(body, context=ADMITTED)
    model = {"uri": "s3://b/a/ns/m/best.onnx", "sha256": "0" * 64}
    ds, _ = desired_daemonset(ed, "uid", "m", model, image="edge", env_secret="edge-credentials")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "edge-credentials"}}]
    plain, _ = desired_daemonset(ed, "uid", "m", model, image="edge")
    assert "envFrom" not in plain["spec"]["template"]["spec"]["containers"][0]
    # the operator refuses credentials in the edge pods' plain environment
    assert plain_credentials({"AWS_SECRET_ACCESS_KEY": "x", "VISIONINAPP_S3_REGION": "eu"}) == [
        "AWS_SECRET_ACCESS_KEY"
    ]
    for key in ("AWS_ACCESS_KEY_ID", "VISIONINAPP_RABBITMQ_PASSWORD"):
        with pytest.raises(ValidationError, match="edge_env_secret"):
            OperatorConfig(edge_env={key: "leaked"})
    assert OperatorConfig(edge_env={"VISIONINAPP_S3_REGION": "eu"}).edge_env_secret is None
