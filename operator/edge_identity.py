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
functions here; identity_issuers.py talks to IAM and RabbitMQ, identity_exchange.py serves the
exchange and only reads and writes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from visioninapp.backends.storage import join_uri
from visioninapp.feedback import feedback_prefix
from visioninapp.k8s import Obj

__all__ = [
    "AUDIENCE",
    "NODE_HASH_LABEL",
    "REVOKED_LABEL",
    "Caller",
    "broker_permissions",
    "broker_user",
    "broker_user_prefix",
    "caller_from_review",
    "edge_policy",
    "identity_name",
    "identity_path",
    "node_hash",
    "node_revoked",
    "policy_digest",
    "refusal",
    "secret_name",
]

AUDIENCE = "visioninapp-edge"
REVOKED_LABEL = "visioninapp.io/edge-revoked"
NODE_HASH_LABEL = "visioninapp.io/edge-node-hash"
IAM_PATH = "/visioninapp/edge/"
SA_PREFIX = "system:serviceaccount:"
EXTRA_NODE = "authentication.kubernetes.io/node-name"
EXTRA_POD = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"


def node_hash(*parts: str) -> str:
    """A short, stable digest of names (IAM names and label values have length limits)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:20]


def identity_name(namespace: str, node: str) -> str:
    """The IAM user of `node` in `namespace` (IAM names are 64 characters at most)."""
    return f"visioninapp-edge-{node_hash(namespace, node)}"


def identity_path(node: str) -> str:
    """Every IAM user of one node shares this path: revocation lists them by it."""
    return f"{IAM_PATH}{node_hash(node)}/"


def secret_name(node: str) -> str:
    return f"edge-identity-{node_hash(node)}"


def broker_user_prefix(node: str) -> str:
    """Every broker user of one node starts so: revocation finds them (all namespaces) by it."""
    return f"visioninapp-edge-{node_hash(node)}-"


def broker_user(namespace: str, node: str) -> str:
    """The RabbitMQ user of `node` in `namespace`."""
    return broker_user_prefix(node) + node_hash(namespace)[:12]


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
    engine_prefixes: Iterable[str] = (),
) -> Obj:
    """The IAM policy of `node` in `namespace`: write its own feedback prefix of each deployment
    (name, feedback uri) there; read the namespace's model artifacts (and the exact model files its
    deployments name); never read feedback, nor anything of another node or namespace. As the
    designated builder of engine keys (operator/engines.py): write the engine and its claim in each
    key's prefix of `engine_prefixes` (`<shared engine cache>/<key hash>`), never the manifest."""
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
    builds = sorted(
        _object_arn(prefix.rstrip("/")) + f"/{name}"
        for prefix in engine_prefixes
        if prefix.startswith("s3://")
        for name in ("engine.onnx", "engine.json")
    )
    if builds:
        statements.append(
            {
                "Sid": "DesignatedEngineBuilder",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": builds,
            }
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
