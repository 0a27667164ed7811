"""Simulated cluster controllers for the emulator: Job controller, scheduler and a kubelet stand-in.

They act on the store directly (in the emulator's event loop), as Kubernetes' controllers act on
etcd through the API server, so the operator under test sees the same objects and watch events it
would see on a cluster. The pod runner runs a pod either from a script (fast tests) or as the real
local process of its first container (the trainer end to end, local mode).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hashlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from visioninapp.cluster.store import ApiError, Obj, ResourceType, Store, dig, is_ready, now_iso
from visioninapp.scheduling import fits, matches_selector, untolerated_taints

__all__ = ["Controllers", "Outcome", "PodScript", "die_with_parent", "quantity"]

log = logging.getLogger(__name__)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
GPU = "nvidia.com/gpu"
PR_SET_PDEATHSIG = 1
# Pod addresses: each cluster of this process takes the next 127.X.0.0/16 block (a pod of an earlier
# cluster may still be shutting down on its address); the first block is random, so that clusters
# of two processes (local mode and a test run) rarely meet.
_FIRST_IP_BLOCK = random.randrange(254)
_CLUSTERS_MADE = itertools.count()


def _next_ip_block() -> int:
    return 1 + (_FIRST_IP_BLOCK + next(_CLUSTERS_MADE)) % 254


LOG_TAIL_BYTES = 2048  # kubelet's FallbackToLogsOnError keeps at most 80 lines / 2048 bytes


@dataclass(frozen=True)
class Outcome:
    """How a scripted pod ends: after `seconds`, with this exit code and termination message."""

    exit_code: int = 0
    message: str = ""
    seconds: float = 0.0  # math.inf: runs until deleted (a DaemonSet's server)
    reason: str | None = None  # defaults to Completed / Error
    ready: bool = True  # what the readiness probe says while it runs
    restarts: int = 0  # container restarts to report (crash loops)


# A script decides per pod: an Outcome (scripted), or None to run the pod's command for real.
PodScript = Callable[[Obj], "Outcome | Awaitable[Outcome | None] | None"]


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number: `2`, `500m`, `16Gi`."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _condition(type_: str, status: str, reason: str = "", message: str = "") -> Obj:
    now = now_iso()
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "lastProbeTime": now,
    }


def _gpu_request(pod: Obj) -> float:
    total = 0.0
    for container in pod["spec"].get("containers", []):
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(GPU) or (resources.get("requests") or {}).get(GPU)
        total += quantity(value) if value is not None else 0
    return total


@dataclass
class _Process:
    process: asyncio.subprocess.Process
    log_path: Path
    termination_path: Path


@dataclass
class Controllers:
    """Job controller (with the TTL controller), scheduler and pod runner over one store."""

    store: Store
    work_dir: Path
    script: PodScript | None = None  # None: every pod runs its command as a local process
    resync_seconds: float = 0.5
    _dirty: set[tuple[str, str, str]] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _running: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    _processes: dict[tuple[str, str], _Process] = field(default_factory=dict)
    _probed_ready: dict[tuple[str, str], bool] = field(default_factory=dict)  # readiness as the pod says
    _next_ip: int = 2
    _ip_block: int = field(default_factory=_next_ip_block)

    def __post_init__(self) -> None:
        self.jobs = self.store.types[("batch", "jobs")]
        self.pods = self.store.types[("", "pods")]
        self.nodes = self.store.types[("", "nodes")]
        self.daemonsets = self.store.types[("apps", "daemonsets")]
        self.store.on_change(self._changed)

    def _changed(self, rtype: ResourceType, event: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if rtype is self.jobs:
            self._dirty.add(("job", meta["namespace"], meta["name"]))
        elif rtype is self.pods:
            job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
            if job:
                self._dirty.add(("job", meta["namespace"], job))
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "DaemonSet":
                    self._dirty.add(("ds", meta["namespace"], ref["name"]))
            if event == "DELETED":
                self._stop_pod(meta["namespace"], meta["name"])
            self._dirty.add(("schedule", "", ""))
        elif rtype is self.daemonsets:
            self._dirty.add(("ds", meta["namespace"], meta["name"]))
        elif rtype is self.nodes:
            self._dirty.add(("schedule", "", ""))
            self._dirty.add(("nodes", "", ""))
            for ds in self.store.select(self.daemonsets):
                self._dirty.add(("ds", ds["metadata"]["namespace"], ds["metadata"]["name"]))
        else:
            return
        self._wake.set()

    # the loop

    async def run(self) -> None:
        """Reconcile whatever changed, and everything every `resync_seconds` (deadlines, TTLs)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.resync_seconds)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            if not dirty:  # periodic resync
                dirty = {
                    ("job", j["metadata"]["namespace"], j["metadata"]["name"])
                    for j in self.store.select(self.jobs)
                }
                dirty.add(("schedule", "", ""))
                dirty |= {
                    ("ds", d["metadata"]["namespace"], d["metadata"]["name"])
                    for d in self.store.select(self.daemonsets)
                }
            for kind, namespace, name in sorted(dirty):
                try:
                    if kind == "job":
                        self.reconcile_job(namespace, name)
                    elif kind == "ds":
                        self.reconcile_daemonset(namespace, name)
                    elif kind == "nodes":
                        self.sync_node_readiness()
                    else:
                        self.schedule()
                except ApiError as error:  # a conflict or a vanished object: the next round fixes it
                    if error.code not in (404, 409):
                        raise

    async def stop(self) -> None:
        """Stop every pod: SIGTERM to processes, cancel scripts, SIGKILL what is left after 5 s."""
        tasks, processes = list(self._running.values()), [p.process for p in self._processes.values()]
        for key in list(self._processes):
            self._stop_pod(*key)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), 5)
        for process in processes:
            _kill_group(process)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Job controller

    def reconcile_job(self, namespace: str, name: str) -> None:
        job = self.store.peek(self.jobs, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        spec, status = job["spec"], dict(job.get("status") or {})
        conditions = list(status.get("conditions") or [])
        finished = next(
            (c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None
        )
        pods = [p for p in self.store.select(self.pods, namespace, f"{JOB_NAME_LABEL}={name}")]
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        if finished:
            self._expire(job, finished)
            return
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
        conditions = [c for c in conditions if c["type"] != "Suspended"]
        if spec.get("suspend"):
            for pod in active:
                self.store.delete(self.pods, namespace, pod["metadata"]["name"])
            conditions.append(_condition("Suspended", "True", "JobSuspended", "Job suspended"))
            status.pop("startTime", None)
            active = []
        elif succeeded >= spec.get("completions", 1):
            conditions += [
                _condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
                _condition(
                    "Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods"
                ),
            ]
            status["completionTime"] = now_iso()
        elif failed > spec.get("backoffLimit", 6):
            conditions += [
                _condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ),
                _condition(
                    "Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                ),
            ]
        elif self._past_deadline(spec, status):
            for pod in active:
                self.store.delete(self.pods, namespace, pod["metadata"]["name"])
            active = []
            conditions += [
                _condition(
                    "FailureTarget",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ),
                _condition(
                    "Failed", "True", "DeadlineExceeded", "Job was active longer than specified deadline"
                ),
            ]
        elif not active:
            active = [self._create_pod(job)]
            status.setdefault("startTime", now_iso())
        ready = sum(1 for p in active if is_ready(p))
        status.update(
            active=len(active), succeeded=succeeded, failed=failed, ready=ready, conditions=conditions
        )
        if status != (job.get("status") or {}):
            self.store.update(self.jobs, namespace, name, {**job, "status": status}, subresource="status")

    @staticmethod
    def _past_deadline(spec: Obj, status: Obj) -> bool:
        deadline, started = spec.get("activeDeadlineSeconds"), status.get("startTime")
        if deadline is None or started is None:
            return False
        return (datetime.now(UTC) - _parse_time(started)).total_seconds() >= float(deadline)

    def _expire(self, job: Obj, finished: Obj) -> None:
        """The TTL-after-finished controller: delete the Job and its pods once the TTL has passed."""
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        age = (datetime.now(UTC) - _parse_time(finished["lastTransitionTime"])).total_seconds()
        if age >= ttl:
            meta = job["metadata"]
            self.store.delete(self.jobs, meta["namespace"], meta["name"], "Background")

    def _create_pod(self, job: Obj) -> Obj:
        meta, template = job["metadata"], job["spec"]["template"]
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            JOB_NAME_LABEL: meta["name"],
            "job-name": meta["name"],
            "controller-uid": meta["uid"],
        }
        pod = {
            "metadata": {
                **(template.get("metadata") or {}),
                "generateName": f"{meta['name']}-",
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        return self.store.create(self.pods, meta["namespace"], pod, keep_status=True)

    # DaemonSet controller (updateStrategy OnDelete: a deleted pod comes back from the current template)

    def reconcile_daemonset(self, namespace: str, name: str) -> None:
        ds = self.store.peek(self.daemonsets, namespace, name)
        if ds is None or ds["metadata"].get("deletionTimestamp"):
            return
        template = ds["spec"]["template"]
        revision = template_hash(template)
        selector = ",".join(f"{k}={v}" for k, v in sorted(ds["spec"]["selector"]["matchLabels"].items()))
        pods = [
            p
            for p in self.store.select(self.pods, namespace, selector)
            if any(r.get("uid") == ds["metadata"]["uid"] for r in p["metadata"].get("ownerReferences") or [])
            and not p["metadata"].get("deletionTimestamp")
        ]
        pod_spec = template["spec"]
        eligible = [
            n
            for n in self.store.select(self.nodes)
            if fits(n, pod_spec.get("nodeSelector") or {}, pod_spec.get("tolerations") or [])
        ]
        names = {n["metadata"]["name"] for n in eligible}
        by_node = {p["spec"].get("nodeName"): p for p in pods}
        for pod in pods:
            if pod["spec"].get("nodeName") not in names:
                self.store.delete(self.pods, namespace, pod["metadata"]["name"])
        for node in sorted(names - set(by_node)):
            by_node[node] = self._create_daemon_pod(ds, node, revision)
        current = [p for n, p in by_node.items() if n in names]
        status = {
            "desiredNumberScheduled": len(names),
            "currentNumberScheduled": len(current),
            "numberReady": sum(1 for p in current if is_ready(p)),
            "updatedNumberScheduled": sum(
                1 for p in current if p["metadata"]["labels"].get(REVISION_LABEL) == revision
            ),
            "numberMisscheduled": 0,
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
        if status != ds.get("status"):
            self.store.update(
                self.daemonsets, namespace, name, {**ds, "status": status}, subresource="status"
            )

    def _create_daemon_pod(self, ds: Obj, node: str, revision: str) -> Obj:
        meta, template = ds["metadata"], ds["spec"]["template"]
        pod = {
            "metadata": {
                **(template.get("metadata") or {}),
                "generateName": f"{meta['name']}-",
                "labels": {**(template.get("metadata") or {}).get("labels", {}), REVISION_LABEL: revision},
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "DaemonSet",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": node, "restartPolicy": "Always"},
            "status": {"phase": "Pending"},
        }
        return self.store.create(self.pods, meta["namespace"], pod, keep_status=True)

    def sync_node_readiness(self) -> None:
        """The node lifecycle controller's part: pods on a NotReady node are not Ready."""
        ready_nodes = {n["metadata"]["name"] for n in self.store.select(self.nodes) if is_ready(n)}
        for pod in list(self.store.select(self.pods)):
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            if (pod.get("status") or {}).get("phase") != "Running" or key not in self._probed_ready:
                continue
            ready = self._probed_ready[key] and pod["spec"].get("nodeName") in ready_nodes
            if is_ready(pod) != ready:
                self._set_ready(*key, ready, "" if ready else "NodeNotReady")

    def _set_ready(self, namespace: str, name: str, ready: bool, reason: str = "") -> None:
        pod = self.store.peek(self.pods, namespace, name)
        if pod is None:
            return
        status = pod["status"]
        conditions = [c for c in status.get("conditions", []) if c["type"] != "Ready"]
        conditions.append(_condition("Ready", "True" if ready else "False", reason))
        statuses = [{**c, "ready": ready} for c in status.get("containerStatuses", [])]
        self._set_pod_status(namespace, name, conditions=conditions, containerStatuses=statuses)

    def _probe(self, namespace: str, name: str, ready: bool) -> None:
        """Record what the pod's readiness probe says; Ready also needs its node to be Ready."""
        self._probed_ready[(namespace, name)] = ready
        pod = self.store.peek(self.pods, namespace, name)
        if pod is None:
            return
        node = self.store.peek(self.nodes, "", pod["spec"].get("nodeName", ""))
        effective = ready and node is not None and is_ready(node)
        if is_ready(pod) != effective:
            self._set_ready(namespace, name, effective, "" if effective else "ReadinessProbeFailed")

    # scheduler

    def schedule(self) -> None:
        nodes = [n for n in self.store.select(self.nodes) if is_ready(n)]
        gpus_used: dict[str, float] = {}
        pods = list(self.store.select(self.pods))
        for pod in pods:
            if pod["spec"].get("nodeName") and (pod.get("status") or {}).get("phase") in (
                "Pending",
                "Running",
            ):
                node_name = pod["spec"]["nodeName"]
                gpus_used[node_name] = gpus_used.get(node_name, 0) + _gpu_request(pod)
        ready_nodes = {n["metadata"]["name"] for n in nodes}
        for pod in pods:
            if (pod.get("status") or {}).get("phase") != "Pending" or pod["metadata"].get(
                "deletionTimestamp"
            ):
                continue
            if pod["spec"].get("nodeName"):  # bound already (DaemonSet pods): the kubelet starts it once up
                key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                if pod["spec"]["nodeName"] in ready_nodes and key not in self._running:
                    self._start_pod(*key)
                continue
            node, reasons = self._fit(pod, nodes, gpus_used)
            meta = pod["metadata"]
            if node is None:
                total = len(list(self.store.select(self.nodes)))
                message = (
                    f"0/{total} nodes are available: "
                    + ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
                    + "."
                )
                condition = _condition("PodScheduled", "False", "Unschedulable", message)
                current = next(
                    (c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), None
                )
                if current is None or current["message"] != message:
                    status = {**pod["status"], "conditions": [condition]}
                    self.store.update(
                        self.pods,
                        meta["namespace"],
                        meta["name"],
                        {**pod, "status": status},
                        subresource="status",
                    )
                continue
            gpus_used[node] = gpus_used.get(node, 0) + _gpu_request(pod)
            bound = self.store.update(
                self.pods, meta["namespace"], meta["name"], {**pod, "spec": {**pod["spec"], "nodeName": node}}
            )
            status = {**bound["status"], "conditions": [_condition("PodScheduled", "True")]}
            self.store.update(
                self.pods, meta["namespace"], meta["name"], {**bound, "status": status}, subresource="status"
            )
            self._start_pod(meta["namespace"], meta["name"])

    def _fit(
        self, pod: Obj, nodes: list[Obj], gpus_used: dict[str, float]
    ) -> tuple[str | None, dict[str, int]]:
        spec, reasons = pod["spec"], dict[str, int]()
        selector = spec.get("nodeSelector") or {}
        tolerations = spec.get("tolerations") or []
        wanted_gpus = _gpu_request(pod)
        for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
            if not matches_selector(node, selector):
                reasons["node(s) didn't match Pod's node affinity/selector"] = (
                    reasons.get("node(s) didn't match Pod's node affinity/selector", 0) + 1
                )
                continue
            untolerated = untolerated_taints(node, tolerations)
            if untolerated:
                taint = untolerated[0]
                reason = f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            if wanted_gpus:
                capacity = quantity((node.get("status") or {}).get("allocatable", {}).get(GPU, 0))
                if gpus_used.get(node["metadata"]["name"], 0) + wanted_gpus > capacity:
                    reasons[f"Insufficient {GPU}"] = reasons.get(f"Insufficient {GPU}", 0) + 1
                    continue
            return node["metadata"]["name"], reasons
        if not nodes:
            reasons["node(s) were not ready"] = len(list(self.store.select(self.nodes)))
        return None, reasons

    # pod runner (the kubelet's part)

    def _start_pod(self, namespace: str, name: str) -> None:
        self._running[(namespace, name)] = asyncio.get_running_loop().create_task(
            self._run_pod(namespace, name)
        )

    def _set_pod_status(self, namespace: str, name: str, **changes: Any) -> None:
        pod = self.store.peek(self.pods, namespace, name)
        if pod is not None:
            status = {**pod["status"], **changes}
            self.store.update(self.pods, namespace, name, {**pod, "status": status}, subresource="status")

    def _allocate_ip(self) -> str:
        """A loopback address per pod (in this cluster's block), so pod servers share their port."""
        number, self._next_ip = self._next_ip, self._next_ip + 1
        return f"127.{self._ip_block}.{number // 250}.{number % 250 + 2}"

    async def _run_pod(self, namespace: str, name: str) -> None:
        pod = self.store.get(self.pods, namespace, name)
        container = pod["spec"]["containers"][0]
        image = {"image": container.get("image", ""), "imageID": ""}
        restart_always = pod["spec"].get("restartPolicy") == "Always"
        pod_ip, restarts = self._allocate_ip(), 0
        while True:
            started = now_iso()
            try:
                outcome = self.script(pod) if self.script else None
                if asyncio.iscoroutine(outcome) or isinstance(outcome, Awaitable):
                    outcome = await outcome
                if outcome is None:
                    self._set_running(pod, pod_ip, started, restarts, image)
                    outcome = await self._run_process({**pod, "status": {**pod["status"], "podIP": pod_ip}})
                else:
                    restarts = max(restarts, outcome.restarts)
                    self._set_running(pod, pod_ip, started, restarts, image, outcome.ready)
                    if outcome.seconds:
                        await asyncio.sleep(outcome.seconds)
            except Exception as error:  # a broken script fails its pod visibly instead of hanging it
                log.exception("pod %s/%s: the pod script failed", namespace, name)
                outcome = Outcome(exit_code=1, message=f"pod script failed: {type(error).__name__}: {error}")
            self._processes.pop((namespace, name), None)
            if not restart_always or self.store.peek(self.pods, namespace, name) is None:
                break
            restarts += 1  # restartPolicy Always: the kubelet restarts the container (after a back-off)
            self._probed_ready[(namespace, name)] = False
            await asyncio.sleep(1)
        terminated = {
            "exitCode": outcome.exit_code,
            "reason": outcome.reason or ("Completed" if outcome.exit_code == 0 else "Error"),
            "message": outcome.message[:4096],
            "startedAt": started,
            "finishedAt": now_iso(),
        }
        self._set_pod_status(
            namespace,
            name,
            phase="Succeeded" if outcome.exit_code == 0 else "Failed",
            conditions=[_condition("PodScheduled", "True"), _condition("Ready", "False", "PodCompleted")],
            containerStatuses=[
                {
                    **image,
                    "name": container["name"],
                    "ready": False,
                    "restartCount": restarts,
                    "state": {"terminated": terminated},
                }
            ],
        )
        self._running.pop((namespace, name), None)
        self._probed_ready.pop((namespace, name), None)

    def _set_running(
        self, pod: Obj, pod_ip: str, started: str, restarts: int, image: Obj, ready: bool | None = None
    ) -> None:
        """Running; Ready as given, or (no value) as its readiness probe will say (none: Ready)."""
        meta, container = pod["metadata"], pod["spec"]["containers"][0]
        if ready is None:
            ready = "readinessProbe" not in container
        key = (meta["namespace"], meta["name"])
        self._probed_ready[key] = ready
        node = self.store.peek(self.nodes, "", pod["spec"].get("nodeName", ""))
        effective = ready and (node is None or is_ready(node))
        self._set_pod_status(
            *key,
            phase="Running",
            startTime=pod["status"].get("startTime") or started,
            podIP=pod_ip,
            conditions=[
                _condition("PodScheduled", "True"),
                _condition("Ready", "True" if effective else "False"),
            ],
            containerStatuses=[
                {
                    **image,
                    "name": container["name"],
                    "ready": effective,
                    "restartCount": restarts,
                    "state": {"running": {"startedAt": started}},
                }
            ],
        )

    async def _run_process(self, pod: Obj) -> Outcome:
        meta, container = pod["metadata"], pod["spec"]["containers"][0]
        pod_dir = self.work_dir / "pods" / meta["namespace"] / meta["name"]
        pod_dir.mkdir(parents=True, exist_ok=True)
        termination = pod_dir / "termination-log"
        pod_env = self._env(pod, container)
        command = [
            expand(arg, pod_env) for arg in [*container.get("command", []), *container.get("args", [])]
        ]
        if not command:
            return Outcome(
                exit_code=128, message="the container has no command to run locally", reason="StartError"
            )
        executable = shutil.which(
            command[0], path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )
        if executable is None:
            return Outcome(exit_code=127, message=f"{command[0]!r} not found on PATH", reason="StartError")
        env = {**os.environ, **pod_env, "VISIONINAPP_TERMINATION_LOG": str(termination)}
        log_path = pod_dir / "output.log"
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                executable,
                *command[1:],
                env=env,
                cwd=pod_dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # no orphans when this process is killed
            )
        self._processes[(meta["namespace"], meta["name"])] = _Process(process, log_path, termination)
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        prober = asyncio.create_task(self._probe_loop(pod, probe)) if probe else None
        try:
            code = await process.wait()
        finally:
            if prober is not None:
                prober.cancel()
        message = termination.read_text() if termination.is_file() else ""
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = log_path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
        if code < 0:  # killed by a signal, as the kubelet reports it
            return Outcome(exit_code=128 - code, message=message, reason="Error")
        return Outcome(exit_code=code, message=message)

    async def _probe_loop(self, pod: Obj, probe: Obj) -> None:
        """The readiness probe: GET the path on the pod's IP every period; 2xx/3xx is Ready."""
        meta = pod["metadata"]
        port = probe["port"]
        if isinstance(port, str):  # a named port
            ports = pod["spec"]["containers"][0].get("ports", [])
            port = next((p["containerPort"] for p in ports if p.get("name") == port), 80)
        url = f"http://{pod['status']['podIP']}:{port}{probe.get('path', '/')}"
        period = float((pod["spec"]["containers"][0].get("readinessProbe") or {}).get("periodSeconds", 1))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                try:
                    async with session.get(url) as response:
                        ready = response.status < 400
                except (aiohttp.ClientError, TimeoutError):
                    ready = False
                if self._probed_ready.get((meta["namespace"], meta["name"])) != ready:
                    self._probe(meta["namespace"], meta["name"], ready)
                await asyncio.sleep(min(period, 1.0))

    def _env(self, pod: Obj, container: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            data = self._data_of(
                "secrets" if "secretRef" in source else "configmaps", pod, ref.get("name", "")
            )
            env.update(data)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
                continue
            value_from = item.get("valueFrom") or {}
            if "fieldRef" in value_from:
                value = dig(pod, value_from["fieldRef"]["fieldPath"].split("."))
                env[item["name"]] = "" if value is None else str(value)
            for kind, ref_key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
                if ref_key in value_from:
                    ref = value_from[ref_key]
                    data = self._data_of(kind, pod, ref["name"])
                    if ref["key"] in data:
                        env[item["name"]] = data[ref["key"]]
        return env

    def _data_of(self, plural: str, pod: Obj, name: str) -> dict[str, str]:
        obj = self.store.peek(self.store.types[("", plural)], pod["metadata"]["namespace"], name)
        if obj is None:
            return {}
        if plural == "secrets":
            decoded = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            return {**decoded, **(obj.get("stringData") or {})}
        return dict(obj.get("data") or {})

    def _stop_pod(self, namespace: str, name: str) -> None:
        """The pod was deleted: stop its process (SIGTERM to the group) or its script."""
        entry = self._processes.pop((namespace, name), None)
        if entry is not None and entry.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.process.pid, signal.SIGTERM)
            asyncio.get_running_loop().call_later(10, _kill_group, entry.process)
        task = self._running.pop((namespace, name), None)
        if task is not None and entry is None:
            task.cancel()

    def pod_log(self, namespace: str, name: str) -> str | None:
        path = self.work_dir / "pods" / namespace / name / "output.log"
        return path.read_text(errors="replace") if path.is_file() else None


def die_with_parent() -> None:
    """In a forked child before exec: SIGTERM when the parent thread dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


REVISION_LABEL = "controller-revision-hash"


def template_hash(template: Obj) -> str:
    """What the DaemonSet controller labels its pods with: a hash of the pod template."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values (`$$(VAR)` stays literal)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )
