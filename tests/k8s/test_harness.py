"""The emulated cluster's API semantics, each through the official kubernetes client over HTTP."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.k8s.conftest import wait_for
from visioninapp.cluster.controllers import Outcome
from visioninapp.cluster.harness import Harness
from visioninapp.cluster.store import parse_label_selector

GROUP, VERSION = "visioninapp.io", "v1alpha1"


def training_job(name: str = "helmets", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "labels": {"team": "vision"}},
        "spec": {"model": {"architecture": "yolo11n"}, "dataset": {"uri": "s3://data/helmets/v3"}, **spec},
    }


def simple_job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 1,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
                }
            },
            **spec,
        },
    }


def test_server_sets_uid_resource_version_generation_and_creation_time(kube: Any) -> None:
    api = client.CustomObjectsApi(kube)
    created = api.create_namespaced_custom_object(GROUP, VERSION, "vision", "trainingjobs", training_job())
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    assert created["spec"]["hyperparameters"]["epochs"] == 100  # the CRD's defaults are applied
    rv = int(meta["resourceVersion"])
    labelled = api.patch_namespaced_custom_object(
        GROUP, VERSION, "vision", "trainingjobs", "helmets", {"metadata": {"labels": {"stage": "x"}}}
    )
    assert labelled["metadata"]["generation"] == 1 and int(labelled["metadata"]["resourceVersion"]) > rv
    changed = api.patch_namespaced_custom_object(
        GROUP, VERSION, "vision", "trainingjobs", "helmets", {"spec": {"hyperparameters": {"epochs": 5}}}
    )
    assert changed["metadata"]["generation"] == 2
    assert changed["metadata"]["uid"] == meta["uid"]


def test_status_subresource_is_separate_from_the_main_resource(kube: Any) -> None:
    api = client.CustomObjectsApi(kube)
    api.create_namespaced_custom_object(GROUP, VERSION, "vision", "trainingjobs", training_job())
    updated = api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "vision",
        "trainingjobs",
        "helmets",
        {"status": {"phase": "Running"}, "spec": {"suspend": True}},
    )
    assert updated["status"] == {"phase": "Running"} and updated["spec"]["suspend"] is False
    assert updated["metadata"]["generation"] == 1
    main = api.patch_namespaced_custom_object(
        GROUP, VERSION, "vision", "trainingjobs", "helmets", {"status": {"phase": "Failed"}}
    )
    assert main["status"] == {"phase": "Running"}  # status cannot be written through the main resource


def test_invalid_custom_resources_are_rejected_with_the_field_and_reason(kube: Any) -> None:
    api = client.CustomObjectsApi(kube)
    bad = training_job(hyperparameters={"epochs": 0}, colour="red")
    with pytest.raises(ApiException) as error:
        api.create_namespaced_custom_object(GROUP, VERSION, "vision", "trainingjobs", bad)
    assert error.value.status == 422
    body = json.loads(error.value.body)
    assert body["reason"] == "Invalid"
    fields = {cause["field"] for cause in body["details"]["causes"]}
    assert {"spec.hyperparameters.epochs", "spec.colour"} <= fields
    api.create_namespaced_custom_object(GROUP, VERSION, "vision", "trainingjobs", training_job())
    with pytest.raises(ApiException) as error:  # a CEL transition rule: the model is immutable
        api.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "vision",
            "trainingjobs",
            "helmets",
            {"spec": {"model": {"architecture": "yolov8n"}}},
        )
    assert error.value.status == 422 and "spec.model" in error.value.body


def test_conflicts_duplicates_and_unknown_namespaces(kube: Any) -> None:
    api = client.CustomObjectsApi(kube)
    created = api.create_namespaced_custom_object(GROUP, VERSION, "vision", "trainingjobs", training_job())
    with pytest.raises(ApiException) as error:
        api.create_namespaced_custom_object(GROUP, VERSION, "vision", "trainingjobs", training_job())
    assert (error.value.status, json.loads(error.value.body)["reason"]) == (409, "AlreadyExists")
    stale = {**created, "spec": {**created["spec"], "suspend": True}}
    api.patch_namespaced_custom_object(
        GROUP, VERSION, "vision", "trainingjobs", "helmets", {"spec": {"suspend": True}}
    )
    with pytest.raises(ApiException) as error:
        api.replace_namespaced_custom_object(GROUP, VERSION, "vision", "trainingjobs", "helmets", stale)
    assert (error.value.status, json.loads(error.value.body)["reason"]) == (409, "Conflict")
    with pytest.raises(ApiException) as error:
        api.create_namespaced_custom_object(GROUP, VERSION, "nowhere", "trainingjobs", training_job())
    assert error.value.status == 404 and "nowhere" in json.loads(error.value.body)["message"]


def test_label_and_field_selectors_on_list(kube: Any, cluster: Harness) -> None:
    core = client.CoreV1Api(kube)
    for name, labels in (("a", {"app": "x", "tier": "1"}), ("b", {"app": "x"}), ("c", {"app": "y"})):
        core.create_namespaced_config_map("vision", {"metadata": {"name": name, "labels": labels}})

    def names(**kw: Any) -> list[str]:
        return sorted(i.metadata.name for i in core.list_namespaced_config_map("vision", **kw).items)

    assert names(label_selector="app=x") == ["a", "b"]
    assert names(label_selector="app=x,tier") == ["a"]
    assert names(label_selector="app in (x, y),!tier") == ["b", "c"]
    assert names(label_selector="app!=x") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    events = client.CoreV1Api(kube)
    events.create_namespaced_event(
        "vision",
        {
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "TrainingJob", "name": "helmets", "namespace": "vision"},
            "reason": "JobCreated",
            "message": "m",
        },
    )
    found = events.list_namespaced_event(
        "vision", field_selector="involvedObject.name=helmets,involvedObject.kind=TrainingJob"
    )
    assert [e.reason for e in found.items] == ["JobCreated"]
    with pytest.raises(ApiException):
        core.list_namespaced_config_map("vision", label_selector="app=(")


def test_label_selector_grammar() -> None:
    requirement = parse_label_selector("env in (prod, staging)")[0]
    assert requirement.matches({"env": "prod"}) and not requirement.matches({"env": "dev"})
    assert [r.op for r in parse_label_selector("a=1,b==2,c!=3,d,!e,f notin (x)")] == [
        "=",
        "=",
        "!=",
        "exists",
        "!exists",
        "notin",
    ]


def test_merge_json_and_strategic_patches(kube: Any) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map("vision", {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}})
    merged = core.patch_namespaced_config_map("cm", "vision", {"data": {"a": None, "c": "3"}})  # strategic
    assert merged.data == {"b": "2", "c": "3"}
    patched = core.patch_namespaced_config_map(
        "cm",
        "vision",
        [{"op": "replace", "path": "/data/b", "value": "20"}, {"op": "remove", "path": "/data/c"}],
    )
    assert patched.data == {"b": "20"}
    with pytest.raises(ApiException) as error:
        core.patch_namespaced_config_map("cm", "vision", [{"op": "test", "path": "/data/b", "value": "2"}])
    assert error.value.status == 422


def test_finalizers_hold_deletion_and_owner_references_cascade(kube: Any, cluster: Harness) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(
        "vision", {"metadata": {"name": "owner", "finalizers": ["x/hold"]}}
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map("vision", {"metadata": {"name": "child", "ownerReferences": [ref]}})
    core.delete_namespaced_config_map("owner", "vision")
    held = core.read_namespaced_config_map("owner", "vision")
    assert held.metadata.deletion_timestamp is not None
    assert core.read_namespaced_config_map("child", "vision")  # the owner still exists
    core.patch_namespaced_config_map("owner", "vision", {"metadata": {"finalizers": None}})
    for name in ("owner", "child"):
        with pytest.raises(ApiException) as error:
            core.read_namespaced_config_map(name, "vision")
        assert error.value.status == 404


def test_jobs_orphan_their_pods_unless_asked_as_in_kubernetes(kube: Any, cluster: Harness) -> None:
    cluster.set_script(lambda pod: Outcome(seconds=60))
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    for name in ("orphaning", "cascading"):
        batch.create_namespaced_job("vision", simple_job(name))
        wait_for(
            lambda n=name: core.list_namespaced_pod("vision", label_selector=f"job-name={n}").items,
            10,
            "a pod",
        )
    batch.delete_namespaced_job("orphaning", "vision")
    batch.delete_namespaced_job("cascading", "vision", propagation_policy="Background")
    assert core.list_namespaced_pod("vision", label_selector="job-name=orphaning").items
    assert not core.list_namespaced_pod("vision", label_selector="job-name=cascading").items


def test_watch_replays_from_a_resource_version_and_filters_by_label(cluster: Harness) -> None:
    url = f"{cluster.url}/api/v1/namespaces/vision/configmaps"
    listed = requests.get(url, timeout=5).json()
    assert listed["kind"] == "ConfigMapList"
    since = listed["metadata"]["resourceVersion"]
    requests.post(url, json={"metadata": {"name": "seen", "labels": {"w": "1"}}}, timeout=5)
    requests.post(url, json={"metadata": {"name": "filtered"}}, timeout=5)
    events: list[dict[str, Any]] = []

    def watch() -> None:
        params = {"watch": "true", "resourceVersion": since, "labelSelector": "w=1", "timeoutSeconds": "2"}
        with requests.get(url, params=params, stream=True, timeout=10) as response:
            events.extend(json.loads(line) for line in response.iter_lines() if line)

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    requests.patch(
        f"{url}/seen",
        data=json.dumps({"data": {"k": "v"}}),
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=5,
    )
    thread.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "seen"),
        ("MODIFIED", "seen"),
    ]


def test_a_too_old_resource_version_is_gone(tmp_path: Any) -> None:
    with Harness(tmp_path / "small", history_limit=5) as harness:
        for i in range(10):
            harness.create("", "configmaps", "default", {"metadata": {"name": f"c{i}"}})
        url = f"{harness.url}/api/v1/namespaces/default/configmaps"
        response = requests.get(url, params={"watch": "true", "resourceVersion": "1"}, timeout=5)
        event = json.loads(response.text.splitlines()[0])
        assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_discovery_serves_our_crds_with_short_names(cluster: Harness) -> None:
    resources = requests.get(f"{cluster.url}/apis/{GROUP}/{VERSION}", timeout=5).json()["resources"]
    by_name = {r["name"]: r for r in resources}
    assert (
        by_name["trainingjobs"]["shortNames"] == ["tj"] and by_name["trainingjobs"]["kind"] == "TrainingJob"
    )
    assert "trainingjobs/status" in by_name
    core = requests.get(f"{cluster.url}/api/v1", timeout=5).json()
    assert core["groupVersion"] == "v1" and any(r["name"] == "pods" for r in core["resources"])
    assert "visioninapp.io" in {
        g["name"] for g in requests.get(f"{cluster.url}/apis", timeout=5).json()["groups"]
    }


def test_request_history_is_bounded(cluster: Harness) -> None:
    for _ in range(cluster.emulator.request_limit + 10):
        requests.get(f"{cluster.url}/api/v1/namespaces", timeout=5)
    assert len(cluster.emulator._requests) == cluster.emulator.request_limit
    assert cluster.emulator.request_counts["GET namespaces"] >= cluster.emulator.request_limit + 10


# --- controllers --------------------------------------------------------------------------------


def job_conditions(batch: Any, name: str) -> dict[str, str]:
    job = batch.read_namespaced_job(name, "vision")
    return {c.type: c.reason for c in job.status.conditions or [] if c.status == "True"}


def test_job_controller_retries_up_to_the_backoff_limit_and_keeps_the_message(
    kube: Any, cluster: Harness
) -> None:
    cluster.set_script(lambda pod: Outcome(exit_code=1, message="error: boom"))
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    batch.create_namespaced_job("vision", simple_job("failing", backoffLimit=2))
    wait_for(lambda: "Failed" in job_conditions(batch, "failing"), 10, "the Job to fail")
    assert job_conditions(batch, "failing")["Failed"] == "BackoffLimitExceeded"
    pods = core.list_namespaced_pod("vision", label_selector="batch.kubernetes.io/job-name=failing").items
    assert len(pods) == 3  # the first try and two retries
    assert pods[0].status.container_statuses[0].state.terminated.message == "error: boom"


def test_job_deadline_suspend_and_ttl(kube: Any, cluster: Harness) -> None:
    cluster.set_script(lambda pod: Outcome(seconds=30))
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    batch.create_namespaced_job("vision", simple_job("slow", activeDeadlineSeconds=1))
    wait_for(lambda: "Failed" in job_conditions(batch, "slow"), 10, "the deadline")
    assert job_conditions(batch, "slow")["Failed"] == "DeadlineExceeded"
    batch.create_namespaced_job("vision", simple_job("held", suspend=True))
    wait_for(lambda: "Suspended" in job_conditions(batch, "held"), 10, "the suspension")
    assert not core.list_namespaced_pod("vision", label_selector="job-name=held").items
    cluster.set_script(lambda pod: Outcome())
    batch.create_namespaced_job("vision", simple_job("short-lived", ttlSecondsAfterFinished=0))
    wait_for(
        lambda: not batch.list_namespaced_job("vision", field_selector="metadata.name=short-lived").items,
        10,
        "the TTL",
    )
    assert not core.list_namespaced_pod("vision", label_selector="job-name=short-lived").items


def test_scheduler_leaves_pods_pending_without_a_fitting_node(kube: Any, cluster: Harness) -> None:
    cluster.set_script(lambda pod: Outcome(seconds=30))
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    gpu_job = simple_job("two-gpus")
    gpu_job["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "2"}}
    batch.create_namespaced_job("vision", gpu_job)
    pod = wait_for(
        lambda: next(
            iter(core.list_namespaced_pod("vision", label_selector="job-name=two-gpus").items), None
        ),
        10,
        "the pod",
    )

    def scheduled_condition() -> Any:
        current = core.read_namespaced_pod(pod.metadata.name, "vision")
        return next((c for c in current.status.conditions or [] if c.type == "PodScheduled"), None)

    condition = wait_for(scheduled_condition, 10, "the scheduler's verdict")
    assert (condition.status, condition.reason) == ("False", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition.message
    tainted = simple_job("edge-only")
    tainted["spec"]["template"]["spec"]["nodeSelector"] = {"visioninapp.io/edge": "true"}
    cluster.add_node(
        "jetson-0",
        labels={"visioninapp.io/edge": "true"},
        taints=[{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}],
    )
    batch.create_namespaced_job("vision", tainted)
    waiting = wait_for(
        lambda: [
            c
            for p in core.list_namespaced_pod("vision", label_selector="job-name=edge-only").items
            for c in p.status.conditions or []
            if c.reason == "Unschedulable"
        ],
        10,
        "the taint to keep the pod off",
    )
    assert "untolerated taint" in waiting[0].message
    cluster.add_node("gpu-1", gpus=2)
    wait_for(
        lambda: core.read_namespaced_pod(pod.metadata.name, "vision").spec.node_name == "gpu-1", 10, "gpu-1"
    )


def test_pods_run_their_command_as_a_local_process_with_env_and_logs(kube: Any, cluster: Harness) -> None:
    cluster.set_script(None)
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    core.create_namespaced_secret(
        "vision", {"metadata": {"name": "creds"}, "stringData": {"TOKEN": "s3cr3t"}}
    )
    job = simple_job("real")
    job["spec"]["template"]["spec"]["containers"][0] |= {
        "command": [
            "sh",
            "-c",
            'echo "hello $TOKEN from $POD"; echo result > "$VISIONINAPP_TERMINATION_LOG"',
        ],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    batch.create_namespaced_job("vision", job)
    wait_for(lambda: "Complete" in job_conditions(batch, "real"), 20, "the process to finish")
    pod = core.list_namespaced_pod("vision", label_selector="job-name=real").items[0]
    assert pod.status.container_statuses[0].state.terminated.message == "result\n"
    assert (
        core.read_namespaced_pod_log(pod.metadata.name, "vision")
        == f"hello s3cr3t from {pod.metadata.name}\n"
    )


def test_deleting_a_pod_stops_its_process(kube: Any, cluster: Harness, tmp_path: Any) -> None:
    cluster.set_script(None)
    batch = client.BatchV1Api(kube)
    marker = tmp_path / "still-running"
    job = simple_job("sleeper")
    job["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "sh",
        "-c",
        f"trap 'exit 143' TERM; while true; do touch {marker}; sleep 0.1; done",
    ]
    batch.create_namespaced_job("vision", job)
    wait_for(marker.exists, 10, "the process to start")
    batch.delete_namespaced_job("sleeper", "vision", propagation_policy="Background")
    time.sleep(1)
    marker.unlink()
    time.sleep(0.5)
    assert not marker.exists()


def test_kubeconfig_is_usable_by_clients(cluster: Harness) -> None:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == cluster.url


def test_a_broken_pod_script_fails_its_pod_with_the_error(kube: Any, cluster: Harness) -> None:
    def broken(pod: dict[str, Any]) -> Outcome:
        raise KeyError("outputUri")

    cluster.set_script(broken)
    batch = client.BatchV1Api(kube)
    batch.create_namespaced_job("vision", simple_job("broken", backoffLimit=0))
    wait_for(lambda: "Failed" in job_conditions(batch, "broken"), 10, "the Job to fail")
    pod = client.CoreV1Api(kube).list_namespaced_pod("vision", label_selector="job-name=broken").items[0]
    assert "pod script failed: KeyError" in pod.status.container_statuses[0].state.terminated.message


def daemonset(name: str = "runtime") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "OnDelete"},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"model": "v1"}},
                "spec": {
                    "nodeSelector": {"visioninapp.io/edge": "true"},
                    "tolerations": [
                        {"key": "visioninapp.io/edge", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [{"name": "runtime", "image": "edge", "command": ["serve"]}],
                },
            },
        },
    }


def add_jetsons(cluster: Harness, count: int, ready: bool = True, start: int = 0) -> None:
    for index in range(start, start + count):
        cluster.add_node(
            f"jetson-{index}",
            labels={"visioninapp.io/edge": "true"},
            taints=[{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}],
            ready=ready,
        )


def test_daemonset_runs_one_pod_per_matching_node_and_replaces_only_deleted_pods(
    kube: Any, cluster: Harness
) -> None:
    cluster.set_script(lambda pod: Outcome(seconds=math.inf))
    add_jetsons(cluster, 3)
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_daemon_set("vision", daemonset())

    def pods() -> list[Any]:
        return core.list_namespaced_pod("vision", label_selector="app=runtime").items

    wait_for(lambda: len(pods()) == 3 and all(p.status.phase == "Running" for p in pods()), 10, "3 pods")
    assert sorted(p.spec.node_name for p in pods()) == ["jetson-0", "jetson-1", "jetson-2"]  # not gpu-0
    old_revision = pods()[0].metadata.labels["controller-revision-hash"]
    apps.patch_namespaced_daemon_set(
        "runtime", "vision", {"spec": {"template": {"metadata": {"annotations": {"model": "v2"}}}}}
    )
    time.sleep(0.5)
    assert {p.metadata.labels["controller-revision-hash"] for p in pods()} == {old_revision}  # OnDelete
    victim = next(p for p in pods() if p.spec.node_name == "jetson-1")
    core.delete_namespaced_pod(victim.metadata.name, "vision")
    wait_for(
        lambda: (
            {
                p.spec.node_name
                for p in pods()
                if p.metadata.labels["controller-revision-hash"] != old_revision
            }
            == {"jetson-1"}
        ),
        10,
        "the replacement from the new template",
    )
    status = apps.read_namespaced_daemon_set("runtime", "vision").status
    assert (status.desired_number_scheduled, status.updated_number_scheduled) == (3, 1)


def test_pods_on_a_node_that_goes_offline_are_not_ready_and_new_ones_wait(
    kube: Any, cluster: Harness
) -> None:
    cluster.set_script(lambda pod: Outcome(seconds=math.inf))
    add_jetsons(cluster, 1)
    add_jetsons(cluster, 1, ready=False, start=1)
    client.AppsV1Api(kube).create_namespaced_daemon_set("vision", daemonset())
    core = client.CoreV1Api(kube)

    def on(node: str) -> Any:
        return next(
            p
            for p in core.list_namespaced_pod("vision", label_selector="app=runtime").items
            if p.spec.node_name == node
        )

    wait_for(lambda: on("jetson-0").status.phase == "Running", 10, "the online pod")
    assert on("jetson-1").status.phase == "Pending"  # its kubelet is away
    cluster.patch(
        "",
        "nodes",
        "",
        "jetson-1",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        "status",
    )
    wait_for(lambda: on("jetson-1").status.phase == "Running", 10, "the returning node's pod")
    cluster.patch(
        "",
        "nodes",
        "",
        "jetson-0",
        {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        "status",
    )
    wait_for(lambda: not on("jetson-0").status.container_statuses[0].ready, 10, "NodeNotReady")


def test_readiness_comes_from_the_pods_http_probe(kube: Any, cluster: Harness, tmp_path: Any) -> None:
    cluster.set_script(None)
    add_jetsons(cluster, 1)
    ready_file = tmp_path / "ready"
    server = (
        "import http.server, os, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        ok = os.path.exists({str(ready_file)!r})\n"
        "        self.send_response(200 if ok else 503); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer((sys.argv[1], 8080), H).serve_forever()\n"
    )
    ds = daemonset()
    ds["spec"]["template"]["spec"]["containers"][0] |= {
        "command": ["python", "-c", server, "$(POD_IP)"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
    }
    client.AppsV1Api(kube).create_namespaced_daemon_set("vision", ds)
    core = client.CoreV1Api(kube)

    def pod() -> Any:
        return next(iter(core.list_namespaced_pod("vision", label_selector="app=runtime").items), None)

    wait_for(lambda: pod() and pod().status.phase == "Running", 10, "the server")
    time.sleep(1.5)
    assert not pod().status.container_statuses[0].ready
    ready_file.touch()
    wait_for(lambda: pod().status.container_statuses[0].ready, 10, "the probe to pass")


def test_lists_print_as_tables_with_the_crds_printer_columns(cluster: Harness) -> None:
    body = training_job()
    cluster.create(GROUP, "trainingjobs", "vision", body)
    cluster.patch(
        GROUP, "trainingjobs", "vision", "helmets", {"status": {"phase": "Running", "epoch": 3}}, "status"
    )
    accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    url = f"{cluster.url}/apis/{GROUP}/{VERSION}/namespaces/vision/trainingjobs"
    listed = requests.get(url, headers=accept, timeout=5).json()
    assert listed["kind"] == "Table"
    names = [c["name"] for c in listed["columnDefinitions"]]
    assert names[:3] == ["Name", "Phase", "Epoch"] and names[-1] == "Age"
    row = listed["rows"][0]
    assert row["cells"][:3] == ["helmets", "Running", 3] and row["cells"][-1].endswith("s")
    assert row["object"]["metadata"]["name"] == "helmets"
    one = requests.get(f"{url}/helmets", headers=accept, timeout=5).json()
    assert one["kind"] == "Table" and len(one["rows"]) == 1
    pods = requests.get(f"{cluster.url}/api/v1/namespaces/vision/pods", headers=accept, timeout=5).json()
    assert [c["name"] for c in pods["columnDefinitions"]] == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
        "IP",
        "Node",
    ]
    nodes = requests.get(f"{cluster.url}/api/v1/nodes", headers=accept, timeout=5).json()
    assert nodes["rows"][0]["cells"][:3] == ["gpu-0", "Ready", "<none>"]
    secrets = requests.get(
        f"{cluster.url}/api/v1/namespaces/vision/secrets", headers=accept, timeout=5
    ).json()
    assert [c["name"] for c in secrets["columnDefinitions"]] == ["Name", "Age"]


def test_openapi_v3_lets_kubectl_leave_validation_to_the_server(cluster: Harness) -> None:
    index = requests.get(f"{cluster.url}/openapi/v3", timeout=5).json()["paths"]
    assert {"api/v1", "apis/batch/v1", f"apis/{GROUP}/{VERSION}"} <= set(index)
    document = requests.get(
        cluster.url + index[f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"], timeout=5
    ).json()
    patch = document["paths"][f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/trainingjobs/{{name}}"][
        "patch"
    ]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": GROUP,
        "version": VERSION,
        "kind": "TrainingJob",
    }
    assert {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}} in patch["parameters"]
    schema = document["components"]["schemas"]["io.visioninapp.v1alpha1.TrainingJob"]
    assert "hyperparameters" in schema["properties"]["spec"]["properties"]  # `kubectl explain` reads it
    core = requests.get(cluster.url + index["api/v1"]["serverRelativeURL"], timeout=5).json()
    assert "/api/v1/namespaces/{namespace}/pods/{name}" in core["paths"] and not core["components"]["schemas"]
    assert requests.get(f"{cluster.url}/openapi/v3/apis/nothing/v1", timeout=5).status_code == 404


def test_non_json_bodies_get_415_so_clients_fall_back_to_json(cluster: Harness) -> None:
    response = requests.post(
        f"{cluster.url}/api/v1/namespaces",
        data=b"k8s\x00...",
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
        timeout=5,
    )
    assert response.status_code == 415 and response.json()["reason"] == "UnsupportedMediaType"


def test_a_state_file_keeps_users_objects_across_restarts(tmp_path: Any) -> None:
    state = tmp_path / "state.json"
    with Harness(tmp_path / "one", script=lambda pod: None, state_file=state) as first:
        first.create_namespace("vision")
        created = first.create(GROUP, "trainingjobs", "vision", training_job())
        first.patch(GROUP, "trainingjobs", "vision", "helmets", {"status": {"phase": "Running"}}, "status")
        first.create("batch", "jobs", "vision", {"metadata": {"name": "derived"}, "spec": {"template": {}}})
    with Harness(tmp_path / "two", script=lambda pod: None, state_file=state) as second:
        restored = second.get(GROUP, "trainingjobs", "vision", "helmets")
        assert restored is not None
        assert restored["metadata"]["uid"] == created["metadata"]["uid"]
        assert restored["status"]["phase"] == "Running"
        assert second.list("batch", "jobs", "vision") == []  # the operator recreates what it derives
        assert {n["metadata"]["name"] for n in second.list("", "namespaces")} >= {"default", "vision"}
