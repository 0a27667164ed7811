"""The console in a real browser (Debian chromium + playwright-core) against the real API, the
Firebase Auth emulator and a real Kubernetes control plane with local mode's two nodes. The project
holds real content first (datasets with versions uploaded through the API, finished, failed and
running runs in two model lines, deployments with history, Events and an hour of edge windows, hard
frames); then a helper thread plays the operator and the trainer: it sees the TrainingJob the form
created, publishes its epochs and log lines to the stream, then registers its ModelArtifact (an
exported YOLO ONNX). The browser checks every page at 1280 and 390 px (text, axe, overflow, console
errors), takes screenshots, and measures a cold load of the overview on Fast 3G."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import build_settings
from tests.conftest import REPO, sign_up
from tests.helpers import wait_for
from tests.services import ensure_chromium, ensure_console_built, free_port, wait_for_port
from visioninapp.events import CameraWindow, EdgeEvent, TrainingEvent
from visioninapp.k8s import Obj
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.local.cluster.controlplane import ControlPlane
from visioninapp.local.mode import EDGE_LABELS, EDGE_NODE, EDGE_TAINT, TRAINING_NODE

pytestmark = [pytest.mark.services, pytest.mark.slow]

ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
ANSI_LOG = "\x1b[32mINFO\x1b[0m epoch 1 done \x1b[1mbox 1.500\x1b[0m"
OLD_RUNS = ("shapes-base", "shapes-tuned", "helmets-first")
HARD_FRAMES = 14
# Cold load of the overview: at most this many requests and bytes (what Fast 3G's 562 ms round trips
# and 1.44 Mbit/s make slow; measured 11 and 64.5 KB local, 14 and 114 KB signed in); its time on
# Fast 3G is in tests/e2e/artifacts/report.json.
COLD_LOAD_BUDGET = {"local": (11, 72_000), "signedIn": (14, 125_000)}
FRONTEND = REPO / "frontend"
GROUP = "visioninapp.io"


@pytest.fixture
def console(
    tmp_path: Path,
    auth_emulator: str,
    mariadb_server: str,
    redis_url: str,
    elasticsearch_url: str,
    s3_endpoint: str,
    rabbitmq_stream_port: int,
    control_plane: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    import sqlalchemy
    import uvicorn

    from visioninapp.api.app import create_app
    from visioninapp.api.container import ApiContainer

    ensure_chromium()
    ensure_console_built(FRONTEND)
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", auth_emulator)
    database = f"vt_e2e_{uuid.uuid4().hex[:8]}"
    admin_engine = sqlalchemy.create_engine(f"{mariadb_server}/")
    with admin_engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    with Cluster(tmp_path / "cluster", plane=control_plane) as cluster:
        # Local mode's nodes: trainer pods get the CPU node only (the edge node is tainted).
        cluster.add_node(TRAINING_NODE, cpu="2", labels={"visioninapp.io/pool": "cpu"})
        cluster.add_node(EDGE_NODE, cpu="6", memory="8Gi", gpus=1, labels=EDGE_LABELS, taints=[EDGE_TAINT])
        settings = build_settings(
            tmp_path,
            f"{mariadb_server}/{database}?charset=utf8mb4",
            redis_url=redis_url,
            elasticsearch_url=elasticsearch_url,
            s3_endpoint=s3_endpoint,
            rabbitmq=True,
            kubeconfig=cluster.kubeconfig,
            certs_url="",
        )
        boss, dev, vera = (f"{who}-{uuid.uuid4().hex[:6]}@example.com" for who in ("boss", "dev", "vera"))
        settings.firebase_certs_url = None
        settings.console_auth_emulator_url = f"http://{auth_emulator}"
        settings.api_admins = [boss]
        settings.api_cache_ttl_seconds = 1.0
        services = ApiContainer.build(settings, search_refresh=True)  # as local mode: reads its writes
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(services, background=True), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for_port(port, 30, "the API")
        # The same data served as local mode serves it (no sign-in, so no Firebase): its cold load
        # is measured too.
        local_services = ApiContainer.build(settings.model_copy(update={"firebase_project_id": None}))
        local_port = free_port()
        local_server = uvicorn.Server(
            uvicorn.Config(create_app(local_services), host="127.0.0.1", port=local_port, log_level="warning")
        )
        local_thread = threading.Thread(target=local_server.run, daemon=True)
        local_thread.start()
        wait_for_port(local_port, 30, "the local-mode API")
        import httpx

        admin = {"Authorization": f"Bearer {sign_up(auth_emulator, boss, verified=True)}"}
        sign_up(auth_emulator, dev, verified=True)
        sign_up(auth_emulator, vera, verified=True)
        base = f"http://127.0.0.1:{port}/api/v1"
        assert httpx.post(f"{base}/projects", json={"name": "vision"}, headers=admin).status_code == 201
        _empty_project(cluster, "vision")  # the control plane is the session's: start from nothing
        for email, role in ((dev, "member"), (vera, "viewer")):
            response = httpx.put(
                f"{base}/projects/vision/members/{email}", json={"role": role}, headers=admin
            )
            assert response.status_code == 200
        try:
            yield {
                "url": f"http://127.0.0.1:{port}/",
                "local_url": f"http://127.0.0.1:{local_port}/",
                "dev": dev,
                "viewer": vera,
                "cluster": cluster,
                "services": services,
                "settings": settings,
                "base": base,
                "admin": admin,
            }
        finally:
            server.should_exit = local_server.should_exit = True
            thread.join(20)
            local_thread.join(20)
            local_services.close()
            with admin_engine.begin() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")


def _condition(kind: str, status: str, reason: str, message: str, when: datetime) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _dataset_zip(root: Path, seed: int) -> bytes:
    from visioninapp.local.synth import generate_dataset

    folder = root / f"shapes-{seed}"
    generate_dataset(folder, train=6, val=2, imgsz=96, seed=seed)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zipped.write(path, path.relative_to(folder).as_posix())
    return archive.getvalue()


def _artifact(name: str, line: str, version: str, uri: str, digest: str, size: int, **extra: Any) -> Obj:
    from visioninapp.local.synth import CLASS_NAMES

    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "ModelArtifact",
        "metadata": {"name": name},
        "spec": {
            "model": line,
            "version": version,
            "classNames": list(CLASS_NAMES),
            "imgsz": 96,
            "formats": [{"format": "onnx", "uri": uri, "sha256": digest, "size": size}],
            "metrics": extra.get("metrics", {}),
            "source": {"trainingJob": extra.get("job"), "dataset": "datasets/vision/shapes/v1"},
            "stage": extra.get("stage", "candidate"),
        },
    }


def _empty_project(cluster: Cluster, namespace: str) -> None:
    """Our objects an earlier test of the session left in the namespace, gone (no operator runs
    here to remove finalizers, so they are dropped first)."""
    plurals = ("trainingjobs", "modelartifacts", "edgedeployments", "retrainpolicies")
    for plural in plurals:
        for obj in cluster.list(GROUP, plural, namespace):
            name = obj["metadata"]["name"]
            if obj["metadata"].get("finalizers"):
                cluster.patch(GROUP, plural, namespace, name, {"metadata": {"finalizers": None}})
            cluster.delete(GROUP, plural, namespace, name)
    wait_for(lambda: not any(cluster.list(GROUP, p, namespace) for p in plurals), 30, "an empty project")


def _evaluation_record(candidate_sha: str) -> bytes:
    """shapes-v2's evaluation record against shapes-v1: every class side by side, long decimals, each
    model's PR curves (4 classes) and confusion matrix (known counts: console.mjs reads two cells)."""
    from visioninapp.edge.evaluate import RECALL_POINTS
    from visioninapp.evaluation import (
        ClassAP,
        EvaluatedModel,
        EvaluationRecord,
        GateLimits,
        ModelScores,
        dataset_evaluation,
        judge,
    )
    from visioninapp.local.synth import CLASS_NAMES

    # rows predicted (circle, square, triangle, cross, background), columns true; labels 10 + i
    confusion = {
        0.4146: [[9, 1, 0, 0, 2], [0, 10, 0, 0, 1], [0, 0, 11, 1, 0], [0, 0, 0, 12, 3], [1, 0, 1, 0, 0]],
        0.3966: [[8, 2, 0, 0, 4], [1, 9, 0, 0, 2], [0, 0, 12, 0, 1], [0, 0, 0, 11, 5], [1, 0, 0, 2, 0]],
    }

    def scores(base: float) -> ModelScores:
        classes = {i: ClassAP(AP50=min(1.0, base + 0.2 + i / 97), AP50_95=base + i / 97) for i in range(4)}
        recall = [float(r) for r in RECALL_POINTS]
        return ModelScores(
            mAP50=base + 0.21,
            mAP50_95=base + 0.0154639175,
            classes=classes,
            labels={i: 10 + i for i in range(4)},
            recall=recall,
            precision={i: [1 - r ** (2 + i) * (0.9 - base / 7) for r in recall] for i in classes},
            confusion=confusion[base],
        )

    limits = GateLimits(max_drop=0.01)
    held_out = dataset_evaluation(
        "heldOut", "datasets/vision/shapes-held-out/v1", 16, list(CLASS_NAMES), scores(0.4146), scores(0.3966)
    )
    record = EvaluationRecord(
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
        namespace="vision",
        training_job="shapes-tuned",
        attempt=1,
        class_names=list(CLASS_NAMES),
        candidate=EvaluatedModel(artifact="shapes-v2", uri="s3://models/v2.onnx", sha256=candidate_sha),
        baseline=EvaluatedModel(artifact="shapes-v1", uri="s3://models/v1.onnx", sha256="b" * 64),
        limits=limits,
        datasets=[held_out],
        verdict=judge(held_out, None, limits),
    )
    return record.model_dump_json(by_alias=True).encode()


