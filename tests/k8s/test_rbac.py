"""The chart's RBAC, proven by the real authorizer (kube-apiserver `--authorization-mode=Node,RBAC`
with the OwnerReferencesPermissionEnforcement admission plugin) and the API server's audit log.

Each role the chart renders is made in a cluster as rendered (ServiceAccount, ClusterRole, Role,
bindings), and the real operator (with the environment the chart's Deployment gives it) or the real
API runs with a token of the rendered ServiceAccount. The tables below name, for each single grant
(verb, API group, resource) of each role, the scenario that needs it. Then:

1. positive: the process runs every scenario of its role's table, and each reaches its outcome;
   from the audit log, none of its requests was refused (403) and what it used is exactly what its
   role allows, nothing missing and nothing unused (a path only a race or a restart takes is run
   by a scenario made for it: a Job or a DaemonSet that exists before the operator creates it, the
   Job of a run deleted while the operator was away);
2. removal: each grant in turn is removed from the live role (a SubjectAccessReview shows the
   authorizer has seen it), its scenario is run, and it fails: the audit log shows the refusal of
   that very request for that user, and the outcome is not reached within a bound (three times what
   it took with the grant, `BOUND` seconds at least); then the grant is restored. A grant used as the
   operator starts (its watches, the mirror Secret, its peering) is removed before it starts.

Where: the operator's roles (`both`, `training` with a mirror Secret as values-aks.yaml sets,
`rollout`) watch their namespaces through a glob (`operator.namespaces`), so that copies of a role
(one release each) share its removals side by side on the session's control plane, with the API's
role. The CRD rules are needed by an operator started before its CRDs (or the peering CRD), and
`leaderElection` is cluster-wide (the chart allows nothing else): both run on a control plane of
their own. The default values render the namespaced role less its `namespaces` rule, and
`leaderElection` renders the default role plus its peering rules (the offline test asserts both):
for `leaderElection`, the removals run for those peering rules, the others being proven once, in
the namespaced roles.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python
import pytest
import requests
import yaml

from tests.k8s.conftest import OperatorProcess, onnx_artifact
from tests.k8s.test_operator import successful_trainer, training_job
from tests.services import free_port
from visioninapp.crds import crd_for
from visioninapp.kubeclient import KubeError
from visioninapp.local.cluster.agent import Outcome
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.resources import RESOURCES

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "visioninapp"
GROUP = "visioninapp.io"
CRDS = "apiextensions.k8s.io"
Obj = dict[str, Any]
Grant = tuple[str, str, str]  # (verb, API group, resource[/subresource]); "" is the core group

BOUND = 2.0  # seconds an outcome stays unreached without its grant, at least
PATIENCE = 45.0  # seconds a scenario may take with every grant (a loaded CI machine)
JOB_FINALIZER = "visioninapp.io/training-result"
IN_USE_FINALIZER = "visioninapp.io/in-use"
ACTION = "visioninapp.io/rollout-action"
DEPLOYMENT_LABEL = "visioninapp.io/edge-deployment"

# --- which behaviour needs which permission -----------------------------------------------------

SCENARIOS = {
    # training
    "job": "a new TrainingJob gets its Job",
    "status": "a new TrainingJob reports its phase",
    "train": "a TrainingJob runs to Succeeded (its Job's completion is seen)",
    "running": "a run reports Running while its pod runs (its pods are seen)",
    "release": "a finished run's Job is released (the operator's finalizer removed)",
    "artifact": "a finished run's ModelArtifact is created",
    "succeeded-event": "a finished run's Succeeded Event is posted",
    "suspend": "suspending a run deletes its Job",
    "fine-tune": "a run from a base model resolves it (reads its ModelArtifact) and gets its Job",
    "adopt-job": "a run whose Job exists already (made before a restart) adopts it",
    "orphan": "the Job of a run deleted while the operator was away, being deleted, is released",
    "mirror": "a new ModelArtifact is copied to the edge cluster (kubeconfig from the mirror Secret)",
    # every role
    "verify": "a new ModelArtifact is verified (Available)",
    "late-namespace": "a ModelArtifact in a watched namespace made after the operator started is verified",
    "crds-later": "an operator started before its CRDs serves them once they are established",
    # rollout
    "deploy": "a new EdgeDeployment's model runs on the edge node (Healthy, the node Ready)",
    "ed-status": "a new EdgeDeployment reports its status",
    "rollout-event": "a new EdgeDeployment's RolloutStarted Event is posted",
    "in-use": "a deployed ModelArtifact gets the in-use finalizer",
    "update": "a new modelRef replaces the node's pod (OnDelete) and runs (Healthy on v2)",
    "action": "a rollout-action annotation is acted on and cleared",
    "adopt-ds": "a deployment whose DaemonSet exists already (made before a restart) adopts it",
    "recreate-ds": "a DaemonSet deleted by hand is made again",
    "missing-model": "a deployment of a missing ModelArtifact says so (ModelReady False)",
    "join": "an edge node that joins after the operator started gets the model",
    "cameras": "a deployment with a camera gets its cameras ConfigMap (read first, then made)",
    "camera-move": "a camera moved to the edge node updates its ConfigMap (no new revision)",
    "pod-watch": "the pods it follows (trainer pods, the fleet's pods) are followed by a watch each "
    "(without it: re-listed, again and again)",
    "job-watch": "the runs' Jobs are followed by one watch (without it: re-listed, again and again)",
    "tj-watch": "the TrainingJobs are followed by one watch (without it: re-listed, again and again)",
    # leader election (kopf peering)
    "leader": "the operator registers in its ClusterKopfPeering (the other replicas see it)",
    "serve": "the operator finds no replica above it and serves",
    "yield": "the operator pauses when a replica of higher priority appears",
    "peering-crd": "an operator started before the peering CRD is established starts once it is",
}

# grant: (the scenario that needs it in the `training` role, in the `rollout` role); the role with
# both takes the first of the two. None: the role has no such grant.
OPERATOR_NEEDS: dict[Grant, tuple[str | None, str | None]] = {
    ("create", "", "events"): ("succeeded-event", "rollout-event"),
    ("list", CRDS, "customresourcedefinitions"): ("crds-later", "crds-later"),
    ("watch", CRDS, "customresourcedefinitions"): ("crds-later", "crds-later"),
    ("list", "", "namespaces"): ("verify", "verify"),  # with operator.namespaces
    ("watch", "", "namespaces"): ("late-namespace", "late-namespace"),  # with operator.namespaces
    ("get", GROUP, "trainingjobs"): ("orphan", None),
    ("list", GROUP, "trainingjobs"): ("job", None),
    ("watch", GROUP, "trainingjobs"): ("tj-watch", None),
    ("patch", GROUP, "trainingjobs/status"): ("status", None),
    ("update", GROUP, "trainingjobs/finalizers"): ("job", None),
    ("get", "batch", "jobs"): ("adopt-job", None),
    ("list", "batch", "jobs"): ("train", None),
    ("watch", "batch", "jobs"): ("job-watch", None),
    ("create", "batch", "jobs"): ("job", None),
    ("patch", "batch", "jobs"): ("release", None),
    ("delete", "batch", "jobs"): ("suspend", None),
    ("get", GROUP, "modelartifacts"): ("fine-tune", "missing-model"),
    ("list", GROUP, "modelartifacts"): ("verify", "verify"),
    ("watch", GROUP, "modelartifacts"): ("verify", "verify"),
    ("create", GROUP, "modelartifacts"): ("artifact", None),
    ("patch", GROUP, "modelartifacts"): (None, "in-use"),
    ("patch", GROUP, "modelartifacts/status"): ("verify", "verify"),
    ("list", "", "pods"): ("running", "deploy"),
    ("watch", "", "pods"): ("pod-watch", "pod-watch"),
    ("delete", "", "pods"): (None, "update"),
    ("list", GROUP, "edgedeployments"): (None, "deploy"),
    ("watch", GROUP, "edgedeployments"): (None, "deploy"),
    ("patch", GROUP, "edgedeployments"): (None, "action"),
    ("patch", GROUP, "edgedeployments/status"): (None, "ed-status"),
    ("update", GROUP, "edgedeployments/finalizers"): (None, "deploy"),
    ("get", "apps", "daemonsets"): (None, "adopt-ds"),
    ("list", "apps", "daemonsets"): (None, "recreate-ds"),
    ("watch", "apps", "daemonsets"): (None, "recreate-ds"),
    ("create", "apps", "daemonsets"): (None, "deploy"),
    ("patch", "apps", "daemonsets"): (None, "update"),
    ("list", "", "nodes"): (None, "deploy"),
    ("watch", "", "nodes"): (None, "join"),
    ("get", "", "configmaps"): (None, "cameras"),
    ("create", "", "configmaps"): (None, "cameras"),
    ("patch", "", "configmaps"): (None, "camera-move"),
}
# The Role on the one Secret of operator.mirrorKubeconfigSecret.
MIRROR_NEEDS: dict[Grant, str] = {("get", "", "secrets"): "mirror"}
# operator.leaderElection: kopf's peering (and the CRD rules, for the peering CRD).
PEERING_NEEDS: dict[Grant, str] = {
    ("list", "kopf.dev", "clusterkopfpeerings"): "serve",
    ("watch", "kopf.dev", "clusterkopfpeerings"): "yield",
    ("patch", "kopf.dev", "clusterkopfpeerings"): "leader",
    ("list", CRDS, "customresourcedefinitions"): "peering-crd",
    ("watch", CRDS, "customresourcedefinitions"): "peering-crd",
}
# The API's route calls (it watches nothing: each need is one call, answered at once).
API_NEEDS: dict[Grant, str] = {
    ("create", "", "namespaces"): "POST /projects",
    ("create", GROUP, "trainingjobs"): "POST /projects/{p}/training-jobs",
    ("get", GROUP, "trainingjobs"): "GET /projects/{p}/training-jobs/{name}",
    ("list", GROUP, "trainingjobs"): "GET /projects/{p}/training-jobs",
    ("patch", GROUP, "trainingjobs"): "POST /projects/{p}/training-jobs/{name}/suspend",
    ("delete", GROUP, "trainingjobs"): "DELETE /projects/{p}/training-jobs/{name}",
    ("get", GROUP, "modelartifacts"): "GET /projects/{p}/models/{name}",
    ("list", GROUP, "modelartifacts"): "GET /projects/{p}/models",
    ("patch", GROUP, "modelartifacts"): "PATCH /projects/{p}/models/{name}",
    ("create", GROUP, "edgedeployments"): "POST /projects/{p}/deployments",
    ("get", GROUP, "edgedeployments"): "GET /projects/{p}/deployments/{name}",
    ("list", GROUP, "edgedeployments"): "GET /projects/{p}/deployments",
    ("patch", GROUP, "edgedeployments"): "PATCH /projects/{p}/deployments/{name}",
    ("delete", GROUP, "edgedeployments"): "DELETE /projects/{p}/deployments/{name}",
    ("create", GROUP, "retrainpolicies"): "POST /projects/{p}/retrain-policies",
    ("get", GROUP, "retrainpolicies"): "GET /projects/{p}/retrain-policies/{name}",
    ("list", GROUP, "retrainpolicies"): "GET /projects/{p}/retrain-policies",
    ("patch", GROUP, "retrainpolicies/status"): "POST /projects/{p}/retrain-policies/{name}/evaluate",
    ("list", "", "events"): "GET /projects/{p}/deployments/{name}/events",
    ("list", "", "nodes"): "GET /projects/{p}/training-capacity",
}
# A policy the API's routes create, read and evaluate (nothing in production: it only waits).
RETRAIN_SPEC: Obj = {
    "line": "shapes",
    "triggers": {"reviewedFrames": 10},
    "training": {"dataset": "shapes"},
    "gate": {"heldOut": {"uri": "s3://datasets/shapes-held-out"}},
}
# Checked by admission on another request: without it, that request is the one refused.
REFUSED_AS: dict[Grant, tuple[Grant, str]] = {
    ("update", GROUP, "trainingjobs/finalizers"): (("create", "batch", "jobs"), "blockOwnerDeletion"),
    ("update", GROUP, "edgedeployments/finalizers"): (("create", "apps", "daemonsets"), "blockOwnerDeletion"),
}
# Used whenever the request on the left succeeds: the operator's Jobs and DaemonSets carry an
# ownerReference with blockOwnerDeletion, which admission checks this way (no audit record of its own).
IMPLIED = {refused: grant for grant, (refused, _) in REFUSED_AS.items()}


def at_start(grant: Grant) -> bool:
    """Used as the operator starts (its watches, the mirror Secret, its peering keep-alive): removed
    before it starts, since a watch already open is never authorized again."""
    return grant[0] in ("list", "watch") or grant in (
        ("get", "", "secrets"),
        ("patch", "kopf.dev", "clusterkopfpeerings"),
    )


# The operator roles the chart renders: name → (operator.roles, with operator.mirrorKubeconfigSecret
# (as values-aks.yaml), copies run side by side to share the removals).
OPERATOR_ROLES: dict[str, tuple[list[str], bool, int]] = {
    "both": (["training", "rollout"], False, 3),
    "training": (["training"], True, 2),
    "rollout": (["rollout"], False, 2),
}


def role_needs(roles: list[str], *, namespaced: bool, peering: bool) -> dict[Grant, str]:
    """The table of one rendered operator role: grant → scenario."""
    needs = {}
    for grant, (training, rollout) in OPERATOR_NEEDS.items():
        scenario = (training if "training" in roles else None) or (rollout if "rollout" in roles else None)
        if scenario and (namespaced or grant[2] != "namespaces"):
            needs[grant] = scenario
    return needs | (PEERING_NEEDS if peering else {})


# --- the chart ----------------------------------------------------------------------------------

RBAC_KINDS = {
    "ServiceAccount": ("", "serviceaccounts"),
    "ClusterRole": ("rbac.authorization.k8s.io", "clusterroles"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "clusterrolebindings"),
    "Role": ("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
}


def render(values: Obj, release: str = "visioninapp", namespace: str = "visioninapp") -> list[Obj]:
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    return [
        d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d
    ]


def grants_of(rules: list[Obj]) -> set[Grant]:
    return {
        (verb, group, resource)
        for rule in rules
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def roles_of(documents: list[Obj], component: str) -> list[Obj]:
    """The ClusterRoles and Roles the chart binds to a component's ServiceAccount."""
    suffix = f"-{component}"
    return [
        d
        for d in documents
        if d["kind"] in ("ClusterRole", "Role")
        and (d["metadata"]["name"].endswith(suffix) or d["metadata"]["name"].endswith(f"{suffix}-mirror"))
    ]


