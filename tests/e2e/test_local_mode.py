"""Local mode end to end, as a user runs it: `visioninapp local up` driven by a real kubectl (1.35),
a crash and a second `up`, and `visioninapp demo` in CI mode from a clean state.

The first test configures the real services (S3, RabbitMQ Streams, MariaDB, Redis, Elasticsearch)
and checks that local mode uses them; the others run on the embedded defaults.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pymysql
import pytest
import requests
import yaml

from tests.services import kube_tools
from visioninapp.backends.rabbitmq import RabbitStreamBus
from visioninapp.datasets import split_images
from visioninapp.edge.evaluate import evaluate
from visioninapp.edge.inference import Detector
from visioninapp.events import TrainingEvent
from visioninapp.local.mode import session_processes
from visioninapp.local.synth import CLASS_NAMES

pytestmark = [pytest.mark.slow, pytest.mark.services]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples" / "local"
CLI = str(Path(sys.executable).parent / "visioninapp")


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any VisionInApp or kube settings (embedded defaults), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONINAPP_") and k != "KUBECONFIG"}
    return {**env, **extra}


def _session_processes(data_dir: Path) -> list[str]:
    """Command lines of the processes that carry this local session's marker."""
    return list(session_processes(data_dir).values())


def _wait_gone(data_dir: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := _session_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"


class LocalUp:
    """`visioninapp local up` as a real process; its output goes to a file."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir, self.env = data_dir, env
        self.log = data_dir.parent / f"{data_dir.name}-up.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self, timeout: float = 120) -> LocalUp:
        self.offset = self.log.stat().st_size if self.log.exists() else 0  # a restart appends
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [CLI, "local", "up", "--data-dir", str(self.data_dir), "--port", "0", "--kube-port", "0"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while "local mode is up" not in self.output():
            assert self.process.poll() is None, f"local up exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"local up not ready in {timeout} s:\n{self.output()}"
            time.sleep(0.3)
        return self

    def output(self) -> str:
        """What this run printed (not an earlier run in the same directory)."""
        return self.log.read_bytes()[self.offset :].decode(errors="replace") if self.log.exists() else ""

    @property
    def api_url(self) -> str:
        line = next(line for line in self.output().splitlines() if line.strip().startswith("console"))
        return line.split()[-1].rstrip("/")

    def interrupt(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [str(kube_tools() / "kubectl"), *args],
            env={**os.environ, "KUBECONFIG": str(self.data_dir / "local" / "kubeconfig")},
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout + result.stderr


@pytest.fixture
def started() -> Iterator[list[LocalUp]]:
    """Every `local up` a test starts is stopped at the end, whatever happened."""
    ups: list[LocalUp] = []
    yield ups
    for up in ups:
        if up.process is not None and up.process.poll() is None:
            up.interrupt()


def _examples(epochs: int) -> str:
    """manifests/examples/local/ as a kubectl input, with fewer epochs to keep the test short."""
    documents = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "TrainingJob":
                doc["spec"]["hyperparameters"]["epochs"] = epochs
            documents.append(doc)
    return yaml.safe_dump_all(documents)


def _columns(table: str, name: str) -> dict[str, str]:
    """One row of `kubectl get` output as {HEADER: value} (empty cells become ''); a header may hold
    one space (`NOMINATED NODE`), columns are at least three apart."""
    header, *rows = table.splitlines()
    titles = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    row = next(r for r in rows if r.split()[0] == name)
    ends = [start for start, _ in titles[1:]] + [None]
    return {title: row[start:end].strip() for (start, title), end in zip(titles, ends, strict=True)}


def test_kubectl_drives_local_mode_on_the_real_services(
    tmp_path: Path,
    started: list[LocalUp],
    s3_endpoint: str,
    rabbitmq_stream_port: int,
    mariadb_server: str,
    redis_url: str,
    elasticsearch_url: str,
) -> None:
    tag = uuid.uuid4().hex[:8]
    bucket, database = f"local-{tag}", f"local_{tag}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    connection = pymysql.connect(host="127.0.0.1", user="root")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
    env = _clean_env(
        VISIONINAPP_S3_ENDPOINT_URL=s3_endpoint,
        VISIONINAPP_ARTIFACTS_URI=f"s3://{bucket}/platform",
        VISIONINAPP_RABBITMQ_HOST="127.0.0.1",
        VISIONINAPP_TRAINING_STREAM=f"training-events-{tag}",
        VISIONINAPP_EDGE_STREAM=f"edge-events-{tag}",
        VISIONINAPP_DATABASE_URL=f"{mariadb_server}/{database}",
        VISIONINAPP_REDIS_URL=redis_url,
        VISIONINAPP_ELASTICSEARCH_URL=elasticsearch_url,
        VISIONINAPP_SEARCH_INDEX_PREFIX=f"local-{tag}",
    )
    data_dir = tmp_path / "local"
    up = LocalUp(data_dir, env).start()
    started.append(up)

    nodes = up.kubectl("get", "nodes")
    assert _columns(nodes, "local-cpu-0")["STATUS"] == "Ready"
    assert _columns(nodes, "local-edge-0")["ROLES"] == "edge"
    applied = up.kubectl("apply", "-f", "-", input=_examples(epochs=6))
    assert "trainingjob.visioninapp.io/shapes-yolo11n created" in applied
    assert "edgedeployment.visioninapp.io/shapes-edge created" in applied

    deadline = time.monotonic() + 400
    while (row := _columns(up.kubectl("get", "tj"), "shapes-yolo11n"))["PHASE"] not in (
        "Succeeded",
        "Failed",
    ):
        assert time.monotonic() < deadline, f"training did not finish: {row}\n{up.output()}"
        time.sleep(1)
    described = up.kubectl("describe", "tj", "shapes-yolo11n")
    assert row["PHASE"] == "Succeeded", described
    float(row["MAP50-95"])  # the printer column shows the run's metric
    assert row["EPOCH"] == "6" and row["ARTIFACT"] == "shapes-yolo11n"
    # Live progress, however fast this machine trains: each epoch went out on the stream as it
    # ended, in order, before the run completed (completionTime has 1 s resolution).
    bus = RabbitStreamBus("127.0.0.1", rabbitmq_stream_port)
    try:
        events = [TrainingEvent.from_bytes(m.body) for m in bus.read(f"training-events-{tag}", 0, 10_000)]
    finally:
        bus.close()
    epochs = [e for e in events if e.type == "epoch" and e.training_job == "shapes-yolo11n"]
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5, 6], events
    assert [e.time for e in epochs] == sorted(e.time for e in epochs)
    status = json.loads(up.kubectl("get", "tj", "shapes-yolo11n", "-o", "json"))["status"]
    completed = datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
    assert epochs[-1].time < completed + timedelta(seconds=1), (epochs[-1], status)

    deadline = time.monotonic() + 180
    while _columns(up.kubectl("get", "ed"), "shapes-edge")["PHASE"] != "Healthy":
        assert time.monotonic() < deadline, up.kubectl("describe", "ed", "shapes-edge")
        time.sleep(1)
    assert _columns(up.kubectl("get", "ma"), "shapes-yolo11n")["PHASE"] == "Available"
    pods = up.kubectl("get", "pods", "-o", "wide", "-l", "visioninapp.io/edge-deployment=shapes-edge")
    edge_pod = pods.splitlines()[1].split()[0]
    assert _columns(pods, edge_pod)["NODE"] == "local-edge-0"
    assert _columns(pods, edge_pod)["READY"] == "1/1"

    logs = subprocess.run(
        [CLI, "logs", "tj/shapes-yolo11n", "--kubeconfig", str(data_dir / "local" / "kubeconfig")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert logs.returncode == 0 and "epoch" in logs.stdout.lower(), logs.stderr

    # the real services were used: artifacts in S3, history in MariaDB through the API
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="platform/")["Contents"]]
    assert "platform/datasets/shapes/v1/data.yaml" in keys
    assert any(k.startswith("platform/demo/shapes-yolo11n/") and k.endswith(".onnx") for k in keys)
    deadline = time.monotonic() + 30
    while True:
        with pymysql.connect(host="127.0.0.1", user="root", database=database) as db, db.cursor() as cursor:
            cursor.execute("SELECT phase FROM training_runs WHERE name = 'shapes-yolo11n'")
            runs = cursor.fetchall()
        if runs == (("Succeeded",),):
            break
        assert time.monotonic() < deadline, f"the API's run history in MariaDB: {runs}"
        time.sleep(1)
    jobs = requests.get(f"{up.api_url}/api/v1/projects/demo/training-jobs", timeout=10).json()
    assert [j["name"] for j in jobs["items"]] == ["shapes-yolo11n"]
    # The seeded dataset is a dataset of the project, with a version (edge frames can join it).
    shapes = requests.get(f"{up.api_url}/api/v1/projects/demo/datasets/shapes", timeout=10).json()
    assert [v["version"] for v in shapes["versions"]] == [1], shapes
    assert shapes["versions"][0]["images"]["train"] > 0 and shapes["versions"][0]["classNames"], shapes

    deleted = up.kubectl("delete", "-f", "-", input=_examples(epochs=6))
    assert 'trainingjob.visioninapp.io "shapes-yolo11n" deleted' in deleted
    assert "No resources found" in up.kubectl("get", "tj")

    assert up.interrupt() == 0, up.output()
    assert "stopping local mode" in up.output()
    _wait_gone(data_dir, 10)


def test_a_second_up_after_a_crash_works_and_nothing_is_orphaned(
    tmp_path: Path, started: list[LocalUp]
) -> None:
    data_dir = tmp_path / "local"
    first = LocalUp(data_dir, _clean_env()).start()
    started.append(first)
    first.kubectl("apply", "-f", "-", input=_examples(epochs=40))
    deadline = time.monotonic() + 120
    while not any("visioninapp-trainer" in p for p in _session_processes(data_dir)):
        assert time.monotonic() < deadline, first.kubectl("describe", "tj", "shapes-yolo11n")
        time.sleep(0.5)

    first.kill()  # SIGKILL: no cleanup of its own
    _wait_gone(data_dir, 20)  # the operator, the API and the trainer pod die with it

    second = LocalUp(data_dir, _clean_env()).start()
    started.append(second)
    nodes = second.kubectl("get", "nodes")
    assert _columns(nodes, "local-edge-0")["STATUS"] == "Ready"
    assert requests.get(f"{second.api_url}/readyz", timeout=10).status_code == 200
    # what the user applied survived: the run is back and the operator starts its trainer again
    assert _columns(second.kubectl("get", "tj"), "shapes-yolo11n")["PHASE"] in ("Pending", "Running")
    deadline = time.monotonic() + 120
    while not any("visioninapp-trainer" in p for p in _session_processes(data_dir)):
        assert time.monotonic() < deadline, second.kubectl("describe", "tj", "shapes-yolo11n")
        time.sleep(0.5)
    assert second.interrupt() == 0, second.output()
    _wait_gone(data_dir, 10)


def test_a_second_up_in_the_same_directory_is_refused(tmp_path: Path, started: list[LocalUp]) -> None:
    data_dir = tmp_path / "local"
    started.append(LocalUp(data_dir, _clean_env()).start())
    second = subprocess.run(
        [CLI, "local", "up", "--data-dir", str(data_dir), "--port", "0", "--kube-port", "0"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "already running" in second.stderr


def test_demo_in_ci_mode_trains_rolls_out_detects_and_closes_the_loop(tmp_path: Path) -> None:
    """`visioninapp demo --loop` once (CI time matters), unattended from the first apply, in the
    production topology: a training cluster and an edge cluster of three simulated Jetsons, each with
    its operator (roles training and rollout), joined by the artifact mirror. v1 trained on upright
    shapes, rolled out; then rotated shapes reach the edge, its hard frames are reviewed through the
    API, the RetrainPolicy fine-tunes, gates and promotes v2 (in the training cluster), the promotion
    reaches the edge cluster, the canary rolls it out to every node, v1 is archived in both."""
    data_dir = tmp_path / "demo"
    command = [CLI, "demo", "--loop", "--edge-cluster", "--edge-nodes", "3", "--data-dir", str(data_dir)]
    result = subprocess.run(
        [*command, "--port", "0", "--kube-port", "0"],
        env=_clean_env(CI="true", COLUMNS="160"),
        capture_output=True,
        text=True,
        timeout=540,  # below pytest's own 600 s, so a slow run fails here, with the demo's output
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    # Its time (3 min 43 s on 2 quiet cores, goal 8 min) is the README's measurement, not a bound
    # here: the suite must not depend on how fast, or how busy, the machine is.
    summary: dict[str, Any] = json.loads((data_dir / "demo-summary.json").read_text())
    assert summary["trainingPhase"] == "Succeeded"
    assert summary["artifactPhase"] == "Available"
    assert summary["rolloutPhase"] == "Healthy"
    assert summary["mAP50"] >= 0.5, summary
    assert summary["classesDetected"] and set(summary["classesDetected"]) <= set(CLASS_NAMES)
    # the right classes: on most validation images the most confident detection is a labelled shape
    assert len(summary["samples"]) == 16 and summary["classAccuracy"] >= 0.75, summary["samples"]
    assert all(Path(p).stat().st_size > 0 for p in summary["annotated"])
    # the exported ONNX, served by the edge runtime's detector, scores what the trainer reported
    onnx = next((data_dir / "artifacts" / "demo" / "shapes-yolo11n").rglob("model.onnx"))
    served = evaluate(Detector(onnx), split_images(data_dir / "local" / "shapes", "val"))
    assert abs(served.map50 - summary["mAP50"]) < 0.05, (served, summary["mAP50"])
    assert "detections by the edge runtime" in result.stdout

    loop = summary["loop"]
    v1, v2 = loop["v1"]["name"], loop["v2"]["name"]
    assert v1 == "shapes-yolo11n" and loop["policyPhase"] == "Promoted"
    assert loop["v2"]["stage"] == "production" and loop["v1"]["stage"] == "archived"
    assert summary["edgeCluster"] and summary["edgeNodes"] == [f"local-edge-{i}" for i in range(3)]
    assert "edge cluster" in result.stdout and "training cluster" in result.stdout
    assert len(loop["edgePods"]) == 3 and all(m == v2 for m in loop["edgePods"].values()), loop["edgePods"]
    # the promotion and the archiving reached the edge cluster's copies through the mirror
    assert loop["edgeClusterStages"] == {v1: "archived", v2: "production"}, loop["edgeClusterStages"]
    # v2 learnt the variant; the held-out set (original style, never trained on) did not suffer
    assert loop["variantImages"] >= 50
    assert loop["variantMAP50"]["v2"] >= loop["variantMAP50"]["v1"] + 0.2, loop["variantMAP50"]
    held = loop["heldOut"]
    assert held["passed"] and held["v1"]["mAP50_95"] - held["v2"]["mAP50_95"] <= held["maxDrop"], held
    assert held["uri"] != loop["datasetVersion"]["uri"]
    # every label of the dataset version was reviewed by the labeller: none auto-accepted
    provenance = loop["datasetVersion"]["provenance"]
    assert provenance["autoAcceptedLabels"] == 0 and provenance["autoAcceptedFrames"] == 0, provenance
    added = provenance["addedFrames"]
    assert len(added) >= 48 and set(added) <= set(loop["reviewed"]), provenance
    assert provenance["reviewedFrames"] == len(added) and provenance["reviewedLabels"] > 0
    assert all(f["reviewStatus"] == "reviewed" and f["reviewedBy"] for f in loop["frames"])
    # a frame's history holds the labeller's changes (through the review API), then its acceptance
    actions = [change["action"] for change in loop["history"]]
    assert "accept" in actions and set(actions) & {"add", "move", "relabel", "edit", "delete"}, actions
    assert actions.index("accept") > 0 and all(change["who"] for change in loop["history"])
    # lineage through the API: v2 → dataset version → frames → deployment → v1
    lineage = loop["v2"]["lineage"]
    assert lineage["baseModel"] == v1 and lineage["dataset"] == loop["datasetVersion"]["uri"]
    # hard frames from every node (each node's picker keeps its share of the policy's N)
    assert {(f["deployment"], f["node"], f["model"]) for f in loop["frames"]} == {
        ("shapes-edge", node, v1) for node in summary["edgeNodes"]
    }
    assert len(loop["lineage"]) == 5 and v1 in loop["lineage"][-1] and "archived" in loop["lineage"][-1]
    assert "lineage (through the API)" in result.stdout
    _wait_gone(data_dir, 10)