def _run(name: str, line: str, epochs: int, **hyperparameters: Any) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {
            "model": {"architecture": "yolo11n"},
            "dataset": {"uri": "datasets/vision/shapes/v1"},
            "hyperparameters": {"epochs": epochs, "imgsz": 320, **hyperparameters},
            "resources": {"gpu": {"count": 0}},
            "output": {"model": line},
        },
    }


def seed_content(env: dict[str, Any], onnx: Path, work: Path) -> None:
    """What a team's project holds after a few days: datasets with versions, runs in two model
    lines (finished, failed, running), models in stages, two deployments (one with history, Events
    and an hour of edge traffic, one waiting for its model), hard frames, notifications."""
    now = datetime.now(UTC).replace(microsecond=0)
    _seed_datasets(env, work)
    _seed_models(env, onnx, now)
    _seed_runs(env, now)
    _seed_deployments(env, now)
    _seed_edge(env, work, now)
    _wait_for_notifications(env)


def _seed_datasets(env: dict[str, Any], work: Path) -> None:
    import httpx

    base = env["base"]
    admin = env["admin"]

    # Datasets through the API's ingest: shapes with two versions, helmets without one.
    created = httpx.post(f"{base}/projects/vision/datasets", json={"name": "shapes"}, headers=admin)
    assert created.status_code == 201, created.text
    for seed in (1, 2):
        uploaded = httpx.post(
            f"{base}/projects/vision/datasets/shapes/versions",
            files={"archive": ("shapes.zip", _dataset_zip(work, seed), "application/zip")},
            data={"note": f"synthetic shapes, seed {seed}"},
            headers=admin,
            timeout=120,
        )
        assert uploaded.status_code == 201, uploaded.text
    helmets = {"name": "helmets", "description": "hard hats on the dock cameras"}
    assert httpx.post(f"{base}/projects/vision/datasets", json=helmets, headers=admin).status_code == 201


