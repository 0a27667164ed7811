"""The node agent: Nodes for a real control plane, and their pods run as processes on this machine.

It stands where a kubelet stands, talking only to the API server: it registers Node objects
(labels, taints, capacity such as `nvidia.com/gpu`, the Ready condition), renews their Leases in
`kube-node-lease` (stop the renewals of a node with `set_online(name, False)` and the node
lifecycle controller marks it unreachable, as it would a Jetson that lost its network), and runs
each pod the scheduler binds to one of its nodes:

- as the local process of its first container (`command` + `args`, or the entry point of one of
  VisionInApp's own images when the container names none), in a mount namespace of its own where
  the pod's volumes are mounted where the container expects them (the service-account token at
  /var/run/secrets/kubernetes.io/serviceaccount, ConfigMaps, Secrets, emptyDirs, hostPaths), with
  the environment of the pod (env, envFrom, the downward API, `KUBERNETES_SERVICE_*`), its own
  loopback address as pod IP, HTTP readiness probes, restarts by restartPolicy, the termination
  message, and its output served as the container's log (`kubectl logs`); or
- from a `PodScript`: a function of the pod that returns how it ends (`Outcome`), for tests that
  need many pods and no programs.

Pod deletion is graceful as in Kubernetes: SIGTERM, SIGKILL after the grace period, the final
status, then the deletion with grace 0. With `run_pods=False` the agent only keeps its nodes alive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import ssl
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web

from visioninapp.k8s import Obj
from visioninapp.kubeclient import STRATEGIC, Kube, KubeError
from visioninapp.local.processes import die_with_parent

__all__ = ["IMAGE_ENTRYPOINTS", "NodeAgent", "NodeSpec", "Outcome", "PodScript", "expand"]

log = logging.getLogger(__name__)
KUBELET_VERSION = "v1.35.4"
LOG_TAIL_BYTES = 2048  # FallbackToLogsOnError keeps at most 80 lines / 2048 bytes
MAX_GRACE_SECONDS = 30.0  # a pod stopping longer than this is killed (tests and local mode)
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# VisionInApp's images and their entry points (ENTRYPOINT + CMD of docker/*.Dockerfile; a test
# holds them equal): a container of one of them that names no command runs this, installed here.
IMAGE_ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "operator": ("visioninapp-operator",),
    "api": ("visioninapp-api", "serve", "--host", "0.0.0.0", "--port", "8000"),
    "trainer": ("visioninapp-trainer",),
    "edge": ("visioninapp-edge",),
}


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


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Obj] = field(default_factory=list)
    cpu: str = "8"
    memory: str = "32Gi"
    pods: int = 110
    gpus: int = 0

    def node(self, kubelet_port: int) -> Obj:
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
            **({"nvidia.com/gpu": str(self.gpus)} if self.gpus else {}),
        }
        arch = self.labels.get("kubernetes.io/arch", "amd64")
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            **self.labels,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": list(self.taints)},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
                "nodeInfo": {
                    "architecture": arch,
                    "operatingSystem": "linux",
                    "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": "",
                    "containerRuntimeVersion": "visioninapp-agent://1",
                    "kernelVersion": platform.release(),
                    "osImage": "VisionInApp node agent",
                    "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex,
                    "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                    "bootID": str(uuid.uuid4()),
                },
                "conditions": _node_conditions(),
            },
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _node_conditions() -> list[Obj]:
    now = _now()
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return [
        {
            "type": t,
            "status": s,
            "reason": r,
            "message": "",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for t, s, r in healthy
    ]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values (`$$(VAR)` stays literal)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _field(obj: Obj, path: str) -> Any:
    """A downward-API field path: `metadata.name`, `metadata.labels['app']`, `status.podIP`."""
    found = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if found:
        return (obj["metadata"].get(found[1]) or {}).get(found[2])
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _image_repository(image: str) -> str:
    """`ghcr.io/visioninapp/edge:0.1.0@sha256:...` → `ghcr.io/visioninapp/edge`."""
    without_digest = image.split("@", 1)[0]
    head, _, tail = without_digest.rpartition("/")
    return f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]


def entry_point(container: Obj) -> list[str] | None:
    """What the container runs: its command and args, or its image's entry point (ours only)."""
    command, args = list(container.get("command") or []), list(container.get("args") or [])
    if command:
        return command + args
    repository = _image_repository(container.get("image", ""))
    if "visioninapp" in repository.split("/")[:-1]:
        default = IMAGE_ENTRYPOINTS.get(repository.rsplit("/", 1)[-1])
        if default is not None:
            # args replace the image's CMD; the ENTRYPOINT is the first word
            return [default[0], *args] if args else list(default)
    return None


