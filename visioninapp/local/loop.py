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
from visioninapp.edge.evaluate import evaluate
from visioninapp.edge.inference import Detector
from visioninapp.factory import artifact_store_for
from visioninapp.local.mode import LOCAL_NAMESPACE, SHAPES_STYLE, LocalPlatform
from visioninapp.local.synth import generate_dataset
from visioninapp.settings import Settings

__all__ = [
    "LoopError",
    "LoopSettings",
    "edge_jpeg_digest",
    "lineage",
    "policy_spec",
    "run_loop",
    "truth_labels",
]

VARIANT_STYLE: dict[str, Any] = {**SHAPES_STYLE, "rotate": True}  # what v1 never saw: rotation
HELD_OUT_KEY = "datasets/shapes-held-out/v1"  # the line's held-out set: original style, never trained on
POLICY = "shapes-loop"
EDGE_JPEG_QUALITY = 92  # the edge runtime re-encodes each kept frame so (edge/runtime.py `_jpeg`)


class LoopError(RuntimeError):
    """The loop could not finish; the message says where it stopped."""


@dataclass(frozen=True)
class LoopSettings:
    reviewed_frames: int = 32  # the policy's trigger: N reviewed hard frames
    epochs: int = 20  # of the fine-tune
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


def feedback_spec(settings: LoopSettings) -> dict[str, Any]:
    """Every uncertain frame is a candidate (sample rate 1), the budget is the policy's N."""
    return {
        "enabled": True,
        "minScore": settings.min_score,
        "maxScore": settings.max_score,
        "sampleRate": 1.0,
        "maxFramesPerHour": settings.reviewed_frames,
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
        if response.status_code != expect:
            raise LoopError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def image(self, frame: int) -> bytes:
        response = requests.get(f"{self.base}/feedback/{frame}/image", timeout=60)
        response.raise_for_status()
        return response.content


def _draw(out: Path, count: int, seed: int, style: dict[str, Any]) -> list[Path]:
    generate_dataset(out, train=0, val=count, imgsz=128, seed=seed, **style)
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

    def _review(self, frame_id: int) -> None:
        frame = self.api.call("GET", f"/feedback/{frame_id}")
        digest = hashlib.sha256(self.api.image(frame_id)).hexdigest()
        source = self.index.get(digest)
        if source is None:
            raise LoopError(f"frame {frame_id} is none of the images the loop sent (sha256 {digest[:12]})")
        labels = truth_labels(_label_path(source).read_text().splitlines(), frame["width"], frame["height"])
        replaced = self.api.call(
            "PUT", f"/feedback/{frame_id}/labels", {"revision": frame["revision"], "labels": labels}
        )
        self.api.call(
            "POST",
            f"/feedback/{frame_id}/accept",
            {"revision": replaced["revision"], "note": f"ground truth of {source.name}"},
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


def _edge_urls(cluster: Any, deployment: str) -> list[str]:
    urls = []
    for pod in cluster.edge_pods(deployment):
        if pod.status.pod_ip and pod.metadata.deletion_timestamp is None:
            urls.append(f"http://{pod.status.pod_ip}:{pod.spec.containers[0].ports[0].container_port}")
    return urls


def _serving(url: str) -> str | None:
    try:
        response = requests.get(f"{url}/readyz", timeout=5)
    except requests.RequestException:
        return None
    return response.json().get("model") if response.status_code == 200 else None


def _rolled_out(cluster: Any, deployment: str, model: str) -> Callable[[], bool]:
    def check() -> bool:
        ed = cluster.get("EdgeDeployment", deployment)
        status = ed.get("status") or {}
        settled = (
            status.get("observedGeneration") == ed["metadata"]["generation"]
            and status.get("phase") == "Healthy"
            and status.get("currentModel") == model
            and status.get("updatedNodes") == status.get("desiredNodes")
        )
        urls = _edge_urls(cluster, deployment) if settled else []
        return bool(urls) and all(model in (_serving(u) or "") for u in urls)

    return check


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
    settings: LoopSettings | None = None,
) -> dict[str, Any]:
    """The loop from v1 (`artifact`, rolled out by `deployment`) to v2 in production; returns a summary.
    `cluster`: the demo's client (get, patch, edge_pods); `follow_training(name)` shows a run's progress."""
    settings = settings or LoopSettings()
    started = time.perf_counter()
    api = _Api(platform.api_url)
    platform_settings = Settings(data_dir=platform.data_dir)
    v1 = api.call("GET", f"/models/{artifact}")
    line = v1["model"]

    # the line's held-out set (original style), the rotated stream and the rotated test set
    held_out = work / "held-out"
    _draw(held_out, settings.held_out_images, settings.seed + 100, SHAPES_STYLE)
    held_out_uri = join_uri(platform_settings.resolved_artifacts_uri, HELD_OUT_KEY)
    store = artifact_store_for(held_out_uri, platform_settings)
    for path in sorted(p for p in held_out.rglob("*") if p.is_file() and p.name != "data.yaml"):
        store.put_file(path, join_uri(held_out_uri, path.relative_to(held_out).as_posix()))
    store.put_file(held_out / "data.yaml", join_uri(held_out_uri, "data.yaml"))
    stream = _draw(work / "stream", settings.stream_images, settings.seed + 200, VARIANT_STYLE)
    variant = _draw(work / "variant", settings.variant_images, settings.seed + 300, VARIANT_STYLE)
    console.print(
        f"loop: held-out set {held_out_uri} ({settings.held_out_images} upright images); "
        f"{settings.stream_images} rotated frames to send; {settings.variant_images} rotated test images"
    )

    # 1. promote v1, follow the line, declare the policy
    api.call("PATCH", f"/models/{artifact}", {"stage": "production"})
    cluster.patch(
        "EdgeDeployment",
        deployment,
        {
            "spec": {
                "modelRef": None,
                "model": {"line": line, "stage": "production"},
                "feedback": feedback_spec(settings),
            }
        },
    )
    dataset = "shapes"
    api.call(
        "POST",
        "/retrain-policies",
        {"name": POLICY, "spec": policy_spec(settings, line, dataset, held_out_uri)},
        expect=201,
    )
    console.print(
        f"promoted {artifact} to production; EdgeDeployment {deployment} follows {line}/production with "
        f"hard-frame feedback (scores {settings.min_score}-{settings.max_score}, budget "
        f"{settings.reviewed_frames}/h); RetrainPolicy {POLICY}: {settings.reviewed_frames} reviewed "
        f"frames → {settings.epochs}-epoch fine-tune, gate maxDrop {settings.max_drop}, promote to production"
    )
    with console.status(f"{deployment}: rolling out the feedback settings"):
        _until(
            f"{deployment} on {artifact}",
            _rolled_out(cluster, deployment, artifact),
            settings.timeout,
            platform,
        )

    # 2. the rotated frames reach the edge
    urls = _edge_urls(cluster, deployment)
    sent = 0
    with console.status("sending rotated shapes to the edge runtime"):
        for index, path in enumerate(stream):
            response = requests.post(
                f"{urls[index % len(urls)]}/v1/detect", data=path.read_bytes(), timeout=30
            )
            response.raise_for_status()
            sent += 1
    console.print(f"sent {sent} rotated frames to {len(urls)} edge pod(s)")

    # 3. review every hard frame with the ground truth, through the review API
    index = _truth_index([*stream, *sorted((dataset_copy / "images" / "val").glob("*.jpg"))])
    labeller = _Labeller(api, index)

    def policy() -> dict[str, Any]:
        return dict(api.call("GET", f"/retrain-policies/{POLICY}"))

    def triggered() -> bool:
        labeller.review_queue()
        return bool(policy()["status"].get("run"))

    with console.status("reviewing hard frames (the ground truth through the review API)"):
        _until(
            f"{settings.reviewed_frames} reviewed frames to trigger {POLICY}",
            triggered,
            settings.timeout,
            platform,
        )
    state = policy()
    run = state["status"]["run"]
    console.print(
        f"labeller reviewed {len(labeller.reviewed)} hard frame(s); {POLICY} triggered: "
        f"{state['status'].get('lastTrigger', {}).get('reason')} → TrainingJob {run} "
        f"on {dataset} v{state['status'].get('datasetVersion')}"
    )

    # 4. fine-tune, gate, promotion, rollout
    follow_training(run)

    def settled() -> dict[str, Any] | None:
        found = policy()
        return found if found["phase"] in ("Promoted", "GateFailed", "Failed") else None

    with console.status(f"{POLICY}: waiting for the quality gate and the promotion"):
        state = _until(f"{POLICY} to settle", settled, settings.timeout, platform)
    if state["phase"] != "Promoted":
        raise LoopError(f"{POLICY} {state['phase']}: {state['message']}")
    candidate = state["status"]["candidate"]
    console.print(f"{POLICY}: {state['message']}")
    with console.status(f"canary: rolling {candidate} out ({deployment} follows {line}/production)"):
        _until(
            f"{deployment} on {candidate}",
            _rolled_out(cluster, deployment, candidate),
            settings.timeout,
            platform,
        )
        _until(
            f"{artifact} archived",
            lambda: api.call("GET", f"/models/{artifact}")["stage"] == "archived",
            settings.timeout,
            platform,
        )
    console.print(f"{deployment}: every edge pod serves {candidate}; {artifact} archived")

    # 5. before/after on the variant, held-out from the gate's record, lineage through the API
    v2 = api.call("GET", f"/models/{candidate}")
    v1 = api.call("GET", f"/models/{artifact}")
    variant_map = {}
    for name in (artifact, candidate):
        onnx = work / f"{name}.onnx"
        response = requests.get(f"{api.base}/models/{name}/files/onnx", timeout=120)
        response.raise_for_status()
        onnx.write_bytes(response.content)
        variant_map[name] = evaluate(Detector(onnx), variant)
    record = api.call("GET", f"/models/{candidate}/evaluation")
    held = record["datasets"][0]
    versions = api.call("GET", f"/datasets/{dataset}")["versions"]
    version_number = next(v["version"] for v in versions if v["uri"] == v2["lineage"]["dataset"])
    version = api.call("GET", f"/datasets/{dataset}/versions/{version_number}")
    frames = [api.call("GET", f"/feedback/{f}") for f in version["provenance"]["addedFrames"]]
    deployed = api.call("GET", f"/deployments/{frames[0]['deployment']}")
    chain = [*lineage(v2, version, frames[0]), f"EdgeDeployment {deployed['name']} ran {frames[0]['model']}"]
    chain.append(f"{v1['name']} ({v1['stage']}), trained by {v1['lineage'].get('trainingJob')}")

    table = Table(title=f"{artifact} (v1) and {candidate} (v2)")
    for column in ("", artifact, candidate):
        table.add_column(column)
    table.add_row(
        f"mAP50, {len(variant)} rotated shapes",
        f"{variant_map[artifact].map50:.3f}",
        f"{variant_map[candidate].map50:.3f}",
    )
    table.add_row(
        f"held-out mAP50 ({held['images']} upright)",
        f"{held['baseline']['mAP50']:.3f}",
        f"{held['candidate']['mAP50']:.3f}",
    )
    table.add_row(
        "held-out mAP50-95 (gated)",
        f"{held['baseline']['mAP50_95']:.3f}",
        f"{held['candidate']['mAP50_95']:.3f}",
    )
    table.add_row("stage", v1["stage"], v2["stage"])
    console.print(table)
    console.print("lineage (through the API):\n  " + "\n  ← ".join(chain))
    return {
        "policy": POLICY,
        "policyPhase": state["phase"],
        "v1": {"name": artifact, "stage": v1["stage"]},
        "v2": {"name": candidate, "stage": v2["stage"], "lineage": v2["lineage"]},
        "variantMAP50": {"v1": variant_map[artifact].map50, "v2": variant_map[candidate].map50},
        "variantImages": len(variant),
        "heldOut": {
            "uri": held["uri"],
            "images": held["images"],
            "v1": held["baseline"],
            "v2": held["candidate"],
            "maxDrop": record["limits"]["maxDrop"],
            "passed": record["verdict"]["passed"],
        },
        "trainingDataset": v2["lineage"]["dataset"],
        "datasetVersion": {"version": version_number, "provenance": version["provenance"]},
        "reviewed": labeller.reviewed,
        "frames": [{k: f[k] for k in ("id", "deployment", "node", "model", "reviewStatus")} for f in frames],
        "edgePods": {u: _serving(u) for u in _edge_urls(cluster, deployment)},
        "lineage": chain,
        "seconds": round(time.perf_counter() - started, 1),
    }
