"""`visioninapp demo --loop`: the closed loop in local mode, once the demo's first model is out.

v1 was trained on upright shapes only. The loop promotes it to `production`, lets the demo's
EdgeDeployment follow the line's production version with hard-frame feedback on, and declares a
RetrainPolicy (N reviewed frames → fine-tune from production on the shapes dataset plus the
frames, gated against production on a held-out set of the original style, promoted to production).
Then a new kind of frames reaches the edge: the same shapes, rotated. The edge runtime's picker
keeps the frames it is unsure about, the API imports them, and a labeller standing in for a person
reviews each one through the review API with the synthetic ground truth (looked up by the image's
bytes). The policy triggers, the real trainer fine-tunes, the gate passes, the policy promotes the
candidate and the canary rolls it out; v1 is archived. It prints both versions' mAP50 on rotated
shapes they never trained on, their held-out mAP (the gate's record) and the lineage, read back
through the API: v2 → dataset version → frames → deployment → v1.

The decisions (what a frame's labels are, which frames are whose, the lineage) are pure functions;
the rest is calls to the platform.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests
from rich.console import Console
from rich.table import Table

from visioninapp.backends.storage import join_uri
from visioninapp.factory import artifact_store_for
from visioninapp.local.mode import LOCAL_NAMESPACE, SHAPES_STYLE, LocalPlatform
from visioninapp.local.synth import generate_dataset
from visioninapp.settings import Settings

__all__ = [
    "LoopError",
    "LoopSettings",
    "corrected",
    "edge_jpeg_digest",
    "lineage",
    "policy_spec",
    "run_loop",
    "truth_labels",
]

VARIANT_STYLE: dict[str, Any] = {**SHAPES_STYLE, "rotate": True}  # what v1 never saw: rotation
HELD_OUT_KEY = "datasets/shapes-held-out/v1"  # the line's held-out set: original style, never trained on
POLICY = "shapes-loop"
DATASET = "shapes"  # the project's dataset the demo trains on (local mode registers it)
Measure = Callable[[Path, list[Path]], float]  # mAP50 of an ONNX file on YOLO-labelled images
REVISION_LABEL = "visioninapp.io/revision"  # an edge pod's template revision (operator/daemonset.py)
RATE_LIMIT_RETRIES = 5
EDGE_JPEG_QUALITY = 92  # the edge runtime re-encodes each kept frame so (edge/runtime.py `_jpeg`)


class LoopError(RuntimeError):
    """The loop could not finish; the message says where it stopped."""


@dataclass(frozen=True)
class LoopSettings:
    reviewed_frames: int = 48  # the policy's trigger: N reviewed hard frames
    epochs: int = 30  # of the fine-tune
    lr0: float = 0.004
    max_drop: float = 0.05  # of held-out mAP50-95 the gate allows
    stream_images: int = 240  # rotated frames sent to the edge (the picker keeps at most N)
    variant_images: int = 64  # rotated images both versions are measured on
    held_out_images: int = 32
    min_score: float = 0.25  # the picker's uncertainty range
    max_score: float = 0.8
    seed: int = 1
    timeout: float = 600.0  # for each wait of the loop


# --- pure decisions ----------------------------------------------------------------------------


def edge_jpeg_digest(image: np.ndarray) -> str:
    """sha256 of the JPEG the edge runtime stores for a frame it keeps (it re-encodes the decoded
    image), so a frame in the API finds the image it was made from."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, EDGE_JPEG_QUALITY])
    if not ok:
        raise LoopError("an image could not be encoded as JPEG")
    return hashlib.sha256(encoded.tobytes()).hexdigest()


