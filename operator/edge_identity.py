"""Per-node credentials for edge pods: issued by the operator, exchanged for a bound token, revocable.

A DaemonSet has one pod template, so a per-node Secret cannot be mounted by name. Instead each edge
pod presents its projected ServiceAccount token (audience `visioninapp-edge`, bound to the pod; since
Kubernetes 1.32 such a token names the pod's node) to the operator, which checks it with a
TokenReview and answers with the credentials of that node in that namespace only:

- an IAM user per (namespace, node), path `/visioninapp/edge/<node hash>/`, whose inline policy
  allows `s3:PutObject` on `<feedback uri>/<namespace>/<deployment>/<node>/*` of the namespace's
  deployments and `s3:GetObject` on the namespace's model artifacts, and denies reads of feedback;
- a RabbitMQ user per (namespace, node) (`visioninapp-edge-<node hash>-<namespace hash>`, through the
  management HTTP API) that may only publish to the edge-events stream: configure and write on that
  stream alone, read on nothing (no subscribing to the fleet's events);
- both kept in a Secret of the namespace (`edge-identity-<hash>`), never in plain env.

Revoking a node (label `visioninapp.io/edge-revoked=true` on the Node, or deleting the Node) deletes
its IAM users with their keys, its broker users (their open connections closed) and its Secrets,
and the exchange refuses it from then on; other nodes keep their keys. Decisions are the pure
functions here; `EdgeIdentities` only reads and writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlparse

from visioninapp.backends.storage import join_uri
from visioninapp.feedback import feedback_prefix
from visioninapp.k8s import MANAGED_BY, Obj
from visioninapp.kubeclient import Kube, KubeError

__all__ = [
    "AUDIENCE",
    "REVOKED_LABEL",
    "BrokerIssuer",
    "Caller",
    "EdgeIdentities",
    "IamIssuer",
    "broker_permissions",
    "broker_user",
    "caller_from_review",
    "edge_policy",
    "identity_name",
    "node_revoked",
    "refusal",
    "secret_name",
]

log = logging.getLogger(__name__)
AUDIENCE = "visioninapp-edge"
REVOKED_LABEL = "visioninapp.io/edge-revoked"
NODE_HASH_LABEL = "visioninapp.io/edge-node-hash"
POLICY_NAME = "visioninapp-edge"
POLICY_ANNOTATION = "visioninapp.io/policy-sha256"
BROKER_ANNOTATION = "visioninapp.io/broker-permissions-sha256"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
BROKER_KEYS = ("VISIONINAPP_RABBITMQ_USER", "VISIONINAPP_RABBITMQ_PASSWORD")
IAM_PATH = "/visioninapp/edge/"
SA_PREFIX = "system:serviceaccount:"
EXTRA_NODE = "authentication.kubernetes.io/node-name"
EXTRA_POD = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"


# --- pure decisions -----------------------------------------------------------------------------


def _hash(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:20]


def identity_name(namespace: str, node: str) -> str:
    """The IAM user of `node` in `namespace` (IAM names are 64 characters at most)."""
    return f"visioninapp-edge-{_hash(namespace, node)}"


def identity_path(node: str) -> str:
    """Every IAM user of one node shares this path: revocation lists them by it."""
    return f"{IAM_PATH}{_hash(node)}/"


def secret_name(node: str) -> str:
    return f"edge-identity-{_hash(node)}"


def broker_user_prefix(node: str) -> str:
    """Every broker user of one node starts so: revocation finds them (all namespaces) by it."""
    return f"visioninapp-edge-{_hash(node)}-"


def broker_user(namespace: str, node: str) -> str:
    """The RabbitMQ user of `node` in `namespace`."""
    return broker_user_prefix(node) + _hash(namespace)[:12]


def broker_permissions(stream: str) -> dict[str, str]:
    """What an edge node may do on the broker (its vhost): declare and publish to the edge-events
    stream, nothing else. No read: reading would let a node subscribe to every node's events, and
    the only read a publisher makes, its publisher-sequence query, is answered ACCESS_REFUSED
    (rstream then reports 0) while the broker still drops re-sent publishing ids (deduplication
    is the server's), so a resend after a lost confirm never duplicates an event."""
    exact = f"^{re.escape(stream)}$"
    return {"configure": exact, "write": exact, "read": "^$"}


def node_revoked(node: Obj | None) -> bool:
    """A node is cut off when it is gone or labelled `visioninapp.io/edge-revoked=true`."""
    if node is None:
        return True
    return ((node.get("metadata") or {}).get("labels") or {}).get(REVOKED_LABEL) == "true"


@dataclass(frozen=True)
class Caller:
    """Who a verified token belongs to: a pod's ServiceAccount on a node."""

    namespace: str
    service_account: str
    node: str
    pod: str
    pod_uid: str


def caller_from_review(status: Mapping[str, Any], audience: str = AUDIENCE) -> Caller | str:
    """The caller of a TokenReview's status, or why the token is not accepted."""
    if not status.get("authenticated"):
        return f"token not authenticated: {status.get('error') or 'invalid or expired'}"
    if audience not in (status.get("audiences") or []):
        return f"token not issued for audience {audience!r}"
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    if not username.startswith(SA_PREFIX) or username.count(":") != 3:
        return "not a ServiceAccount token"
    namespace, account = username[len(SA_PREFIX) :].split(":")
    extra = user.get("extra") or {}

    def one(key: str) -> str:
        values = extra.get(key) or []
        return str(values[0]) if len(values) == 1 else ""

    node, pod, uid = one(EXTRA_NODE), one(EXTRA_POD), one(EXTRA_POD_UID)
    if not (node and pod and uid):
        return "the token is not bound to a pod on a node (use the pod's projected token)"
    return Caller(namespace, account, node, pod, uid)


def refusal(caller: Caller, node: Obj | None, pod: Obj | None) -> str | None:
    """Why `caller` gets no credentials (None: it gets them): a revoked node, or not an edge pod
    of this namespace running on that node."""
    if node_revoked(node):
        return f"node {caller.node!r} is revoked (or unknown)"
    if pod is None:
        return f"pod {caller.namespace}/{caller.pod} is not an edge runtime pod"
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if meta.get("uid") != caller.pod_uid or spec.get("nodeName") != caller.node:
        return f"pod {caller.namespace}/{caller.pod} does not match the token (uid or node)"
    if meta.get("deletionTimestamp"):
        return f"pod {caller.namespace}/{caller.pod} is being deleted"
    return None


def _object_arn(uri: str) -> str:
    parsed = urlparse(uri)
    return f"arn:aws:s3:::{parsed.netloc}/{parsed.path.lstrip('/')}"


def edge_policy(
    namespace: str,
    node: str,
    deployments: Iterable[tuple[str, str]],
    artifacts_uri: str,
    feedback_uri: str,
    model_uris: Iterable[str] = (),
) -> Obj:
    """The IAM policy of `node` in `namespace`: write its own feedback prefix of each deployment
    (name, feedback uri) there; read the namespace's model artifacts (and the exact model files its
    deployments name); never read feedback, nor anything of another node or namespace."""
    writes = sorted(
        _object_arn(feedback_prefix(uri, namespace, name, node)) + "*"
        for name, uri in deployments
        if uri.startswith("s3://")
    )
    reads = (
        {_object_arn(join_uri(artifacts_uri, namespace)) + "/*"}
        if artifacts_uri.startswith("s3://")
        else set()
    )
    reads |= {_object_arn(uri) for uri in model_uris if uri.startswith("s3://")}
    statements: list[Obj] = []
    if writes:
        statements.append(
            {"Sid": "OwnFeedback", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": writes}
        )
    if reads:
        statements.append(
            {"Sid": "ProjectModels", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": sorted(reads)}
        )
    denied = {uri for _, uri in deployments if uri.startswith("s3://")}
    if feedback_uri.startswith("s3://"):
        denied.add(feedback_uri)
    if denied:  # a project named like the feedback root must not read the fleet's frames
        statements.append(
            {
                "Sid": "NoFeedbackReads",
                "Effect": "Deny",
                "Action": ["s3:GetObject"],
                "Resource": sorted(_object_arn(uri.rstrip("/")) + "/*" for uri in denied),
            }
        )
    if not statements:  # IAM wants one statement at least
        statements.append({"Sid": "Nothing", "Effect": "Deny", "Action": ["s3:*"], "Resource": ["*"]})
    return {"Version": "2012-10-17", "Statement": statements}


def policy_digest(policy: Obj) -> str:
    return hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()


# --- IAM (boto3, blocking: called in a thread) --------------------------------------------------


class IamIssuer:
    """IAM users and access keys of edge nodes."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def ensure(self, name: str, path: str, policy: Obj, tags: dict[str, str]) -> None:
        iam = self.client
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
            iam.create_user(UserName=name, Path=path, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        iam.put_user_policy(UserName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))

    def new_key(self, name: str) -> tuple[str, str]:
        """A fresh access key; the user's older keys are deleted (only the Secret's one is valid)."""
        iam = self.client
        for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def revoke_node(self, node: str) -> list[str]:
        """Delete every IAM user of `node` (all namespaces) with its keys and policies."""
        iam, removed = self.client, []
        for page in iam.get_paginator("list_users").paginate(PathPrefix=identity_path(node)):
            for user in page["Users"]:
                name = user["UserName"]
                for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
                    iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
                for policy in iam.list_user_policies(UserName=name)["PolicyNames"]:
                    iam.delete_user_policy(UserName=name, PolicyName=policy)
                iam.delete_user(UserName=name)
                removed.append(name)
        return removed


# --- RabbitMQ (management HTTP API, blocking: called in a thread) --------------------------------


class BrokerIssuer:
    """RabbitMQ users of edge nodes, made and removed through the management HTTP API."""

    def __init__(self, url: str, user: str, password: str, vhost: str = "/", timeout: float = 10.0) -> None:
        self.api = url.rstrip("/") + "/api"
        self.vhost, self.timeout = vhost, timeout
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _call(self, method: str, path: str, body: Obj | None = None, missing_ok: bool = False) -> Any:
        request = urllib.request.Request(
            self.api + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            if missing_ok and error.code == 404:
                return None
            detail = error.read().decode(errors="replace")[:300]
            raise RuntimeError(f"RabbitMQ management {method} {path}: {error.code} {detail}") from None
        return json.loads(raw) if raw else None

    def ensure(self, name: str, password: str, permissions: Mapping[str, str]) -> None:
        """Create (or re-password) `name` with `permissions` on the vhost only."""
        user = quote(name, safe="")
        self._call("PUT", f"/users/{user}", {"password": password, "tags": ""})
        self._call("PUT", f"/permissions/{quote(self.vhost, safe='')}/{user}", dict(permissions))

    def users(self, prefix: str) -> list[str]:
        return sorted(
            str(u["name"])
            for u in self._call("GET", "/users") or []
            if str(u.get("name", "")).startswith(prefix)
        )

    def close_connections(self, users: Iterable[str]) -> int:
        """Close the open connections (AMQP and stream) of `users`: deleting a user does not."""
        wanted, closed = set(users), 0
        for connection in self._call("GET", "/connections") or []:
            if connection.get("user") in wanted:
                self._call(
                    "DELETE", f"/connections/{quote(str(connection['name']), safe='')}", missing_ok=True
                )
                closed += 1
        return closed

    def revoke_node(self, node: str) -> list[str]:
        """Delete every broker user of `node` (all namespaces), then close their connections."""
        removed = self.users(broker_user_prefix(node))
        for name in removed:
            self._call("DELETE", f"/users/{quote(name, safe='')}", missing_ok=True)
        self.close_connections(removed)
        return removed


# --- the exchange -------------------------------------------------------------------------------


class FleetView(Protocol):
    """What the operator's caches know (filled by its watches)."""

    nodes: dict[str, Obj]
    edge_pods: dict[tuple[str, str], dict[str, Obj]]
    deployments: dict[tuple[str, str], Obj]
    artifacts: dict[tuple[str, str], Obj]


@dataclass(frozen=True)
class Answer:
    status: int
    body: Obj


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


class EdgeIdentities:
    """Issue, hand out and revoke per-node credentials for the `rollout` role."""

    def __init__(
        self,
        kube: Kube,
        issuer: IamIssuer,
        fleet: FleetView,
        artifacts_uri: str,
        feedback_uri: str,
        broker: BrokerIssuer | None = None,
        edge_stream: str = "edge-events",
        recheck_seconds: float = 10.0,
    ) -> None:
        self.kube, self.issuer, self.fleet = kube, issuer, fleet
        self.artifacts_uri, self.feedback_uri = artifacts_uri, feedback_uri
        self.broker, self.edge_stream = broker, edge_stream
        # the management API lists a connection some seconds after it opened: close again then
        self.recheck_seconds = recheck_seconds
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.revoked: set[str] = set()
        self.tasks: set[asyncio.Task[list[str]]] = set()

    def _edge_pod(self, caller: Caller) -> Obj | None:
        for (namespace, _), pods in self.fleet.edge_pods.items():
            if namespace == caller.namespace and caller.pod in pods:
                return pods[caller.pod]
        return None

    def policy_for(self, namespace: str, node: str) -> Obj:
        deployments, models = [], []
        for (ns, name), body in self.fleet.deployments.items():
            if ns != namespace:
                continue
            feedback = (body.get("spec") or {}).get("feedback") or {}
            deployments.append((name, feedback.get("uri") or self.feedback_uri))
            status = body.get("status") or {}
            for model in {
                body["spec"].get("modelRef"),
                status.get("currentModel"),
                status.get("previousModel"),
            }:
                artifact = self.fleet.artifacts.get((namespace, model or ""))
                models += [f["uri"] for f in (artifact or {}).get("spec", {}).get("formats", [])]
        return edge_policy(namespace, node, deployments, self.artifacts_uri, self.feedback_uri, models)

    async def review(self, token: str) -> Caller | str:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [AUDIENCE]},
        }
        answer = await self.kube.request(
            "POST", self.kube.path("authentication.k8s.io/v1", "tokenreviews", None), review
        )
        return caller_from_review(answer.get("status") or {})

    async def exchange(self, token: str) -> Answer:
        """A pod's token → its node's credentials in its namespace (401/403 with the reason)."""
        if not token:
            return Answer(401, {"message": "a bearer token (the pod's projected token) is required"})
        caller = await self.review(token)
        if isinstance(caller, str):
            return Answer(401, {"message": caller})
        why = refusal(caller, self.fleet.nodes.get(caller.node), self._edge_pod(caller))
        if why:
            log.warning(
                "edge credentials refused to %s/%s on %s: %s", caller.namespace, caller.pod, caller.node, why
            )
            return Answer(403, {"message": why})
        key = (caller.namespace, caller.node)
        async with self.locks.setdefault(key, asyncio.Lock()):
            data = await self._issue(caller.namespace, caller.node)
        body: Obj = {
            "namespace": caller.namespace,
            "node": caller.node,
            "s3": {"accessKeyId": data[S3_KEYS[0]], "secretAccessKey": data[S3_KEYS[1]]},
        }
        if self.broker is not None:
            body["rabbitmq"] = {"user": data[BROKER_KEYS[0]], "password": data[BROKER_KEYS[1]]}
        return Answer(200, body)

    async def _issue(self, namespace: str, node: str) -> dict[str, str]:
        """The Secret's credentials, brought up to date: the IAM policy and broker permissions
        re-applied when they changed, a new IAM user and key (a broker user) when there is none."""
        name, policy = identity_name(namespace, node), self.policy_for(namespace, node)
        digest = policy_digest(policy)
        secret = await self.kube.get("v1", "secrets", namespace, secret_name(node))
        data = {k: base64.b64decode(v).decode() for k, v in ((secret or {}).get("data") or {}).items()}
        annotations = dict(((secret or {}).get("metadata") or {}).get("annotations") or {})
        before = (dict(data), dict(annotations))
        if annotations.get(POLICY_ANNOTATION) != digest or not all(k in data for k in S3_KEYS):
            await asyncio.to_thread(
                self.issuer.ensure, name, identity_path(node), policy, {"namespace": namespace}
            )
            annotations[POLICY_ANNOTATION] = digest
        if not all(k in data for k in S3_KEYS):
            data.update(zip(S3_KEYS, await asyncio.to_thread(self.issuer.new_key, name), strict=True))
            log.info("issued S3 keys of edge node %s in %s (IAM user %s)", node, namespace, name)
        if self.broker is not None:
            permissions = broker_permissions(self.edge_stream)
            broker_digest = policy_digest({"vhost": self.broker.vhost, **permissions})
            fresh = not all(k in data for k in BROKER_KEYS)
            if fresh:
                data.update(
                    zip(BROKER_KEYS, (broker_user(namespace, node), secrets.token_urlsafe(32)), strict=True)
                )
            if fresh or annotations.get(BROKER_ANNOTATION) != broker_digest:
                await asyncio.to_thread(
                    self.broker.ensure, data[BROKER_KEYS[0]], data[BROKER_KEYS[1]], permissions
                )
                annotations[BROKER_ANNOTATION] = broker_digest
                log.info(
                    "broker user %s of edge node %s in %s ensured", data[BROKER_KEYS[0]], node, namespace
                )
        if (data, annotations) == before:
            return data
        if secret is not None and data == before[0]:
            await self.kube.patch(
                "v1", "secrets", namespace, secret_name(node), {"metadata": {"annotations": annotations}}
            )
            return data
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name(node),
                "namespace": namespace,
                "labels": {**MANAGED_BY, NODE_HASH_LABEL: _hash(node)},
                "annotations": {**annotations, "visioninapp.io/node": node},
            },
            "type": "Opaque",
            "data": {k: _b64(v) for k, v in data.items()},
        }
        if secret is None:
            await self.kube.create("v1", "secrets", namespace, body)
        else:
            await self.kube.request(
                "PUT", self.kube.path("v1", "secrets", namespace, secret_name(node)), body
            )
        return data

    def node_changed(self, name: str, node: Obj | None) -> None:
        """A Node event: a revoked (or deleted) node is cut off once; un-revoking allows it again."""
        if not node_revoked(node):
            self.revoked.discard(name)
        elif name not in self.revoked:
            self.revoked.add(name)
            task = asyncio.get_running_loop().create_task(self.revoke(name))
            self.tasks.add(task)
            task.add_done_callback(self._revoked)

    def _revoked(self, task: asyncio.Task[list[str]]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("revoking an edge node failed: %s", task.exception())

    async def revoke(self, node: str) -> list[str]:
        """Cut `node` off: its IAM users (every namespace) and their keys go, then its Secrets."""
        removed = await asyncio.to_thread(self.issuer.revoke_node, node)
        if self.broker is not None:
            users = await asyncio.to_thread(self.broker.revoke_node, node)
            removed += users
            if users and self.recheck_seconds > 0:  # connections opened just before, listed late
                await asyncio.sleep(self.recheck_seconds)
                await asyncio.to_thread(self.broker.close_connections, users)
        for namespace in sorted({ns for ns, _ in self.fleet.deployments}):
            try:
                await self.kube.delete("v1", "secrets", namespace, secret_name(node))
            except KubeError as error:
                log.warning("Secret of revoked node %s in %s not deleted: %s", node, namespace, error)
        if removed:
            log.warning("edge node %s revoked: IAM and broker users %s deleted", node, ", ".join(removed))
        return removed


async def serve(identities: EdgeIdentities, port: int, tls: ssl.SSLContext | None = None) -> Any:
    """`POST /v1/edge/credentials` with `Authorization: Bearer <projected token>`; returns the runner."""
    from aiohttp import web

    async def credentials(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        answer = await identities.exchange(token.strip() if scheme.lower() == "bearer" else "")
        return web.json_response(answer.body, status=answer.status)

    app = web.Application()
    app.router.add_post("/v1/edge/credentials", credentials)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, ssl_context=tls).start()
    return runner


async def start(kube: Kube, fleet: FleetView, config: Any, settings: Any) -> tuple[EdgeIdentities, Any]:
    """The identities of the `rollout` role and their exchange server (OperatorConfig, Settings)."""
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=config.edge_identity_iam_endpoint_url, region_name=settings.s3_region
    )
    broker = None
    if config.edge_identity_rabbitmq_management_url:
        broker = BrokerIssuer(
            config.edge_identity_rabbitmq_management_url,
            config.edge_identity_rabbitmq_admin_user or "",
            config.edge_identity_rabbitmq_admin_password or "",
            settings.rabbitmq_vhost,
        )
    identities = EdgeIdentities(
        kube,
        IamIssuer(iam),
        fleet,
        settings.resolved_artifacts_uri,
        settings.resolved_feedback_uri,
        broker=broker,
        edge_stream=settings.edge_stream,
    )
    tls = None
    if config.edge_identity_tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(config.edge_identity_tls_cert, config.edge_identity_tls_key)
    return identities, await serve(identities, config.edge_identity_port, tls)
