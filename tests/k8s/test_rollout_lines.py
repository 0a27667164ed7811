"""Promotion drives rollouts, on the real control plane: two sites follow a model line's
`production`; a promotion rolls out through each site's own canary, the operator archives the
version it created and superseded, a version that fails at one site is held back there only (the
other site keeps it, the line keeps it), the next promotion moves the held-back site on, and a
superseded version a user owns keeps its stage with a StageConflict condition."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import OperatorProcess, wait_for
from tests.k8s.test_rollout import model_artifact
from tests.services import free_port
from visioninapp.k8s import MANAGED_BY
from visioninapp.local.cluster.agent import Outcome
from visioninapp.local.cluster.cluster import Cluster

pytestmark = pytest.mark.services

GROUP = "visioninapp.io"
SITES = {"jetson-a0": "a", "jetson-a1": "a", "jetson-b0": "b", "jetson-b1": "b"}


class Sites:
    """Scripted edge pods: a (site, model) pair in `broken` crash-loops, the others serve."""

    def __init__(self) -> None:
        self.broken: set[tuple[str, str]] = set()

    def __call__(self, pod: dict[str, Any]) -> Outcome:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        site = SITES[pod["spec"]["nodeName"]]
        if (site, env["VISIONINAPP_EDGE_MODEL_VERSION"]) in self.broken:
            return Outcome(seconds=math.inf, ready=False, restarts=5)
        return Outcome(seconds=math.inf, ready=True)


@pytest.fixture
def sites(cluster: Cluster, tmp_path: Path) -> Sites:
    scripted = Sites()
    cluster.set_script(scripted)
    for node, site in SITES.items():
        cluster.add_node(node, labels={"visioninapp.io/edge": "true", "example.com/site": site})
    for name in ("v1", "v2", "v3", "h1", "h2"):  # as the operator creates them from TrainingJobs
        artifact = model_artifact(tmp_path, name)
        artifact["metadata"]["labels"] = dict(MANAGED_BY)
        if name.startswith("h"):  # another line, deployed nowhere
            artifact["spec"]["model"] = "helmets"
        cluster.create(GROUP, "modelartifacts", cluster.namespace, artifact)
    cluster.create(GROUP, "modelartifacts", cluster.namespace, model_artifact(tmp_path, "u4"))  # a user's
    return scripted


@pytest.fixture
def operator(cluster: Cluster, operator_factory: Any, sites: Sites) -> OperatorProcess:
    return operator_factory(
        cluster,
        VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS="0.3",
        VISIONINAPP_OPERATOR_METRICS_PORT=str(free_port()),
    )


def site_deployment(site: str) -> dict[str, Any]:
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "EdgeDeployment",
        "metadata": {"name": f"site-{site}"},
        "spec": {
            "model": {"line": "shapes", "stage": "production"},
            "nodeSelector": {"example.com/site": site},
            "strategy": {"canary": {"steps": [50, 100]}, "healthGate": {"minReadySeconds": 1}},
        },
    }


def status(cluster: Cluster, site: str) -> dict[str, Any]:
    return (cluster.get(GROUP, "edgedeployments", cluster.namespace, f"site-{site}") or {}).get(
        "status"
    ) or {}


def condition(cluster: Cluster, site: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(cluster, site).get("conditions", []) if c["type"] == kind), {})


def stage(cluster: Cluster, name: str) -> str:
    return str(cluster.get(GROUP, "modelartifacts", cluster.namespace, name)["spec"]["stage"])


def promote(cluster: Cluster, name: str) -> None:
    cluster.patch(GROUP, "modelartifacts", cluster.namespace, name, {"spec": {"stage": "production"}})


def on(cluster: Cluster, site: str, model: str, phase: str = "Healthy") -> bool:
    """Every pod of the site on `model`, and the status says so (one read of each)."""
    current = status(cluster, site)
    pods = cluster.list("", "pods", cluster.namespace, f"visioninapp.io/edge-deployment=site-{site}")
    models = {
        p["metadata"]["annotations"]["visioninapp.io/model"]
        for p in pods
        if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
    }
    return current.get("phase") == phase and current.get("currentModel") == model and models == {model}


def test_promotions_roll_out_per_site_and_a_rollback_holds_back_one_site_only(
    cluster: Cluster, operator: OperatorProcess, sites: Sites
) -> None:
    available = {"v1", "v2", "v3", "u4"}
    wait_for(
        lambda: all(
            ((cluster.get(GROUP, "modelartifacts", cluster.namespace, n) or {}).get("status") or {}).get(
                "phase"
            )
            == "Available"
            for n in available
        ),
        30,
        "the artifacts to be verified",
        operator,
    )
    for site in ("a", "b"):
        cluster.create(GROUP, "edgedeployments", cluster.namespace, site_deployment(site))
    # Nothing in production yet: the sites wait and say how to promote.
    for site in ("a", "b"):
        wait_for(
            lambda site=site: condition(cluster, site, "FollowsLine").get("reason") == "NoArtifact",
            30,
            f"site {site} to wait for a production version",
            operator,
        )
    assert cluster.get("apps", "daemonsets", cluster.namespace, "site-a") is None

    promote(cluster, "v1")
    for site in ("a", "b"):
        wait_for(lambda site=site: on(cluster, site, "v1"), 60, f"v1 at site {site}", operator)
    assert status(cluster, "a")["lineModel"] == "v1"

    # v2 fails at site a only: site a rolls back and is held back; site b and the line keep v2.
    sites.broken.add(("a", "v2"))
    promote(cluster, "v2")
    wait_for(lambda: on(cluster, "b", "v2"), 60, "v2 at site b", operator)
    wait_for(lambda: on(cluster, "a", "v1", "RolledBack"), 60, "site a rolled back to v1", operator)
    held = wait_for(
        lambda: (c := condition(cluster, "a", "FollowsLine")).get("reason") == "HeldBack" and c,
        30,
        "site a held back",
        operator,
    )
    assert (
        "v2 (production of shapes) was rolled back here" in held["message"]
        and "stays on v1" in held["message"]
    )
    assert stage(cluster, "v2") == "production"  # one site's rollback demotes nothing
    wait_for(lambda: stage(cluster, "v1") == "archived", 30, "v1 archived (superseded by v2)", operator)

    # v3 is promoted: the held-back site moves on through its canary, v2 is archived.
    promote(cluster, "v3")
    for site in ("a", "b"):
        wait_for(lambda site=site: on(cluster, site, "v3"), 60, f"v3 at site {site}", operator)
    assert condition(cluster, "a", "FollowsLine")["reason"] == "OnLine"
    wait_for(lambda: stage(cluster, "v2") == "archived", 30, "v2 archived (superseded by v3)", operator)

    # A user's version promoted over v3 wins the line; v3 (the operator's) is archived. Then the
    # user's version is superseded by v1 brought back: the operator does not rewrite the user's
    # object, it marks the conflict, and the sites follow the later promotion.
    promote(cluster, "u4")
    for site in ("a", "b"):
        wait_for(lambda site=site: on(cluster, site, "u4"), 60, f"u4 at site {site}", operator)
    wait_for(lambda: stage(cluster, "v3") == "archived", 30, "v3 archived (superseded by u4)", operator)
    promote(cluster, "v1")
    for site in ("a", "b"):
        wait_for(lambda site=site: on(cluster, site, "v1"), 60, f"v1 back at site {site}", operator)
    conflict = wait_for(
        lambda: next(
            (
                c
                for c in cluster.get(GROUP, "modelartifacts", cluster.namespace, "u4")["status"]["conditions"]
                if c["type"] == "StageConflict"
            ),
            None,
        ),
        30,
        "the StageConflict condition on u4",
        operator,
    )
    assert "v1 was promoted to production of shapes after this version" in conflict["message"]
    assert stage(cluster, "u4") == "production"  # never rewritten


def test_one_production_per_line_also_where_nothing_is_deployed(
    cluster: Cluster, operator: OperatorProcess, sites: Sites
) -> None:
    promote(cluster, "h1")
    wait_for(lambda: _staged(cluster, "h1") == "Production", 30, "h1's promotion recorded", operator)
    promote(cluster, "h2")
    wait_for(lambda: stage(cluster, "h1") == "archived", 30, "h1 archived (superseded by h2)", operator)
    assert (
        stage(cluster, "h2") == "production" and stage(cluster, "v1") == "candidate"
    )  # other lines untouched


def _staged(cluster: Cluster, name: str) -> str | None:
    conditions = (cluster.get(GROUP, "modelartifacts", cluster.namespace, name).get("status") or {}).get(
        "conditions"
    ) or []
    return next((c["reason"] for c in conditions if c["type"] == "Staged"), None)
