"""Rollouts at fleet scale on a real control plane: the operator's CPU time and API requests per node.

A fresh Kubernetes 1.35 control plane (etcd, kube-apiserver with an audit log,
kube-controller-manager: its DaemonSet controller makes the edge pods, kube-scheduler binds them)
and N simulated Jetsons from kwok: Nodes labelled and tainted as edge nodes, their Leases renewed
every 10 s (lease 40 s, as kubelets do), and their pods' lifecycle played by kwok's stages
(realcluster/kwok-stages.yaml): a pod bound to a node turns Running and Ready at once; a pod of
the broken model v3 turns Running, not Ready, with 5 container restarts (CrashLoopBackOff); a pod
being deleted is removed at once. kwok is Go and costs little CPU, so on 2 cores the operator does
not compete with a node simulation in Python (the node agent would run 1,000 nodes' Lease renewals
and pod reports in this process), and nothing of the nodes is counted as the operator's.

The operator (`visioninapp-operator --role rollout`, default settings) runs as a process with a
client certificate of its own. Measured for each phase, health-gate wait 0 (minReadySeconds 0):
a full canary rollout v1 → v2 (10% → 50% → 100%, maxUnavailable 25%), then a rollout of the broken
v3 that fails its first wave and rolls back to v2 — each from the new modelRef until the status
says so for every node and the operator has been quiet for 3 s:

- the operator process's CPU time per node (/proc/<pid>/stat);
- its API requests per node, watches excluded, attributed by the audit log's user name, by verb
  and resource; the API server's `apiserver_request_total` over the phase is printed as the
  cross-check (its total equals the audit log's, and its pod deletes are the operator's one per
  replaced pod plus kwok's two final deletes).

The control plane and kwok work too (the DaemonSet controller recreates each deleted pod, the
scheduler binds it, kwok reports it Ready: six pod writes per replaced pod, each one watch event for
the operator); their CPU is printed per phase. The benchmark's own requests (polling the
EdgeDeployment's status twice a second) are not counted. No pod runs the edge runtime, so no
edge-events reach the operator: its health gate sees readiness and restarts only.

The baseline: after those phases, on the same cluster, Kubernetes' own DaemonSet RollingUpdate
(maxUnavailable 25%, no canary steps, no health gate, the operator stopped) of a plain DaemonSet on
the same nodes; its wall time and the DaemonSet controller's requests per node are printed next to
the operator's canary rollout.

Goal: <= 5 ms CPU and <= 3 API requests per node for each phase.

    python benchmarks/rollout_scale.py [--nodes 1000] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from goals import Goals
from realcluster import (
    AuditLog,
    Counts,
    cpu_seconds,
    describe_counts,
    identity,
    log_problems,
    metric_delta,
    progress,
    request_metrics,
    start_process,
    stop_process,
    writes,
)

from visioninapp.kubeclient import Kube, KubeError
from visioninapp.local.cluster.build import binaries_dir
from visioninapp.local.cluster.cluster import Cluster

GROUP = "visioninapp.io"
NAMESPACE = "bench"
OPERATOR = "visioninapp-operator"  # the user name of the operator's certificate
KWOK = "kwok"
OPERATOR_COMMAND = [sys.executable, "-m", "visioninapp.operator.main"]
STAGES = Path(__file__).resolve().parent / "realcluster" / "kwok-stages.yaml"
LEASE_SECONDS = 40  # kwok renews each node's Lease every quarter of it, as a kubelet does
EDGE = "visioninapp.io/edge"
IN_FLIGHT = 32
QUIET_SECONDS = 3.0
DAEMONSET_CONTROLLER = "system:serviceaccount:kube-system:daemon-set-controller"
PHASES = (  # label, modelRef, the phase it ends in, the model then serving
    ("full rollout v1 → v2", "v2", "Healthy", "v2"),
    ("failed v3, rollback", "v3", "RolledBack", "v2"),
)


def artifact(root: Path, name: str) -> dict[str, Any]:
    path = root / f"{name}.onnx"
    path.write_bytes(name.encode() * 100)
    data = path.read_bytes()
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "ModelArtifact",
        "metadata": {"name": name},
        "spec": {
            "model": "bench",
            "version": name,
            "formats": [
                {
                    "format": "onnx",
                    "uri": path.as_uri(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ],
            "classNames": ["a"],
        },
    }


def node(index: int) -> dict[str, Any]:
    """A Jetson for kwok: the annotation kwok manages, the edge label and taint, its capacity."""
    name = f"jetson-{index:05d}"
    capacity = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "64Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                EDGE: "true",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "arm64",
                "type": "kwok",
            },
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [{"key": EDGE, "value": "true", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


async def create_nodes(kube: Kube, count: int) -> None:
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def create(index: int) -> None:
        async with slots:
            await kube.create("v1", "nodes", None, node(index))

    await asyncio.gather(*(create(i) for i in range(count)))


def ready_nodes(cluster: Cluster) -> int:
    """Nodes that are Ready and schedulable (the lifecycle controller lifted the not-ready taint)."""
    count = 0
    for item in cluster.list("", "nodes", label_selector="type=kwok"):
        conditions = (item.get("status") or {}).get("conditions") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        taints = (item.get("spec") or {}).get("taints") or []
        count += ready and not any(t["key"].startswith("node.kubernetes.io/") for t in taints)
    return count


class Fleet:
    """The control plane, kwok, the nodes and the operator; `phase()` measures one rollout."""

    def __init__(self, cluster: Cluster, nodes: int, root: Path) -> None:
        self.cluster, self.nodes, self.root = cluster, nodes, root
        self.plane = cluster.plane
        self.audit = AuditLog(self.plane.audit_log)  # type: ignore[arg-type]
        self.processes: dict[str, Any] = {}

    def start(self) -> None:
        cluster, nodes = self.cluster, self.nodes
        cluster.create_namespace(NAMESPACE)
        kwok = [
            str(binaries_dir() / "kwok"),
            f"--kubeconfig={identity(self.plane, KWOK)}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--node-lease-duration-seconds={LEASE_SECONDS}",
            "--cidr=10.0.0.0/16",
            f"--config={STAGES}",
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.processes[KWOK] = start_process(kwok, env, self.root / f"{KWOK}.log")
        progress(f"creating {nodes} kwok nodes")
        cluster.run(create_nodes(cluster.kube, nodes), timeout=60 + nodes / 5)
        ready = [0]

        def all_ready() -> bool:
            ready[0] = ready_nodes(cluster)
            return ready[0] == nodes

        self.wait(all_ready, 120 + nodes / 5, f"{nodes} Ready nodes", 2.0, lambda: f"{ready[0]} Ready")
        for name in ("v1", "v2", "v3"):
            cluster.create(GROUP, "modelartifacts", NAMESPACE, artifact(self.root, name))
        operator_env = {
            **os.environ,
            "KUBECONFIG": str(identity(self.plane, OPERATOR)),
            "VISIONINAPP_DATA_DIR": str(self.root / "data"),
            "VISIONINAPP_OPERATOR_ROLES": '["rollout"]',
            "VISIONINAPP_OPERATOR_METRICS_PORT": "0",
            "VISIONINAPP_OPERATOR_LIVENESS_PORT": "0",
        }
        progress("starting the operator; verifying v1, v2, v3")
        self.processes[OPERATOR] = start_process(
            OPERATOR_COMMAND, operator_env, self.root / f"{OPERATOR}.log"
        )
        self.wait(
            lambda: all(
                (self.cluster.get(GROUP, "modelartifacts", NAMESPACE, n) or {}).get("status", {}).get("phase")
                == "Available"
                for n in ("v1", "v2", "v3")
            ),
            120,
            "verified artifacts",
        )
        progress(f"v1 on {nodes} nodes (not measured)")
        cluster.create(
            GROUP,
            "edgedeployments",
            NAMESPACE,
            {
                "metadata": {"name": "fleet"},
                "spec": {
                    "modelRef": "v1",
                    "strategy": {"canary": {"steps": [10, 50, 100]}, "healthGate": {"minReadySeconds": 0}},
                },
            },
        )
        self.wait(lambda: self.done("Healthy", "v1"), 300 + nodes, "v1 on every node")

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process(process)

    def status(self) -> dict[str, Any]:
        try:
            deployment = self.cluster.get(GROUP, "edgedeployments", NAMESPACE, "fleet") or {}
        except KubeError:
            return {}
        return deployment.get("status") or {}

    def describe(self) -> str:
        s = self.status()
        return (
            f"phase {s.get('phase')}, step {s.get('currentStep')}, model {s.get('currentModel')}, "
            f"updated {s.get('updatedNodes')}, ready {s.get('readyNodes')} of {self.nodes}"
        )

    def done(self, phase: str, serving: str) -> bool:
        current = self.status()
        return (
            current.get("phase") == phase
            and current.get("currentModel") == serving
            and current.get("updatedNodes") == current.get("readyNodes") == self.nodes
        )

    def wait(self, predicate: Any, seconds: float, what: str, every: float = 0.5, show: Any = None) -> None:
        """Poll `predicate`, showing `show()` (or the rollout) every 5 s; fail when a process exits
        or time is up."""
        deadline, shown = time.monotonic() + seconds, time.monotonic()
        while not predicate():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    log = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited while waiting for {what}; its log:\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {seconds:.0f} s; last status: {self.status()}")
            if time.monotonic() - shown > 5:
                progress(f"  {what}: {show() if show else self.describe()}")
                shown = time.monotonic()
            time.sleep(every)

    def phase(self, label: str, model: str, final: str, serving: str) -> dict[str, Any]:
        time.sleep(QUIET_SECONDS)
        self.audit.read()  # everything before this phase
        pids = {c.name: c.process.pid for c in self.plane.components if c.process}
        pids[KWOK] = self.processes[KWOK].pid
        operator = self.processes[OPERATOR].pid
        cpu_before, others_before = cpu_seconds(operator), {n: cpu_seconds(p) for n, p in pids.items()}
        metrics_before = request_metrics(self.plane)
        ours: Counts = Counter()
        everyone: Counts = Counter()
        deleters: Counter[str] = Counter()
        progress(f"{label}: modelRef {model}")
        started = time.monotonic()
        self.cluster.patch(GROUP, "edgedeployments", NAMESPACE, "fleet", {"spec": {"modelRef": model}})
        self.wait(lambda: self.done(final, serving), 600 + 2 * self.nodes, label)
        wall = time.monotonic() - started
        last = time.monotonic()
        while time.monotonic() - last < QUIET_SECONDS:  # the operator's last writes land
            time.sleep(0.5)
            if self._collect(ours, everyone, deleters):
                last = time.monotonic()
        cpu = cpu_seconds(operator) - cpu_before
        served = metric_delta(metrics_before, request_metrics(self.plane))
        self._collect(ours, everyone, deleters)
        return {
            "wall": wall,
            "cpu_ms_per_node": 1000 * cpu / self.nodes,
            "requests_per_node": sum(ours.values()) / self.nodes,
            "requests": ours,
            "served": served,
            "audited": everyone,
            "pod_deletes": deleters,
            "others_cpu": {n: cpu_seconds(p) - others_before[n] for n, p in pids.items()},
            "rolled_back": next(
                (c["message"] for c in self.status().get("conditions") or [] if c["type"] == "RolledBack"), ""
            ),
            "log_problems": log_problems(self.root / f"{OPERATOR}.log"),
        }

    def native_baseline(self) -> dict[str, Any]:
        """The stated baseline: Kubernetes' own DaemonSet RollingUpdate of the same fleet (maxUnavailable
        25%, no canary steps, no health gate, nothing of ours running), measured the same way. The
        EdgeDeployment is deleted first, so each node has one pod again."""
        progress("baseline: deleting the EdgeDeployment; a plain DaemonSet with RollingUpdate")
        stop_process(self.processes.pop(OPERATOR))
        self.cluster.delete(GROUP, "edgedeployments", NAMESPACE, "fleet")
        self.wait(
            lambda: not self.cluster.list("", "pods", NAMESPACE), 300 + self.nodes, "the old pods gone", 2.0
        )
        labels = {"app": "native-baseline"}
        template = {
            "metadata": {"labels": labels},
            "spec": {
                "nodeSelector": {EDGE: "true"},
                "tolerations": [{"key": EDGE, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "edge", "image": "edge:v1"}],
            },
        }
        self.cluster.create(
            "apps",
            "daemonsets",
            NAMESPACE,
            {
                "metadata": {"name": "native"},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}},
                    "template": template,
                },
            },
        )

        def rolled(generation: int) -> bool:
            ds = self.cluster.get("apps", "daemonsets", NAMESPACE, "native") or {}
            st = ds.get("status") or {}
            return (
                st.get("observedGeneration", 0) >= generation
                and st.get("updatedNumberScheduled") == st.get("numberAvailable") == self.nodes
            )

        self.wait(lambda: rolled(1), 300 + self.nodes, "the DaemonSet on every node", 1.0)
        time.sleep(QUIET_SECONDS)
        self.audit.read()
        pids = {c.name: c.process.pid for c in self.plane.components if c.process}
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        metrics_before = request_metrics(self.plane)
        controller: Counts = Counter()
        everyone: Counts = Counter()
        progress("baseline: the DaemonSet's template changed (v1 → v2)")
        started = time.monotonic()
        self.cluster.patch(
            "apps",
            "daemonsets",
            NAMESPACE,
            "native",
            {"spec": {"template": {"spec": {"containers": [{"name": "edge", "image": "edge:v2"}]}}}},
        )
        self.wait(lambda: rolled(2), 600 + 2 * self.nodes, "the rolling update", 0.5)
        wall = time.monotonic() - started
        time.sleep(QUIET_SECONDS)
        records = self.audit.read()
        controller += AuditLog.requests(records, DAEMONSET_CONTROLLER)
        everyone += AuditLog.requests(records)
        return {
            "wall": wall,
            "requests_per_node": sum(controller.values()) / self.nodes,
            "requests": controller,
            "served": metric_delta(metrics_before, request_metrics(self.plane)),
            "plane_cpu": {n: cpu_seconds(p) - before[n] for n, p in pids.items()},
        }

    def _collect(self, ours: Counts, everyone: Counts, deleters: Counter[str]) -> int:
        """Add the requests answered since the last look; how many of them were the operator's."""
        records = self.audit.read()
        deleters += AuditLog.by_user(records, "delete", "pods")
        mine = AuditLog.requests(records, OPERATOR)
        ours += mine
        everyone += AuditLog.requests(records)
        return sum(mine.values())