def _seed_models(env: dict[str, Any], onnx: Path, now: datetime) -> None:

    from visioninapp.backends.storage import sha256_file

    cluster: Cluster = env["cluster"]
    services = env["services"]
    settings = env["settings"]

    # Models: the shapes line (production, staging) and the helmets line.
    uri = f"{settings.resolved_artifacts_uri}/models/seeded/model.onnx"
    services.store_for(uri).put_file(onnx, uri)
    digest, size = sha256_file(onnx), onnx.stat().st_size
    for name, line, version, stage, metrics in (
        ("shapes-v1", "shapes", "v1", "production", {"mAP50": 0.713, "mAP50_95": 0.412}),
        ("shapes-v2", "shapes", "v2", "staging", {"mAP50": 0.731, "mAP50_95": 0.43}),
        ("helmets-v1", "helmets", "v1", "candidate", {"mAP50": 0.52, "mAP50_95": 0.28}),
    ):
        job = {"shapes-v1": "shapes-base", "shapes-v2": "shapes-tuned"}.get(name)
        body = _artifact(name, line, version, uri, digest, size, metrics=metrics, stage=stage, job=job)
        status: Obj = {"phase": "Available"}
        conditions = [_condition("Verified", "True", "Sha256Matched", "every format matches its sha256", now)]
        if name == "shapes-v2":  # fine-tuned with a quality gate: its evaluation record, checked
            record = _evaluation_record(digest)
            record_uri = f"{settings.resolved_artifacts_uri}/models/seeded/evaluation.json"
            services.store_for(record_uri).put_bytes(record, record_uri)
            body["spec"]["evaluation"] = {"uri": record_uri, "sha256": hashlib.sha256(record).hexdigest()}
            status["qualityGate"] = {
                "passed": True,
                "baseline": "shapes-v1",
                "heldOut": {"candidate": 0.43, "baseline": 0.412, "drop": -0.018},
                "maxDrop": 0.01,
                "reasons": [],
            }
            conditions.append(
                _condition("QualityGate", "True", "Passed", "held-out mAP50-95 0.430 vs 0.412", now)
            )
        cluster.create(GROUP, "modelartifacts", "vision", body)
        status["conditions"] = conditions
        cluster.patch(GROUP, "modelartifacts", "vision", name, {"status": status}, subresource="status")
    # The shapes line's retrain policy, as GitOps applies it, after a run whose candidate failed.
    policy = {
        "metadata": {"name": "shapes-loop"},
        "spec": {
            "line": "shapes",
            "triggers": {"reviewedFrames": 20},
            "training": {"dataset": "shapes"},
            "gate": {"heldOut": {"uri": "datasets/vision/shapes-held-out/v1"}},
        },
    }
    cluster.create(GROUP, "retrainpolicies", "vision", policy)
    failed = (
        "shapes-loop-r1 failed the quality gate: held-out mAP50-95 dropped 0.031 (0.381 vs baseline 0.412)"
    )
    loop_status = {
        "phase": "GateFailed",
        "run": "shapes-loop-r1",
        "runs": 1,
        "result": failed,
        "message": failed,
    }
    cluster.patch(
        GROUP, "retrainpolicies", "vision", "shapes-loop", {"status": loop_status}, subresource="status"
    )