def without(rules: list[Obj], grant: Grant) -> list[Obj]:
    """`rules` less one (verb, group, resource), the rest of each rule kept."""
    verb, group, resource = grant
    kept = []
    for rule in rules:
        if verb not in rule["verbs"] or group not in rule["apiGroups"] or resource not in rule["resources"]:
            kept.append(rule)
            continue
        if others := [r for r in rule["resources"] if r != resource]:
            kept.append({**rule, "resources": others})
        if others := [g for g in rule["apiGroups"] if g != group]:
            kept.append({**rule, "apiGroups": others, "resources": [resource]})
        if others := [v for v in rule["verbs"] if v != verb]:
            kept.append({**rule, "apiGroups": [group], "resources": [resource], "verbs": others})
    return kept


def operator_values(roles: list[str], namespace_glob: str | None, **operator: Any) -> Obj:
    return {
        "operator": {"roles": roles, "namespaces": [namespace_glob] if namespace_glob else [], **operator}
    }


# --- the audit log ------------------------------------------------------------------------------


def grant_of(event: Obj) -> Grant | None:
    ref = event.get("objectRef")
    if not ref or not ref.get("resource"):
        return None  # discovery (/api, /apis): every authenticated user may
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return event["verb"], ref.get("apiGroup", ""), resource


