"""The credential exchange of edge pods (operator/edge_identity.py): a verified pod token is
answered with its node's credentials, issued and kept in a Secret; revoked nodes are cut off."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from visioninapp.backends.storage import join_uri
from visioninapp.k8s import MANAGED_BY, Obj
from visioninapp.kubeclient import Kube, KubeError
from visioninapp.operator.cache import KeyedLocks
from visioninapp.operator.config import OperatorConfig
from visioninapp.operator.edge_identity import (
    AUDIENCE,
    NODE_HASH_LABEL,
    Caller,
    broker_permissions,
    broker_user,
    caller_from_review,
    edge_policy,
    identity_name,
    identity_path,
    node_hash,
    node_revoked,
    policy_digest,
    refusal,
    secret_name,
)
from visioninapp.operator.engines import engine_prefix, engine_writes
from visioninapp.operator.identity_issuers import BrokerIssuer, IamIssuer
from visioninapp.resources.edgedeployment import models_in_use
from visioninapp.settings import Settings

__all__ = ["Answer", "EdgeIdentities", "FleetView", "serve", "start"]

log = logging.getLogger(__name__)
POLICY_ANNOTATION = "visioninapp.io/policy-sha256"
BROKER_ANNOTATION = "visioninapp.io/broker-permissions-sha256"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
BROKER_KEYS = ("VISIONINAPP_RABBITMQ_USER", "VISIONINAPP_RABBITMQ_PASSWORD")


class FleetView(Protocol):
    """What the operator's caches know (filled by its watches); only read here."""

    @property
    def nodes(self) -> Mapping[str, Obj]: ...

    @property
    def edge_pods(self) -> Mapping[tuple[str, str], Mapping[str, Obj]]: ...

    @property
    def deployments(self) -> Mapping[tuple[str, str], Obj]: ...

    @property
    def artifacts(self) -> Mapping[tuple[str, str], Obj]: ...


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
        self.locks = KeyedLocks()  # one issue at a time per (namespace, node)
        self.revoked: set[str] = set()
        self.tasks: set[asyncio.Task[list[str]]] = set()

    def _edge_pod(self, caller: Caller) -> Obj | None:
        for (namespace, _), pods in self.fleet.edge_pods.items():
            if namespace == caller.namespace and caller.pod in pods:
                return pods[caller.pod]
        return None

    def policy_for(self, namespace: str, node: str) -> Obj:
        deployments, models, bodies = [], [], []
        for (ns, name), body in self.fleet.deployments.items():
            if ns != namespace:
                continue
            bodies.append(body)
            feedback = (body.get("spec") or {}).get("feedback") or {}
            deployments.append((name, feedback.get("uri") or self.feedback_uri))
            for model in models_in_use(body):
                artifact = self.fleet.artifacts.get((namespace, model))
                models += [f["uri"] for f in (artifact or {}).get("spec", {}).get("formats", [])]
        prefix = engine_prefix(self.artifacts_uri, namespace)
        builds = [join_uri(prefix, key_hash) for key_hash in engine_writes(bodies, node)]
        return edge_policy(
            namespace, node, deployments, self.artifacts_uri, self.feedback_uri, models, builds
        )

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
        async with self.locks.hold(key):
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
                "labels": {**MANAGED_BY, NODE_HASH_LABEL: node_hash(node)},
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


async def start(
    kube: Kube, fleet: FleetView, config: OperatorConfig, settings: Settings
) -> tuple[EdgeIdentities, Any]:
    """The identities of the `rollout` role and their exchange server."""
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
