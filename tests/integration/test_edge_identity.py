"""Per-node edge credentials against a real IAM policy evaluator (a moto server enforcing IAM), and
feedback prefixes per project: what one node's keys can and cannot reach, and revocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.services import free_port, wait_for_port
from visioninapp.backends.s3 import S3ArtifactStore
from visioninapp.edge.identity import EdgeCredentials
from visioninapp.edge.runtime import node_s3_store
from visioninapp.edge.telemetry import FeedbackSpool
from visioninapp.feedback import feedback_frame, feedback_prefix
from visioninapp.operator.edge_identity import edge_policy, identity_name, identity_path
from visioninapp.operator.identity_issuers import IamIssuer
from visioninapp.settings import Settings

BUCKET = "fleet-store"
ARTIFACTS = f"s3://{BUCKET}/artifacts"
FEEDBACK = f"{ARTIFACTS}/feedback"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass
class IamS3:
    endpoint: str
    admin: dict[str, str]  # keys of the operator's own (all-powerful) identity

    def client(self, service: str, keys: EdgeCredentials | None = None) -> Any:
        auth = (
            {"aws_access_key_id": keys.access_key_id, "aws_secret_access_key": keys.secret_access_key}
            if keys
            else self.admin
        )
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", **auth)


@contextmanager
def iam_moto(bucket: str) -> Iterator[IamS3]:
    """A moto server of its own that enforces IAM after its first three (bootstrap) requests, with
    `bucket` made by the operator's all-powerful identity."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, "moto server (IAM enforced)")
        endpoint = f"http://127.0.0.1:{port}"
        boot = IamS3(endpoint, {"aws_access_key_id": "boot", "aws_secret_access_key": "boot"}).client("iam")
        boot.create_user(UserName="operator")
        boot.put_user_policy(UserName="operator", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
        key = boot.create_access_key(UserName="operator")["AccessKey"]
        world = IamS3(
            endpoint,
            {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]},
        )
        world.client("s3").create_bucket(Bucket=bucket)
        yield world
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def iam_s3() -> Iterator[IamS3]:
    with iam_moto(BUCKET) as world:
        yield world


def _issue(world: IamS3, namespace: str, node: str, deployments: list[str]) -> EdgeCredentials:
    """What the operator's exchange does for a verified pod of `node` in `namespace`."""
    issuer = IamIssuer(world.client("iam"))
    policy = edge_policy(namespace, node, [(d, FEEDBACK) for d in deployments], ARTIFACTS, FEEDBACK)
    name = identity_name(namespace, node)
    issuer.ensure(name, identity_path(node), policy, {"namespace": namespace})
    return EdgeCredentials(*issuer.new_key(name))


def _store(world: IamS3, keys: EdgeCredentials | None = None) -> S3ArtifactStore:
    if keys is None:
        return S3ArtifactStore(client=world.client("s3"))
    store = node_s3_store(Settings(s3_endpoint_url=world.endpoint), keys)
    assert isinstance(store, S3ArtifactStore)
    return store


def _refused(action: Any) -> str:
    with pytest.raises(ClientError) as caught:
        action()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return str(caught.value.response["Error"]["Code"])


def _spool(tmp_path: Path, namespace: str, deployment: str, node: str, frames: int = 2) -> FeedbackSpool:
    directory = tmp_path / f"{namespace}.{deployment}.{node}"
    spool = FeedbackSpool(directory, FEEDBACK, namespace, deployment, node)
    for index in range(frames):
        spool.add(b"\xff\xd8jpeg" + bytes([index]), [{"score": 0.3, "className": "box"}], {"model": "v1"})
    return spool


def _key(uri: str) -> str:
    return uri.split(f"{BUCKET}/", 1)[1]


def test_a_nodes_keys_reach_only_its_own_prefix_and_its_projects_models(
    iam_s3: IamS3, tmp_path: Path
) -> None:
    admin = iam_s3.client("s3")
    admin.put_object(Bucket=BUCKET, Key="artifacts/plant-a/run-1/best.onnx", Body=b"ours")
    admin.put_object(Bucket=BUCKET, Key="artifacts/plant-b/run-1/best.onnx", Body=b"theirs")
    node_a = _issue(iam_s3, "plant-a", "jetson-a", ["dock"])
    _issue(iam_s3, "plant-a", "jetson-b", ["dock"])
    store_a, as_a = _store(iam_s3, node_a), iam_s3.client("s3", node_a)

    # its own prefix: the spool uploads with its own keys; its project's models: readable
    assert _spool(tmp_path, "plant-a", "dock", "jetson-a").upload(store_a) == 2
    assert store_a.get_bytes(f"{ARTIFACTS}/plant-a/run-1/best.onnx") == b"ours"

    def put(key: str) -> Any:
        return lambda: as_a.put_object(Bucket=BUCKET, Key=key, Body=b"forged")

    # not node B's prefix (same project and deployment), nor a same-named deployment of another
    # project, nor the old layout without the namespace
    assert _refused(put("artifacts/feedback/plant-a/dock/jetson-b/0-000000000001.jpg")) == "AccessDenied"
    assert _refused(put("artifacts/feedback/plant-b/dock/jetson-a/0-000000000001.jpg")) == "AccessDenied"
    assert _refused(put("artifacts/feedback/dock/jetson-a/000000000001.jpg")) == "AccessDenied"
    # no reading of frames (its own neither), of another project's models, no overwriting a model
    own = _store(iam_s3).list(feedback_prefix(FEEDBACK, "plant-a", "dock", "jetson-a"))[0].uri
    assert _refused(lambda: store_a.get_bytes(own)) == "AccessDenied"
    assert _refused(lambda: store_a.get_bytes(f"{ARTIFACTS}/plant-b/run-1/best.onnx")) == "AccessDenied"
    assert _refused(put("artifacts/plant-a/run-1/best.onnx")) == "AccessDenied"
    assert (
        _refused(lambda: as_a.list_objects_v2(Bucket=BUCKET, Prefix="artifacts/feedback/")) == "AccessDenied"
    )


