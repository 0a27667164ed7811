"""The review's pure decisions (api/domain/labels.py): edits of a frame's labels and their history
changes, which labels a dataset version takes from a frame, and the provenance counts."""

from __future__ import annotations

import dataclasses

import pytest

from visioninapp.api.domain.labels import (
    AddBox,
    DeleteBox,
    EditBox,
    FrameFacts,
    ReplaceLabels,
    Replacement,
    apply_edit,
    check_revision,
    decide,
    edit_status,
    frame_id_of_image,
    labels_from_proposals,
    provenance_summary,
    review_change,
)
from visioninapp.web.errors import ApiError

FACTS = FrameFacts(7, 100, 80, ("cat", "dog"))
PROPOSALS = [
    {"classId": 0, "className": "cat", "box": [1.04, 2, 30, 40], "score": 0.9},
    {"classId": 1, "className": "dog", "box": [50, 10, 90, 70], "score": 0.2},
]


def test_proposals_become_model_labels_and_a_threshold_keeps_the_confident_ones() -> None:
    labels = labels_from_proposals(PROPOSALS)
    assert [(label.id, label.box, label.source) for label in labels] == [
        ("b1", (1.0, 2.0, 30.0, 40.0), "model"),
        ("b2", (50.0, 10.0, 90.0, 70.0), "model"),
    ]
    assert [label.id for label in labels_from_proposals(PROPOSALS, 0.5)] == ["b1"]


def test_each_edit_is_one_change_and_a_no_op_is_none() -> None:
    labels = labels_from_proposals(PROPOSALS)
    added, [change] = apply_edit(labels, AddBox(1, [0, 0, 10, 10]), FACTS, issued=5)
    assert change.action == "add" and change.label_id == "b6" and added[-1].source == "person"
    _, [both] = apply_edit(labels, EditBox("b1", box=[2, 2, 30, 40], class_id=1), FACTS)
    assert both.action == "edit" and both.before and both.before["className"] == "cat"
    assert both.after and both.after["className"] == "dog"
    same, none = apply_edit(labels, EditBox("b1", box=[1.0, 2.0, 30.0, 40.0]), FACTS)
    assert none == [] and same == labels
    kept, [deleted] = apply_edit(labels, DeleteBox("b2"), FACTS)
    assert deleted.action == "delete" and [label.id for label in kept] == ["b1"]


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (AddBox(0, [0, 0, 101, 10]), "outside the 100x80 image"),
        (AddBox(0, [10, 10, 10.5, 20]), "empty or inverted"),
        (AddBox(2, [0, 0, 10, 10]), "use one of 0: cat, 1: dog"),
        (EditBox("b9", class_id=0), "has no label 'b9'"),
        (ReplaceLabels((Replacement(0, [0, 0, 5, 5], "b4"),)), "leave `id` out to add a box"),
    ],
)
def test_bad_edits_say_how_to_fix_them(edit: AddBox | EditBox | ReplaceLabels, says: str) -> None:
    with pytest.raises(ApiError) as refused:
        apply_edit(labels_from_proposals(PROPOSALS), edit, FACTS)
    assert says in refused.value.message


def test_a_replacement_is_one_change_per_difference() -> None:
    labels = labels_from_proposals(PROPOSALS)
    wanted = ReplaceLabels((Replacement(1, [1, 2, 30, 40], "b1"), Replacement(0, [60, 60, 70, 70])))
    result, changes = apply_edit(labels, wanted, FACTS)
    assert [label.id for label in result] == ["b1", "b3"]
    assert [(c.action, c.label_id) for c in changes] == [("relabel", "b1"), ("add", "b3"), ("delete", "b2")]


def test_revisions_and_review_statuses() -> None:
    check_revision(7, 3, 3, None)
    with pytest.raises(ApiError) as stale:
        check_revision(7, 4, 3, "move by bob")
    assert stale.value.status == 409 and "you sent revision 3, it is at revision 4" in stale.value.message
    assert edit_status("reviewed") == "pending" and edit_status("pending") == "pending"
    status, change = review_change("reject", "pending", labels_from_proposals(PROPOSALS))
    assert status == "rejected" and change.after == {"reviewStatus": "rejected", "labels": []}


def test_what_a_dataset_version_takes_from_a_frame() -> None:
    labels = labels_from_proposals(PROPOSALS)
    assert (
        decide(1, "pending", labels, PROPOSALS, None)
        == "pending review (review it, or give autoAcceptMinScore)"
    )
    assert decide(1, "rejected", labels, PROPOSALS, 0.1) == "rejected in review"
    reviewed = decide(1, "reviewed", labels[:1], PROPOSALS, None)
    assert (
        not isinstance(reviewed, str) and reviewed.review == "reviewed" and not reviewed.newly_auto_accepted
    )
    auto = decide(1, "pending", labels, PROPOSALS, 0.5)
    assert (
        not isinstance(auto, str)
        and auto.newly_auto_accepted
        and [label.id for label in auto.labels] == ["b1"]
    )
    assert decide(1, "pending", labels, PROPOSALS, 0.95) == "no model proposal scores at least 0.95"
    # A person moved a box but has not accepted the frame: a threshold never replaces their boxes.
    edited = [dataclasses.replace(labels[0], source="person", box=(1.0, 1.0, 9.0, 9.0)), *labels[1:]]
    assert decide(1, "pending", edited, PROPOSALS, 0.1) == (
        "edited by a person but not accepted yet: accept it in review"
    )


def test_provenance_counts_and_image_names() -> None:
    assert frame_id_of_image("images/train/000003_000001_feedback_42.jpg") == 42
    assert frame_id_of_image("images/train/000003_shapes.jpg") is None
    images = {
        "a.jpg": {"frame": 1, "review": "reviewed", "labels": [{}, {}]},
        "b.jpg": {"frame": 2, "review": "auto-accepted", "labels": [{}]},
    }
    summary = provenance_summary(images, [2], [{"frame": 3, "reason": "rejected in review"}], 0.5)
    assert (summary["reviewedFrames"], summary["reviewedLabels"]) == (1, 2)
    assert (summary["autoAcceptedFrames"], summary["autoAcceptedLabels"]) == (1, 1)
    assert summary["addedFrames"] == [2] and summary["autoAcceptMinScore"] == 0.5
