"""The console's review queue in a real browser (the console test's setup: Debian chromium +
playwright-core, the real API, the Firebase Auth emulator, a real Kubernetes control plane): a
member moves a model's box with the mouse, changes its class with a number key, draws a new box
and accepts the frame with Enter; the frame's history shows the three changes, and the API agrees
(who, what, the labels stored)."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import test_console as base
from visioninapp.local.synth import CLASS_NAMES, generate_dataset

pytestmark = [pytest.mark.services, pytest.mark.slow]

console = base.console  # the same fixture: API, emulator, cluster, project `vision` with a member


def _seed(env: dict[str, Any], work: Path) -> list[int]:
    """Model shapes-v2 (the synthetic shapes' classes) deployed as `dock`, and two hard frames from
    it, each with the model's two overlapping proposals."""
    from visioninapp.api.db import FeedbackFrame

    services, settings = env["services"], env["settings"]
    uri = f"{settings.resolved_artifacts_uri}/models/seeded/model.onnx"
    body = base._artifact("shapes-v2", "shapes", "v2", uri, "a" * 64, 10, stage="production")
    env["cluster"].create(base.GROUP, "modelartifacts", "vision", body)
    env["cluster"].create(
        base.GROUP,
        "edgedeployments",
        "vision",
        {"metadata": {"name": "dock"}, "spec": {"modelRef": "shapes-v2"}},
    )
    generate_dataset(work / "shapes", train=2, val=1, imgsz=96, seed=5)
    images = sorted((work / "shapes" / "images" / "train").iterdir())
    now = datetime.now(UTC).replace(microsecond=0)
    ids = []
    with services.db.session() as session:
        for index, image in enumerate(images):
            frame_uri = f"{settings.resolved_artifacts_uri}/feedback/vision/dock/review-{index}.jpg"
            services.store_for(frame_uri).put_file(image, frame_uri)
            detections = [
                {"classId": 0, "className": "circle", "score": 0.41, "box": [10, 12, 50, 60]},
                {"classId": 1, "className": "square", "score": 0.27, "box": [14, 16, 44, 50]},
            ]
            frame = FeedbackFrame(
                project_name="vision",
                deployment="dock",
                node="jetson-a",
                image_uri=frame_uri,
                model="shapes-v2",
                top_score=0.41,
                detections=detections,
                captured_at=now - timedelta(minutes=10 - index),
            )
            session.add(frame)
            session.flush()
            ids.append(frame.id)
    return ids


def test_a_person_reviews_a_frame_in_the_console(console: dict[str, Any], tmp_path: Path) -> None:
    first, second = _seed(console, tmp_path)
    result = subprocess.run(
        ["node", str(Path(__file__).with_name("review.mjs"))],
        env={
            **os.environ,
            "APP_URL": console["url"],
            "AUTH_HOST": os.environ["FIREBASE_AUTH_EMULATOR_HOST"],
            "EMAIL": console["dev"],
            "PASSWORD": "secret-password",
            "PROJECT": "vision",
            "FRAME": str(first),
            "ARTIFACTS": str(base.ARTIFACTS),
            "CONSOLE_DIR": str(base.FRONTEND),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser run: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    report = json.loads(lines[-1])
    assert report["problems"] == [], "\n".join(report["problems"])
    # The page's history: the three changes, then the accept (oldest first).
    assert report["history"] == ["move", "relabel", "add", "accept"], report
    assert report["historyText"].count(console["dev"]) == 4, report["historyText"]

    frame = httpx.get(f"{console['base']}/projects/vision/feedback/{first}", headers=console["admin"]).json()
    assert frame["reviewStatus"] == "reviewed" and frame["reviewedBy"] == console["dev"]
    assert [(h["action"], h["labelId"], h["who"]) for h in frame["history"]] == [
        ("move", "b2", console["dev"]),
        ("relabel", "b2", console["dev"]),
        ("add", "b3", console["dev"]),
        ("accept", None, console["dev"]),
    ]
    labels = {label["id"]: label for label in frame["labels"]}
    assert labels["b1"]["box"] == [10.0, 12.0, 50.0, 60.0] and labels["b1"]["source"] == "model"
    moved = labels["b2"]
    assert moved["className"] == CLASS_NAMES[2] and moved["source"] == "person"
    assert moved["box"][0] > 14 and moved["box"][1] > 16  # dragged right and down
    assert moved["box"][2] - moved["box"][0] == pytest.approx(30, abs=0.2)  # moved, not resized
    drawn = labels["b3"]
    assert drawn["source"] == "person" and drawn["box"][0] >= 60 and drawn["box"][3] <= 96
    queue = httpx.get(
        f"{console['base']}/projects/vision/feedback/review-queue", headers=console["admin"]
    ).json()
    assert [f["id"] for f in queue["items"]] == [second]
