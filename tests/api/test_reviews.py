"""Labels reviewed by people, with history: the review queue, label edits (add, move/resize,
relabel, delete, replace), accept and reject through the API, each stored with who and when;
optimistic concurrency (409 on a stale revision); readers cannot review; bad boxes and classes are
422s; dataset versions take reviewed labels only (pending frames only through an explicit
auto-accept threshold, marked as such) and carry each label's provenance (provenance.json)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import ApiEnv
from tests.api.test_api import artifact
from tests.api.test_datasets_preview_summaries import upload, zipped
from visioninapp.feedback import feedback_prefix
from visioninapp.local.synth import CLASS_NAMES, generate_dataset

pytestmark = pytest.mark.services

WIDTH, HEIGHT = 128, 96
# The model's proposals on each seeded frame: (class id, box, score).
PROPOSALS = [
    [(0, [10.25, 20.5, 50.0, 60.0], 0.62), (1, [60.0, 10.0, 100.0, 40.0], 0.31)],
    [(2, [5.0, 5.0, 40.0, 40.0], 0.55), (3, [70.0, 50.0, 120.0, 90.0], 0.18)],
    [(1, [30.0, 30.0, 80.0, 80.0], 0.12)],
]


@dataclass
class Seeded:
    api: ApiEnv
    project: str
    frames: list[int]  # oldest first

    def url(self, path: str = "") -> str:
        return f"/api/v1/projects/{self.project}/feedback{path}"

    def get(self, frame: int, who: str = "alice") -> dict[str, Any]:
        response = self.api.client.get(self.url(f"/{frame}"), headers=self.api.as_user(who))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def call(self, method: str, path: str, who: str = "alice", **kwargs: Any) -> Any:
        return self.api.client.request(method, self.url(path), headers=self.api.as_user(who), **kwargs)

    def ok(self, method: str, path: str, who: str = "alice", **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, who, **kwargs)
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body


def _frame_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def seeded(api: ApiEnv) -> Seeded:
    """A project (alice and bob members, vera a viewer) whose deployment `dock` of model m1 (the
    synthetic shapes' classes) sent three hard frames, imported through the API."""
    project = api.new_project({"alice": "member", "bob": "member", "vera": "viewer"})
    model = artifact("m1", project, map5095=0.3)
    model["spec"]["classNames"] = list(CLASS_NAMES)
    api.cluster.create("visioninapp.io", "modelartifacts", project, model)
    created = api.client.post(
        f"/api/v1/projects/{project}/deployments",
        json={"name": "dock", "spec": {"modelRef": "m1"}},
        headers=api.as_user("alice"),
    )
    assert created.status_code == 201, created.text
    feedback = api.settings.resolved_feedback_uri
    store = api.container.store_for(feedback)
    prefix = feedback_prefix(feedback, project, "dock", "jetson-0")
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    for index, proposals in enumerate(PROPOSALS):
        record = {
            "time": (start + timedelta(minutes=index)).isoformat(),
            "model": "m1",
            "detections": [
                {"classId": c, "className": CLASS_NAMES[c], "box": box, "score": score}
                for c, box, score in proposals
            ],
        }
        stem = f"{prefix}abc123-{index:012d}"
        store.put_bytes(_frame_jpeg(index), f"{stem}.jpg")
        store.put_bytes(json.dumps(record).encode(), f"{stem}.json")
    synced = api.client.post(f"/api/v1/projects/{project}/feedback/sync", headers=api.as_user("alice"))
    assert synced.status_code == 200, synced.text
    frames = sorted(synced.json()["items"], key=lambda f: f["capturedAt"])
    return Seeded(api, project, [f["id"] for f in frames])


def _recent(at: str) -> bool:
    return abs(datetime.fromisoformat(at) - datetime.now(UTC)) < timedelta(minutes=2)


def test_every_review_operation_is_stored_with_who_and_when(seeded: Seeded) -> None:
    first, second, third = seeded.frames
    queue = seeded.ok("GET", "/review-queue")
    assert [f["id"] for f in queue["items"]] == [first, second, third] and queue["total"] == 3  # oldest first
    frame = seeded.get(first)
    assert (frame["width"], frame["height"], frame["classNames"]) == (WIDTH, HEIGHT, list(CLASS_NAMES))
    assert frame["reviewStatus"] == "pending" and frame["revision"] == 0 and frame["history"] == []
    assert [(label["id"], label["classId"], label["box"], label["source"]) for label in frame["labels"]] == [
        ("b1", 0, [10.2, 20.5, 50.0, 60.0], "model"),  # a tenth of a pixel: proposals are rounded
        ("b2", 1, [60.0, 10.0, 100.0, 40.0], "model"),
    ]

    added = seeded.ok("POST", f"/{first}/labels", json={"revision": 0, "classId": 2, "box": [1, 2, 30, 40]})
    assert added["revision"] == 1 and added["labels"][-1] == {
        "id": "b3",
        "classId": 2,
        "className": "triangle",
        "box": [1.0, 2.0, 30.0, 40.0],
        "source": "person",
        "score": None,
    }
    moved = seeded.ok(
        "PATCH", f"/{first}/labels/b1", json={"revision": 1, "box": [12, 22, 56, 66]}, who="bob"
    )
    relabelled = seeded.ok("PATCH", f"/{first}/labels/b1", json={"revision": 2, "classId": 3})
    assert relabelled["labels"][0] == {
        "id": "b1",
        "classId": 3,
        "className": "cross",
        "box": [12.0, 22.0, 56.0, 66.0],
        "source": "person",
        "score": 0.62,
    }
    assert moved["labels"][0]["classId"] == 0
    deleted = seeded.ok("DELETE", f"/{first}/labels/b2", params={"revision": 3})
    assert [label["id"] for label in deleted["labels"]] == ["b1", "b3"]
    accepted = seeded.ok("POST", f"/{first}/accept", json={"revision": 4})
    assert accepted["reviewStatus"] == "reviewed" and accepted["reviewedBy"] == "alice"
    assert accepted["revision"] == 5 and _recent(accepted["reviewedAt"])

    history = seeded.get(first, who="vera")["history"]  # readers see it too
    assert [(h["action"], h["labelId"], h["who"], h["revision"]) for h in history] == [
        ("add", "b3", "alice", 1),
        ("move", "b1", "bob", 2),
        ("relabel", "b1", "alice", 3),
        ("delete", "b2", "alice", 4),
        ("accept", None, "alice", 5),
    ]
    assert all(_recent(h["at"]) for h in history)
    assert history[1]["before"]["box"] == [10.2, 20.5, 50.0, 60.0] and history[1]["after"]["box"] == [
        12.0,
        22.0,
        56.0,
        66.0,
    ]
    assert (history[2]["before"]["classId"], history[2]["after"]["classId"]) == (0, 3)
    assert history[3]["before"]["id"] == "b2" and history[3]["after"] is None
    assert [label["id"] for label in history[4]["after"]["labels"]] == ["b1", "b3"]

    rejected = seeded.ok("POST", f"/{second}/reject", json={"revision": 0, "note": "blurred"}, who="bob")
    assert rejected["reviewStatus"] == "rejected" and rejected["status"] == "dismissed"
    assert [(h["action"], h["who"], h["note"]) for h in rejected["history"]] == [("reject", "bob", "blurred")]
    refused = seeded.call(
        "POST", f"/{second}/labels", json={"revision": 1, "classId": 0, "box": [0, 0, 9, 9]}
    )
    assert refused.status_code == 409 and "was rejected" in refused.json()["error"]["message"]

    # Another labelling tool replaces the whole set: one row per difference, one revision.
    replaced = seeded.ok(
        "PUT",
        f"/{third}/labels",
        json={
            "revision": 0,
            "labels": [
                {"id": "b1", "classId": 1, "box": [30, 30, 90, 85]},
                {"classId": 0, "box": [1, 1, 20, 20]},
                {"classId": 2, "box": [100, 5, 120, 25]},
            ],
        },
    )
    assert replaced["revision"] == 1
    assert [label["id"] for label in replaced["labels"]] == ["b1", "b2", "b3"]
    assert [(h["action"], h["labelId"], h["revision"]) for h in replaced["history"]] == [
        ("move", "b1", 1),
        ("add", "b2", 1),
        ("add", "b3", 1),
    ]
    emptied = seeded.ok("PUT", f"/{third}/labels", json={"revision": 1, "labels": []})
    assert emptied["labels"] == [] and [h["action"] for h in emptied["history"][3:]] == ["delete"] * 3
    again = seeded.ok("POST", f"/{third}/labels", json={"revision": 2, "classId": 0, "box": [5, 5, 25, 25]})
    assert [label["id"] for label in again["labels"]] == ["b4"]  # a deleted box's id is never reused

    # An edit after the accept puts a frame back in the queue: a person accepts the new labels.
    queue = seeded.ok("GET", "/review-queue")
    assert [f["id"] for f in queue["items"]] == [third]
    seeded.ok("PATCH", f"/{first}/labels/b3", json={"revision": 5, "box": [2, 2, 30, 40]})
    assert seeded.get(first)["reviewStatus"] == "pending" and seeded.get(first)["reviewedBy"] is None
    assert [f["id"] for f in seeded.ok("GET", "/review-queue")["items"]] == [first, third]


def test_a_stale_revision_is_a_409_and_changes_nothing(seeded: Seeded) -> None:
    frame = seeded.frames[0]
    # Alice and Bob both loaded revision 0; Alice's move lands first.
    seeded.ok("PATCH", f"/{frame}/labels/b1", json={"revision": 0, "box": [0, 0, 10, 10]})
    for method, path, kwargs in (
        ("PATCH", f"/{frame}/labels/b1", {"json": {"revision": 0, "classId": 1}}),
        ("POST", f"/{frame}/labels", {"json": {"revision": 0, "classId": 1, "box": [1, 1, 5, 5]}}),
        ("DELETE", f"/{frame}/labels/b2", {"params": {"revision": 0}}),
        ("PUT", f"/{frame}/labels", {"json": {"revision": 0, "labels": []}}),
        ("POST", f"/{frame}/accept", {"json": {"revision": 0}}),
        ("POST", f"/{frame}/reject", {"json": {"revision": 0}}),
    ):
        stale = seeded.call(method, path, who="bob", **kwargs)
        assert stale.status_code == 409, (method, path, stale.text)
        message = stale.json()["error"]["message"]
        assert "you sent revision 0, it is at revision 1" in message and "move by alice" in message, message
        assert "Reload the frame" in message
    after = seeded.get(frame)
    assert after["revision"] == 1 and after["reviewStatus"] == "pending"
    assert after["labels"][0]["box"] == [0.0, 0.0, 10.0, 10.0]
    assert [label["classId"] for label in after["labels"]] == [0, 1]
    assert [h["who"] for h in after["history"]] == ["alice"]


def test_the_write_itself_refuses_a_revision_that_moved_on(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests that both read revision 0 before either wrote pass the read check; the
    conditional UPDATE (`WHERE revision = 0`) lets only the first through."""
    from visioninapp.api.domain import labelling

    frame = seeded.frames[0]
    monkeypatch.setattr(labelling, "check_revision", lambda *args: None)  # both read revision 0
    seeded.ok("PATCH", f"/{frame}/labels/b1", json={"revision": 0, "classId": 2})
    late = seeded.call("PATCH", f"/{frame}/labels/b2", json={"revision": 0, "classId": 3}, who="bob")
    assert late.status_code == 409, late.text
    assert "another change based on revision 0 landed first" in late.json()["error"]["message"]
    after = seeded.get(frame)
    assert [label["classId"] for label in after["labels"]] == [2, 1] and after["revision"] == 1
    assert [(h["action"], h["who"]) for h in after["history"]] == [("relabel", "alice")]


def test_readers_cannot_review(seeded: Seeded) -> None:
    frame = seeded.frames[0]
    for method, path, kwargs in (
        ("POST", f"/{frame}/labels", {"json": {"revision": 0, "classId": 1, "box": [1, 1, 5, 5]}}),
        ("PATCH", f"/{frame}/labels/b1", {"json": {"revision": 0, "classId": 1}}),
        ("DELETE", f"/{frame}/labels/b1", {"params": {"revision": 0}}),
        ("PUT", f"/{frame}/labels", {"json": {"revision": 0, "labels": []}}),
        ("POST", f"/{frame}/accept", {"json": {"revision": 0}}),
        ("POST", f"/{frame}/reject", {"json": {"revision": 0}}),
    ):
        denied = seeded.call(method, path, who="vera", **kwargs)
        assert denied.status_code == 403, (method, path, denied.text)
        assert "your role" in denied.json()["error"]["message"]
    outsider = seeded.api.client.get(seeded.url(f"/{frame}"), headers=seeded.api.as_user("mallory"))
    assert outsider.status_code == 404
    assert seeded.get(frame, who="vera")["revision"] == 0  # nothing changed
    assert seeded.ok("GET", "/review-queue", who="vera")["total"] == 3


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"classId": 0, "box": [100, 10, 140, 40]}, "box", "outside the 128x96 image"),
        ({"classId": 0, "box": [-1, 10, 40, 40]}, "box", "keep 0 ≤ x1 < x2 ≤ 128 and 0 ≤ y1 < y2 ≤ 96"),
        ({"classId": 0, "box": [40, 10, 20, 40]}, "box", "empty or inverted"),
        ({"classId": 4, "box": [1, 1, 20, 20]}, "classId", "class id 4 is not a class of frame"),
        ({"classId": 0, "box": [1, 1, 20]}, "box", "at least 4"),
    ],
)
def test_bad_boxes_and_classes_are_422_saying_how_to_fix_them(
    seeded: Seeded, body: dict[str, Any], field: str, says: str
) -> None:
    frame = seeded.frames[0]
    response = seeded.call("POST", f"/{frame}/labels", json={"revision": 0, **body})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert says in error["message"], error
    assert error["details"][0]["field"] == field
    assert seeded.get(frame)["revision"] == 0


def test_bad_edits_of_existing_labels_are_refused(seeded: Seeded) -> None:
    frame = seeded.frames[0]
    moved = seeded.call("PATCH", f"/{frame}/labels/b1", json={"revision": 0, "box": [0, 0, 129, 20]})
    assert moved.status_code == 422 and moved.json()["error"]["details"][0]["field"] == "box"
    relabelled = seeded.call("PATCH", f"/{frame}/labels/b1", json={"revision": 0, "classId": 9})
    assert relabelled.status_code == 422 and "use one of 0: circle" in relabelled.json()["error"]["message"]
    nothing = seeded.call("PATCH", f"/{frame}/labels/b1", json={"revision": 0})
    assert nothing.status_code == 422 and "give `box`" in nothing.json()["error"]["message"]
    unknown = seeded.call("DELETE", f"/{frame}/labels/b7", params={"revision": 0})
    assert unknown.status_code == 404 and "its labels: b1, b2" in unknown.json()["error"]["message"]
    twice = seeded.call(
        "PUT",
        f"/{frame}/labels",
        json={"revision": 0, "labels": [{"id": "b1", "classId": 0, "box": [1, 1, 9, 9]}] * 2},
    )
    assert twice.status_code == 422 and "more than once" in twice.json()["error"]["message"]
    assert seeded.get(frame)["history"] == []


# Dataset versions ---------------------------------------------------------------------------------


def _with_dataset(seeded: Seeded, tmp_path: Any) -> None:
    root = tmp_path / "synth"
    generate_dataset(root, train=4, val=2, imgsz=96, seed=3)
    alice = seeded.api.as_user("alice")
    seeded.api.client.post(
        f"/api/v1/projects/{seeded.project}/datasets", json={"name": "shapes"}, headers=alice
    )
    first = upload(seeded.api, seeded.project, zipped(root))
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]


def _version_file(seeded: Seeded, version: dict[str, Any], path: str) -> bytes:
    uri = version["uri"] + "/" + path
    data: bytes = seeded.api.container.store_for(uri).get_bytes(uri)
    return data


def _labels_of(seeded: Seeded, version: dict[str, Any], image: str) -> list[list[float]]:
    label = image.replace("images/", "labels/").rsplit(".", 1)[0] + ".txt"
    text = _version_file(seeded, version, label).decode()
    return [[float(v) for v in line.split()] for line in text.splitlines() if line.strip()]


def test_only_reviewed_labels_reach_a_version_with_their_provenance(seeded: Seeded, tmp_path: Any) -> None:
    _with_dataset(seeded, tmp_path)
    first, second, third = seeded.frames
    ids = {"ids": seeded.frames, "dataset": "shapes"}
    none = seeded.call("POST", "/accept", json=ids)
    assert none.status_code == 409, none.text
    message = none.json()["error"]["message"]
    assert f"frame {first}: pending review" in message and "autoAcceptMinScore" in message

    seeded.ok("PATCH", f"/{first}/labels/b1", json={"revision": 0, "box": [16, 24, 48, 72]}, who="bob")
    seeded.ok("DELETE", f"/{first}/labels/b2", params={"revision": 1})
    seeded.ok("POST", f"/{first}/accept", json={"revision": 2})
    seeded.ok("POST", f"/{second}/reject", json={"revision": 0})
    version = seeded.ok("POST", "/accept", json=ids)

    provenance = version["provenance"]
    assert provenance["reviewedFrames"] == 1 and provenance["reviewedLabels"] == 1
    assert provenance["autoAcceptedFrames"] == 0 and provenance["autoAcceptedLabels"] == 0
    assert provenance["addedFrames"] == [first]
    assert provenance["excluded"] == [
        {"frame": second, "reason": "rejected in review"},
        {"frame": third, "reason": "pending review (review it, or give autoAcceptMinScore)"},
    ]
    assert version["images"]["train"] == 5  # the four of v1 and the reviewed frame
    stored = seeded.api.client.get(
        f"/api/v1/projects/{seeded.project}/datasets/shapes/versions/2", headers=seeded.api.as_user("vera")
    ).json()
    assert stored["provenance"] == provenance

    record = json.loads(_version_file(seeded, version, "provenance.json"))
    [(image, entry)] = record["images"].items()
    assert image.startswith("images/train/") and image.endswith(f"feedback_{first}.jpg")
    assert entry["frame"] == first and entry["review"] == "reviewed" and entry["reviewer"] == "alice"
    assert (
        _recent(entry["reviewedAt"])
        and entry["acceptedBy"] == "alice"
        and entry["autoAcceptMinScore"] is None
    )
    assert [(label["id"], label["source"], label["provenance"]) for label in entry["labels"]] == [
        ("b1", "person", "reviewed")
    ]
    # The label file holds the reviewed box (moved by bob), not the model's: class 0, centre 32,48.
    [[class_id, cx, cy, w, h]] = _labels_of(seeded, version, image)
    assert (class_id, cx, cy, w, h) == pytest.approx((0, 32 / WIDTH, 48 / HEIGHT, 32 / WIDTH, 48 / HEIGHT))

    frames = {f["id"]: f for f in seeded.ok("GET", "", params={"limit": 10})["items"]}
    assert frames[first]["status"] == "accepted" and frames[first]["reviewStatus"] == "reviewed"
    assert frames[third]["status"] == "new" and frames[third]["reviewStatus"] == "pending"
    locked = seeded.call("PATCH", f"/{first}/labels/b1", json={"revision": 3, "classId": 1})
    assert locked.status_code == 409 and "in a dataset version already" in locked.json()["error"]["message"]


def test_auto_accept_takes_proposals_above_the_threshold_and_marks_them(
    seeded: Seeded, tmp_path: Any
) -> None:
    _with_dataset(seeded, tmp_path)
    first, second, third = seeded.frames
    seeded.ok("POST", f"/{first}/accept", json={"revision": 0})  # reviewed: both its boxes, as proposed
    body = {"ids": seeded.frames, "dataset": "shapes", "autoAcceptMinScore": 0.3}
    version = seeded.ok("POST", "/accept", json=body)

    provenance = version["provenance"]
    assert (provenance["reviewedFrames"], provenance["reviewedLabels"]) == (1, 2)
    assert (provenance["autoAcceptedFrames"], provenance["autoAcceptedLabels"]) == (1, 1)
    assert provenance["autoAcceptMinScore"] == 0.3 and provenance["addedFrames"] == [first, second]
    assert provenance["excluded"] == [{"frame": third, "reason": "no model proposal scores at least 0.3"}]

    record = json.loads(_version_file(seeded, version, "provenance.json"))["images"]
    by_frame = {entry["frame"]: (image, entry) for image, entry in record.items()}
    image, auto = by_frame[second]
    assert (
        auto["review"] == "auto-accepted" and auto["reviewer"] is None and auto["autoAcceptMinScore"] == 0.3
    )
    assert [(label["score"], label["provenance"]) for label in auto["labels"]] == [(0.55, "auto-accepted")]
    assert [row[0] for row in _labels_of(seeded, version, image)] == [2]  # the 0.18 proposal is not there
    assert all(label["provenance"] == "reviewed" for label in by_frame[first][1]["labels"])

    marked = seeded.get(second)
    assert marked["reviewStatus"] == "auto-accepted" and marked["status"] == "accepted"
    assert [(h["action"], h["who"]) for h in marked["history"]] == [("auto-accept", "alice")]
    assert "at least 0.3" in marked["history"][0]["note"]
    assert seeded.get(third)["reviewStatus"] == "pending"
    assert [f["id"] for f in seeded.ok("GET", "/review-queue")["items"]] == [third]

    # The next version keeps the earlier images' provenance (under their new paths).
    seeded.ok("POST", f"/{third}/accept", json={"revision": 0})
    later = seeded.ok("POST", "/accept", json={"ids": [third], "dataset": "shapes"})
    assert (later["provenance"]["reviewedFrames"], later["provenance"]["autoAcceptedFrames"]) == (2, 1)
    kept = json.loads(_version_file(seeded, later, "provenance.json"))["images"]
    assert sorted(entry["frame"] for entry in kept.values()) == [first, second, third]


def test_frames_being_published_cannot_change_and_a_changed_frame_is_not_published(
    seeded: Seeded, tmp_path: Any
) -> None:
    from visioninapp.api.domain.feedback import _reserve
    from visioninapp.web.errors import ApiError

    _with_dataset(seeded, tmp_path)
    first, second, _ = seeded.frames
    seeded.ok("POST", f"/{first}/accept", json={"revision": 0})  # now at revision 1
    container = seeded.api.container
    with pytest.raises(ApiError, match=f"frame {first} changed while its dataset version"):
        _reserve(container, [(second, 0), (first, 0)])  # first as read before its review: stale
    assert seeded.get(second)["status"] == "new"  # nothing reserved
    _reserve(container, [(first, 1)])
    busy = seeded.call("PATCH", f"/{first}/labels/b1", json={"revision": 1, "classId": 2})
    assert busy.status_code == 409 and "in a dataset version already" in busy.json()["error"]["message"]
    assert seeded.call("POST", f"/{first}/reject", json={"revision": 1}).status_code == 409
