"""Dataset upload (validation, OpenCV preprocessing, versions in S3), feedback into a new version,
the detection preview, and run summaries with an accepted proposal."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import ApiEnv
from tests.api.test_api import artifact, member_spec
from visioninapp.feedback import feedback_prefix
from visioninapp.local.synth import CLASS_NAMES, generate_dataset

pytestmark = pytest.mark.services


def zipped(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                bundle.write(path, Path("dataset") / path.relative_to(root))
    return buffer.getvalue()


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    root = tmp_path / "synth"
    generate_dataset(root, train=6, val=3, imgsz=96, seed=3)
    return root


def upload(api: ApiEnv, project: str, data: bytes, note: str = "") -> object:
    return api.client.post(
        f"/api/v1/projects/{project}/datasets/shapes/versions",
        files={"archive": ("shapes.zip", data, "application/zip")},
        data={"note": note},
        headers=api.as_user("alice"),
    )


def test_upload_validates_preprocesses_and_versions(api: ApiEnv, dataset_dir: Path) -> None:
    project = api.new_project({"alice": "member"})
    api.client.post(
        f"/api/v1/projects/{project}/datasets", json={"name": "shapes"}, headers=api.as_user("alice")
    )
    train = sorted((dataset_dir / "images" / "train").iterdir())
    # A duplicate image (same pixels, other name) and a big image rotated by EXIF.
    shutil.copy(train[0], train[0].with_name("copy.png"))
    shutil.copy(
        dataset_dir / "labels" / "train" / f"{train[0].stem}.txt",
        dataset_dir / "labels" / "train" / "copy.txt",
    )
    big = Image.fromarray(np.full((2400, 1200, 3), 127, np.uint8))
    exif = big.getexif()
    exif[274] = 6  # rotate 90° on display
    big.save(dataset_dir / "images" / "train" / "big.jpg", exif=exif.tobytes())
    (dataset_dir / "labels" / "train" / "big.txt").write_text("0 0.5 0.5 0.2 0.2\n")

    first = upload(api, project, zipped(dataset_dir), "first cut")
    assert first.status_code == 201, first.text
    version = first.json()
    assert version["version"] == 1 and version["classNames"] == list(CLASS_NAMES)
    assert version["preprocessing"] == {
        "exifRotated": 1,
        "resized": 1,
        "duplicatesRemoved": 1,
        "maxSide": 1920,
    }
    assert version["images"]["train"] == len(train) + 1 and version["images"]["val"] == 3
    assert sum(version["classCounts"].values()) > 0
    store = api.container.store_for(version["uri"])
    manifest = json.loads(store.get_bytes(version["uri"] + "/manifest.json"))
    assert manifest["sha256"] == version["sha256"]
    stored_big = next(f for f in manifest["files"] if f["path"].endswith("big.jpg"))
    pixels = Image.open(io.BytesIO(store.get_bytes(version["uri"] + "/" + stored_big["path"])))
    assert pixels.size == (1920, 960)  # turned upright, then scaled to the limit

    same = upload(api, project, zipped(dataset_dir))
    assert same.status_code == 409 and "identical to version 1" in same.json()["error"]["message"]

    (dataset_dir / "labels" / "train" / f"{train[1].stem}.txt").write_text(
        "7 0.5 0.5 0.1 0.1\n0 1.5 0.5 0.1 0.1\n"
    )
    bad = upload(api, project, zipped(dataset_dir))
    assert bad.status_code == 422
    assert "class id 7 out of range" in bad.json()["error"]["message"]
    not_zip = upload(api, project, b"plain text")
    assert not_zip.status_code == 422 and "not a zip" in not_zip.json()["error"]["message"]
    history = api.client.get(
        f"/api/v1/projects/{project}/datasets/shapes", headers=api.as_user("alice")
    ).json()
    assert [v["version"] for v in history["versions"]] == [1]


def test_feedback_frames_become_a_new_dataset_version(api: ApiEnv, dataset_dir: Path) -> None:
    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    api.client.post(f"/api/v1/projects/{project}/datasets", json={"name": "shapes"}, headers=alice)
    assert upload(api, project, zipped(dataset_dir)).status_code == 201
    api.cluster.create("visioninapp.io", "modelartifacts", project, artifact("m1", project, map5095=0.3))
    api.client.post(
        f"/api/v1/projects/{project}/deployments",
        json={"name": "dock", "spec": {"modelRef": "m1"}},
        headers=alice,
    )
    # What an edge runtime uploads: <feedback uri>/<namespace>/<deployment>/<node>/<stem>.{jpg,json};
    # another project's deployment of the same name writes beside it, and is never imported here.
    feedback = api.settings.resolved_feedback_uri
    store = api.container.store_for(feedback)
    frame = io.BytesIO()
    Image.fromarray(np.full((96, 128, 3), 200, np.uint8)).save(frame, format="JPEG")
    record = {
        "time": "2026-11-23T10:00:00+00:00",
        "model": "m1",
        "detections": [{"box": [10, 20, 50, 60], "score": 0.31, "classId": 1, "className": CLASS_NAMES[1]}],
    }
    for namespace, node in ((project, "jetson-0"), (f"{project}-other", "jetson-9")):
        prefix = feedback_prefix(feedback, namespace, "dock", node)
        store.put_bytes(frame.getvalue(), f"{prefix}abc123-000000000001.jpg")
        store.put_bytes(json.dumps(record).encode(), f"{prefix}abc123-000000000001.json")

    synced = api.client.post(f"/api/v1/projects/{project}/feedback/sync", headers=alice).json()
    assert [f["node"] for f in synced["items"]] == ["jetson-0"]
    again = api.client.post(f"/api/v1/projects/{project}/feedback/sync", headers=alice).json()
    assert again["items"] == []
    found = api.client.get(
        f"/api/v1/search?q=jetson&collections=feedback&project={project}", headers=alice
    ).json()
    assert [h["id"] for h in found] == [str(synced["items"][0]["id"])]
    # Only reviewed labels reach a dataset version (tests/api/test_reviews.py has the rest): the
    # frame is still pending, so it joins nothing until a person accepts it.
    frame_id = synced["items"][0]["id"]
    pending = api.client.post(
        f"/api/v1/projects/{project}/feedback/accept",
        json={"ids": [frame_id], "dataset": "shapes"},
        headers=alice,
    )
    assert pending.status_code == 409 and "pending review" in pending.json()["error"]["message"]
    reviewed = api.client.post(
        f"/api/v1/projects/{project}/feedback/{frame_id}/accept", json={"revision": 0}, headers=alice
    )
    assert reviewed.status_code == 200, reviewed.text
    accepted = api.client.post(
        f"/api/v1/projects/{project}/feedback/accept",
        json={"ids": [synced["items"][0]["id"]], "dataset": "shapes"},
        headers=alice,
    )
    assert accepted.status_code == 201, accepted.text
    version = accepted.json()
    assert version["version"] == 2 and version["parentVersion"] == 1
    assert version["images"]["train"] == 7
    frames = api.client.get(f"/api/v1/projects/{project}/feedback?status=accepted", headers=alice).json()
    assert frames["total"] == 1


def test_detection_preview_runs_the_models_onnx(api: ApiEnv, exported_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from visioninapp.backends.storage import sha256_file

    project = api.new_project({"vera": "viewer"})
    uri = f"{api.settings.resolved_artifacts_uri}/models/m1/model.onnx"
    api.container.store_for(uri).put_file(exported_model.onnx, uri)
    obj = artifact("m1", project, map5095=0.3)
    obj["spec"]["formats"] = [
        {
            "format": "onnx",
            "uri": uri,
            "sha256": sha256_file(exported_model.onnx),
            "size": exported_model.onnx.stat().st_size,
        }
    ]
    obj["spec"]["classNames"] = list(CLASS_NAMES)
    api.cluster.create("visioninapp.io", "modelartifacts", project, obj)
    image = next((exported_model.dataset / "images" / "val").iterdir()).read_bytes()
    response = api.client.post(
        f"/api/v1/projects/{project}/models/m1/detect?confidence=0.3",
        files={"image": ("sample.png", image, "image/png")},
        headers=api.as_user("vera"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["detections"] and all(d["score"] >= 0.3 for d in body["detections"])
    assert {d["className"] for d in body["detections"]} <= set(CLASS_NAMES)
    garbage = api.client.post(
        f"/api/v1/projects/{project}/models/m1/detect",
        files={"image": ("x.png", b"not an image", "image/png")},
        headers=api.as_user("vera"),
    )
    assert garbage.status_code == 415


def test_summary_recommends_and_its_proposal_starts_the_next_run(api: ApiEnv) -> None:
    from tests.api.test_streams import epoch_event, publish
    from visioninapp.api.consumers import wait_drained

    project = api.new_project({"alice": "member"})
    alice = api.as_user("alice")
    created = api.client.post(
        f"/api/v1/projects/{project}/training-jobs",
        json={"name": "run-1", "spec": member_spec(project)},
        headers=alice,
    )
    assert created.status_code == 201, created.text
    scores = [0.2, 0.4, 0.6, 0.55, 0.5, 0.45]  # peaks at epoch 3, then overfits
    publish(
        api,
        api.settings.training_stream,
        [epoch_event(project, "run-1", i + 1, map50=s) for i, s in enumerate(scores)],
    )
    wait_drained(api.container.consumers()[0])
    api.cluster.patch(
        "visioninapp.io",
        "trainingjobs",
        project,
        "run-1",
        {"status": {"phase": "Succeeded", "artifact": "run-1-v1"}},
        subresource="status",
    )
    api.cluster.create(
        "visioninapp.io", "modelartifacts", project, artifact("run-1-v1", project, map5095=0.3)
    )
    written = api.client.post(f"/api/v1/projects/{project}/training-jobs/run-1/summary", headers=alice)
    assert written.status_code == 201, written.text
    summary = written.json()
    assert summary["generator"] == "template"
    assert {f["kind"] for f in summary["findings"]} >= {"overfitting", "promote"}
    assert summary["proposal"]["changes"]["epochs"] < 5 + 3
    assert "overfitting" in summary["text"]
    started = api.client.post(
        f"/api/v1/projects/{project}/training-jobs/run-1/summary/accept",
        json={"name": "run-2"},
        headers=alice,
    )
    assert started.status_code == 201, started.text
    cr = api.cluster.get("visioninapp.io", "trainingjobs", project, "run-2")
    assert cr["spec"]["model"] == {"baseModel": "run-1-v1"}
    assert cr["spec"]["hyperparameters"]["epochs"] == summary["proposal"]["changes"]["epochs"]


def test_upload_loose_images_and_labels(api: ApiEnv, dataset_dir: Path) -> None:
    project = api.new_project({"alice": "member"})
    api.client.post(
        f"/api/v1/projects/{project}/datasets", json={"name": "shapes"}, headers=api.as_user("alice")
    )
    images = sorted((dataset_dir / "images").rglob("*.*"))
    labels = sorted((dataset_dir / "labels").rglob("*.txt"))
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
    files += [("labels", (p.name, p.read_bytes(), "text/plain")) for p in labels]
    response = api.client.post(
        f"/api/v1/projects/{project}/datasets/shapes/versions/files",
        files=files,
        data={"classNames": ",".join(CLASS_NAMES), "valFraction": "0.25"},
        headers=api.as_user("alice"),
    )
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["classNames"] == list(CLASS_NAMES)
    assert version["images"]["train"] + version["images"]["val"] == len(images)
    assert version["images"]["val"] == len(images) // 4

    orphan = [
        ("images", (images[0].name, images[0].read_bytes(), "image/png")),
        ("labels", ("nobody.txt", b"0 0.5 0.5 0.1 0.1\n", "text/plain")),
    ]
    rejected = api.client.post(
        f"/api/v1/projects/{project}/datasets/shapes/versions/files",
        files=orphan,
        data={"classNames": ",".join(CLASS_NAMES)},
        headers=api.as_user("alice"),
    )
    assert rejected.status_code == 422 and "nobody" in rejected.json()["error"]["message"]
