from __future__ import annotations
import json, time, uuid, math, threading
from pathlib import Path
from typing import Any
import helm_python, yaml, pytest
from tests.k8s.conftest import wait_for
from tests.k8s.test_operator import successful_trainer, training_job
from visioninapp.cluster.agent import Outcome
from visioninapp.cluster.cluster import Cluster
from visioninapp.kubeclient import KubeError

REPO = Path(__file__).resolve().parents[2]
GROUP = "visioninapp.io"
RBAC = "rbac.authorization.k8s.io"
pytestmark = [pytest.mark.services]
Obj = dict[str, Any]

def render(values, release, namespace):
    chart = helm_python.Chart.load(str(REPO / "charts" / "visioninapp"))
    out = chart.render(values, name=release, namespace=namespace, is_install=True)
    return [d for p, t in out.items() if p.endswith(".yaml") and "rbac" in p or p.endswith("serviceaccounts.yaml") for d in yaml.safe_load_all(t) if d]

PLURAL = {"ServiceAccount": ("", "serviceaccounts"), "ClusterRole": (RBAC, "clusterroles"),
          "ClusterRoleBinding": (RBAC, "clusterrolebindings"), "Role": (RBAC, "roles"), "RoleBinding": (RBAC, "rolebindings")}

def grants(role):
    return {(v, g, r) for rule in role["rules"] for v in rule["verbs"] for g in rule["apiGroups"] for r in rule["resources"]}

class Audit:
    def __init__(self, path: Path):
        self.path, self.offset, self.events, self.lock = path, 0, [], threading.Lock()
    def poll(self):
        with self.lock:
            with self.path.open("rb") as f:
                f.seek(self.offset); data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for line in data[:end].decode().splitlines():
                if '"username":"system:serviceaccount:' in line:
                    self.events.append(json.loads(line))
            return len(self.events)
    def of(self, user, since=0):
        self.poll()
        return [e for e in self.events[since:] if e["user"]["username"] == user]

def grant_of(e):
    ref = e.get("objectRef")
    if not ref: return None
    res = ref["resource"] + ("/" + ref["subresource"] if ref.get("subresource") else "")
    return (e["verb"], ref.get("apiGroup", ""), res)

def phase(cluster, plural, ns, name):
    return ((cluster.get(GROUP, plural, ns, name) or {}).get("status") or {}).get("phase")

