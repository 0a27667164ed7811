"""The node agent as a kubelet stand-in on the real control plane: it registers nodes and keeps them
alive, and runs the pods the real scheduler binds to them as local processes."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.services import free_port, kube_tools
from visioninapp.local.cluster.agent import IMAGE_ENTRYPOINTS, Outcome
from visioninapp.local.cluster.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "python:3.11",
        "command": [sys.executable, "-c", textwrap.dedent(script)],
    }
    container.update(spec.pop("container", {}))
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def current(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("", "pods", cluster.namespace, name) or {}


def phase(cluster: Cluster, name: str) -> str | None:
    return (current(cluster, name).get("status") or {}).get("phase")


def container_state(cluster: Cluster, name: str) -> dict[str, Any]:
    statuses = (current(cluster, name).get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0]


def test_a_pod_runs_its_command_with_its_environment_volumes_and_logs(
    cluster: Cluster, tmp_path: Path
) -> None:
    ns = cluster.namespace
    mounted = tmp_path / "settings"  # where the container expects its ConfigMap
    cluster.create(
        "",
        "secrets",
        ns,
        {"metadata": {"name": "creds"}, "data": {"TOKEN": base64.b64encode(b"s3cr3t").decode()}},
    )
    cluster.create(
        "",
        "configmaps",
        ns,
        {"metadata": {"name": "settings"}, "data": {"MODE": "fast", "app.yaml": "a: 1\n"}},
    )
    script = """
        import os, pathlib, ssl, json, urllib.request
        sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
        print("env", *(os.environ[k] for k in ("TOKEN", "MODE", "POD", "NODE", "GREETING")))
        print("config", pathlib.Path(os.environ["SETTINGS"], "app.yaml").read_text().strip())
        # in-cluster access as the pod's service account, as a client library would do it
        context = ssl.create_default_context(cafile=str(sa / "ca.crt"))
        url = "https://%s:%s/api/v1/namespaces/%s/pods/%s" % (
            os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"],
            (sa / "namespace").read_text(), os.environ["POD"])
        token = (sa / "token").read_text()
        request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
        try:
            urllib.request.urlopen(request, context=context)
        except urllib.error.HTTPError as error:  # the default account may not read pods: RBAC answered
            print("api", error.code, json.loads(error.read())["details"]["kind"])
        open("/dev/termination-log", "w").write("result: 42")  # the container's terminationMessagePath
    """
    body = pod(
        "env",
        script,
        container={
            "envFrom": [{"secretRef": {"name": "creds"}}],
            "env": [
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODE"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "GREETING", "value": "hello $(POD)"},
                {"name": "SETTINGS", "value": str(mounted)},
            ],
            "volumeMounts": [{"name": "settings", "mountPath": str(mounted), "readOnly": True}],
        },
        volumes=[{"name": "settings", "configMap": {"name": "settings"}}],
    )
    cluster.create("", "pods", ns, body)
    cluster.wait_for(lambda: phase(cluster, "env") in ("Succeeded", "Failed"), 60, "the pod to finish")
    log = cluster.pod_log(ns, "env")
    assert phase(cluster, "env") == "Succeeded", log
    assert "env s3cr3t fast env gpu-0 hello env" in log
    assert "config a: 1" in log
    assert "api 403 pods" in log  # authenticated as system:serviceaccount:<ns>:default by the real server
    terminated = container_state(cluster, "env")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (0, "result: 42")
    assert current(cluster, "env")["status"]["podIP"].startswith("127.")
    kubectl = [str(kube_tools() / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n", ns]
    assert (
        "hello env"
        in subprocess.run([*kubectl, "logs", "env"], capture_output=True, text=True, check=True).stdout
    )


def test_a_failing_command_reports_its_exit_code_and_log_tail(cluster: Cluster) -> None:
    body = pod(
        "fails",
        "import sys; print('bad input'); sys.exit(3)",
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
    )
    cluster.create("", "pods", cluster.namespace, body)
    cluster.wait_for(lambda: phase(cluster, "fails") == "Failed", 60, "the pod to fail")
    terminated = container_state(cluster, "fails")["state"]["terminated"]
    assert (
        terminated["exitCode"] == 3
        and terminated["reason"] == "Error"
        and "bad input" in terminated["message"]
    )


def test_deleting_a_pod_stops_its_process_within_the_grace_period(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    script = f"""
        import signal, sys, time, pathlib
        def stop(*_):
            pathlib.Path({str(marker)!r}).write_text("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("serving", flush=True)
        time.sleep(600)
    """
    cluster.create("", "pods", cluster.namespace, pod("server", script, terminationGracePeriodSeconds=20))
    cluster.wait_for(
        lambda: (
            "serving"
            in (cluster.pod_log(cluster.namespace, "server") if phase(cluster, "server") == "Running" else "")
        ),
        60,
        "the server to run",
    )
    cluster.delete("", "pods", cluster.namespace, "server")
    cluster.wait_for(
        lambda: cluster.get("", "pods", cluster.namespace, "server") is None, 30, "the pod to be gone"
    )
    assert marker.read_text() == "SIGTERM"  # stopped by SIGTERM, before the grace period ran out


def test_readiness_comes_from_the_http_probe(cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    port = free_port()
    script = f"""
        import http.server, os, pathlib
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if pathlib.Path({str(flag)!r}).exists() else 503)
                self.end_headers()
            def log_message(self, *args):
                pass
        http.server.HTTPServer((os.environ["POD_IP"], {port}), Handler).serve_forever()
    """
    body = pod(
        "probed",
        script,
        container={
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {
                "httpGet": {"path": "/", "port": "http"},
                "periodSeconds": 1,
                "failureThreshold": 1,
            },
        },
    )
    cluster.create("", "pods", cluster.namespace, body)

    def ready() -> bool:
        conditions = (current(cluster, "probed").get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    cluster.wait_for(lambda: phase(cluster, "probed") == "Running", 60, "the server to run")
    assert not ready()  # the probe answers 503: running, not ready
    flag.touch()
    cluster.wait_for(ready, 30, "Ready once the probe answers 200")
    flag.unlink()
    cluster.wait_for(lambda: not ready(), 30, "not Ready once it answers 503 again")


def test_restart_policy_always_restarts_a_crashing_container(cluster: Cluster) -> None:
    body = pod("crashes", "import sys; sys.exit(1)", restartPolicy="Always")
    cluster.create("", "pods", cluster.namespace, body)
    cluster.wait_for(
        lambda: container_state(cluster, "crashes").get("restartCount", 0) >= 2, 60, "two restarts"
    )
    assert phase(cluster, "crashes") != "Failed"


def test_images_of_ours_run_their_entry_point_and_others_wait(cluster: Cluster) -> None:
    ours = {"metadata": {"name": "ours"}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "trainer", "image": "ghcr.io/visioninapp/trainer:0.1.0", "args": ["--help"]}]}}  # fmt: skip
    theirs = {
        "metadata": {"name": "theirs"},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]},
    }
    cluster.create("", "pods", cluster.namespace, ours)
    cluster.create("", "pods", cluster.namespace, theirs)
    cluster.wait_for(lambda: phase(cluster, "ours") == "Succeeded", 60, "visioninapp-trainer --help")
    assert "usage" in cluster.pod_log(cluster.namespace, "ours").lower()
    waiting = cluster.wait_for(
        lambda: container_state(cluster, "theirs").get("state", {}).get("waiting"), 30, "waiting"
    )
    assert waiting["reason"] == "ImageNotRunnable" and phase(cluster, "theirs") == "Pending"


def test_image_entry_points_are_the_dockerfiles() -> None:
    """The agent runs what the images would: ENTRYPOINT + CMD of docker/<image>.Dockerfile."""
    for image, command in IMAGE_ENTRYPOINTS.items():
        text = (REPO / "docker" / f"{image}.Dockerfile").read_text()
        entry = re.findall(r"^ENTRYPOINT \[(.*)\]$", text, re.MULTILINE)[-1]
        cmd = re.findall(r"^CMD \[(.*)\]$", text, re.MULTILINE)
        words = [w.strip().strip('"') for w in entry.split(",")] + (
            [w.strip().strip('"') for w in cmd[-1].split(",")] if cmd else []
        )
        assert tuple(words) == command, image


def test_a_broken_pod_script_fails_its_pod_with_the_error(cluster: Cluster) -> None:
    def broken(pod: dict[str, Any]) -> Outcome:
        raise RuntimeError("the script has a bug")

    cluster.set_script(broken)
    cluster.create("", "pods", cluster.namespace, pod("scripted", "pass"))
    cluster.wait_for(lambda: phase(cluster, "scripted") == "Failed", 30, "the pod to fail")
    assert "the script has a bug" in container_state(cluster, "scripted")["state"]["terminated"]["message"]


def test_a_node_without_heartbeats_becomes_unreachable_and_comes_back(cluster: Cluster) -> None:
    def ready_status() -> str:
        node = cluster.get("", "nodes", None, "gpu-0") or {}
        return next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready")

    def taints() -> set[str]:
        return {t["key"] for t in (cluster.get("", "nodes", None, "gpu-0") or {})["spec"].get("taints") or []}

    cluster.set_online("gpu-0", False)
    # the node lifecycle controller marks the condition, then (a separate write) taints the node
    cluster.wait_for(
        lambda: ready_status() == "Unknown" and "node.kubernetes.io/unreachable" in taints(),
        60,
        "the node lifecycle controller to mark the node unreachable and taint it",
    )
    cluster.set_online("gpu-0", True)
    cluster.wait_for(lambda: ready_status() == "True" and not taints(), 60, "the node back and untainted")


def test_a_node_shutdown_stops_pods_as_disrupted_and_jobs_retry_them_for_free(
    cluster: Cluster, tmp_path: Path, control_plane: Any
) -> None:
    """Graceful: a Job's pod ends Failed with DisruptionTarget, which a podFailurePolicy ignores.
    Then a power loss: the next agent finds the pod gone (ContainerStatusUnknown), which counts."""
    job = {
        "metadata": {"name": "work"},
        "spec": {
            "backoffLimit": 1,
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "work",
                            "image": "python:3.11",
                            "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                        }
                    ],
                }
            },
        },
    }
    cluster.create("batch", "jobs", cluster.namespace, job)

    def pods() -> list[dict[str, Any]]:
        return cluster.list("", "pods", cluster.namespace, "job-name=work")

    def running() -> list[dict[str, Any]]:
        return [p for p in pods() if (p.get("status") or {}).get("phase") == "Running"]

    cluster.wait_for(lambda: len(running()) == 1, 60, "the Job's pod to run")
    first = running()[0]["metadata"]["name"]
    cluster.run(cluster.agent.stop(graceful=True))
    shut_down = current(cluster, first)
    assert shut_down["status"]["phase"] == "Failed"
    assert any(c["type"] == "DisruptionTarget" for c in shut_down["status"]["conditions"])
    again = Cluster(tmp_path / "again", plane=control_plane, renew_seconds=2, lease_seconds=8).start()
    again.namespace = cluster.namespace
    again.add_node("gpu-0", gpus=1, labels={"agentpool": "gpu"})
    again.wait_for(lambda: len(running()) == 1 and running()[0]["metadata"]["name"] != first, 60, "a new pod")
    assert (again.get("batch", "jobs", cluster.namespace, "work")["status"].get("failed") or 0) == 0
    second = running()[0]["metadata"]["name"]
    again.stop()  # power loss: nothing reported, the pod stays Running in the API
    with Cluster(tmp_path / "third", plane=control_plane, renew_seconds=2, lease_seconds=8) as third:
        third.add_node("gpu-0", gpus=1, labels={"agentpool": "gpu"})
        lost = third.wait_for(
            lambda: container_state(cluster, second).get("state", {}).get("terminated"), 60, "the lost pod"
        )
        assert lost["reason"] == "ContainerStatusUnknown" and lost["exitCode"] == 137
        third.wait_for(
            lambda: (third.get("batch", "jobs", cluster.namespace, "work")["status"].get("failed") or 0) == 1,
            60,
            "the loss to count as a failure",
        )