class Audit:
    """The API server's audit log from now on, for the users followed (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.events: list[Obj] = []
        self.users: set[str] = set()
        self.lock = threading.Lock()

    def follow(self, user: str) -> None:
        with self.lock:
            self.users.add(user)

    def mark(self) -> int:
        """Read what is new; the position to ask `of(user, since=...)` from later."""
        with self.lock:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            needles = [f'"username":"{user}"'.encode() for user in self.users]
            for line in data[:end].splitlines():
                if any(needle in line for needle in needles):
                    with contextlib.suppress(ValueError):  # the line cut where reading started
                        self.events.append(json.loads(line))
            return len(self.events)

    def of(self, user: str, since: int = 0, namespaces: set[str] | None = None) -> list[Obj]:
        """The user's requests since a mark: cluster-scoped ones, and those in `namespaces` if given."""
        self.mark()
        with self.lock:
            found = [e for e in self.events[since:] if e["user"]["username"] == user]
        if namespaces is None:
            return found
        return [e for e in found if (e.get("objectRef") or {}).get("namespace") in (None, *namespaces)]

    def refusals(self, user: str, grant: Grant, since: int, message: str = "") -> list[Obj]:
        return [
            e
            for e in self.of(user, since)
            if e["responseStatus"]["code"] == 403
            and grant_of(e) == grant
            and message in (e["responseStatus"].get("message") or "")
        ]

    def wait_refused(self, user: str, grant: Grant, since: int, timeout: float, message: str = "") -> Obj:
        deadline = time.monotonic() + timeout
        while not (found := self.refusals(user, grant, since, message)):
            if time.monotonic() > deadline:
                raise Failure(
                    f"no refusal of {fmt(grant)} for {user} in the audit log within {timeout:.0f} s"
                )
            time.sleep(0.1)
        return found[0]


def usage(events: list[Obj]) -> tuple[set[Grant], list[str]]:
    """What the requests used (the grants admission checks besides included), and those refused."""
    used: set[Grant] = set()
    refused = []
    for event in events:
        grant = grant_of(event)
        if event["responseStatus"]["code"] == 403:
            refused.append(f"{event['verb']} {event['requestURI']}: {event['responseStatus'].get('message')}")
        elif grant is not None:
            used.add(grant)
            if grant in IMPLIED and event["responseStatus"]["code"] < 300:
                used.add(IMPLIED[grant])
    return used, refused


def fmt(grant: Grant) -> str:
    verb, group, resource = grant
    return f"{verb} {resource}{'.' + group if group else ''}"


class Failure(AssertionError):
    """An experiment's verdict."""


# --- releases: the rendered RBAC objects in the cluster -----------------------------------------


class Release:
    """The chart's ServiceAccounts, ClusterRoles, Roles and their bindings for one release, made in
    `cluster` (cluster-scoped ones removed by `uninstall`; the rest go with the namespace)."""

    def __init__(self, cluster: Cluster, values: Obj, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.name = f"r{uuid.uuid4().hex[:6]}"
        self.fullname = f"{self.name}-visioninapp"
        self.documents = render(values, self.name, namespace)
        self.made: list[tuple[str, str, str | None, str]] = []

    def install(self) -> Release:
        for doc in self.documents:
            if doc["kind"] not in RBAC_KINDS:
                continue
            group, plural = RBAC_KINDS[doc["kind"]]
            namespace = (
                None
                if doc["kind"].startswith("Cluster")
                else doc["metadata"].get("namespace", self.namespace)
            )
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            self.cluster.create(group, plural, namespace, body)
            self.made.append((group, plural, namespace, doc["metadata"]["name"]))
        return self

    def uninstall(self) -> None:
        for group, plural, namespace, name in self.made:
            if namespace is None:
                with contextlib.suppress(Exception):
                    self.cluster.delete(group, plural, None, name)

    def user(self, component: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}-{component}"

    def kubeconfig(self, component: str, path: Path) -> Path:
        token = self.cluster.service_account_token(self.namespace, f"{self.fullname}-{component}")
        return self.cluster.write_kubeconfig(path, self.namespace, token)

    def holders(self, component: str) -> dict[Grant, Obj]:
        """Each grant of the component, with the role (document) that holds it."""
        return {
            grant: role for role in roles_of(self.documents, component) for grant in grants_of(role["rules"])
        }

    def _set_rules(self, role: Obj, rules: list[Obj]) -> None:
        group, plural = RBAC_KINDS[role["kind"]]
        namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
        self.cluster.patch(group, plural, namespace, role["metadata"]["name"], {"rules": rules})

    def allowed(self, component: str, grant: Grant) -> bool:
        """The authorizer's answer now (a SubjectAccessReview), for the role's own namespace/name."""
        role = self.holders(component)[grant]
        verb, group, resource = grant
        resource, _, subresource = resource.partition("/")
        attributes = {
            "verb": verb,
            "group": group,
            "resource": resource,
            "subresource": subresource,
            "namespace": role["metadata"].get("namespace", self.namespace),
        }
        for rule in role["rules"]:
            if grant in grants_of([rule]) and rule.get("resourceNames"):
                attributes["name"] = rule["resourceNames"][0]
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": self.user(component),
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{self.namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": attributes,
            },
        }
        path = "apis/authorization.k8s.io/v1/subjectaccessreviews"
        answer = self.cluster.run(self.cluster.kube.request("POST", path, review))
        return bool(answer["status"].get("allowed"))

    def _until(self, component: str, grant: Grant, allowed: bool) -> None:
        deadline = time.monotonic() + 30
        while self.allowed(component, grant) != allowed:
            if time.monotonic() > deadline:
                raise Failure(
                    f"the authorizer did not see {fmt(grant)} {'restored' if allowed else 'removed'}"
                )
            time.sleep(0.05)

    def revoke(self, component: str, grant: Grant) -> None:
        role = self.holders(component)[grant]
        self._set_rules(role, without(role["rules"], grant))
        self._until(component, grant, False)

    def restore(self, component: str, grant: Grant) -> None:
        role = self.holders(component)[grant]
        self._set_rules(role, role["rules"])
        self._until(component, grant, True)


# --- trials and the experiments on them ---------------------------------------------------------


def _nothing() -> None:
    return None