def _seed_runs(env: dict[str, Any], now: datetime) -> None:
    cluster: Cluster = env["cluster"]
    services = env["services"]
    settings = env["settings"]

    # Runs: two finished (their notifications are old news), one failed, one running.
    finished = {
        "shapes-base": ("shapes", "Succeeded", "shapes-v1", 0.713, ""),
        "shapes-tuned": ("shapes", "Succeeded", "shapes-v2", 0.731, ""),
        "helmets-first": ("helmets", "Failed", None, None, "the trainer ran out of memory at epoch 3"),
    }
    for name, (line, phase, artifact, map50, message) in finished.items():
        tuned = {"lr0": 0.002} if name == "shapes-tuned" else {}  # the compare page's diff
        cluster.create(GROUP, "trainingjobs", "vision", _run(name, line, 20, **tuned))
        status: dict[str, Any] = {"phase": phase, "epoch": 20 if artifact else 3, "epochs": 20}
        status["conditions"] = [
            _condition(
                "Succeeded", "True" if artifact else "False", phase, message or "model registered", now
            )
        ]
        if artifact:
            status.update(artifact=artifact, metrics={"mAP50": map50, "mAP50_95": map50 - 0.3})
        else:
            status["message"] = message
        cluster.patch(GROUP, "trainingjobs", "vision", name, {"status": status}, subresource="status")
    cluster.create(GROUP, "trainingjobs", "vision", _run("night-run", "helmets", 20))
    running = _condition("Running", "True", "AttemptRunning", f"attempt 1 on {TRAINING_NODE}", now)
    cluster.patch(
        GROUP,
        "trainingjobs",
        "vision",
        "night-run",
        {"status": {"phase": "Running", "epoch": 4, "epochs": 20, "conditions": [running]}},
        subresource="status",
    )
    for epoch in range(1, 5):
        event = TrainingEvent(
            type="epoch",
            namespace="vision",
            training_job="night-run",
            attempt=1,
            epoch=epoch,
            epochs=20,
            losses={"box": 2.0 / epoch + 0.123456789, "cls": 3.0 / epoch},
            mAP50=0.1 * epoch + 0.0123456789,
            mAP50_95=0.05 * epoch,
        )
        services.bus.publish(settings.training_stream, "e2e-seed", [(500 + epoch, event.to_bytes())])
    # The finished shapes runs' epochs: the compare page overlays their curves.
    for offset, (name, top) in enumerate((("shapes-base", 0.413), ("shapes-tuned", 0.431))):
        events = [
            TrainingEvent(
                type="epoch",
                namespace="vision",
                training_job=name,
                attempt=1,
                epoch=epoch,
                epochs=20,
                losses={"box": 1.0 / epoch},
                mAP50=top * epoch / 20 + 0.3,
                mAP50_95=top * epoch / 20,
            )
            for epoch in range(1, 21)
        ]
        services.bus.publish(
            settings.training_stream,
            "e2e-seed",
            [(600 + 100 * offset + e.epoch, e.to_bytes()) for e in events],
        )


