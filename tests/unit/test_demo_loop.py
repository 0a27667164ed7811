"""`visioninapp demo --loop`'s pure decisions (visioninapp/local/loop.py): a frame finds the image it
was made from, ground truth becomes the review API's labels (keeping the proposals' ids where they
overlap, so the history reads as a person's edits), the policy and feedback settings, the lineage."""

from __future__ import annotations

import hashlib
from typing import Any

import cv2
import numpy as np

from visioninapp.edge.runtime import EdgeRuntime
from visioninapp.images import decode_image
from visioninapp.local.loop import (
    LoopSettings,
    corrected,
    edge_jpeg_digest,
    feedback_spec,
    lineage,
    policy_spec,
    truth_labels,
)


def test_a_kept_frame_is_found_by_the_digest_of_the_edge_runtimes_jpeg() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    sent = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    stored = EdgeRuntime._jpeg(decode_image(sent), sent)  # what the runtime uploads for a kept frame
    assert edge_jpeg_digest(decode_image(sent)) == hashlib.sha256(stored).hexdigest()


def test_ground_truth_becomes_pixel_boxes_clipped_to_the_image() -> None:
    labels = truth_labels(["1 0.5 0.25 0.5 0.25", "", "3 0.05 0.5 0.2 0.2"], 128, 64)
    assert labels == [
        {"classId": 1, "box": [32.0, 8.0, 96.0, 24.0]},
        {"classId": 3, "box": [0.0, 25.6, 19.2, 38.4]},
    ]


def test_the_correction_keeps_overlapping_proposals_ids_and_drops_the_rest() -> None:
    proposals = [
        {"id": "b1", "classId": 0, "box": [10, 10, 50, 50]},  # a rotated square taken for a circle
        {"id": "b2", "classId": 2, "box": [100, 100, 120, 120]},  # nothing there
    ]
    truth = [{"classId": 1, "box": [12, 11, 52, 50]}, {"classId": 3, "box": [60, 0, 90, 30]}]
    assert corrected(proposals, truth) == [
        {"id": "b1", "classId": 1, "box": [12, 11, 52, 50]},  # relabelled and moved
        {"classId": 3, "box": [60, 0, 90, 30]},  # drawn anew; b2 left out: deleted
    ]
    assert corrected([], truth) == truth
    assert corrected(proposals, []) == []


def test_the_policy_fine_tunes_briefly_gates_on_the_held_out_set_and_promotes() -> None:
    settings = LoopSettings(reviewed_frames=30, epochs=12, max_drop=0.04)
    spec = policy_spec(settings, "shapes", "shapes", "file:///a/held-out")
    assert spec["triggers"] == {"reviewedFrames": 30} and spec["minIntervalMinutes"] == 0
    assert spec["training"]["dataset"] == "shapes"
    assert spec["training"]["hyperparameters"]["epochs"] == 12
    assert spec["gate"] == {"heldOut": {"uri": "file:///a/held-out"}, "maxDrop": 0.04}
    assert spec["promoteTo"] == "production"
    feedback = feedback_spec(settings)
    assert feedback["enabled"] and feedback["sampleRate"] == 1.0 and feedback["maxFramesPerHour"] == 30
    assert feedback["minScore"] < feedback["maxScore"]
    # three nodes share the policy's N: the fleet keeps N (or a few more when N does not divide)
    assert feedback_spec(settings, nodes=3)["maxFramesPerHour"] == 10
    assert feedback_spec(LoopSettings(reviewed_frames=32), nodes=3)["maxFramesPerHour"] == 11


def test_the_lineage_reads_from_v2_back_to_v1() -> None:
    model = {
        "name": "shapes-loop-r1",
        "stage": "production",
        "lineage": {"trainingJob": "shapes-loop-r1", "baseModel": "v1", "dataset": "file:///d/v2"},
    }
    version = {
        "name": "shapes",
        "version": 2,
        "provenance": {"addedFrames": [4, 5], "reviewedLabels": 3, "autoAcceptedLabels": 0},
    }
    frame = {"id": 4, "node": "local-edge-0", "deployment": "shapes-edge", "model": "v1", "reviewedBy": "me"}
    chain = lineage(model, version, frame)
    assert chain[0] == "shapes-loop-r1 (production) trained by shapes-loop-r1 from v1 on file:///d/v2"
    assert "2 frame(s) added, 3 label(s) reviewed, 0 auto-accepted" in chain[1]
    assert "EdgeDeployment shapes-edge, model v1" in chain[2]


def test_two_clusters_kubeconfigs_merge_into_one_context_each() -> None:
    """Both local control planes name their cluster, user and context alike: merged, each keeps its
    own server and credentials under the context's name, and the training cluster is current."""
    from visioninapp.local.mode import merge_kubeconfigs

    def single(server: str, cert: str) -> dict[str, Any]:
        return {
            "clusters": [{"name": "local", "cluster": {"server": server}}],
            "users": [{"name": "user", "user": {"client-certificate-data": cert}}],
            "contexts": [
                {"name": "local", "context": {"cluster": "local", "user": "user", "namespace": "demo"}}
            ],
        }

    merged = merge_kubeconfigs({"training": single("https://a", "A"), "edge": single("https://b", "B")})
    assert merged["current-context"] == "training"
    contexts = {c["name"]: c["context"] for c in merged["contexts"]}
    clusters = {c["name"]: c["cluster"]["server"] for c in merged["clusters"]}
    users = {u["name"]: u["user"]["client-certificate-data"] for u in merged["users"]}
    assert contexts["edge"] == {"cluster": "edge", "user": "edge", "namespace": "demo"}
    assert clusters == {"training": "https://a", "edge": "https://b"} and users == {
        "training": "A",
        "edge": "B",
    }