def run_once(nodes: int, work: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The operator's phases, then the baseline, on one fresh cluster."""
    progress("starting a control plane")
    with Cluster(work / "cluster", run_pods=False, audit=True) as cluster:
        fleet = Fleet(cluster, nodes, work)
        try:
            fleet.start()
            phases = {label: fleet.phase(label, *rest) for label, *rest in PHASES}
            return phases, fleet.native_baseline()
        finally:
            fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Prints each phase's wall time, operator CPU and requests per node, the requests by "
        "verb and resource, and each goal as met or missed (by how much, and why).",
    )
    parser.add_argument("--nodes", type=int, default=1000, help="kwok nodes (default 1000)")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh cluster (default 1)")
    args = parser.parse_args()
    runs: list[dict[str, dict[str, Any]]] = []
    baselines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rollout-scale-") as tmp:
        for run in range(args.runs):
            phases, baseline = run_once(args.nodes, Path(tmp) / f"run-{run}")
            runs.append(phases)
            baselines.append(baseline)
            for label, r in runs[-1].items():
                print(
                    f"run {run + 1}/{args.runs} {label}: wall {r['wall']:.1f} s, "
                    f"CPU {r['cpu_ms_per_node']:.2f} ms/node, {r['requests_per_node']:.2f} requests/node",
                    flush=True,
                )
    nodes = args.nodes
    keys = ("wall", "cpu_ms_per_node", "requests_per_node")
    medians = {
        label: {k: statistics.median(run[label][k] for run in runs) for k in keys} for label, *_ in PHASES
    }
    print(f"\n{nodes} kwok nodes, health-gate wait 0, median of {args.runs} run(s), {os.cpu_count()} CPUs")
    print(f"{'':24}{'wall s':>8}{'CPU ms/node':>13}{'requests/node':>15}")
    for label, m in medians.items():
        print(f"{label:24}{m['wall']:8.1f}{m['cpu_ms_per_node']:13.2f}{m['requests_per_node']:15.2f}")
    for label, r in runs[-1].items():
        print(f"\n{label}, last run, per node:")
        print(f"  operator's requests (audit log, by user): {describe_counts(r['requests'], nodes)}")
        print(f"  everyone's (apiserver_request_total): {describe_counts(r['served'], nodes, 10)}")
        deletes = r["served"].get(("delete", "pods"), 0)
        who = ", ".join(f"{user} {n}" for user, n in r["pod_deletes"].most_common())
        print(
            f"  cross-check: pod deletes {deletes} counted by the API server; by user (audit log): {who}; "
            f"all requests {sum(r['served'].values())} (metrics) vs {sum(r['audited'].values())} (audit log)"
        )
        events = ", ".join(f"{kind} {n / nodes:.2f}" for kind, n in watched_writes(r["served"]).items())
        print(f"  writes on what the operator watches (each one watch event, per node): {events}")
        others = ", ".join(f"{n} {s:.1f} s" for n, s in r["others_cpu"].items())
        print(f"  CPU of the rest in the phase: {others}")
        if r["rolled_back"]:
            print(f"  RolledBack condition: {r['rolled_back'][:160]}")
        print(f"  error lines in the operator's log so far: {r['log_problems']}")
    base = {k: statistics.median(b[k] for b in baselines) for k in ("wall", "requests_per_node")}
    manager = statistics.median(b["plane_cpu"].get("kube-controller-manager", 0.0) for b in baselines)
    full = medians[PHASES[0][0]]
    print(
        f"\nbaseline, Kubernetes' own DaemonSet RollingUpdate of the same {nodes} nodes (maxUnavailable "
        f"25%, no canary steps, no health gate): wall {base['wall']:.1f} s, the DaemonSet controller's "
        f"requests {base['requests_per_node']:.2f} per node, kube-controller-manager CPU "
        f"{1000 * manager / nodes:.2f} ms per node"
    )
    print(f"  its requests (audit log): {describe_counts(baselines[-1]['requests'], nodes)}")
    print(
        f"  the operator's canary rollout (10% → 50% → 100%, health-gated) against it: wall "
        f"{full['wall'] / base['wall']:.2f}x, requests per node (the operator's own, on top of the "
        f"DaemonSet controller's) {full['requests_per_node']:.2f} vs the controller's "
        f"{base['requests_per_node']:.2f}"
    )
    print("\ngoals (each phase):")
    goals = Goals("rollout_scale")
    for label, m in medians.items():
        last = runs[-1][label]
        top = ", ".join(f"{v} {res}" for (v, res), _ in last["requests"].most_common(3))
        seen = watched_writes(last["served"])
        events = ", ".join(f"{kind} {n / nodes:.1f}" for kind, n in seen.items())
        why = (
            f"{m['cpu_ms_per_node'] * nodes / 1000:.1f} s of CPU over {m['wall']:.0f} s of rollout; "
            f"~{sum(seen.values()) / nodes:.1f} watch events per node ({events}), and a re-plan over all "
            f"{nodes} nodes and pods at most twice a second"
        )
        goals.at_most(f"{label}: operator CPU per node", m["cpu_ms_per_node"], 5.0, "ms", why)
        goals.at_most(f"{label}: requests per node", m["requests_per_node"], 3.0, "", f"most frequent: {top}")
    goals.finish()


def watched_writes(served: Counts) -> dict[str, int]:
    """Writes on what the rollout role watches: edge pods, DaemonSets, nodes, EdgeDeployments."""
    kinds = {
        "pods": "pods",
        "DaemonSets": "daemonsets",
        "nodes": "nodes",
        "EdgeDeployments": "edgedeployments",
    }
    return writes(served, kinds)


if __name__ == "__main__":
    main()