def _stays_down(entry: _Pod, outcome: Outcome, restart_policy: str) -> bool:
    """Whether a container that ended with `outcome` is not restarted: its pod is being deleted, it
    could not start, or the restart policy says so."""
    if entry.stopping or outcome.reason in ("StartError", "ImageNotRunnable"):
        return True
    return restart_policy == "Never" or (restart_policy == "OnFailure" and outcome.exit_code == 0)


class _Lost(Exception):
    """A pod found running that this agent never started (the machine restarted meanwhile)."""


@dataclass
class _Pod:
    """One pod this agent runs: its task, its process (while one runs) and what it reports."""

    namespace: str
    name: str
    uid: str
    node: str
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    stopping: bool = False
    grace: float = MAX_GRACE_SECONDS
    ready: bool = False
    dir: Path = Path()
    # what the last "running" report said (pod, pod IP, start, restarts): reported again when a node
    # comes back online
    running: tuple[Obj, str, str, int] | None = None


class NodeAgent:
    """Registers nodes and runs the pods bound to them (see the module docstring)."""

    def __init__(
        self,
        kube: Kube,
        work_dir: Path,
        *,
        script: PodScript | None = None,
        run_pods: bool = True,
        lease_seconds: int = 40,
        renew_seconds: float = 10.0,
        api_server: tuple[str, int] = ("127.0.0.1", 443),
        serving: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
    ) -> None:
        self.kube, self.work_dir, self.script, self.run_pods = kube, Path(work_dir), script, run_pods
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self.api_server = api_server
        self.serving, self.client_ca = serving, client_ca
        self.nodes: dict[str, NodeSpec] = {}
        self.offline: set[str] = set()
        self.pods: dict[tuple[str, str], _Pod] = {}
        self.finished: dict[str, str] = {}  # pod uid → why it ended (never run twice)
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: aiohttp.web.AppRunner | None = None
        self.kubelet_port = 0
        self._ip_block = random.randrange(1, 254)  # agents of two processes rarely share addresses
        self._next_ip = 2
        self._mount_namespaces: bool | None = None
        self._shutting_down = False  # a graceful node shutdown is under way
        self._powered_off = False  # stopped: its processes are gone and it reports nothing more

    # lifecycle

    async def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        await self._serve_kubelet_api()
        self._tasks.append(asyncio.create_task(self._heartbeats()))
        if self.run_pods:
            self._tasks.append(
                asyncio.create_task(self.kube.watch("v1", "pods", "", self._reset, self._event))
            )

    async def stop(self, delete_nodes: bool = False, graceful: bool = False) -> None:
        """Stop every pod's process and, if asked, remove the nodes.

        Not graceful: as a machine that loses power (statuses stay as they were; the next agent on
        these nodes finds the pods gone). Graceful: as a kubelet's node shutdown, each pod gets
        SIGTERM and its grace period, then is reported Failed with `DisruptionTarget`.
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if graceful:
            self._shutting_down = True
            running = [p for p in self.pods.values() if p.task is not None and not p.task.done()]
            for pod in running:
                self._terminate(pod, MAX_GRACE_SECONDS / 3)
            if running:
                await asyncio.wait([p.task for p in running if p.task], timeout=MAX_GRACE_SECONDS)
        self._powered_off = True  # from here on nothing is reported
        for pod in list(self.pods.values()):
            pod.stopping = True
            self._signal(pod, signal.SIGKILL)
            if pod.task is not None:
                pod.task.cancel()
        await asyncio.gather(*(p.task for p in self.pods.values() if p.task), return_exceptions=True)
        self.pods.clear()
        if delete_nodes:
            for name in list(self.nodes):
                await self.remove_node(name)
        if self._runner is not None:
            await self._runner.cleanup()

    # nodes

    async def add_node(self, spec: NodeSpec) -> Obj:
        """Register (or take over) the Node and its Lease; Ready from now on."""
        self.nodes[spec.name] = spec
        body = spec.node(self.kubelet_port)
        created = await self.kube.create("v1", "nodes", None, body)
        if created is None:  # registered before (a restart): take it over with our status
            ours = {"metadata": {"labels": body["metadata"]["labels"]}, "spec": {"taints": spec.taints}}
            await self.kube.patch("v1", "nodes", None, spec.name, ours)
            created = await self.kube.patch(
                "v1", "nodes", None, spec.name, {"status": body["status"]}, "status"
            )
        await self._renew(spec.name, created)
        await self._resync(spec.name)  # pods bound to it before (an agent restarted on this machine)
        return created

    async def remove_node(self, name: str) -> None:
        self.nodes.pop(name, None)
        self.offline.discard(name)
        await self.kube.delete("v1", "nodes", None, name)
        await self.kube.delete("coordination.k8s.io/v1", "leases", "kube-node-lease", name)

    async def set_online(self, name: str, online: bool) -> None:
        """Offline: no more Lease renewals or status reports from the node (its pods keep running)."""
        if online and name in self.offline:
            self.offline.discard(name)
            await self.kube.patch(
                "v1", "nodes", None, name, {"status": {"conditions": _node_conditions()}}, "status"
            )
            await self._renew(name)
            for pod in [p for p in self.pods.values() if p.node == name]:
                await self._report_running(pod)  # the controller marked them NotReady meanwhile
            await self._resync(name)
        elif not online:
            self.offline.add(name)

    async def _resync(self, node: str) -> None:
        """Catch up with the pods bound to `node` (a node just added, or back online)."""
        if not self.run_pods:
            return
        listed = await self.kube.request("GET", "api/v1/pods", fieldSelector=f"spec.nodeName={node}")
        current = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in listed["items"]}
        for key, pod in list(self.pods.items()):
            if pod.node == node and key not in current:
                self._forget(pod)  # deleted while the node was away
        for item in listed["items"]:
            self._event("MODIFIED", item)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.renew_seconds)
            for name in [n for n in self.nodes if n not in self.offline]:
                try:
                    await self._renew(name)
                except (KubeError, aiohttp.ClientError, TimeoutError) as error:
                    log.warning("lease of node %s not renewed: %s", name, error)

    async def _renew(self, name: str, node: Obj | None = None) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": self.lease_seconds, "renewTime": _micro_now()}
        try:
            await self.kube.patch("coordination.k8s.io/v1", "leases", "kube-node-lease", name, {"spec": spec})
        except KubeError as error:
            if error.code != 404:
                raise
            node = node or await self.kube.get("v1", "nodes", None, name)
            owner = (
                [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]
                if node
                else []
            )
            lease = {"metadata": {"name": name, "ownerReferences": owner}, "spec": spec}
            await self.kube.create("coordination.k8s.io/v1", "leases", "kube-node-lease", lease)

    # pods: what the API server says

    def _reset(self, pods: list[Obj]) -> None:
        seen = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
        for key in [k for k in self.pods if k not in seen]:
            self._forget(self.pods[key])
        for pod in pods:
            self._event("MODIFIED", pod)

    def _event(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if spec.get("nodeName") not in self.nodes or spec["nodeName"] in self.offline:
            return  # not ours, or ours but cut off from the API server (`set_online` catches up)
        key = (meta["namespace"], meta["name"])
        ours = self.pods.get(key)
        if ours is not None and ours.uid != meta["uid"]:  # the same name, a new pod
            self._forget(ours)
            ours = None
        if kind == "DELETED":
            if ours is not None:
                self._forget(ours)
            return
        if meta.get("deletionTimestamp"):
            if ours is None or (ours.task is not None and ours.task.done()):
                self.pods.pop(key, None)
                self._spawn(self._finish_deletion(pod))  # nothing runs: gone at once
            elif not ours.stopping:
                self._terminate(ours, float(meta.get("deletionGracePeriodSeconds") or 0))
            return
        phase = (pod.get("status") or {}).get("phase")
        if ours is None and phase in ("Pending", "Running", None) and meta["uid"] not in self.finished:
            self._start_pod(pod)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _forget(self, pod: _Pod) -> None:
        """The pod is gone from the API: stop whatever of it still runs."""
        pod.stopping = True
        self._signal(pod, signal.SIGKILL)
        if pod.task is not None and pod.process is None:
            pod.task.cancel()
        self.pods.pop((pod.namespace, pod.name), None)

    def _terminate(self, pod: _Pod, grace: float) -> None:
        """Graceful deletion: SIGTERM now, SIGKILL after the grace period (the task then finishes)."""
        pod.stopping, pod.grace = True, min(grace, MAX_GRACE_SECONDS)
        if pod.process is not None:
            self._signal(pod, signal.SIGTERM)
            asyncio.get_running_loop().call_later(pod.grace, self._signal, pod, signal.SIGKILL)
        elif pod.task is not None:
            pod.task.cancel()  # a scripted pod: it stops at once

    @staticmethod
    def _signal(pod: _Pod, signum: int) -> None:
        if pod.process is not None and pod.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.process.pid, signum)

    async def _finish_deletion(self, pod: Obj) -> None:
        """The kubelet's last word on a deleted pod: remove it for good (grace 0, this uid only)."""
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(KubeError):
            await self.kube.request("DELETE", Kube.path("v1", "pods", meta["namespace"], meta["name"]), body)

    # pods: running them

    def _start_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        entry = _Pod(meta["namespace"], meta["name"], meta["uid"], pod["spec"]["nodeName"])
        entry.dir = self.work_dir / "pods" / entry.namespace / f"{entry.name}-{entry.uid[:8]}"
        self.pods[(entry.namespace, entry.name)] = entry
        entry.task = asyncio.create_task(self._run_pod(entry, pod))

    def _allocate_ip(self) -> str:
        number, self._next_ip = self._next_ip, self._next_ip + 1
        return f"127.{self._ip_block}.{number // 250}.{number % 250 + 2}"

    async def _run_pod(self, entry: _Pod, pod: Obj) -> None:
        restart_policy = pod["spec"].get("restartPolicy", "Always")
        status = pod.get("status") or {}
        previous = (status.get("containerStatuses") or [{}])[0]
        restarts = int(previous.get("restartCount") or 0)
        pod_ip = self._allocate_ip()
        pod = {**pod, "status": {**status, "podIP": pod_ip}}
        outcome = Outcome()
        try:
            if status.get("phase") == "Running" or previous.get("state", {}).get("running"):
                # It ran under an earlier agent (this machine restarted): its process is gone.
                if restart_policy == "Never":
                    raise _Lost
                restarts += 1
            while True:
                started = _now()
                outcome, restarts = await self._run_once(entry, pod, pod_ip, started, restarts)
                if _stays_down(entry, outcome, restart_policy):
                    break
                restarts += 1
                await self._report_waiting(entry, pod, "CrashLoopBackOff", outcome, restarts)
                await asyncio.sleep(min(2 ** min(restarts, 4) * 0.5, 8.0))  # back-off, shortened
        except _Lost:  # as a kubelet reports a container that vanished with its machine
            outcome = Outcome(
                137,
                "The container could not be located when the pod was terminated",
                reason="ContainerStatusUnknown",
            )
        except asyncio.CancelledError:
            if not entry.stopping:
                raise
            outcome = Outcome(137, "", reason="Error")
        except Exception as error:  # a broken script fails its pod visibly instead of hanging it
            log.exception("pod %s/%s failed to run", entry.namespace, entry.name)
            outcome = Outcome(1, f"pod script failed: {type(error).__name__}: {error}")
        await self._pod_ended(entry, pod, outcome, restarts)

    async def _pod_ended(self, entry: _Pod, pod: Obj, outcome: Outcome, restarts: int) -> None:
        """Report the pod's last container terminated; finish its deletion if it is being deleted."""
        self.finished[entry.uid] = outcome.reason or str(outcome.exit_code)
        if outcome.reason == "ImageNotRunnable":
            return  # stays Pending, as a pod whose image cannot be pulled
        await self._report_terminated(entry, pod, outcome, restarts, disrupted=self._shutting_down)
        if (
            entry.stopping
            and not (self._shutting_down or self._powered_off)
            and self.pods.get((entry.namespace, entry.name)) is entry
        ):
            del self.pods[(entry.namespace, entry.name)]
            await self._finish_deletion(pod)

    async def _run_once(
        self, entry: _Pod, pod: Obj, pod_ip: str, started: str, restarts: int
    ) -> tuple[Outcome, int]:
        outcome = self.script(pod) if self.script else None
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome is not None:
            restarts = max(restarts, outcome.restarts)
            entry.ready = outcome.ready
            await self._report_running(entry, pod, pod_ip, started, restarts)
            await asyncio.sleep(outcome.seconds if math.isfinite(outcome.seconds) else 10**9)
            return outcome, restarts
        return await self._run_process(entry, pod, pod_ip, started, restarts), restarts

    async def _run_process(self, entry: _Pod, pod: Obj, pod_ip: str, started: str, restarts: int) -> Outcome:
        container = pod["spec"]["containers"][0]
        command = entry_point(container)
        if command is None:
            message = (
                f"image {container.get('image')!r}: the node agent runs VisionInApp's own images "
                f"({', '.join(IMAGE_ENTRYPOINTS)}) or containers that name a command; this is neither"
            )
            await self._report_waiting(entry, pod, "ImageNotRunnable", Outcome(message=message), restarts)
            return Outcome(message=message, reason="ImageNotRunnable")
        entry.dir.mkdir(parents=True, exist_ok=True)
        termination = entry.dir / "termination-log"
        termination.write_bytes(b"")  # bound where the container writes it, as a kubelet does
        termination_path = container.get("terminationMessagePath") or "/dev/termination-log"
        pod_env = await self._environment(pod, container)
        command = [expand(arg, pod_env) for arg in command]
        executable = shutil.which(
            command[0], path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )
        if executable is None:
            return Outcome(127, f"{command[0]!r} not found on PATH", reason="StartError")
        try:
            mounts = [*await self._mounts(pod, container, entry.dir), (termination, termination_path, False)]
        except (KubeError, OSError) as error:
            return Outcome(128, f"volumes: {error}", reason="StartError")
        environment = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | pod_env
        argv = await self._in_mount_namespace(mounts, [executable, *command[1:]])
        if argv is None:
            return Outcome(
                128, "mounting the pod's volumes needs mount namespaces (`unshare`)", reason="StartError"
            )
        log_path = entry.dir / "output.log"
        with log_path.open("ab") as output:
            entry.process = await asyncio.create_subprocess_exec(
                *argv,
                env=environment,
                cwd=entry.dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        entry.ready = probe is None
        await self._report_running(entry, pod, pod_ip, started, restarts)
        prober = asyncio.create_task(self._probe(entry, pod, pod_ip, started, restarts)) if probe else None
        try:
            code = await entry.process.wait()
        finally:
            if prober is not None:
                prober.cancel()
            entry.process = None
        message = termination.read_text(errors="replace")[:4096] if termination.is_file() else ""
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = log_path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
        if code < 0:  # killed by a signal: reported as 128 + the signal number
            return Outcome(128 - code, message, reason="Error")
        return Outcome(code, message)

    async def _environment(self, pod: Obj, container: Obj) -> dict[str, str]:
        host, port = self.api_server
        env = {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        }
        namespace = pod["metadata"]["namespace"]
        for source in container.get("envFrom") or []:
            kind = "secrets" if "secretRef" in source else "configmaps"
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            data = await self._data(kind, namespace, ref.get("name", ""), bool(ref.get("optional")))
            env.update({f"{source.get('prefix', '')}{k}": v for k, v in data.items()})
        for item in container.get("env") or []:
            if "valueFrom" not in item:
                env[item["name"]] = expand(str(item.get("value", "")), env)
                continue
            value_from = item["valueFrom"]
            if "fieldRef" in value_from:
                value = _field(pod, value_from["fieldRef"]["fieldPath"])
                env[item["name"]] = "" if value is None else str(value)
            for kind, key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
                if key in value_from:
                    ref = value_from[key]
                    data = await self._data(kind, namespace, ref["name"], bool(ref.get("optional")))
                    if ref["key"] in data:
                        env[item["name"]] = data[ref["key"]]
        return env

    async def _data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        obj = await self.kube.get("v1", kind, namespace, name)
        if obj is None:
            if optional:
                return {}
            raise KubeError(404, "NotFound", f"{kind[:-1]} {namespace}/{name} not found")
        if kind == "secrets":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    # volumes

    async def _mounts(self, pod: Obj, container: Obj, pod_dir: Path) -> list[tuple[Path, str, bool]]:
        """(source on this machine, path in the container, read-only) for each volume mount."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            source = await self._volume_source(pod, volume, pod_dir / "volumes" / mount["name"])
            if mount.get("subPath"):
                source = source / mount["subPath"]
            if str(source) != mount["mountPath"]:
                mounts.append((source, mount["mountPath"], bool(mount.get("readOnly"))))
        return mounts

    async def _volume_source(self, pod: Obj, volume: Obj, folder: Path) -> Path:
        namespace = pod["metadata"]["namespace"]
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            return path
        folder.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            return folder
        if "configMap" in volume or "secret" in volume:
            files = await self._object_files(namespace, volume)
        elif "projected" in volume:
            files = await self._projected_files(pod, volume["projected"])
        elif "downwardAPI" in volume:
            files = self._downward_files(pod, volume["downwardAPI"])
        else:
            raise OSError(
                f"volume {volume['name']!r}: only hostPath, emptyDir, configMap, secret, projected "
                "and downwardAPI volumes are mounted by the node agent"
            )
        for relative, data in files.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return folder

    async def _projected_files(self, pod: Obj, projected: Obj) -> dict[str, bytes]:
        """The files of a projected volume: service account tokens, downward API fields, objects."""
        namespace = pod["metadata"]["namespace"]
        files: dict[str, bytes] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                files[source["serviceAccountToken"]["path"]] = (await self._token(pod, source)).encode()
            elif "downwardAPI" in source:
                files |= self._downward_files(pod, source["downwardAPI"])
            else:
                files |= await self._object_files(namespace, source)
        return files

    async def _object_files(self, namespace: str, source: Obj) -> dict[str, bytes]:
        kind = "secrets" if "secret" in source else "configmaps"
        ref = source.get("secret") or source.get("configMap") or {}
        name = ref.get("secretName") or ref.get("name", "")
        obj = await self.kube.get("v1", kind, namespace, name)
        if obj is None:
            if ref.get("optional"):
                return {}
            raise OSError(f"{kind[:-1]} {namespace}/{name} not found")
        raw = obj.get("data") or {}
        data = {k: base64.b64decode(v) if kind == "secrets" else v.encode() for k, v in raw.items()}
        items = ref.get("items")
        return {i["path"]: data[i["key"]] for i in items if i["key"] in data} if items else data

    @staticmethod
    def _downward_files(pod: Obj, source: Obj) -> dict[str, bytes]:
        return {
            item["path"]: str(_field(pod, item["fieldRef"]["fieldPath"]) or "").encode()
            for item in source.get("items") or []
            if "fieldRef" in item
        }

    async def _token(self, pod: Obj, source: Obj) -> str:
        """A token of the pod's service account bound to the pod, as the kubelet requests one."""
        meta, token = pod["metadata"], source["serviceAccountToken"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [token["audience"]] if token.get("audience") else None,
                "expirationSeconds": int(token.get("expirationSeconds") or 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = Kube.path("v1", "serviceaccounts", meta["namespace"], account, "token")
        answer = await self.kube.request("POST", path, request)
        return str(answer["status"]["token"])

    async def _in_mount_namespace(
        self, mounts: list[tuple[Path, str, bool]], argv: list[str]
    ) -> list[str] | None:
        """`argv` run in a mount namespace of its own with `mounts` bound (None: not possible here)."""
        if not mounts:
            return argv
        if self._mount_namespaces is None:
            self._mount_namespaces = await _can_unshare()
        if not self._mount_namespaces:
            return None
        steps = ["set -e"]
        for source, target, read_only in _mount_order(mounts):
            kind = "-d" if source.is_dir() else "-f"
            quoted, parent = shlex.quote(target), shlex.quote(str(Path(target).parent))
            make = f"mkdir -p {quoted}" if source.is_dir() else f"mkdir -p {parent}; : > {quoted}"
            steps += [
                f"[ {kind} {shlex.quote(target)} ] || {{ {make}; }}",
                f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}",
            ]
            if read_only:
                steps.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
        steps.append('exec "$@"')
        user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        return [
            "unshare",
            *user,
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            "; ".join(steps),
            "sh",
            *argv,
        ]

    # readiness

    async def _probe(self, entry: _Pod, pod: Obj, pod_ip: str, started: str, restarts: int) -> None:
        """The readiness probe: GET the path on the pod's address every period; 2xx/3xx is Ready."""
        container = pod["spec"]["containers"][0]
        settings = container["readinessProbe"]
        probe = settings["httpGet"]
        port = probe["port"]
        if isinstance(port, str):  # a named port
            port = next(
                (p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port), 80
            )
        url = f"http://{pod_ip}:{port}{probe.get('path', '/')}"
        period = min(float(settings.get("periodSeconds", 10)), 1.0)  # faster than a kubelet: tests wait less
        failures_allowed = int(settings.get("failureThreshold", 3))
        failures = 0
        await asyncio.sleep(float(settings.get("initialDelaySeconds", 0)))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                try:
                    async with session.get(url) as response:
                        ok = response.status < 400
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                failures = 0 if ok else failures + 1
                ready = ok or (entry.ready and failures < failures_allowed)
                if ready != entry.ready:
                    entry.ready = ready
                    await self._report_running(entry, pod, pod_ip, started, restarts)
                await asyncio.sleep(period)

    # status reports

    async def _patch_status(self, entry: _Pod, status: Obj) -> None:
        if entry.node in self.offline or self._powered_off:
            return  # a node without network reports nothing (`set_online` reports again), nor one off
        patch = {"metadata": {"uid": entry.uid}, "status": status}  # the uid: never another pod's status
        try:
            await self.kube.request(
                "PATCH", Kube.path("v1", "pods", entry.namespace, entry.name, "status"), patch, STRATEGIC
            )
        except KubeError as error:
            if error.code not in (404, 409, 422):
                raise

    async def _report_running(
        self, entry: _Pod, pod: Obj | None = None, pod_ip: str = "", started: str = "", restarts: int = 0
    ) -> None:
        """Running, Ready as `entry.ready` says; with no pod given, the last such report again."""
        if pod is not None:
            entry.running = (pod, pod_ip, started, restarts)
        if entry.running is None:
            return
        pod, pod_ip, started, restarts = entry.running
        container = pod["spec"]["containers"][0]
        ready = "True" if entry.ready else "False"
        now = _now()
        await self._patch_status(
            entry,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": (pod.get("status") or {}).get("startTime") or started,
                "conditions": [
                    {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "containerID": f"visioninapp://{entry.uid}-{restarts}",
                        "ready": entry.ready,
                        "started": True,
                        "restartCount": restarts,
                        "state": {"running": {"startedAt": started}},
                    }
                ],
            },
        )

    async def _report_waiting(
        self, entry: _Pod, pod: Obj, reason: str, outcome: Outcome, restarts: int
    ) -> None:
        container = pod["spec"]["containers"][0]
        await self._patch_status(
            entry,
            {
                "hostIP": "127.0.0.1",
                "conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": _now()},
                    {"type": "ContainersReady", "status": "False", "lastTransitionTime": _now()},
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": restarts,
                        "state": {"waiting": {"reason": reason, "message": outcome.message[:1024]}},
                    }
                ],
            },
        )

    async def _report_terminated(
        self, entry: _Pod, pod: Obj, outcome: Outcome, restarts: int, disrupted: bool = False
    ) -> None:
        """Terminated: Succeeded or Failed by the exit code; Failed with `DisruptionTarget` when the
        node shut down under it (a Job's podFailurePolicy may then retry it for free)."""
        container = pod["spec"]["containers"][0]
        finished = _now()
        shutdown = "Pod was terminated in response to imminent node shutdown."
        disruption = [
            {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
             "message": shutdown, "lastTransitionTime": finished}
        ] if disrupted else []  # fmt: skip
        terminated = {
            "exitCode": outcome.exit_code,
            "reason": outcome.reason or ("Completed" if outcome.exit_code == 0 else "Error"),
            "message": outcome.message[:4096],
            "startedAt": (pod.get("status") or {}).get("startTime") or finished,
            "finishedAt": finished,
        }
        await self._patch_status(
            entry,
            {
                "phase": "Succeeded" if outcome.exit_code == 0 and not disrupted else "Failed",
                "conditions": [
                    *disruption,
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": finished,
                    },
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": finished,
                    },
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "containerID": f"visioninapp://{entry.uid}-{restarts}",
                        "ready": False,
                        "started": False,
                        "restartCount": restarts,
                        "state": {"terminated": terminated},
                    }
                ],
            },
        )

    # the kubelet's API, for `kubectl logs`

    async def _serve_kubelet_api(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self.serving is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.client_ca))
            context.verify_mode = ssl.CERT_REQUIRED  # only the API server's kubelet client certificate
            context.load_cert_chain(str(self.serving[0]), str(self.serving[1]))
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.kubelet_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _container_logs(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["pod"]
        entry = self.pods.get((namespace, name))
        folders = [entry.dir] if entry else sorted((self.work_dir / "pods" / namespace).glob(f"{name}-*"))
        path = next((f / "output.log" for f in folders if (f / "output.log").is_file()), None)
        if path is None:
            raise aiohttp.web.HTTPNotFound(text=f"no log of pod {namespace}/{name} on this node")
        text = path.read_text(errors="replace")
        tail = request.query.get("tailLines")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-int(tail) :])
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(text.encode())
        if request.query.get("follow") in ("true", "1"):
            position = path.stat().st_size
            while (namespace, name) in self.pods:
                await asyncio.sleep(0.5)
                size = path.stat().st_size
                if size > position:
                    with path.open("rb") as handle:
                        handle.seek(position)
                        await response.write(handle.read())
                    position = size
        await response.write_eof()
        return response


def _mount_order(mounts: list[tuple[Path, str, bool]]) -> list[tuple[Path, str, bool]]:
    """The order to bind the pod's volumes in: a mount before those inside its target, and a target
    that hides where other mounts come from (an emptyDir on /tmp over the pod's folder in /tmp)
    after them. The pod shares this machine's tree, so a bind there shadows what lies beneath."""

    def within(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    remaining, ordered = list(mounts), []
    while remaining:
        free = [
            mount
            for mount in remaining
            if not any(
                (within(mount[1], other[1]) and mount[1] != other[1]) or within(str(other[0]), mount[1])
                for other in remaining
                if other is not mount
            )
        ]
        chosen = (free or remaining)[0]  # a cycle (a mount inside one that hides its source): as given
        ordered.append(chosen)
        remaining.remove(chosen)
    return ordered


async def _can_unshare() -> bool:
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    try:
        process = await asyncio.create_subprocess_exec(
            "unshare",
            *user,
            "--mount",
            "true",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return False
    return await process.wait() == 0
