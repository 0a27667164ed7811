"""`visioninapp demo`: the whole loop on this machine through the real platform, in a few minutes.

It starts local mode (a real Kubernetes control plane with two local nodes, the operator, the API
and the console), draws the synthetic shapes
dataset into the artifact store, applies `manifests/examples/local/` as `kubectl apply` would (a
TrainingJob sized for a CPU and an EdgeDeployment of its model), follows the run from the
TrainingJob's status, waits for the rollout to the simulated Jetson, sends validation images to
the edge runtime there, prints its detections, saves an annotated image and prints the mAP. With
`--loop` it then closes the loop (visioninapp/local/loop.py): hard frames of a new kind, reviewed
through the API, a RetrainPolicy's fine-tune, its quality gate, the promotion and the canary.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import requests
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from visioninapp.local.mode import LOCAL_NAMESPACE, LocalPlatform, seed_dataset, shapes_copy
from visioninapp.local.synth import CLASS_NAMES
from visioninapp.settings import Settings

if TYPE_CHECKING:
    from visioninapp.local.loop import Measure

__all__ = ["EXAMPLES", "DemoError", "class_accuracy", "run_demo"]

GROUP, VERSION = "visioninapp.io", "v1alpha1"
EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "local"
PLURALS = {
    "TrainingJob": "trainingjobs",
    "ModelArtifact": "modelartifacts",
    "EdgeDeployment": "edgedeployments",
}
COLOURS = [(66, 135, 245), (245, 158, 66), (80, 200, 120), (220, 80, 200)]
TRAINING_TIMEOUT = 900.0
ROLLOUT_TIMEOUT = 180.0
SAMPLE_IMAGES = 4
DEMO_MARKER = ".visioninapp-demo"


class DemoError(RuntimeError):
    """The demo could not finish; the message says where it stopped."""


def _manifests(directory: Path) -> list[dict[str, Any]]:
    if not directory.is_dir():
        raise DemoError(f"{directory}: no such directory of example manifests (pass --manifests DIR)")
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    order = list(PLURALS)
    documents.sort(key=lambda d: order.index(d["kind"]) if d.get("kind") in order else len(order))
    unknown = [d.get("kind") for d in documents if d.get("kind") not in PLURALS]
    if unknown or not documents:
        raise DemoError(
            f"{directory}: expected TrainingJob/ModelArtifact/EdgeDeployment manifests, got {unknown}"
        )
    elsewhere = [
        d["metadata"]["name"]
        for d in documents
        if d["metadata"].get("namespace", LOCAL_NAMESPACE) != LOCAL_NAMESPACE
    ]
    if elsewhere:
        raise DemoError(
            f"{', '.join(elsewhere)}: the demo runs in namespace {LOCAL_NAMESPACE}; set it or leave it out"
        )
    return documents


class _Cluster:
    """The few calls the demo makes, through the kubernetes client and the platform's kubeconfigs:
    EdgeDeployments and their pods in the edge cluster when there is one, the rest in training's."""

    def __init__(self, kubeconfig: Path, edge_kubeconfig: Path | None = None) -> None:
        import kubernetes

        from visioninapp.podlogs import api_client

        training, _ = api_client(kubeconfig)
        edge = api_client(edge_kubeconfig)[0] if edge_kubeconfig is not None else training
        self.custom: Any = kubernetes.client.CustomObjectsApi(training)
        self.edge_custom: Any = kubernetes.client.CustomObjectsApi(edge)
        self.edge_core: Any = kubernetes.client.CoreV1Api(edge)

    def _api(self, kind: str, edge: bool = False) -> Any:
        return self.edge_custom if edge or kind == "EdgeDeployment" else self.custom

    def apply(self, obj: dict[str, Any]) -> None:
        self._api(obj["kind"]).create_namespaced_custom_object(
            GROUP, VERSION, LOCAL_NAMESPACE, PLURALS[obj["kind"]], obj
        )

    def patch(self, kind: str, name: str, body: dict[str, Any]) -> None:
        """A JSON merge patch (a null removes the field)."""
        self._api(kind).patch_namespaced_custom_object(
            GROUP, VERSION, LOCAL_NAMESPACE, PLURALS[kind], name, body
        )

    def get(self, kind: str, name: str, edge: bool = False) -> dict[str, Any]:
        """The object ({} if absent); `edge`: its copy in the edge cluster (a mirrored ModelArtifact)."""
        from kubernetes.client import ApiException

        try:
            found = self._api(kind, edge).get_namespaced_custom_object(
                GROUP, VERSION, LOCAL_NAMESPACE, PLURALS[kind], name
            )
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
        return dict(found)

    def edge_pods(self, deployment: str) -> list[Any]:
        pods = self.edge_core.list_namespaced_pod(
            LOCAL_NAMESPACE, label_selector=f"visioninapp.io/edge-deployment={deployment}"
        )
        return list(pods.items)