def _seed_deployments(env: dict[str, Any], now: datetime) -> None:
    cluster: Cluster = env["cluster"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")

    # Deployments: dock rolls shapes-v2 out over shapes-v1; yard waits for a model not yet registered.
    spec = {"modelRef": "shapes-v2", "strategy": {"canary": {"steps": [50, 100]}}}
    cluster.create(GROUP, "edgedeployments", "vision", {"metadata": {"name": "dock"}, "spec": spec})
    earlier = now - timedelta(days=2)
    dock_status = {
        "phase": "Progressing",
        "conditions": [
            _condition("Progressing", "True", "StepAdvancing", "step 2 of 2: 1 of 2 nodes updated", now),
            _condition("Available", "False", "WaitingForGate", "jetson-b has not been ready for 60 s", now),
        ],
        "currentModel": "shapes-v2",
        "previousModel": "shapes-v1",
        "revision": "7d9f2c1a0b",
        "history": [
            {
                "revision": "7d9f2c1a0b",
                "model": "shapes-v2",
                "format": "onnx",
                "time": stamp,
                "outcome": "Progressing",
            },
            {
                "revision": "41be09aa3c",
                "model": "shapes-v1",
                "format": "onnx",
                "time": earlier.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "outcome": "Superseded",
            },
        ],
        "currentStep": 1,
        "desiredNodes": 2,
        "updatedNodes": 1,
        "readyNodes": 1,
        "nodes": [
            {
                "name": "jetson-b",
                "revision": "41be09aa3c",
                "ready": False,
                "failureReason": "model download 43%",
            },
            {"name": "jetson-a", "revision": "7d9f2c1a0b", "ready": True, "lastHeartbeat": stamp},
        ],
    }
    cluster.patch(GROUP, "edgedeployments", "vision", "dock", {"status": dock_status}, subresource="status")
    yard = {"metadata": {"name": "yard"}, "spec": {"modelRef": "helmets-v2"}}
    cluster.create(GROUP, "edgedeployments", "vision", yard)
    missing = "ModelArtifact helmets-v2 does not exist yet: register it (a finished run does) or pick another"
    yard_status = {
        "phase": "Progressing",
        "conditions": [_condition("ModelReady", "False", "ArtifactNotFound", missing, now)],
        "desiredNodes": 0,
    }
    cluster.patch(GROUP, "edgedeployments", "vision", "yard", {"status": yard_status}, subresource="status")
    for index, (kind, name, reason, message, level) in enumerate(
        (
            ("EdgeDeployment", "dock", "StepStarted", "step 2 of 2: updating jetson-a", "Normal"),
            ("EdgeDeployment", "dock", "GateWaiting", "jetson-b not ready: model download 43%", "Warning"),
            (
                "TrainingJob",
                "night-run",
                "AttemptStarted",
                f"attempt 1 scheduled on {TRAINING_NODE}",
                "Normal",
            ),
        )
    ):
        event_body = {
            "metadata": {"name": f"{name}.seed{index}"},
            "involvedObject": {
                "apiVersion": "visioninapp.io/v1alpha1",
                "kind": kind,
                "name": name,
                "namespace": "vision",
            },
            "reason": reason,
            "message": message,
            "type": level,
            "count": 1 + index,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": "visioninapp-operator"},
        }
        cluster.create("", "events", "vision", event_body)


# What the consumer stores from a runtime's EdgeEvent: each camera's window, by alias.
DOCK_CAMERAS = [
    CameraWindow(
        name="dock-gate", state="streaming", target_fps=15, fps=14.8371, frames_read=5321,
        frames_processed=5300, frames_dropped=21, p50_ms=4.2134, p99_ms=9.87654,
    ).model_dump(mode="json", by_alias=True),
    CameraWindow(
        name="dock-yard", state="reconnecting", target_fps=15, frames_read=120, frames_processed=118,
        frames_dropped=2, reconnects=3, error="rtsp: connection refused",
    ).model_dump(mode="json", by_alias=True),
]  # fmt: skip


def _seed_edge(env: dict[str, Any], work: Path, now: datetime) -> None:

    from visioninapp.api.db import EdgeWindow, FeedbackFrame
    from visioninapp.api.domain.ledger import record_window

    services = env["services"]
    settings = env["settings"]

    # An hour of edge traffic on dock (about 1,000 requests), p95s with long decimals; the ledger
    # of what each node served is kept from the same windows, as the stream consumer keeps it.
    with services.db.session() as session:
        for minute in reversed(range(60)):  # oldest first, as they arrive
            end = now - timedelta(minutes=minute)
            for node, share in (("jetson-a", 9), ("jetson-b", 8)):
                record_window(
                    session,
                    EdgeEvent(
                        namespace="vision",
                        deployment="dock",
                        node=node,
                        revision="7d9f2c1a0b" if node == "jetson-a" else "41be09aa3c",
                        model_version=("shapes-v2" if minute < 30 else "shapes-v1")
                        if node == "jetson-a"
                        else "shapes-v1",
                        window_start=end - timedelta(seconds=15),
                        window_end=end,
                    ),
                )
                session.add(
                    EdgeWindow(
                        project_name="vision",
                        deployment="dock",
                        node=node,
                        revision="7d9f2c1a0b" if node == "jetson-a" else "41be09aa3c",
                        model_version="shapes-v2" if node == "jetson-a" else "shapes-v1",
                        window_start=end - timedelta(seconds=15),
                        window_end=end,
                        requests=share,
                        errors=1 if minute % 17 == 0 else 0,
                        p50_ms=2.123456789,
                        p95_ms=4.4589424500713895 + minute / 7,
                        ready=node == "jetson-a",
                        reason=None if node == "jetson-a" else "model download 43%",
                        cameras=DOCK_CAMERAS if node == "jetson-a" else [],
                        stream_offset=9_000_000 + minute * 2 + (node == "jetson-b"),
                    )
                )
        # Hard frames from dock's nodes, with the detections that made them hard.
        frames_dir = work / "shapes-1" / "images" / "train"
        images = sorted(frames_dir.iterdir())
        for index in range(HARD_FRAMES):
            image = images[index % len(images)]
            frame_uri = f"{settings.resolved_artifacts_uri}/feedback/vision/dock/frame-{index}.jpg"
            services.store_for(frame_uri).put_file(image, frame_uri)
            detections = [
                {"classId": 0, "className": "circle", "score": 0.31 + index / 100, "box": [10, 12, 50, 60]},
                {"classId": 1, "className": "square", "score": 0.27, "box": [14, 16, 52, 58]},
            ]
            session.add(
                FeedbackFrame(
                    project_name="vision",
                    deployment="dock",
                    node="jetson-a" if index % 2 else "jetson-b",
                    image_uri=frame_uri,
                    model="shapes-v2",
                    top_score=0.31 + index / 100,
                    detections=detections,
                    captured_at=now - timedelta(minutes=index),
                )
            )


def _first_frame(env: dict[str, Any]) -> int:
    from sqlalchemy import func, select

    from visioninapp.api.db import FeedbackFrame

    with env["services"].db.session() as session:
        first = session.scalar(
            select(func.min(FeedbackFrame.id)).where(FeedbackFrame.project_name == "vision")
        )
    assert first is not None
    return int(first)


def _wait_for_notifications(env: dict[str, Any]) -> None:
    import httpx

    base = env["base"]
    admin = env["admin"]

    # The sync turns the finished runs into notifications: wait for them (old news to the browser).
    def notified() -> bool:
        notes = httpx.get(f"{base}/projects/vision/notifications", headers=admin).json()
        return {n["subject"] for n in notes["items"]} >= set(OLD_RUNS)

    wait_for(notified, 60, "the sync's notifications of the seeded runs")


def play_operator_and_trainer(env: dict[str, Any], onnx: Path, stop: threading.Event, seen: Path) -> None:
    """Wait for the TrainingJob the browser creates; stream 3 epochs; register its model.

    Epochs 1 and 2 go out only once the browser showed the previous step (it writes `detail`, then
    `epoch-1`, `epoch-2` into `seen`), and the run succeeds only after that: the page must have shown
    each epoch live, whatever the speed of this machine."""
    from visioninapp.backends.storage import sha256_file
    from visioninapp.local.synth import CLASS_NAMES

    cluster: Cluster = env["cluster"]
    services, settings = env["services"], env["settings"]
    while not stop.is_set() and cluster.get(GROUP, "trainingjobs", "vision", "e2e-run") is None:
        time.sleep(0.3)

    def browser_showed(step: str) -> bool:
        while not (seen / step).exists():
            if stop.wait(0.2):
                return False
        return True

    def publish(epoch: int) -> None:
        event = TrainingEvent(
            type="epoch",
            namespace="vision",
            training_job="e2e-run",
            attempt=1,
            epoch=epoch,
            epochs=3,
            losses={"box": 1.5 / epoch, "cls": 2.0 / epoch},
            mAP50=0.2 * epoch,
            mAP50_95=0.1 * epoch,
        )
        services.bus.publish(settings.training_stream, "e2e-trainer", [(epoch * 10, event.to_bytes())])

    for step, epoch in (("detail", 1), ("epoch-1", 2)):
        if not browser_showed(step):
            return
        publish(epoch)
        if epoch == 1:  # a trainer's log line, coloured for a terminal (publishing ids only grow)
            log = TrainingEvent(
                type="log",
                namespace="vision",
                training_job="e2e-run",
                attempt=1,
                level="INFO",
                message=ANSI_LOG,
            )
            services.bus.publish(settings.training_stream, "e2e-trainer", [(11, log.to_bytes())])
    if not browser_showed("epoch-2"):
        return
    uri = f"{settings.resolved_artifacts_uri}/models/e2e-run-v1/model.onnx"
    services.store_for(uri).put_file(onnx, uri)
    cluster.create(
        GROUP,
        "modelartifacts",
        "vision",
        {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": "ModelArtifact",
            "metadata": {"name": "e2e-run-v1"},
            "spec": {
                "model": "shapes",
                "version": "v3",
                "classNames": list(CLASS_NAMES),
                "imgsz": 96,
                "formats": [
                    {"format": "onnx", "uri": uri, "sha256": sha256_file(onnx), "size": onnx.stat().st_size}
                ],
                "metrics": {"mAP50": 0.6, "mAP50_95": 0.3},
                "source": {"trainingJob": "e2e-run", "dataset": "datasets/vision/shapes/v1"},
            },
        },
    )
    cluster.patch(
        GROUP,
        "trainingjobs",
        "vision",
        "e2e-run",
        {"status": {"phase": "Succeeded", "epoch": 3, "epochs": 3, "artifact": "e2e-run-v1"}},
        subresource="status",
    )
    publish(3)  # the model exists before the browser, seeing the last epoch, goes to look for it


def test_console_end_to_end(console: dict[str, Any], exported_model: Any, tmp_path: Path) -> None:
    from visioninapp.backends.storage import sha256_file

    seed_content(console, exported_model.onnx, tmp_path)
    review_frame = _first_frame(console)
    stop = threading.Event()
    seen = tmp_path / "seen"
    seen.mkdir()
    helper = threading.Thread(
        target=play_operator_and_trainer, args=(console, exported_model.onnx, stop, seen)
    )
    helper.start()
    try:
        result = subprocess.run(
            ["node", str(Path(__file__).with_name("console.mjs"))],
            env={
                **os.environ,
                "APP_URL": console["url"],
                "LOCAL_URL": console["local_url"],
                "AUTH_HOST": os.environ["FIREBASE_AUTH_EMULATOR_HOST"],
                "EMAIL": console["dev"],
                "VIEWER_EMAIL": console["viewer"],
                "PASSWORD": "secret-password",
                "ARTIFACTS": str(ARTIFACTS),
                "CONSOLE_DIR": str(FRONTEND),
                "PROJECT": "vision",
                "SEEN_DIR": str(seen),
                "OLD_RUNS": ",".join(OLD_RUNS),
                "HARD_FRAMES": str(HARD_FRAMES),
                "REVIEW_FRAME": str(review_frame),
                "E2E_RUN_SHA256": sha256_file(exported_model.onnx),
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop.set()
        helper.join(30)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser run: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    report = json.loads(lines[-1])
    assert report["problems"] == [], "\n".join(report["problems"])
    assert result.returncode == 0
    assert report["boxes"] > 0
    assert all(title.endswith("VisionInApp") for title in report["titles"].values()), report["titles"]
    (ARTIFACTS / "report.json").write_text(json.dumps(report, indent=2))
    # Cold loads of the overview on Fast 3G (CDP throttling, empty cache): their time is in
    # report.json (goal 2.5 s); the suite holds what decides it on a throttled link and not the
    # machine's speed, which a wall-clock bound would also measure: how many requests, how many bytes.
    # With sign-in, Firebase's SDK and its check of the stored user with its server come on top.
    for mode, (requests, size) in COLD_LOAD_BUDGET.items():
        load = report["coldLoad"][mode]
        assert load["requests"] <= requests and load["bytes"] <= size, (mode, load)
    cluster: Cluster = console["cluster"]
    tj = cluster.get(GROUP, "trainingjobs", "vision", "e2e-run")
    assert tj["spec"]["hyperparameters"]["epochs"] == 3 and tj["spec"]["hyperparameters"]["imgsz"] == 320
    # The form's defaults follow the nodes: no schedulable GPU node here, so no GPU asked for.
    assert tj["spec"]["resources"]["gpu"]["count"] == 0
    assert tj["spec"]["output"]["model"] == "shapes"  # the model line chosen in the form
    ed = cluster.get(GROUP, "edgedeployments", "vision", "e2e-canary")
    assert ed["spec"]["modelRef"] == "e2e-run-v1" and ed["spec"]["strategy"]["canary"]["steps"] == [50, 100]