def _selector(record: Obj) -> str:
    """The label selector of a list or watch request, from its URI."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(record["requestURI"]).query)
    return query.get("labelSelector", [""])[0]


@dataclass
class Trial:
    """A scenario made ready (`prepare`, with every grant), set off (`trigger`) and its outcome."""

    trigger: Callable[[], object]
    reached: Callable[[], object]
    prepare: Callable[[], object] = _nothing
    cleanup: Callable[[], object] = _nothing  # what must not outlive it (a fake peer)


def eventually(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def never(predicate: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            raise Failure(f"{what} was reached without the grant: it is not needed there")
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


@dataclass
class Result:
    lab: str
    grant: Grant
    scenario: str
    seconds: float
    error: str | None = None


class Lab:
    """One rendered release of a component, in a namespace of its own, and its scenarios."""

    component = "operator"
    label = ""
    needs: dict[Grant, str]

    def __init__(self, cluster: Cluster, audit: Audit, release: Release) -> None:
        self.cluster, self.audit, self.release = cluster, audit, release
        self.namespace = release.namespace
        self.user = release.user(self.component)
        self.audit.follow(self.user)
        self.latency: dict[str, float] = {}
        self.started_at = 0  # the audit log's mark when the process last started
        self.keys = 0
        self.results: list[Result] = []

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def scenario(self, name: str, key: str) -> Trial:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.start()

    def positive(self, scenarios: list[str]) -> tuple[set[Grant], list[str]]:
        """Run each scenario with every grant; what the component used since it started, and what
        was refused."""
        since = self.started_at
        for name in scenarios:
            trial = self.scenario(name, self.key())
            trial.prepare()
            started = time.monotonic()
            trial.trigger()
            try:
                eventually(trial.reached, PATIENCE, f"{self.label}: {name} ({SCENARIOS.get(name, name)})")
            except Failure as failure:
                _, refused = usage(self.audit.of(self.user, since, self.namespaces()))
                raise Failure(f"{failure}; refused so far: {refused}") from None
            self.latency[name] = time.monotonic() - started
            trial.cleanup()
        return usage(self.audit.of(self.user, since, self.namespaces()))

    def namespaces(self) -> set[str]:
        return {self.namespace}

    def bound(self, scenario: str) -> float:
        return max(BOUND, 3 * self.latency.get(scenario, BOUND))

    def remove(self, grant: Grant) -> Result:
        """Remove one grant, run its scenario: its outcome is not reached and the request is refused."""
        name = self.needs[grant]
        started = time.monotonic()
        trial = self.scenario(name, self.key())
        refused, message = REFUSED_AS.get(grant, (grant, ""))
        try:
            trial.prepare()
            since = self.audit.mark()
            self.release.revoke(self.component, grant)
            try:
                if at_start(grant) and self.component == "operator":
                    self.restart()
                    self.audit.wait_refused(self.user, refused, self.started_at, 30, message)
                    trial.trigger()
                else:
                    trial.trigger()
                    self.audit.wait_refused(self.user, refused, since, 30, message)
                never(trial.reached, self.bound(name), f"{name} ({SCENARIOS.get(name, name)})")
            finally:
                self.release.restore(self.component, grant)
                trial.cleanup()
        except Exception as failure:
            return Result(
                self.label, grant, name, time.monotonic() - started, f"{type(failure).__name__}: {failure}"
            )
        return Result(self.label, grant, name, time.monotonic() - started)

    def remove_each(self, grants: list[Grant]) -> list[Result]:
        """`remove` each grant in turn: those used as the operator starts first (each restarts it),
        then the others with a freshly started operator."""
        first = [g for g in grants if at_start(g) and self.component == "operator"]
        then = [g for g in grants if g not in first]
        for grant in first:
            self.results.append(self.remove(grant))
        if first and then:
            self.restart()
        for grant in then:
            self.results.append(self.remove(grant))
        return self.results


# --- the operator's lab -------------------------------------------------------------------------


class FakeEdge:
    """The edge cluster new ModelArtifacts are mirrored to: an HTTP server that records them."""

    def __init__(self) -> None:
        received: set[tuple[str, str]] = set()
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.add((body["metadata"]["namespace"], body["metadata"]["name"]))
                answer = json.dumps(body).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "edge", "cluster": {"server": self.url}}],
                "users": [{"name": "edge", "user": {"token": "edge"}}],
                "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "edge"}}],
                "current-context": "edge",
            }
        )

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Bench:
    """What every lab of a control plane shares."""

    cluster: Cluster
    audit: Audit
    operator_factory: Any
    s3_endpoint: str
    bucket: str
    work: Path
    edge: FakeEdge | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # operator_factory is not thread-safe
    releases: list[Release] = field(default_factory=list)  # their cluster-scoped objects go at the end


def pod_script(s3: Any) -> Callable[[Obj], Outcome]:
    """Trainer pods succeed (names starting `long` run for ten minutes); edge pods serve."""
    trainer = successful_trainer(s3)

    def script(pod: Obj) -> Outcome:
        labels = pod["metadata"].get("labels") or {}
        if "job-name" in labels:
            return (
                Outcome(seconds=600)
                if labels.get("visioninapp.io/training-job", "").startswith("long")
                else trainer(pod)
            )
        return Outcome(seconds=math.inf, ready=True)

    return script


LAB_LABEL = "rbac.visioninapp.io/lab"  # each lab's deployments run on its own edge nodes


def add_edge_node(cluster: Cluster, name: str, lab: str) -> None:
    taint = {"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}
    labels = {"visioninapp.io/edge": "true", LAB_LABEL: lab}
    cluster.add_node(name, labels=labels, taints=[taint], cpu="512", memory="4096Gi")


class OperatorLab(Lab):
    """The operator of one rendered role, with the release's ServiceAccount token."""

    def __init__(
        self,
        bench: Bench,
        label: str,
        roles: list[str],
        *,
        namespace: str,
        clusterwide: bool = False,
        **values: Any,
    ) -> None:
        glob = None if clusterwide else f"{namespace}*"
        release = Release(bench.cluster, operator_values(roles, glob, **values), namespace)
        bench.releases.append(release)
        super().__init__(bench.cluster, bench.audit, release)
        self.bench, self.label, self.roles = bench, label, roles
        self.clusterwide = clusterwide
        self.needs = role_needs(roles, namespaced=not clusterwide, peering=bool(values.get("leaderElection")))
        if values.get("mirrorKubeconfigSecret"):
            self.needs |= MIRROR_NEEDS
        self.operator: OperatorProcess | None = None
        self.starts = 0
        self.pod_id = ""
        self.node = f"jetson-{release.name}"
        self.late: list[str] = []
        self.models_ready = False
        self.base_ready = False

    # lifecycle

    def install(self) -> OperatorLab:
        cluster = self.cluster
        if cluster.get("", "namespaces", None, self.namespace) is None:
            cluster.create_namespace(self.namespace)
        self.release.install()
        if "rollout" in self.roles:
            add_edge_node(cluster, self.node, self.release.name)
        if secret := self.env_of_chart().get("VISIONINAPP_OPERATOR_MIRROR_KUBECONFIG_SECRET"):
            namespace, name = secret.split("/")
            assert self.bench.edge is not None
            data = {"kubeconfig": self.bench.edge.kubeconfig()}
            cluster.create("", "secrets", namespace, {"metadata": {"name": name}, "stringData": data})
        return self

    def env_of_chart(self) -> dict[str, str]:
        """The environment the chart's Deployment gives the operator (and `--peering`)."""
        deployment = next(
            d
            for d in self.release.documents
            if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
        for arg in container.get("args") or []:
            if arg.startswith("--peering="):
                env["VISIONINAPP_OPERATOR_PEERING"] = arg.partition("=")[2]
        return env

    def start(self) -> None:
        self.stop()
        self.starts += 1
        self.pod_id = f"{self.release.name}-{self.starts}"  # kopf's identity in the peering object
        if self.clusterwide and (peers := self.peers()):  # a killed replica's entry would pause it
            stale = {"status": dict.fromkeys(peers)}
            self.cluster.patch("kopf.dev", "clusterkopfpeerings", None, self.release.fullname, stale)
        kubeconfig = self.release.kubeconfig("operator", self.bench.work / f"{self.release.name}.kubeconfig")
        self.started_at = self.audit.mark()
        env = self.env_of_chart() | {
            "KUBECONFIG": str(kubeconfig),
            "POD_ID": self.pod_id,
            "VISIONINAPP_OPERATOR_LIVENESS_PORT": "0",
            "VISIONINAPP_OPERATOR_METRICS_PORT": "0",
            "VISIONINAPP_S3_ENDPOINT_URL": self.bench.s3_endpoint,
            "VISIONINAPP_ARTIFACTS_URI": f"s3://{self.bench.bucket}/runs",
            "VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS": "0.3",
        }
        with self.bench.lock:
            self.operator = self.bench.operator_factory(self.cluster, **env)

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.kill()
            self.operator = None

    def namespaces(self) -> set[str]:
        return {self.namespace, *self.late}

    # reading

    def get(self, plural: str, name: str, group: str = GROUP, namespace: str | None = None) -> Obj | None:
        return self.cluster.get(group, plural, namespace or self.namespace, name)

    def status(self, plural: str, name: str, namespace: str | None = None) -> Obj:
        return (self.get(plural, name, namespace=namespace) or {}).get("status") or {}

    def phase(self, plural: str, name: str, namespace: str | None = None) -> str | None:
        return self.status(plural, name, namespace).get("phase")

    def event(self, name: str, reason: str) -> bool:
        events = self.cluster.list("", "events", self.namespace)
        return any(e["involvedObject"]["name"] == name and e["reason"] == reason for e in events)

    # making things

    def training_job(self, name: str, **spec: Any) -> Obj:
        spec.setdefault("resources", {"gpu": {"count": 1}, "cpu": "100m", "memory": "128Mi"})
        return self.cluster.create(GROUP, "trainingjobs", self.namespace, training_job(name, **spec))

    def model(self, name: str, namespace: str | None = None) -> Obj:
        path = self.bench.work / "models" / (namespace or self.namespace) / f"{name}.onnx"  # its own file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"onnx bytes of {name}".encode())
        return self.cluster.create(
            GROUP, "modelartifacts", namespace or self.namespace, onnx_artifact(name, path)
        )

    def models(self) -> None:
        """v1 and v2, verified: what the deployments roll out."""
        if not self.models_ready:
            for name in ("v1", "v2"):
                if self.get("modelartifacts", name) is None:
                    self.model(name)
            for name in ("v1", "v2"):
                self.verified(name)
            self.models_ready = True

    def verified(self, model: str) -> None:
        eventually(lambda: self.phase("modelartifacts", model) == "Available", PATIENCE, f"{model} verified")

    def base(self) -> None:
        """A finished run whose ModelArtifact (with a `pt` file) others fine-tune from."""
        if not self.base_ready:
            self.training_job("base")
            self.verified("base")
            self.base_ready = True

    def deployment(self, name: str, model: str = "v1", cameras: list[Obj] | None = None) -> Obj:
        spec = {
            "modelRef": model,
            "nodeSelector": {LAB_LABEL: self.release.name},
            "strategy": {"healthGate": {"minReadySeconds": 0}},
            **({"cameras": cameras} if cameras else {}),
        }
        return self.cluster.create(
            GROUP, "edgedeployments", self.namespace, {"metadata": {"name": name}, "spec": spec}
        )

    def serving(self, name: str, model: str = "v1", node: str | None = None) -> bool:
        status = self.status("edgedeployments", name)
        nodes = {n["name"]: n for n in status.get("nodes") or []}
        return (
            status.get("phase") == "Healthy"
            and status.get("currentModel") == model
            and bool(nodes.get(node or self.node, {}).get("ready"))
        )

    def deployed(self, name: str) -> None:
        self.models()
        self.deployment(name)
        eventually(lambda: self.serving(name), PATIENCE, f"{self.label}: {name} deployed")

    def running(self, name: str) -> None:
        self.training_job(name)
        eventually(
            lambda: self.phase("trainingjobs", name) == "Running", PATIENCE, f"{self.label}: {name} running"
        )

    # the scenarios (SCENARIOS): `scenario("adopt-job", key)` is `_adopt_job(key)`

    def scenario(self, name: str, key: str) -> Trial:
        made: Callable[[str], Trial] = getattr(self, f"_{name.replace('-', '_')}")
        return made(key)

    def _job(self, key: str) -> Trial:
        return Trial(lambda: self.training_job(key), lambda: self.get("jobs", f"{key}-1", "batch"))

    def _status(self, key: str) -> Trial:
        return Trial(lambda: self.training_job(key), lambda: self.phase("trainingjobs", key))

    def _train(self, key: str) -> Trial:
        return Trial(lambda: self.training_job(key), lambda: self.phase("trainingjobs", key) == "Succeeded")

    def _running(self, key: str) -> Trial:
        long = f"long-{key}"
        return Trial(lambda: self.training_job(long), lambda: self.phase("trainingjobs", long) == "Running")

    def _release(self, key: str) -> Trial:
        def released() -> bool:
            job = self.get("jobs", f"{key}-1", "batch")
            return job is not None and JOB_FINALIZER not in (job["metadata"].get("finalizers") or [])

        return Trial(
            lambda: self.training_job(key),
            lambda: self.phase("trainingjobs", key) == "Succeeded" and released(),
        )

    def _artifact(self, key: str) -> Trial:
        return Trial(lambda: self.training_job(key), lambda: self.get("modelartifacts", key))

    def _succeeded_event(self, key: str) -> Trial:
        return Trial(lambda: self.training_job(key), lambda: self.event(key, "Succeeded"))

    def _suspend(self, key: str) -> Trial:
        long = f"long-{key}"
        return Trial(
            lambda: self.cluster.patch(
                GROUP, "trainingjobs", self.namespace, long, {"spec": {"suspend": True}}
            ),
            lambda: self.get("jobs", f"{long}-1", "batch") is None,
            prepare=lambda: self.running(long),
        )

    def _fine_tune(self, key: str) -> Trial:
        return Trial(
            lambda: self.training_job(key, model={"baseModel": "base"}),
            lambda: self.get("jobs", f"{key}-1", "batch"),
            prepare=self.base,
        )

    def _orphan(self, key: str) -> Trial:
        job = f"gone-{key}-1"
        return Trial(lambda: self.orphan(job), lambda: self.get("jobs", job, "batch") is None)

    def _mirror(self, key: str) -> Trial:
        edge = self.bench.edge
        assert edge is not None
        return Trial(lambda: self.training_job(key), lambda: (self.namespace, key) in edge.received)

    def _verify(self, key: str) -> Trial:
        return Trial(lambda: self.model(key), lambda: self.phase("modelartifacts", key) == "Available")

    def _crds_later(self, key: str) -> Trial:
        return self._verify(key)  # the CRDs are made between the operators' start and its trigger

    def _late_namespace(self, key: str) -> Trial:
        late = f"{self.namespace}-{key}"  # matched by the operator's namespace glob
        return Trial(
            lambda: self.late_namespace(late, key),
            lambda: self.phase("modelartifacts", key, late) == "Available",
        )

    def _deploy(self, key: str) -> Trial:
        return Trial(lambda: self.deployment(key), lambda: self.serving(key), prepare=self.models)

    def _ed_status(self, key: str) -> Trial:
        return Trial(
            lambda: self.deployment(key), lambda: self.status("edgedeployments", key), prepare=self.models
        )

    def _rollout_event(self, key: str) -> Trial:
        return Trial(
            lambda: self.deployment(key), lambda: self.event(key, "RolloutStarted"), prepare=self.models
        )

    def _in_use(self, key: str) -> Trial:
        model = f"{key}-model"

        def verified() -> None:
            self.model(model)
            self.verified(model)

        def protected() -> bool:
            artifact = self.get("modelartifacts", model) or {"metadata": {}}
            return IN_USE_FINALIZER in (artifact["metadata"].get("finalizers") or [])

        return Trial(lambda: self.deployment(key, model), protected, prepare=verified)

    def _update(self, key: str) -> Trial:
        to_v2 = {"spec": {"modelRef": "v2"}}
        return Trial(
            lambda: self.cluster.patch(GROUP, "edgedeployments", self.namespace, key, to_v2),
            lambda: self.serving(key, "v2"),
            prepare=lambda: self.deployed(key),
        )

    def _action(self, key: str) -> Trial:
        promote = {"metadata": {"annotations": {ACTION: "promote"}}}
        return Trial(
            lambda: self.cluster.patch(GROUP, "edgedeployments", self.namespace, key, promote),
            lambda: self.action_cleared(key),
            prepare=lambda: self.deployed(key),
        )

    def _adopt_ds(self, key: str) -> Trial:
        return Trial(
            lambda: self.deployment(key),
            lambda: self.serving(key),
            prepare=lambda: self.daemonset_made_before(key),
        )

    def _recreate_ds(self, key: str) -> Trial:
        made: dict[str, str] = {}

        def prepare() -> None:
            self.deployed(key)
            made["uid"] = (self.get("daemonsets", key, "apps") or {})["metadata"]["uid"]

        def delete() -> None:
            self.settled(key)  # the operator holds the DaemonSet (from its watch, or its 409 and GET)
            self.cluster.delete("apps", "daemonsets", self.namespace, key)

        def again() -> bool:
            daemonset = self.get("daemonsets", key, "apps")
            return daemonset is not None and daemonset["metadata"]["uid"] != made["uid"]

        return Trial(delete, again, prepare=prepare)

    def _missing_model(self, key: str) -> Trial:
        def says_missing() -> bool:
            conditions = {c["type"]: c for c in self.status("edgedeployments", key).get("conditions") or []}
            return bool(conditions.get("ModelReady", {}).get("status") == "False")

        return Trial(lambda: self.deployment(key, f"{key}-missing"), says_missing)

    def _join(self, key: str) -> Trial:
        node = f"{self.node}-{key}"
        return Trial(
            lambda: add_edge_node(self.cluster, node, self.release.name),
            lambda: self.serving(key, node=node),
            prepare=lambda: self.deployed(key),
        )

    def camera_on(self, deployment: str, node: str) -> bool:
        configmap = self.get("configmaps", f"{deployment}-cameras", "") or {}
        return node in (configmap.get("data") or {})

    def _cameras(self, key: str) -> Trial:
        camera = {"name": "dock", "file": "/data/dock.mp4", "nodes": [self.node]}
        return Trial(
            lambda: self.deployment(key, cameras=[camera]),
            lambda: self.camera_on(key, self.node),
            prepare=self.models,
        )

    def _camera_move(self, key: str) -> Trial:
        camera = {"name": "dock", "file": "/data/dock.mp4", "nodes": ["elsewhere"]}

        def prepare() -> None:
            self.models()
            self.deployment(key, cameras=[camera])
            eventually(lambda: self.get("configmaps", f"{key}-cameras", ""), PATIENCE, f"{key}-cameras made")

        moved = {"spec": {"cameras": [{**camera, "nodes": [self.node]}]}}
        return Trial(
            lambda: self.cluster.patch(GROUP, "edgedeployments", self.namespace, key, moved),
            lambda: self.camera_on(key, self.node),
            prepare=prepare,
        )

    def _pod_watch(self, key: str) -> Trial:
        return Trial(_nothing, lambda: self.follows("", "pods"), prepare=self.models)

    def _job_watch(self, key: str) -> Trial:
        return Trial(_nothing, lambda: self.follows("batch", "jobs"))

    def _tj_watch(self, key: str) -> Trial:
        return Trial(_nothing, lambda: self.follows(GROUP, "trainingjobs"))

    def _adopt_job(self, key: str) -> Trial:
        """The Job `<key>-1` exists before the operator creates it: its create answers 409."""

        def prepare() -> None:
            made = self.training_job(key, suspend=True)
            eventually(lambda: self.phase("trainingjobs", key) == "Suspended", PATIENCE, f"{key} suspended")
            config = {
                "name": key,
                "attempt": 1,
                "outputUri": f"s3://{self.bench.bucket}/runs/{self.namespace}/{key}",
                "spec": {"hyperparameters": {"epochs": 3, "imgsz": 320}},
            }
            owner = {
                "apiVersion": f"{GROUP}/v1alpha1",
                "kind": "TrainingJob",
                "name": key,
                "uid": made["metadata"]["uid"],
            }
            container = {
                "name": "trainer",
                "image": "ghcr.io/visioninapp/trainer:test",
                "env": [{"name": "VISIONINAPP_TRAINER_CONFIG_JSON", "value": json.dumps(config)}],
            }
            job = {
                "metadata": {
                    "name": f"{key}-1",
                    "labels": {"visioninapp.io/training-job": key},
                    "ownerReferences": [owner],
                },
                "spec": {
                    "backoffLimit": 0,
                    "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
                },
            }
            self.cluster.create("batch", "jobs", self.namespace, job)

        resume = {"spec": {"suspend": False}}
        return Trial(
            lambda: self.cluster.patch(GROUP, "trainingjobs", self.namespace, key, resume),
            lambda: self.status("trainingjobs", key).get("jobName") == f"{key}-1",
            prepare=prepare,
        )

    def action_cleared(self, deployment: str) -> bool:
        annotations = (self.get("edgedeployments", deployment) or {}).get("metadata", {}).get("annotations")
        return ACTION not in (annotations or {})

    def settled(self, deployment: str) -> None:
        """Wait for one whole reconciliation of the deployment from now on: an action annotation it
        acts on and clears at its end."""
        promote = {"metadata": {"annotations": {ACTION: "promote"}}}
        self.cluster.patch(GROUP, "edgedeployments", self.namespace, deployment, promote)
        eventually(
            lambda: self.action_cleared(deployment), PATIENCE, f"{self.label}: {deployment} reconciled"
        )

    def orphan(self, job: str) -> None:
        """The Job of a run deleted while the operator was away (a run it never had in its cache),
        with the operator's finalizer, deleted (by the garbage collector, or here)."""
        run = job.rpartition("-")[0]
        owner = {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "TrainingJob",
            "name": run,
            "uid": str(uuid.uuid4()),
        }
        metadata = {
            "name": job,
            "labels": {"visioninapp.io/training-job": run},
            "finalizers": [JOB_FINALIZER],
            "ownerReferences": [owner],
        }
        container = {"name": "trainer", "image": "ghcr.io/visioninapp/trainer:test"}
        template = {"spec": {"restartPolicy": "Never", "containers": [container]}}
        spec = {"suspend": True, "template": template}  # no pod: the run is gone
        self.cluster.create("batch", "jobs", self.namespace, {"metadata": metadata, "spec": spec})
        self.cluster.delete("batch", "jobs", self.namespace, job)

    def late_namespace(self, namespace: str, model: str) -> None:
        self.late.append(namespace)
        self.cluster.create_namespace(namespace)
        self.model(model, namespace)

    def daemonset_made_before(self, name: str) -> None:
        """A DaemonSet of the deployment's name that the operator's watch does not show (its labels
        lack the deployment's), as one made before a restart and not listed yet."""
        self.models()
        selector = {DEPLOYMENT_LABEL: name}
        template = {
            "metadata": {"labels": selector},
            "spec": {
                "nodeSelector": {"rbac.visioninapp.io/nowhere": "true"},
                "containers": [{"name": "runtime", "image": "ghcr.io/visioninapp/edge:test"}],
            },
        }
        body = {
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": selector}, "template": template},
        }
        self.cluster.create("apps", "daemonsets", self.namespace, body)

    def follows(self, group: str, resource: str) -> bool:
        """Since the operator started: each of its cluster-wide listings of `resource` (one per
        label selector) went on as one successful watch, with no listing again after it (a one-off
        list in a namespace, e.g. a finished Job's pods, is not a watch's)."""
        calls = [
            e
            for e in self.audit.of(self.user, self.started_at)
            if grant_of(e) in (("list", group, resource), ("watch", group, resource))
            and not (e.get("objectRef") or {}).get("namespace")
        ]
        selectors = {_selector(e) for e in calls}
        for selector in selectors:
            mine = [e for e in calls if _selector(e) == selector]
            ok = [
                i for i, e in enumerate(mine) if e["verb"] == "watch" and e["responseStatus"]["code"] == 200
            ]
            if not ok or any(e["verb"] == "list" for e in mine[ok[0] :]):
                return False
        return bool(selectors)

    # leader election

    def peering(self) -> Obj | None:
        if self.cluster.get(CRDS, "customresourcedefinitions", None, "clusterkopfpeerings.kopf.dev") is None:
            return None
        return self.cluster.get("kopf.dev", "clusterkopfpeerings", None, self.release.fullname)

    def peers(self) -> dict[str, Any]:
        return (self.peering() or {}).get("status") or {}

    def install_peering(self) -> None:
        """The chart's peering CRD (crds/, installed before the templates) and object (rendered)."""
        apply_crds(self.cluster, [yaml.safe_load((CHART / "crds" / "kopf-peering.yaml").read_text())])
        for doc in self.release.documents:
            if doc["kind"] == "ClusterKopfPeering" and self.peering() is None:
                self.cluster.create("kopf.dev", "clusterkopfpeerings", None, {"metadata": doc["metadata"]})

    def uninstall_peering(self) -> None:
        name = "clusterkopfpeerings.kopf.dev"
        self.cluster.delete(CRDS, "customresourcedefinitions", None, name)  # and the peering with it
        eventually(
            lambda: self.cluster.get(CRDS, "customresourcedefinitions", None, name) is None,
            PATIENCE,
            "the peering CRD gone",
        )

    def listed_crds(self) -> None:
        """Wait for the operator to have asked for the CRDs since it started (allowed or not): what
        is made from now on is news to it."""

        def asked() -> bool:
            return any(
                grant_of(e) == ("list", CRDS, "customresourcedefinitions")
                for e in self.audit.of(self.user, self.started_at)
            )

        eventually(asked, PATIENCE, f"{self.label}: the operator to list the CRDs")

    def yielded(self) -> bool:
        assert self.operator is not None
        return "Pausing operations in favour of" in self.operator.log_path.read_text(errors="replace")

    def _leader(self, key: str) -> Trial:
        return Trial(_nothing, lambda: self.pod_id in self.peers())

    def _serve(self, key: str) -> Trial:
        return self._job(key)

    def _yield(self, key: str) -> Trial:
        peering = ("kopf.dev", "clusterkopfpeerings", None, self.release.fullname)
        higher = f"higher-{key}"

        def appear() -> None:
            peer = {"priority": 100, "lifetime": 60, "lastseen": datetime.now(UTC).isoformat()}
            self.cluster.patch(*peering, {"status": {higher: peer}})

        return Trial(
            appear, self.yielded, cleanup=lambda: self.cluster.patch(*peering, {"status": {higher: None}})
        )

    def _peering_crd(self, key: str) -> Trial:
        def established_later() -> None:
            self.listed_crds()
            self.install_peering()
            self.training_job(key)

        # Without the CRD (started before it, or it was removed) the operator waits for it.
        return Trial(
            established_later, lambda: self.get("jobs", f"{key}-1", "batch"), prepare=self.uninstall_peering
        )


def established(cluster: Cluster, name: str) -> None:
    def done() -> bool:
        crd = cluster.get(CRDS, "customresourcedefinitions", None, name) or {}
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (crd.get("status") or {}).get("conditions") or []
        )

    eventually(done, PATIENCE, f"CRD {name} established")