def test_proto(cluster: Cluster, operator_factory: Any, s3_endpoint: str, tmp_path: Path) -> None:
    import boto3
    T = time.monotonic()
    def lap(what):
        print(f"{time.monotonic()-T:7.2f} {what}", flush=True)
    for plural in ("trainingjobs", "modelartifacts", "edgedeployments"):
        def ok(p=plural):
            try:
                cluster.list(GROUP, p, cluster.namespace); return True
            except KubeError:
                return False
        wait_for(ok, 30, "storage")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"rbac-{uuid.uuid4().hex[:8]}"; s3.create_bucket(Bucket=bucket)
    ns = f"{cluster.namespace}-both"
    cluster.create_namespace(ns)
    release = f"r{uuid.uuid4().hex[:6]}"
    docs = render({"operator": {"namespaces": [f"{ns}*"]}}, release, ns)
    made = []
    for d in docs:
        if d["kind"] in PLURAL:
            g, p = PLURAL[d["kind"]]
            n = None if d["kind"].startswith("Cluster") else d["metadata"].get("namespace", ns)
            cluster.create(g, p, n, {k: v for k, v in d.items() if k not in ("apiVersion", "kind")})
            made.append((g, p, n, d["metadata"]["name"]))
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-operator"))
    audit = Audit(cluster.plane.audit_log)
    try:
        sa = f"{release}-visioninapp-operator"
        user = f"system:serviceaccount:{ns}:{sa}"
        token = cluster.service_account_token(ns, sa)
        kc = cluster.write_kubeconfig(tmp_path / "op.kubeconfig", ns, token)
        trainer = successful_trainer(s3)
        def script(pod):
            labels = pod["metadata"]["labels"]
            if "job-name" in labels:
                if labels.get("visioninapp.io/training-job", "").startswith("long"):
                    return Outcome(seconds=600)
                return trainer(pod)
            return Outcome(seconds=math.inf, ready=True)
        cluster.set_script(script)
        cluster.add_node("gpu-1", gpus=8, labels={"agentpool": "gpu"})
        cluster.add_node("jetson-0", labels={"visioninapp.io/edge": "true"},
                         taints=[{"key": "visioninapp.io/edge", "value": "true", "effect": "NoSchedule"}])
        lap("setup")
        op = operator_factory(cluster, KUBECONFIG=str(kc), VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint,
                              VISIONINAPP_ARTIFACTS_URI=f"s3://{bucket}/runs",
                              VISIONINAPP_OPERATOR_NAMESPACES=json.dumps([f"{ns}*"]),
                              VISIONINAPP_OPERATOR_ROLLOUT_RESYNC_SECONDS="0.3")
        for name in ("v1", "v2", "long", "long-doomed"):
            cluster.create(GROUP, "trainingjobs", ns, training_job(name))
        wait_for(lambda: phase(cluster, "trainingjobs", ns, "v1") == "Succeeded", 60, "v1", op)
        lap("v1 succeeded")
        wait_for(lambda: phase(cluster, "modelartifacts", ns, "v1") == "Available", 60, "v1 MA", op)
        lap("v1 available")
        tuned = training_job("v3"); tuned["spec"]["model"] = {"baseModel": "v1"}
        cluster.create(GROUP, "trainingjobs", ns, tuned)
        wait_for(lambda: phase(cluster, "trainingjobs", ns, "long") == "Running", 60, "long", op)
        lap("long running")
        cluster.patch(GROUP, "trainingjobs", ns, "long", {"spec": {"suspend": True}})
        wait_for(lambda: cluster.get("batch", "jobs", ns, "long-1") is None, 30, "suspend", op)
        lap("suspended")
        wait_for(lambda: phase(cluster, "trainingjobs", ns, "long-doomed") == "Running", 60, "long-doomed", op)
        cluster.delete(GROUP, "trainingjobs", ns, "long-doomed")
        wait_for(lambda: cluster.get(GROUP, "trainingjobs", ns, "long-doomed") is None, 30, "tj gone", op)
        cluster.delete("batch", "jobs", ns, "long-doomed-1")
        wait_for(lambda: cluster.get("batch", "jobs", ns, "long-doomed-1") is None, 30, "doomed job gone", op)
        lap("doomed gone")
        # adopt
        adopted = training_job("adopted"); adopted["spec"]["suspend"] = True
        tj = cluster.create(GROUP, "trainingjobs", ns, adopted)
        wait_for(lambda: phase(cluster, "trainingjobs", ns, "adopted") == "Suspended", 30, "adopted suspended", op)
        config = {"name": "adopted", "attempt": 1, "outputUri": f"s3://{bucket}/runs/adopted",
                  "spec": {"hyperparameters": {"epochs": 3, "imgsz": 320}}}
        cluster.create("batch", "jobs", ns, {"metadata": {"name": "adopted-1", "labels": {"visioninapp.io/training-job": "adopted"},
            "ownerReferences": [{"apiVersion": "visioninapp.io/v1alpha1", "kind": "TrainingJob", "name": "adopted", "uid": tj["metadata"]["uid"]}]},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "ghcr.io/visioninapp/trainer:test",
                "env": [{"name": "VISIONINAPP_TRAINER_CONFIG_JSON", "value": json.dumps(config)}]}]}}}})
        cluster.patch(GROUP, "trainingjobs", ns, "adopted", {"spec": {"suspend": False}})
        wait_for(lambda: phase(cluster, "trainingjobs", ns, "adopted") == "Succeeded", 60, "adopted", op)
        lap("adopted")
        late = f"{ns}-late"; cluster.create_namespace(late)
        cluster.create(GROUP, "trainingjobs", late, training_job("v1"))
        wait_for(lambda: phase(cluster, "trainingjobs", late, "v1") == "Succeeded", 60, "late", op)
        lap("late ns")
        wait_for(lambda: phase(cluster, "modelartifacts", ns, "v2") == "Available", 60, "v2 MA", op)
        wait_for(lambda: phase(cluster, "modelartifacts", ns, "v3") == "Available", 60, "v3 MA", op)
        lap("v2 v3 available")
        cluster.create(GROUP, "edgedeployments", ns, {"metadata": {"name": "gate"}, "spec": {"modelRef": "v1", "strategy": {"healthGate": {"minReadySeconds": 1}}}})
        wait_for(lambda: phase(cluster, "edgedeployments", ns, "gate") == "Healthy", 60, "gate", op)
        lap("gate healthy")
        def serving(m):
            s = (cluster.get(GROUP, "edgedeployments", ns, "gate") or {}).get("status") or {}
            return s.get("currentModel") == m and s.get("phase") == "Healthy"
        cluster.patch(GROUP, "edgedeployments", ns, "gate", {"spec": {"modelRef": "v2"}})
        wait_for(lambda: serving("v2"), 60, "v2", op)
        lap("gate v2")
        cluster.patch(GROUP, "edgedeployments", ns, "gate", {"metadata": {"annotations": {"visioninapp.io/rollout-action": "rollback"}}})
        wait_for(lambda: "visioninapp.io/rollout-action" not in (cluster.get(GROUP, "edgedeployments", ns, "gate")["metadata"].get("annotations") or {}), 60, "rollback", op)
        lap("rollback")
        cluster.create(GROUP, "edgedeployments", ns, {"metadata": {"name": "waiting"}, "spec": {"modelRef": "nope"}})
        wait_for(lambda: any(c["type"] == "ModelReady" and c["status"] == "False" for c in ((cluster.get(GROUP, "edgedeployments", ns, "waiting") or {}).get("status") or {}).get("conditions", [])), 30, "waiting", op)
        lap("waiting")
        cluster.delete(GROUP, "edgedeployments", ns, "gate")
        wait_for(lambda: not cluster.get(GROUP, "modelartifacts", ns, "v2")["metadata"].get("finalizers"), 30, "finalizer off", op)
        lap("gate deleted")
        time.sleep(1)
        used, denied = set(), []
        for e in audit.of(user):
            g = grant_of(e)
            if e["responseStatus"]["code"] == 403:
                denied.append((g, e["responseStatus"].get("message", "")[:200]))
            elif g:
                used.add(g)
        allowed = grants(role)
        print("DENIED", denied)
        print("USED-ALLOWED", used - allowed)
        print("ALLOWED-USED", allowed - used)
    finally:
        print(op.log()[-2000:])
        for g, p, n, name in made:
            if n is None:
                cluster.delete(g, p, None, name)