def truth_labels(lines: Iterable[str], width: int, height: int) -> list[dict[str, Any]]:
    """YOLO label lines (`class cx cy w h`, normalised) as the review API's labels (pixel boxes)."""
    labels = []
    for line in lines:
        if not line.strip():
            continue
        class_id, cx, cy, w, h = line.split()
        x, y, bw, bh = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
        box = [max(0.0, x - bw / 2), max(0.0, y - bh / 2), min(width, x + bw / 2), min(height, y + bh / 2)]
        labels.append({"classId": int(class_id), "box": [round(v, 1) for v in box]})
    return labels


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def corrected(proposals: list[dict[str, Any]], truth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The review's label set (`PUT .../labels`): each true object keeps the id of the proposal that
    overlaps it most (IoU ≥ 0.3, each proposal used once), so the history says what a person
    would have done to it (moved, relabelled); a true object no proposal found is drawn anew; a
    proposal matching nothing is deleted by leaving it out."""
    free = {p["id"]: p for p in proposals}
    out = []
    for label in truth:
        best = max(free.values(), key=lambda p: _iou(p["box"], label["box"]), default=None)
        if best is not None and _iou(best["box"], label["box"]) >= 0.3:
            del free[best["id"]]
            out.append({"id": best["id"], **label})
        else:
            out.append(dict(label))
    return out


def policy_spec(settings: LoopSettings, line: str, dataset: str, held_out_uri: str) -> dict[str, Any]:
    """The RetrainPolicy: N reviewed frames trigger a short CPU fine-tune from production, gated on the
    held-out set, promoted straight to production."""
    return {
        "line": line,
        "triggers": {"reviewedFrames": settings.reviewed_frames},
        "minIntervalMinutes": 0,
        "training": {
            "dataset": dataset,
            "hyperparameters": {
                "epochs": settings.epochs,
                "imgsz": 128,
                "batch": 4,
                "nominalBatch": 4,
                "optimizer": "AdamW",
                "lr0": settings.lr0,
                "closeMosaic": settings.epochs,
                "workers": 0,
                "seed": 0,
            },
            "resources": {"gpu": {"count": 0}, "cpu": "2", "memory": "4Gi"},
        },
        "gate": {"heldOut": {"uri": held_out_uri}, "maxDrop": settings.max_drop},
        "promoteTo": "production",
    }


def feedback_spec(settings: LoopSettings, nodes: int = 1) -> dict[str, Any]:
    """Every uncertain frame is a candidate (sample rate 1); the per-node budget splits the policy's N
    between the nodes (rounded up), so the fleet keeps about N frames: which frames make v2's data is decided
    by each node's picker (the frames it is sent, in order), not by when each node's frames arrive."""
    return {
        "enabled": True,
        "minScore": settings.min_score,
        "maxScore": settings.max_score,
        "sampleRate": 1.0,
        "maxFramesPerHour": math.ceil(settings.reviewed_frames / nodes),
    }


def lineage(model: dict[str, Any], version: dict[str, Any], frame: dict[str, Any]) -> list[str]:
    """The chain v2 → dataset version → frames → deployment → v1, one line per link, from the API's
    answers (the model, the dataset version it trained on, one of the version's frames)."""
    source, provenance = model["lineage"], version.get("provenance") or {}
    frames = provenance.get("addedFrames") or []
    return [
        f"{model['name']} ({model['stage']}) trained by {source.get('trainingJob')} from "
        f"{source.get('baseModel')} on {source.get('dataset')}",
        f"dataset {version['name']} v{version['version']}: {len(frames)} frame(s) added, "
        f"{provenance.get('reviewedLabels', 0)} label(s) reviewed, "
        f"{provenance.get('autoAcceptedLabels', 0)} auto-accepted",
        f"frame {frame['id']}: picked on {frame['node']} by EdgeDeployment {frame['deployment']}, "
        f"model {frame['model']}, reviewed by {frame.get('reviewedBy')}",
    ]


# --- the platform ------------------------------------------------------------------------------


class _Api:
    """The API calls of the loop (local mode: the local admin on loopback needs no token)."""

    def __init__(self, url: str) -> None:
        self.base = f"{url}/api/v1/projects/{LOCAL_NAMESPACE}"

    def call(self, method: str, path: str, json: Any = None, expect: int = 200) -> Any:
        response = requests.request(method, f"{self.base}{path}", json=json, timeout=60)
        for _ in range(RATE_LIMIT_RETRIES):  # the API's write limit: a reviewer of many frames waits
            if response.status_code != 429:
                break
            time.sleep(min(60.0, float(response.headers.get("Retry-After") or 1)))
            response = requests.request(method, f"{self.base}{path}", json=json, timeout=60)
        if response.status_code != expect:
            raise LoopError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def image(self, frame: int) -> bytes:
        response = requests.get(f"{self.base}/feedback/{frame}/image", timeout=60)
        response.raise_for_status()
        return response.content


def _draw(out: Path, count: int, seed: int, style: dict[str, Any]) -> list[Path]:
    """`count` images as the `val` split of a dataset at `out` (its data.yaml names them as the train
    split too: a dataset needs one, and the trainer reads only `val` of a held-out set)."""
    data_yaml = generate_dataset(out, train=0, val=count, imgsz=128, seed=seed, **style)
    data_yaml.write_text(data_yaml.read_text().replace("train: images/train", "train: images/val"))
    return sorted((out / "images" / "val").glob("*.jpg"))


def _truth_index(images: Iterable[Path]) -> dict[str, Path]:
    """Each image the edge may send back, by the digest of the JPEG it would store."""
    index = {}
    for path in images:
        image = cv2.imread(str(path))
        if image is not None:
            index[edge_jpeg_digest(image)] = path
    return index


def _label_path(image: Path) -> Path:
    return Path(str(image.with_suffix(".txt")).replace("/images/", "/labels/"))


class _Labeller:
    """Stands in for a person: each frame in the review queue gets its synthetic ground truth
    through the review API (one history row per change), then is accepted."""

    def __init__(self, api: _Api, index: dict[str, Path]) -> None:
        self.api, self.index = api, index
        self.reviewed: list[int] = []

    def review_queue(self) -> int:
        queue = self.api.call("GET", "/feedback/review-queue?limit=100")["items"]
        for item in queue:
            self._review(int(item["id"]))
        return len(queue)

    @staticmethod
    def _named(image: Path) -> str:
        """`stream/val_00012.jpg`: the set (folder under the loop's work folder) and the image."""
        return f"{image.parents[2].name}/{image.name}"

    def _review(self, frame_id: int) -> None:
        frame = self.api.call("GET", f"/feedback/{frame_id}")
        digest = hashlib.sha256(self.api.image(frame_id)).hexdigest()
        source = self.index.get(digest)
        if source is None:
            raise LoopError(f"frame {frame_id} is none of the images the loop sent (sha256 {digest[:12]})")
        labels = truth_labels(_label_path(source).read_text().splitlines(), frame["width"], frame["height"])
        replaced = self.api.call(
            "PUT",
            f"/feedback/{frame_id}/labels",
            {"revision": frame["revision"], "labels": corrected(frame["labels"], labels)},
        )
        self.api.call(
            "POST",
            f"/feedback/{frame_id}/accept",
            {"revision": replaced["revision"], "note": f"synthetic ground truth of {self._named(source)}"},
        )
        self.reviewed.append(frame_id)


def _until(what: str, check: Callable[[], Any], timeout: float, platform: LocalPlatform) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        platform.check()
        if time.monotonic() > deadline:
            raise LoopError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
    return found


def _edge_urls(cluster: Any, deployment: str, revision: str | None = None) -> list[str]:
    """The deployment's live edge pods (of `revision` only, when given)."""
    urls = []
    for pod in cluster.edge_pods(deployment):
        if revision is not None and (pod.metadata.labels or {}).get(REVISION_LABEL) != revision:
            continue
        if pod.status.pod_ip and pod.metadata.deletion_timestamp is None:
            urls.append(f"http://{pod.status.pod_ip}:{pod.spec.containers[0].ports[0].container_port}")
    return urls


def _serving(url: str) -> str | None:
    try:
        response = requests.get(f"{url}/readyz", timeout=5)
    except requests.RequestException:
        return None
    return response.json().get("model") if response.status_code == 200 else None


def _on_line(status: dict[str, Any], model: str) -> bool:
    """A line-following deployment has resolved its line to `model`. Until then (with two clusters,
    the promotion is still on its way through the mirror) the operator leaves the fleet as it was:
    Healthy on the old template, which the line's first resolution then replaces."""
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    following = conditions.get("FollowsLine") or {}
    return status.get("lineModel") == model and following.get("status") == "True"


def _rolled_out(cluster: Any, deployment: str, model: str) -> Callable[[], bool]:
    def check() -> bool:
        ed = cluster.get("EdgeDeployment", deployment)
        status = ed.get("status") or {}
        settled = (
            status.get("observedGeneration") == ed["metadata"]["generation"]
            and status.get("phase") == "Healthy"
            and status.get("currentModel") == model
            and status.get("updatedNodes") == status.get("desiredNodes")
            and (not ed["spec"].get("model") or _on_line(status, model))
        )
        pods = _edge_urls(cluster, deployment) if settled else []
        current = _edge_urls(cluster, deployment, status.get("revision")) if settled else []
        return bool(pods) and set(pods) == set(current) and all(_serving(u) == model for u in pods)

    return check


@dataclass
class _Run:
    """What one loop works with: the platform, the demo's cluster client, the API and its outputs."""

    platform: LocalPlatform
    cluster: Any  # the demo's client: get (in the edge cluster too), patch, edge_pods
    api: _Api
    console: Console
    settings: LoopSettings
    artifact: str  # v1
    deployment: str
    line: str
    work: Path
    map50: Measure

    def until(self, what: str, check: Callable[[], Any]) -> Any:
        return _until(what, check, self.settings.timeout, self.platform)

    def policy(self) -> dict[str, Any]:
        return dict(self.api.call("GET", f"/retrain-policies/{POLICY}"))

    def rolled_out(self, model: str) -> None:
        self.until(f"{self.deployment} on {model}", _rolled_out(self.cluster, self.deployment, model))


def run_loop(
    platform: LocalPlatform,
    cluster: Any,
    *,
    artifact: str,
    deployment: str,
    dataset_copy: Path,
    work: Path,
    console: Console,
    follow_training: Callable[[str], Any],
    map50: Measure,
    settings: LoopSettings | None = None,
) -> dict[str, Any]:
    """The loop from v1 (`artifact`, rolled out by `deployment`) to v2 in production; returns a summary.
    `cluster`: the demo's client (get, patch, edge_pods); `follow_training(name)` shows a run's
    progress; `map50(onnx, images)` measures a version (the edge's evaluation, wired in by the CLI:
    the core imports no component)."""
    settings = settings or LoopSettings()
    started = time.perf_counter()
    api = _Api(platform.api_url)
    line = api.call("GET", f"/models/{artifact}")["model"]
    run = _Run(platform, cluster, api, console, settings, artifact, deployment, line, work, map50)
    held_out_uri, stream, variant = _draw_sets(run)
    _declare(run, held_out_uri)
    _send(run, stream)
    labeller = _Labeller(
        api, _truth_index([*stream, *sorted((dataset_copy / "images" / "val").glob("*.jpg"))])
    )
    training_job = _review_until_triggered(run, labeller)
    follow_training(training_job)
    candidate = _promoted(run)
    summary = _report(run, candidate, variant)
    return {**summary, "reviewed": labeller.reviewed, "seconds": round(time.perf_counter() - started, 1)}


def _draw_sets(run: _Run) -> tuple[str, list[Path], list[Path]]:
    """The line's held-out set (original style) into the artifact store; the rotated frames the edge
    is sent and the rotated images both versions are measured on."""
    settings = run.settings
    held_out = run.work / "held-out"
    _draw(held_out, settings.held_out_images, settings.seed + 100, SHAPES_STYLE)
    store_settings = Settings(data_dir=run.platform.data_dir)
    uri = join_uri(store_settings.resolved_artifacts_uri, HELD_OUT_KEY)
    store = artifact_store_for(uri, store_settings)
    for path in sorted(p for p in held_out.rglob("*") if p.is_file() and p.name != "data.yaml"):
        store.put_file(path, join_uri(uri, path.relative_to(held_out).as_posix()))
    store.put_file(held_out / "data.yaml", join_uri(uri, "data.yaml"))  # last: the set is complete
    stream = _draw(run.work / "stream", settings.stream_images, settings.seed + 200, VARIANT_STYLE)
    variant = _draw(run.work / "variant", settings.variant_images, settings.seed + 300, VARIANT_STYLE)
    run.console.print(
        f"loop: held-out set {uri} ({settings.held_out_images} upright images, never trained on); "
        f"{len(stream)} rotated frames for the edge; {len(variant)} rotated test images"
    )
    return uri, stream, variant


def _declare(run: _Run, held_out_uri: str) -> None:
    """Promote v1, let the deployment follow the line with feedback on, create the policy."""
    settings, api = run.settings, run.api
    api.call("PATCH", f"/models/{run.artifact}", {"stage": "production"})
    follow = {"modelRef": None, "model": {"line": run.line, "stage": "production"}}
    feedback = feedback_spec(settings, len(run.platform.edge_nodes))
    run.cluster.patch("EdgeDeployment", run.deployment, {"spec": {**follow, "feedback": feedback}})
    spec = policy_spec(settings, run.line, DATASET, held_out_uri)
    api.call("POST", "/retrain-policies", {"name": POLICY, "spec": spec}, expect=201)
    run.console.print(
        f"promoted {run.artifact} to production; EdgeDeployment {run.deployment} follows "
        f"{run.line}/production with hard-frame feedback (scores {settings.min_score}-{settings.max_score}, "
        f"budget {feedback['maxFramesPerHour']}/h per node); RetrainPolicy {POLICY}: "
        f"{settings.reviewed_frames} reviewed frames → {settings.epochs}-epoch fine-tune, "
        f"gate maxDrop {settings.max_drop}, promote to production"
    )
    with run.console.status(f"{run.deployment}: rolling out the feedback settings"):
        run.rolled_out(run.artifact)


def _send(run: _Run, stream: list[Path]) -> None:
    urls = _edge_urls(run.cluster, run.deployment)
    with run.console.status("sending rotated shapes to the edge runtime"):
        for index, path in enumerate(stream):
            url = urls[index % len(urls)]
            requests.post(f"{url}/v1/detect", data=path.read_bytes(), timeout=30).raise_for_status()
    run.console.print(
        f"sent {len(stream)} rotated frames to {len(urls)} edge pod(s); its picker keeps the hard ones"
    )


def _review_until_triggered(run: _Run, labeller: _Labeller) -> str:
    """Review the queue until the policy has started its fine-tune; returns its TrainingJob."""

    def triggered() -> bool:
        labeller.review_queue()
        return bool(run.policy()["status"].get("run"))

    with run.console.status("reviewing hard frames (the ground truth, through the review API)"):
        run.until(f"{run.settings.reviewed_frames} reviewed frames to trigger {POLICY}", triggered)
    status = run.policy()["status"]
    run.console.print(
        f"labeller reviewed {len(labeller.reviewed)} hard frame(s); {POLICY} triggered: "
        f"{(status.get('lastTrigger') or {}).get('reason')} → TrainingJob {status['run']} fine-tunes "
        f"{status.get('baseline')} on {DATASET} v{status.get('datasetVersion')}"
    )
    return str(status["run"])


def _promoted(run: _Run) -> str:
    """The gate, the policy's promotion, the canary to every edge pod, v1 archived; returns v2."""

    def settled() -> dict[str, Any] | None:
        found = run.policy()
        return found if found["phase"] in ("Promoted", "GateFailed", "NotPromoted", "Failed") else None

    with run.console.status(f"{POLICY}: waiting for the quality gate and the promotion"):
        state = run.until(f"{POLICY} to settle", settled)
    if state["phase"] != "Promoted":
        raise LoopError(f"{POLICY} {state['phase']}: {state['message']}")
    candidate = str(state["status"]["candidate"])
    run.console.print(f"{POLICY}: {state['message']}")
    with run.console.status(f"canary: {run.deployment} rolls {candidate} out"):
        run.rolled_out(candidate)
        run.until(
            f"{run.artifact} archived",
            lambda: run.api.call("GET", f"/models/{run.artifact}")["stage"] == "archived",
        )
    run.console.print(f"{run.deployment}: every edge pod serves {candidate}; {run.artifact} archived")
    return candidate


def _variant_map50(run: _Run, name: str, images: list[Path]) -> float:
    """mAP50 of a version's ONNX (downloaded through the API) on the rotated test images."""
    onnx = run.work / f"{name}.onnx"
    response = requests.get(f"{run.api.base}/models/{name}/files/onnx", timeout=120)
    response.raise_for_status()
    onnx.write_bytes(response.content)
    return run.map50(onnx, images)


def _report(run: _Run, candidate: str, variant: list[Path]) -> dict[str, Any]:
    """Before/after on the variant, held-out from the gate's record, the lineage through the API."""
    api = run.api
    v1, v2 = api.call("GET", f"/models/{run.artifact}"), api.call("GET", f"/models/{candidate}")
    variant_map = {name: _variant_map50(run, name, variant) for name in (run.artifact, candidate)}
    record = api.call("GET", f"/models/{candidate}/evaluation")
    held = record["datasets"][0]
    versions = api.call("GET", f"/datasets/{DATASET}")["versions"]
    number = next(v["version"] for v in versions if v["uri"] == v2["lineage"]["dataset"])
    version = {"name": DATASET, **api.call("GET", f"/datasets/{DATASET}/versions/{number}")}
    frames = [api.call("GET", f"/feedback/{f}") for f in version["provenance"]["addedFrames"]]
    deployed = api.call("GET", f"/deployments/{frames[0]['deployment']}")
    chain = [
        *lineage(v2, version, frames[0]),
        f"EdgeDeployment {deployed['name']} ran {frames[0]['model']} on the line {run.line}",
        f"{v1['name']} ({v1['stage']}), trained by {v1['lineage'].get('trainingJob')} on "
        f"{v1['lineage'].get('dataset')}",
    ]
    table = Table(title=f"{run.artifact} (v1) and {candidate} (v2)")
    for column in ("", run.artifact, candidate):
        table.add_column(column)
    table.add_row(f"mAP50, {len(variant)} rotated shapes", *(f"{variant_map[n]:.3f}" for n in variant_map))
    for metric in ("mAP50", "mAP50_95"):
        table.add_row(
            f"held-out {metric.replace('_', '-')} ({held['images']} upright)",
            f"{held['baseline'][metric]:.3f}",
            f"{held['candidate'][metric]:.3f}",
        )
    table.add_row("stage", v1["stage"], v2["stage"])
    run.console.print(table)
    run.console.print("lineage (through the API):\n  " + "\n  ← ".join(chain))
    return {
        "policy": POLICY,
        "policyPhase": run.policy()["phase"],
        "v1": {"name": run.artifact, "stage": v1["stage"]},
        "v2": {"name": candidate, "stage": v2["stage"], "lineage": v2["lineage"]},
        "variantMAP50": {"v1": variant_map[run.artifact], "v2": variant_map[candidate]},
        "variantImages": len(variant),
        "heldOut": {
            "uri": held["uri"],
            "images": held["images"],
            "v1": held["baseline"],
            "v2": held["candidate"],
            "maxDrop": record["limits"]["maxDrop"],
            "passed": record["verdict"]["passed"],
        },
        "datasetVersion": {"version": number, "uri": version["uri"], "provenance": version["provenance"]},
        "frames": [
            {k: f[k] for k in ("id", "deployment", "node", "model", "reviewStatus", "reviewedBy")}
            for f in frames
        ],
        "history": frames[0]["history"],
        "edgePods": {u: _serving(u) for u in _edge_urls(run.cluster, run.deployment)},
        # the stages where the deployments are: mirrored there from the training cluster (if apart)
        "edgeClusterStages": {
            name: (run.cluster.get("ModelArtifact", name, edge=True).get("spec") or {}).get("stage")
            for name in (run.artifact, candidate)
        },
        "lineage": chain,
    }