def apply_crds(cluster: Cluster, crds: list[Obj]) -> None:
    """Make the CRDs, wait until the API serves them, then change each once more: kopf rescans a
    group on each CRD event, and the events of a new CRD come before discovery shows it."""
    for crd in crds:
        if cluster.get(CRDS, "customresourcedefinitions", None, crd["metadata"]["name"]) is None:
            body = {k: v for k, v in crd.items() if k not in ("apiVersion", "kind")}
            cluster.create(CRDS, "customresourcedefinitions", None, body)
    for crd in crds:
        established(cluster, crd["metadata"]["name"])
        path = f"apis/{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"

        def served(path: str = path, plural: str = crd["spec"]["names"]["plural"]) -> bool:
            try:
                listing = cluster.run(cluster.kube.request("GET", path))
            except (KubeError, ValueError):  # a group not served yet: 404, in plain text
                return False
            return any(r["name"] == plural for r in listing.get("resources", []))

        eventually(served, PATIENCE, f"{crd['metadata']['name']} in discovery")
    for crd in crds:
        nudge = {"metadata": {"annotations": {"rbac.visioninapp.io/served": "true"}}}
        cluster.patch(CRDS, "customresourcedefinitions", None, crd["metadata"]["name"], nudge)


def install_crds(cluster: Cluster) -> None:
    apply_crds(cluster, [crd_for(kind) for kind in RESOURCES])