def test_a_revoked_node_is_refused_while_the_others_keep_uploading(iam_s3: IamS3, tmp_path: Path) -> None:
    node_a = _issue(iam_s3, "plant-c", "jetson-a", ["gate"])
    node_b = _issue(iam_s3, "plant-c", "jetson-b", ["gate"])
    node_a_elsewhere = _issue(iam_s3, "plant-d", "jetson-a", ["gate"])  # the same node, another project
    assert _spool(tmp_path, "plant-c", "gate", "jetson-a", 1).upload(_store(iam_s3, node_a)) == 1

    removed = IamIssuer(iam_s3.client("iam")).revoke_node("jetson-a")
    # every project's identity of that node (the first test's too), no other node's
    assert {identity_name("plant-c", "jetson-a"), identity_name("plant-d", "jetson-a")} <= set(removed)
    assert identity_name("plant-c", "jetson-b") not in removed

    spool_a = _spool(tmp_path / "later", "plant-c", "gate", "jetson-a", 2)
    assert spool_a.upload(_store(iam_s3, node_a)) == 0 and len(spool_a.spool.items()) == 2  # kept
    for keys, namespace in ((node_a, "plant-c"), (node_a_elsewhere, "plant-d")):
        key = _key(feedback_prefix(FEEDBACK, namespace, "gate", "jetson-a")) + "x.jpg"
        client = iam_s3.client("s3", keys)
        assert (
            _refused(lambda c=client, k=key: c.put_object(Bucket=BUCKET, Key=k, Body=b"x"))
            == "InvalidAccessKeyId"
        )
    # node B is untouched
    assert _spool(tmp_path, "plant-c", "gate", "jetson-b", 3).upload(_store(iam_s3, node_b)) == 3


def test_same_named_deployments_of_two_projects_never_see_each_others_frames(
    iam_s3: IamS3, tmp_path: Path
) -> None:
    store = _store(iam_s3)
    for namespace in ("plant-e", "plant-f"):  # both run `dock` on a node of the same name
        assert _spool(tmp_path, namespace, "dock", "jetson-0", 3).upload(store) == 3
    listed = {
        ns: [o.uri for o in store.list(feedback_prefix(FEEDBACK, ns, "dock"))]
        for ns in ("plant-e", "plant-f")
    }
    assert len(listed["plant-e"]) == len(listed["plant-f"]) == 6  # 3 frames each: nothing overwritten
    assert all("/plant-e/dock/jetson-0/" in uri for uri in listed["plant-e"])
    assert not set(listed["plant-e"]) & set(listed["plant-f"])
    # the API's import reads only its project's records, and names their deployment and node
    records = [feedback_frame(FEEDBACK, "plant-e", uri) for uri in listed["plant-e"] + listed["plant-f"]]
    found = [r for r in records if r is not None]
    assert len(found) == 3 and {(r.deployment, r.node) for r in found} == {("dock", "jetson-0")}


def test_a_wiped_spool_never_overwrites_earlier_frames(iam_s3: IamS3, tmp_path: Path) -> None:
    store = _store(iam_s3)
    first = _spool(tmp_path / "before", "plant-g", "dock", "jetson-0", 2)
    again = _spool(tmp_path / "after", "plant-g", "dock", "jetson-0", 2)  # the node's state was wiped
    assert first.upload(store) == again.upload(store) == 2
    assert len(store.list(feedback_prefix(FEEDBACK, "plant-g", "dock", "jetson-0"))) == 8


def test_feedback_prefixes_are_per_project_and_checked() -> None:
    assert feedback_prefix("s3://b/fb", "ns", "dock", "j-0") == "s3://b/fb/ns/dock/j-0/"
    assert feedback_prefix("s3://b/fb/", "ns") == "s3://b/fb/ns/"
    for bad in ("../x", "a/b", "", "UPPER"):
        with pytest.raises(ValueError):
            feedback_prefix("s3://b/fb", bad, "dock")
    frame = feedback_frame("s3://b/fb", "ns", "s3://b/fb/ns/dock/j-0/abc-000000000001.json")
    assert frame == ("dock", "j-0", "abc-000000000001")
    for uri in (
        "s3://b/fb/ns2/dock/j-0/abc-1.json",  # another project ("ns" is a prefix of "ns2")
        "s3://b/fb/ns/dock/j-1/j-0/abc-1.json",  # nested under another node's prefix
        "s3://b/fb/ns/dock/j-0/abc-1.jpg",
    ):
        assert feedback_frame("s3://b/fb", "ns", uri) is None
