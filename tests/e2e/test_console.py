"""The console in a real browser (Debian chromium + playwright-core) against the real API, the
Firebase Auth emulator and the Kubernetes API emulator. A helper thread plays the operator and the
trainer: it sees the TrainingJob the form created, publishes its epochs to the stream, then
registers its ModelArtifact (an exported YOLO ONNX)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import build_settings
from tests.conftest import REPO, sign_up
from tests.services import ensure_chromium, ensure_console_built, free_port, wait_for_port
from visioninapp.events import TrainingEvent
from visioninapp.local.cluster.cluster import Cluster
from visioninapp.local.cluster.controlplane import ControlPlane

pytestmark = [pytest.mark.services, pytest.mark.slow]

ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
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
        services = ApiContainer.build(settings)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(services, background=True), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for_port(port, 30, "the API")
        import httpx

        admin = {"Authorization": f"Bearer {sign_up(auth_emulator, boss, verified=True)}"}
        sign_up(auth_emulator, dev, verified=True)
        sign_up(auth_emulator, vera, verified=True)
        base = f"http://127.0.0.1:{port}/api/v1"
        assert httpx.post(f"{base}/projects", json={"name": "vision"}, headers=admin).status_code == 201
        for email, role in ((dev, "member"), (vera, "viewer")):
            response = httpx.put(
                f"{base}/projects/vision/members/{email}", json={"role": role}, headers=admin
            )
            assert response.status_code == 200
        try:
            yield {
                "url": f"http://127.0.0.1:{port}/",
                "dev": dev,
                "viewer": vera,
                "cluster": cluster,
                "services": services,
                "settings": settings,
            }
        finally:
            server.should_exit = True
            thread.join(20)
            with admin_engine.begin() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")


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
        services.bus.publish(settings.training_stream, "e2e-trainer", [(epoch, event.to_bytes())])

    for step, epoch in (("detail", 1), ("epoch-1", 2)):
        if not browser_showed(step):
            return
        publish(epoch)
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
                "version": "v1",
                "classNames": list(CLASS_NAMES),
                "imgsz": 96,
                "formats": [
                    {"format": "onnx", "uri": uri, "sha256": sha256_file(onnx), "size": onnx.stat().st_size}
                ],
                "metrics": {"mAP50": 0.6, "mAP50_95": 0.3},
                "source": {"trainingJob": "e2e-run"},
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
                "AUTH_HOST": os.environ["FIREBASE_AUTH_EMULATOR_HOST"],
                "EMAIL": console["dev"],
                "VIEWER_EMAIL": console["viewer"],
                "PASSWORD": "secret-password",
                "ARTIFACTS": str(ARTIFACTS),
                "CONSOLE_DIR": str(FRONTEND),
                "PROJECT": "vision",
                "SEEN_DIR": str(seen),
            },
            capture_output=True,
            text=True,
            timeout=400,
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
    cluster: Cluster = console["cluster"]
    tj = cluster.get(GROUP, "trainingjobs", "vision", "e2e-run")
    assert tj["spec"]["hyperparameters"]["epochs"] == 3 and tj["spec"]["hyperparameters"]["imgsz"] == 320
    ed = cluster.get(GROUP, "edgedeployments", "vision", "e2e-canary")
    assert ed["spec"]["modelRef"] == "e2e-run-v1" and ed["spec"]["strategy"]["canary"]["steps"] == [50, 100]