# --- the API's lab ------------------------------------------------------------------------------


class ApiLab(Lab):
    """`visioninapp-api serve` on its embedded defaults, with the API ServiceAccount's token; its
    project is the lab's namespace. Its scenarios are its routes (API_NEEDS), answered at once."""

    component = "api"
    label = "api"

    def __init__(self, bench: Bench, namespace: str) -> None:
        super().__init__(bench.cluster, bench.audit, Release(bench.cluster, {}, namespace))
        bench.releases.append(self.release)
        self.bench = bench
        self.needs = dict(API_NEEDS)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.answer: requests.Response | None = None
        self.made_namespaces: list[str] = []

    def install(self) -> ApiLab:
        self.cluster.create_namespace(self.namespace)
        self.release.install()
        return self

    def start(self) -> None:
        self.started_at = self.audit.mark()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONINAPP_")}
        env |= {
            "KUBECONFIG": str(self.release.kubeconfig("api", self.bench.work / "api.kubeconfig")),
            "VISIONINAPP_DATA_DIR": str(self.bench.work / "api-data"),
            "VISIONINAPP_API_PORT": str(port),
        }
        with (self.bench.work / "api.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "visioninapp.api.main", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        eventually(ready, 60, "the API to be ready")
        answer = self.call("POST", "/projects", json={"name": self.namespace})
        assert answer.status_code == 201, answer.text

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
        for namespace in self.made_namespaces:
            with contextlib.suppress(Exception):
                self.cluster.delete("", "namespaces", None, namespace)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.answer = requests.request(method, f"{self.url}/api/v1{path}", timeout=30, **kwargs)
        return self.answer

    def scenario(self, name: str, key: str) -> Trial:
        method, _, route = name.partition(" ")
        kinds = ("training-jobs", "deployments", "models", "retrain-policies", "projects")
        kind = next(k for k in kinds if k in route)
        path = route.replace("/projects/{p}", f"/projects/{self.namespace}").replace("{name}", key)
        body: Obj | None = None
        prepare: Callable[[], object] = _nothing
        if kind == "projects" and method == "POST":
            self.made_namespaces.append(f"{self.namespace}-{key}")
            body = {"name": f"{self.namespace}-{key}"}
        elif "{name}" in route:
            prepare = functools.partial(self.make, kind, key)
            if method == "PATCH":
                body = {"stage": "staging"} if kind == "models" else {"paused": True}
        elif method == "GET":
            path += f"?limit={100 + self.keys}"  # a page no earlier answer was cached for
        elif kind == "training-jobs":
            spec = {"model": {"architecture": "yolo11n"}, "dataset": {"uri": "s3://datasets/helmets/v3"}}
            body = {"name": key, "spec": {**spec, "resources": {"gpu": {"count": 1}}}}
        elif kind == "retrain-policies":
            body = {"name": key, "spec": RETRAIN_SPEC}
        else:
            body = {"name": key, "spec": {"modelRef": "v1"}}
        return Trial(
            lambda: self.call(method, path, **({"json": body} if body is not None else {})),
            lambda: self.answer is not None and self.answer.status_code < 300,
            prepare=prepare,
        )

    def make(self, kind: str, name: str) -> None:
        """As an admin would (kubectl): the object a route then reads, changes or deletes."""
        if kind == "training-jobs":
            self.cluster.create(GROUP, "trainingjobs", self.namespace, training_job(name))
        elif kind == "deployments":
            body = {"metadata": {"name": name}, "spec": {"modelRef": "v1"}}
            self.cluster.create(GROUP, "edgedeployments", self.namespace, body)
        elif kind == "retrain-policies":
            body = {"metadata": {"name": name}, "spec": RETRAIN_SPEC}
            self.cluster.create(GROUP, "retrainpolicies", self.namespace, body)
        else:
            path = self.bench.work / "models" / f"api-{name}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode())
            self.cluster.create(GROUP, "modelartifacts", self.namespace, onnx_artifact(name, path))

    def positive(self, scenarios: list[str]) -> tuple[set[Grant], list[str]]:
        since = self.started_at
        for name in scenarios:
            trial = self.scenario(name, self.key())
            trial.prepare()
            trial.trigger()
            assert self.answer is not None
            if self.answer.status_code >= 300:
                raise Failure(f"api: {name} answered {self.answer.status_code} {self.answer.text}")
        return usage(self.audit.of(self.user, since, {self.namespace}))

    def bound(self, scenario: str) -> float:
        return 0.0  # answered at once: its answer is the outcome

    def remove(self, grant: Grant) -> Result:
        result = super().remove(grant)
        answer = self.answer
        if result.error is None and (answer is None or answer.status_code != 403):
            result.error = (
                f"the API answered {answer and answer.status_code}, not 403: {answer and answer.text}"
            )
        return result


# --- the tests ----------------------------------------------------------------------------------


def test_the_tables_name_a_scenario_for_every_rule_the_chart_renders() -> None:
    """Offline: each grant of each rendered role has a named scenario, and none is named for a grant
    the role lacks; the default and leader-election roles compose as the docstring says."""

    def rendered(values: Obj, component: str = "operator") -> set[Grant]:
        return set().union(*(grants_of(role["rules"]) for role in roles_of(render(values), component)))

    for roles, mirror, _ in OPERATOR_ROLES.values():
        extra = {"mirrorKubeconfigSecret": "visioninapp/edge-cluster"} if mirror else {}
        namespaced = rendered(operator_values(roles, "ml-*", **extra))
        needs = role_needs(roles, namespaced=True, peering=False) | (MIRROR_NEEDS if extra else {})
        assert namespaced == set(needs), (
            f"{roles}: rules without a scenario {namespaced - set(needs)}, "
            f"scenarios without a rule {set(needs) - namespaced}"
        )
        default = rendered(operator_values(roles, None, **extra))
        assert default == namespaced - {("list", "", "namespaces"), ("watch", "", "namespaces")}
        peering = rendered(operator_values(roles, None, leaderElection=True, **extra))
        assert peering == default | set(PEERING_NEEDS), f"{roles}: {peering ^ (default | set(PEERING_NEEDS))}"
    assert rendered({}, "api") == set(API_NEEDS)
    named = {s for pair in OPERATOR_NEEDS.values() for s in pair if s}
    named |= set(MIRROR_NEEDS.values()) | set(PEERING_NEEDS.values())
    assert named == set(SCENARIOS), f"described ^ named: {named ^ set(SCENARIOS)}"
    assert all(hasattr(OperatorLab, f"_{name.replace('-', '_')}") for name in named)


@pytest.fixture
def bench(cluster: Cluster, operator_factory: Any, s3_endpoint: str, tmp_path: Path) -> Iterator[Bench]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"rbac-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    assert cluster.plane.audit_log is not None
    made = Bench(
        cluster, Audit(cluster.plane.audit_log), operator_factory, s3_endpoint, bucket, tmp_path, FakeEdge()
    )
    cluster.set_script(pod_script(s3))
    cluster.add_node("gpu-big", gpus=256, cpu="512", memory="4096Gi", labels={"agentpool": "gpu"})
    yield made
    assert made.edge is not None
    made.edge.close()
    for release in made.releases:
        release.uninstall()


def report(labs: Sequence[Lab]) -> str:
    lines = [f"{'lab':<10} {'grant':<48} {'scenario':<16} {'s':>5}  verdict"]
    for lab in labs:
        for r in lab.results:
            lines.append(
                f"{r.lab:<10} {fmt(r.grant):<48} {r.scenario:<16} {r.seconds:5.1f}  {r.error or 'needed'}"
            )
    return "\n".join(lines)


def _positive_problems(role: str, group: list[Lab]) -> str | None:
    """The first copy of a role runs its scenarios: what it was refused, used beyond its role, or
    never used of it (None: nothing); the other copies take its measured latency."""
    lab = group[0]
    scenarios = [s for s in dict.fromkeys(lab.needs.values()) if s != "crds-later"]
    used, refused = lab.positive(scenarios)
    allowed = set(lab.release.holders(lab.component))
    problems = []
    if refused:
        problems.append(f"{role}: refused {refused}")
    if used - allowed:
        problems.append(f"{role}: used what its role does not allow: {sorted(used - allowed)}")
    if allowed - used:
        problems.append(f"{role}: its role allows what it never used: {sorted(allowed - used)}")
    for lab_copy in group[1:]:
        lab_copy.latency = lab.latency
    return "; ".join(problems) or None


def _removal_work(labs: dict[str, list[Lab]]) -> list[tuple[Lab, list[Grant]]]:
    """Each role's grants (but the CRD ones) shared out among its copies, those used at start first."""
    work: list[tuple[Lab, list[Grant]]] = []
    for group in labs.values():
        grants = sorted(
            (g for g in group[0].needs if g[2] != "customresourcedefinitions"),
            key=lambda g: not at_start(g),
        )
        for index, lab in enumerate(group):
            work.append((lab, grants[index :: len(group)]))
    return work


def test_each_rule_of_the_operator_roles_and_the_api_is_needed(bench: Bench) -> None:
    """Each role on the session's control plane, its copies side by side (one release each): the
    first copy runs the role's scenarios (positive), then the copies share its grants (removal)."""
    base = bench.cluster.namespace
    labs: dict[str, list[Lab]] = {}
    for role, (names, mirror, copies) in OPERATOR_ROLES.items():
        labs[role] = []
        for index in range(copies):
            namespace = f"{base}-{role[:5]}{index}"
            extra: Obj = {"mirrorKubeconfigSecret": f"{namespace}/edge-cluster"} if mirror else {}
            labs[role].append(
                OperatorLab(bench, f"{role}{index}", names, namespace=namespace, **extra).install()
            )
    labs["api"] = [ApiLab(bench, f"{base}-api").install()]
    every: list[Lab] = [lab for group in labs.values() for lab in group]
    try:
        for lab in every:
            lab.start()
        with ThreadPoolExecutor(len(labs)) as pool:
            verdicts = list(pool.map(lambda role: _positive_problems(role, labs[role]), labs))
        assert not [v for v in verdicts if v], "\n".join(v for v in verdicts if v)

        def removal(lab: Lab, grants: list[Grant]) -> None:
            lab.remove_each(grants)

        work = _removal_work(labs)
        with ThreadPoolExecutor(len(work)) as pool:
            for done in [pool.submit(removal, lab, grants) for lab, grants in work]:
                done.result()
        print(report(every))
        failed = [r for lab in every for r in lab.results if r.error]
        assert not failed, report(every)
    finally:
        for lab in every:
            lab.stop()


def _check_crds_later(bench: Bench, labs: list[tuple[OperatorLab, Grant | None]]) -> None:
    """With the CRDs made after the operators started: those with every grant verify their
    ModelArtifact, each of the others never does and is refused its missing grant (in its results)."""
    trials = {lab: lab.scenario("crds-later", lab.key()) for lab, _ in labs}
    for trial in trials.values():
        trial.trigger()
    started = time.monotonic()
    for lab, grant in labs:
        if grant is None:
            eventually(trials[lab].reached, PATIENCE, f"{lab.label}: crds-later")
            _, refused = usage(bench.audit.of(lab.user, lab.started_at, lab.namespaces()))
            assert not refused, f"{lab.label}: {refused}"
    bound = max(BOUND, 3 * (time.monotonic() - started))
    for lab, grant in labs:
        if grant is not None:
            error = None
            try:
                never(trials[lab].reached, bound - (time.monotonic() - started), SCENARIOS["crds-later"])
                bench.audit.wait_refused(lab.user, grant, lab.started_at, 0)
            except Failure as failure:
                error = str(failure)
            lab.results.append(Result(lab.label, grant, "crds-later", bound, error))


def _check_leader_election(bench: Bench) -> OperatorLab:
    """The cluster-wide operator with leader election: every scenario of its role, then each peering
    grant removed in turn (results in the lab returned)."""
    both = OPERATOR_ROLES["both"][0]
    leader = OperatorLab(bench, "leader", both, namespace="leader", clusterwide=True, leaderElection=True)
    leader.install()
    try:
        leader.install_peering()
        leader.start()
        scenarios = [s for s in dict.fromkeys(leader.needs.values()) if s not in ("peering-crd", "yield")]
        used, refused = leader.positive([*scenarios, "peering-crd", "yield"])
        allowed = set(leader.release.holders("operator"))
        assert not refused, refused
        assert used == allowed, f"used, not allowed: {used - allowed}; allowed, unused: {allowed - used}"
        leader.remove_each(list(PEERING_NEEDS))
    finally:
        leader.stop()
    return leader


def test_crds_established_later_and_leader_election_need_their_rules(
    operator_factory: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    """On a control plane of this test's own, without our CRDs at first:

    1. each namespaced role, three times: with every grant, without `list` CRDs, without `watch`
       CRDs; all start before the CRDs are made, then a ModelArtifact is made in each namespace:
       only the operators with both grants verify theirs;
    2. `leaderElection` (cluster-wide, kopf peering, with the chart's peering CRD and object): it
       runs every scenario of its role (`peering-crd` removes the peering CRD and makes it again),
       then each of its peering grants (and the CRD grants, for the peering CRD) is removed in turn.
    """
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"rbac-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    with Cluster(tmp_path / "own", install_crds=False, audit=True) as cluster:
        assert cluster.plane.audit_log is not None
        bench = Bench(
            cluster, Audit(cluster.plane.audit_log), operator_factory, s3_endpoint, bucket, tmp_path
        )
        cluster.set_script(pod_script(s3))
        cluster.add_node("gpu-big", gpus=256, cpu="512", memory="4096Gi", labels={"agentpool": "gpu"})
        crd_grants = [g for g in OPERATOR_NEEDS if g[2] == "customresourcedefinitions"]
        labs: list[tuple[OperatorLab, Grant | None]] = []
        for role, (names, _, _) in OPERATOR_ROLES.items():
            for grant in [None, *crd_grants]:
                namespace = f"{role[:5]}-{grant[0] if grant else 'all'}"
                labs.append((OperatorLab(bench, namespace, names, namespace=namespace).install(), grant))
        try:
            for lab, grant in labs:
                if grant:
                    lab.release.revoke("operator", grant)
                lab.start()
            for lab, grant in labs:
                lab.listed_crds()
                if grant:
                    bench.audit.wait_refused(lab.user, grant, lab.started_at, 30)
            install_crds(cluster)
            _check_crds_later(bench, labs)
        finally:
            for lab, _ in labs:
                lab.stop()
        assert not [r for lab, _ in labs for r in lab.results if r.error], report([lab for lab, _ in labs])
        leader = _check_leader_election(bench)
        print(report([lab for lab, _ in labs] + [leader]))
        assert not [r for r in leader.results if r.error], report([leader])