def _wait(
    platform: LocalPlatform,
    what: str,
    check: Callable[[], bool],
    timeout: float,
    failed: Callable[[], str | None],
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        platform.check()
        reason = failed()
        if reason:
            raise DemoError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _follow_training(
    platform: LocalPlatform, cluster: _Cluster, name: str, console: Console
) -> dict[str, Any]:
    columns = (
        TextColumn("training {task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs  {task.fields[metrics]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=None, name=name, metrics="waiting for the trainer pod")
        deadline = time.monotonic() + TRAINING_TIMEOUT
        while True:
            platform.check()
            tj = cluster.get("TrainingJob", name)
            status = tj.get("status") or {}
            phase = status.get("phase", "Pending")
            metrics = status.get("metrics") or {}
            progress.update(
                task,
                total=status.get("epochs") or tj.get("spec", {}).get("hyperparameters", {}).get("epochs"),
                completed=status.get("epoch", 0),
                metrics=f"{phase}  mAP50 {metrics.get('mAP50', 0):.3f}" if metrics else phase,
            )
            if phase in ("Succeeded", "Failed"):
                break
            if time.monotonic() > deadline:
                raise DemoError(f"training did not finish in {TRAINING_TIMEOUT:.0f} s (phase {phase})")
            time.sleep(0.5)
    if phase != "Succeeded":
        raise DemoError(
            f"TrainingJob {name} {phase}: {status.get('message', '')}; see `visioninapp logs tj/{name}`"
        )
    return tj


def _annotate(image: np.ndarray, detections: list[dict[str, Any]], scale: int = 4) -> np.ndarray:
    out = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for d in detections:
        x1, y1, x2, y2 = (int(v * scale) for v in d["box"])
        colour = COLOURS[d["classId"] % len(COLOURS)]
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        label = f"{d['className']} {d['score']:.2f}"
        cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return out


def _detect(edge_url: str, node: str, dataset: Path, out: Path, console: Console) -> list[dict[str, Any]]:
    """Send every validation image to the edge runtime; print the first few as a table and save them
    annotated. Returns per image what was labelled and what was detected (most confident first)."""
    table = Table(title=f"detections by the edge runtime on {node} ({edge_url})")
    for column in ("image", "class", "score", "box (x1, y1, x2, y2)", "labelled"):
        table.add_column(column)
    samples = []
    for index, path in enumerate(sorted((dataset / "images" / "val").glob("*.jpg"))):
        response = requests.post(f"{edge_url}/v1/detect", data=path.read_bytes(), timeout=30)
        response.raise_for_status()
        detections = sorted(response.json()["detections"], key=lambda d: -d["score"])
        lines = (dataset / "labels" / "val" / f"{path.stem}.txt").read_text().splitlines()
        labelled = sorted(CLASS_NAMES[int(line.split()[0])] for line in lines if line.strip())
        samples.append(
            {"image": path.name, "labelled": labelled, "detected": [d["className"] for d in detections]}
        )
        if index >= SAMPLE_IMAGES:
            continue
        for d in detections or [{"className": "-", "score": 0.0, "box": []}]:
            box = ", ".join(f"{v:.0f}" for v in d["box"])
            table.add_row(path.name, d["className"], f"{d['score']:.2f}", box, ", ".join(labelled))
        image = cv2.imread(str(path))
        if image is not None:
            cv2.imwrite(str(out / f"annotated-{path.stem}.jpg"), _annotate(image, detections))
    console.print(table)
    return samples


def class_accuracy(samples: list[dict[str, Any]]) -> float:
    """Share of images whose most confident detection is one of the shapes labelled in them."""
    right = sum(1 for s in samples if s["detected"] and s["detected"][0] in s["labelled"])
    return right / len(samples) if samples else 0.0


def _close_loop(
    platform: LocalPlatform,
    cluster: _Cluster,
    summary: dict[str, Any],
    dirs: tuple[Path, Path],
    console: Console,
    started: float,
    map50: Measure,
) -> None:
    """`--loop`: from the demo's v1 to a fine-tuned v2 in production (visioninapp/local/loop.py); its
    summary joins the demo's, under `loop`."""
    from visioninapp.local.loop import LoopError, run_loop

    dataset, data_dir = dirs
    try:
        summary["loop"] = run_loop(
            platform,
            cluster,
            artifact=summary["modelArtifact"],
            deployment=summary["edgeDeployment"],
            dataset_copy=dataset,
            work=data_dir / "loop",
            console=console,
            follow_training=lambda name: _follow_training(platform, cluster, name, console),
            map50=map50,
        )
    except LoopError as error:
        raise DemoError(f"the loop stopped: {error}") from None
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (data_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"the demo and the closed loop took {summary['seconds']} s")


def _keep_running(platform: LocalPlatform, console: Console) -> None:
    console.print(
        f"\nthe platform keeps running: console {platform.api_url}/ , "
        f"`export KUBECONFIG={platform.kubeconfig}`, then `kubectl get visioninapp -A`; "
        "Ctrl-C stops it"
    )
    try:
        platform.wait()
    except KeyboardInterrupt:
        console.print("stopping")


def run_demo(
    data_dir: Path,
    manifests: Path = EXAMPLES,
    *,
    keep_running: bool,
    api_port: int | None = 8000,
    kube_port: int | None = 6443,
    console: Console | None = None,
    loop: Measure | None = None,
    edge_cluster: bool = False,
    edge_nodes: int = 1,
) -> dict[str, Any]:
    """Run the loop from a clean `data_dir`; returns a summary (also in `<data_dir>/demo-summary.json`).
    `loop`: then close the loop (`visioninapp.local.loop`: hard frames, review, fine-tune, promotion),
    measuring both versions with this (mAP50 of an ONNX file on labelled images). `edge_cluster`:
    the edge nodes (`edge_nodes` of them) in a cluster of their own (`LocalPlatform`)."""
    console = console or Console()
    started = time.perf_counter()
    documents = _manifests(manifests)
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / DEMO_MARKER).is_file():  # never wipe a directory the demo did not make
            raise DemoError(f"{data_dir} holds other data; give the demo its own --data-dir")
        console.print(f"starting from a clean {data_dir} (the demo's own directory)")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / DEMO_MARKER).write_text("made by `visioninapp demo`, which empties it at every run\n")
    settings = Settings(data_dir=data_dir)
    dataset = shapes_copy(data_dir)
    with Progress(
        TextColumn("drawing the synthetic shapes dataset"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        task = progress.add_task("draw", total=80)
        dataset_uri = seed_dataset(settings, dataset, on_image=lambda: progress.advance(task))
    console.print(f"dataset: {dataset_uri} ({len(CLASS_NAMES)} classes: {', '.join(CLASS_NAMES)})")
    with LocalPlatform(
        data_dir,
        api_port=api_port,
        kube_port=kube_port,
        say=console.print,
        edge_cluster=edge_cluster,
        edge_nodes=edge_nodes,
    ) as platform:
        for what, where in platform.describe():
            console.print(f"  [bold]{what:<16}[/bold] {where}")
        cluster = _Cluster(platform.kubeconfig, platform.edge_kubeconfig if edge_cluster else None)
        for obj in documents:
            cluster.apply(obj)
            console.print(f"applied {obj['kind'].lower()}.{GROUP}/{obj['metadata']['name']}")
        tj_name = next(d["metadata"]["name"] for d in documents if d["kind"] == "TrainingJob")
        ed_name = next(d["metadata"]["name"] for d in documents if d["kind"] == "EdgeDeployment")

        tj = _follow_training(platform, cluster, tj_name, console)
        artifact_name = tj["status"]["artifact"]

        def artifact_phase() -> str:
            return str((cluster.get("ModelArtifact", artifact_name).get("status") or {}).get("phase", ""))

        with console.status(f"verifying ModelArtifact {artifact_name} (sha256 of every file)"):
            _wait(
                platform,
                f"ModelArtifact {artifact_name}",
                lambda: artifact_phase() == "Available",
                60,
                lambda: "its files failed verification" if artifact_phase() == "Invalid" else None,
            )
        artifact = cluster.get("ModelArtifact", artifact_name)
        metrics = artifact["spec"].get("metrics") or {}
        console.print(
            f"ModelArtifact {artifact_name}: Available, mAP50 {metrics.get('mAP50', 0):.3f}, "
            f"mAP50-95 {metrics.get('mAP50_95', 0):.3f}, formats "
            + ", ".join(f["format"] for f in artifact["spec"]["formats"])
        )

        def rollout() -> dict[str, Any]:
            return cluster.get("EdgeDeployment", ed_name).get("status") or {}

        nodes = ", ".join(platform.edge_nodes)
        with console.status(f"rolling {artifact_name} out to {nodes} (EdgeDeployment {ed_name})"):
            _wait(
                platform,
                f"EdgeDeployment {ed_name} to be Healthy",
                lambda: rollout().get("phase") == "Healthy",
                ROLLOUT_TIMEOUT,
                lambda: rollout().get("message") if rollout().get("phase") == "RolledBack" else None,
            )
        pod = cluster.edge_pods(ed_name)[0]
        port = pod.spec.containers[0].ports[0].container_port
        edge_url = f"http://{pod.status.pod_ip}:{port}"
        console.print(f"EdgeDeployment {ed_name}: Healthy on {pod.spec.node_name} ({edge_url})")

        samples = _detect(edge_url, pod.spec.node_name, dataset, data_dir, console)
        classes = sorted({c for sample in samples for c in sample["detected"]})
        summary = {
            "trainingJob": tj_name,
            "trainingPhase": tj["status"]["phase"],
            "modelArtifact": artifact_name,
            "artifactPhase": artifact_phase(),
            "edgeDeployment": ed_name,
            "edgeCluster": edge_cluster,
            "edgeNodes": platform.edge_nodes,
            "rolloutPhase": rollout().get("phase"),
            "mAP50": metrics.get("mAP50"),
            "mAP50_95": metrics.get("mAP50_95"),
            "classesDetected": classes,
            "classAccuracy": round(class_accuracy(samples), 3),
            "samples": samples,
            "annotated": sorted(str(p) for p in data_dir.glob("annotated-*.jpg")),
            "seconds": round(time.perf_counter() - started, 1),
        }
        (data_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2))
        console.print(
            f"mAP50 on the synthetic validation set: [bold]{summary['mAP50']:.3f}[/bold]; the most "
            f"confident detection is a labelled shape on {summary['classAccuracy']:.0%} of its "
            f"{len(samples)} images; annotated images: {data_dir}/annotated-*.jpg; "
            f"the loop took {summary['seconds']} s"
        )
        if loop is not None:
            _close_loop(platform, cluster, summary, (dataset, data_dir), console, started, loop)
        if keep_running:
            _keep_running(platform, console)
    return summary
