"""The labels of a hard frame under review, as pure decisions: no I/O, no database.

A frame's label set starts as the model's proposals (`source: "model"`); every edit a person makes
(add, move or resize, change class, delete, replace the set) is checked here against the frame's
size and its model's classes and yields the new set and the history rows that describe it. Which
labels a dataset version takes from a frame (reviewed, auto-accepted by a threshold, or none) and
the provenance written with it are decided here too.

Stored shapes (JSON, camelCase as the API shows them):
- a label: `{id, classId, className, box: [x1, y1, x2, y2] (pixels), source: model|person, score}`;
- a history change: `{action, labelId, before, after}`; `before`/`after` are the label for box
  operations, `{reviewStatus, labels}` for accept, reject and auto-accept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from visioninapp.web.errors import ApiError, ErrorDetail

__all__ = [
    "MAX_LABELS",
    "REVIEW_STATUSES",
    "AddBox",
    "Change",
    "DeleteBox",
    "Edit",
    "EditBox",
    "FrameFacts",
    "Included",
    "Label",
    "ReplaceLabels",
    "Replacement",
    "apply_edit",
    "check_decidable",
    "check_editable",
    "check_revision",
    "current_labels",
    "decide",
    "edit_status",
    "frame_id_of_image",
    "label_number",
    "labels_from_proposals",
    "provenance_summary",
    "review_change",
]

MAX_LABELS = 300  # boxes on one frame
REVIEW_STATUSES = ("pending", "reviewed", "rejected", "auto-accepted")
ReviewStatus = Literal["pending", "reviewed", "rejected", "auto-accepted"]
Source = Literal["model", "person"]
_ID = re.compile(r"b(\d{1,9})")
_FEEDBACK_STEM = re.compile(r"(?:^|_)feedback_(\d{1,19})$")


def _rounded(box: Sequence[float]) -> tuple[float, float, float, float]:
    """Pixels to a tenth: finer than a pixel means nothing to a label, and reads badly."""
    x1, y1, x2, y2 = (round(float(v), 1) for v in box)
    return x1, y1, x2, y2


@dataclass(frozen=True)
class Label:
    id: str
    class_id: int
    class_name: str
    box: tuple[float, float, float, float]
    source: Source
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "classId": self.class_id,
            "className": self.class_name,
            "box": list(self.box),
            "source": self.source,
            "score": self.score,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Label:
        return cls(
            id=str(data["id"]),
            class_id=int(data["classId"]),
            class_name=str(data.get("className", "")),
            box=_rounded(data["box"]),
            source="person" if data.get("source") == "person" else "model",
            score=float(data["score"]) if data.get("score") is not None else None,
        )


@dataclass(frozen=True)
class FrameFacts:
    """What an edit is checked against: the image's size and the frame's model's class names."""

    frame_id: int
    width: int
    height: int
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class Change:
    """One history row: what happened to which label, the label (or frame state) before and after."""

    action: str  # add | move | relabel | edit | delete | accept | reject | auto-accept
    label_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True)
class AddBox:
    class_id: int
    box: Sequence[float]


@dataclass(frozen=True)
class EditBox:
    """Move or resize (`box`), change the class (`class_id`), or both."""

    label_id: str
    box: Sequence[float] | None = None
    class_id: int | None = None


@dataclass(frozen=True)
class DeleteBox:
    label_id: str


@dataclass(frozen=True)
class Replacement:
    """One label of a replacing set: `label_id` names a label to keep (changed or not); None adds one."""

    class_id: int
    box: Sequence[float]
    label_id: str | None = None


@dataclass(frozen=True)
class ReplaceLabels:
    labels: Sequence[Replacement] = field(default_factory=tuple)


Edit = AddBox | EditBox | DeleteBox | ReplaceLabels


def labels_from_proposals(
    detections: Sequence[dict[str, Any]], min_score: float | None = None
) -> list[Label]:
    """The starting labels: the model's proposals (those scoring at least `min_score`), ids b1, b2..."""
    labels = []
    for index, detection in enumerate(detections, 1):
        score = detection.get("score")
        if min_score is not None and (not isinstance(score, int | float) or score < min_score):
            continue
        box = detection.get("box")
        class_id = detection.get("classId")
        if not isinstance(class_id, int) or not isinstance(box, list | tuple) or len(box) != 4:
            continue  # a malformed record from the edge: nothing a person could edit
        labels.append(
            Label(
                id=f"b{index}",
                class_id=class_id,
                class_name=str(detection.get("className", "")),
                box=_rounded(box),
                source="model",
                score=round(float(score), 4) if isinstance(score, int | float) else None,
            )
        )
    return labels


def current_labels(
    stored: Sequence[dict[str, Any]] | None, detections: Sequence[dict[str, Any]]
) -> list[Label]:
    """A frame's labels: as stored once someone changed them, else still the model's proposals."""
    if stored is None:
        return labels_from_proposals(detections)
    return [Label.from_json(item) for item in stored]


def _invalid(field_name: str, message: str) -> ApiError:
    return ApiError(422, f"{field_name}: {message}", [ErrorDetail(field=field_name, message=message)])


def _class_name(facts: FrameFacts, class_id: int, field_name: str) -> str:
    if not 0 <= class_id < len(facts.class_names):
        choices = ", ".join(f"{i}: {name}" for i, name in enumerate(facts.class_names[:50]))
        raise _invalid(
            field_name,
            f"class id {class_id} is not a class of frame {facts.frame_id}'s model; use one of {choices}",
        )
    return facts.class_names[class_id]


def _box(facts: FrameFacts, box: Sequence[float], field_name: str) -> tuple[float, float, float, float]:
    if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        raise _invalid(field_name, "a box is four finite numbers [x1, y1, x2, y2] in pixels")
    x1, y1, x2, y2 = _rounded(box)
    bounds = f"keep 0 ≤ x1 < x2 ≤ {facts.width} and 0 ≤ y1 < y2 ≤ {facts.height} (pixels of the frame)"
    if x1 < 0 or y1 < 0 or x2 > facts.width or y2 > facts.height:
        raise _invalid(
            field_name,
            f"box {[x1, y1, x2, y2]} is outside the {facts.width}x{facts.height} image; {bounds}",
        )
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise _invalid(
            field_name,
            f"box {[x1, y1, x2, y2]} is empty or inverted (under one pixel wide or high); {bounds}",
        )
    return x1, y1, x2, y2


def label_number(label_id: str | None) -> int:
    """n of a label id `b<n>` (0 for anything else)."""
    found = _ID.fullmatch(label_id or "")
    return int(found.group(1)) if found else 0


def _next_id(labels: Sequence[Label], taken: int = 0) -> str:
    numbers = [int(m.group(1)) for label in labels if (m := _ID.fullmatch(label.id))]
    return f"b{max([*numbers, taken]) + 1}"


def _find(labels: Sequence[Label], label_id: str, facts: FrameFacts) -> Label:
    found = next((label for label in labels if label.id == label_id), None)
    if found is None:
        present = ", ".join(label.id for label in labels) or "none"
        raise ApiError(
            404, f"frame {facts.frame_id} has no label {label_id!r} (its labels: {present}); reload the frame"
        )
    return found


def _edit_action(before: Label, after: Label) -> str | None:
    moved, relabelled = before.box != after.box, before.class_id != after.class_id
    if moved and relabelled:
        return "edit"
    return "move" if moved else "relabel" if relabelled else None


def _changed(
    label: Label, facts: FrameFacts, box: Sequence[float] | None, class_id: int | None, where: str
) -> Label:
    new_box = _box(facts, box, f"{where}box") if box is not None else label.box
    new_class = class_id if class_id is not None else label.class_id
    name = _class_name(facts, new_class, f"{where}classId") if class_id is not None else label.class_name
    if new_box == label.box and new_class == label.class_id:
        return label
    return Label(label.id, new_class, name, new_box, "person", label.score)


def apply_edit(
    labels: Sequence[Label], edit: Edit, facts: FrameFacts, issued: int = 0
) -> tuple[list[Label], list[Change]]:
    """The frame's labels after `edit`, and one history change per label it changed (none: no-op).

    `issued`: the highest label number ever given on the frame (`b<n>`), so that a new box never
    takes the id of a deleted one and the history names one box by one id.

    ApiError 422 for a box outside the image or a class the model does not have, 404 for an unknown
    label id."""
    current = list(labels)
    if isinstance(edit, AddBox):
        if len(current) >= MAX_LABELS:
            raise _invalid(
                "box", f"frame {facts.frame_id} already has {MAX_LABELS} boxes, the most a frame may"
            )
        added = Label(
            _next_id(current, issued),
            edit.class_id,
            _class_name(facts, edit.class_id, "classId"),
            _box(facts, edit.box, "box"),
            "person",
        )
        return [*current, added], [Change("add", added.id, None, added.to_json())]
    if isinstance(edit, EditBox):
        if edit.box is None and edit.class_id is None:
            raise _invalid("body", "give `box` (move or resize), `classId` (change the class), or both")
        before = _find(current, edit.label_id, facts)
        after = _changed(before, facts, edit.box, edit.class_id, "")
        action = _edit_action(before, after)
        if action is None:
            return current, []
        return [after if label.id == before.id else label for label in current], [
            Change(action, before.id, before.to_json(), after.to_json())
        ]
    if isinstance(edit, DeleteBox):
        before = _find(current, edit.label_id, facts)
        return [label for label in current if label.id != before.id], [
            Change("delete", before.id, before.to_json(), None)
        ]
    return _replace(current, edit, facts, issued)


def _replace(
    current: list[Label], edit: ReplaceLabels, facts: FrameFacts, issued: int
) -> tuple[list[Label], list[Change]]:
    """A whole new set from another labelling tool: one change per difference (kept labels that did
    not change record nothing), in the order edit, add, delete."""
    if len(edit.labels) > MAX_LABELS:
        raise _invalid("labels", f"at most {MAX_LABELS} boxes per frame; {len(edit.labels)} given")
    by_id = {label.id: label for label in current}
    kept_ids = [r.label_id for r in edit.labels if r.label_id is not None]
    duplicated = sorted({i for i in kept_ids if kept_ids.count(i) > 1})
    if duplicated:
        raise _invalid("labels", f"label ids {duplicated} appear more than once; name each label once")
    unknown = [i for i in kept_ids if i not in by_id]
    if unknown:
        raise _invalid(
            "labels",
            f"labels {unknown} are not on frame {facts.frame_id} (its labels: {', '.join(by_id) or 'none'}); "
            "leave `id` out to add a box",
        )
    result: list[Label] = []
    changes: list[Change] = []
    added: list[Change] = []
    highest = issued
    for index, wanted in enumerate(edit.labels):
        where = f"labels.{index}."
        if wanted.label_id is not None:
            before = by_id[wanted.label_id]
            after = _changed(before, facts, wanted.box, wanted.class_id, where)
            action = _edit_action(before, after)
            if action is not None:
                changes.append(Change(action, before.id, before.to_json(), after.to_json()))
            result.append(after)
            continue
        new_id = _next_id([*current, *result], highest)
        highest = int(new_id[1:])
        label = Label(
            new_id,
            wanted.class_id,
            _class_name(facts, wanted.class_id, f"{where}classId"),
            _box(facts, wanted.box, f"{where}box"),
            "person",
        )
        added.append(Change("add", label.id, None, label.to_json()))
        result.append(label)
    kept = set(kept_ids)
    deleted = [Change("delete", label.id, label.to_json(), None) for label in current if label.id not in kept]
    return result, [*changes, *added, *deleted]


def check_revision(frame_id: int, current: int, sent: int, last: str | None) -> None:
    """409 when a writer's revision is not the frame's: someone changed it since they loaded it."""
    if sent != current:
        since = f" (last change: {last})" if last else ""
        raise ApiError(
            409,
            f"frame {frame_id} changed since you loaded it: you sent revision {sent}, it is at revision "
            f"{current}{since}. Reload the frame (GET .../feedback/{frame_id}) and apply your change again",
        )


def check_editable(frame_id: int, review_status: str, in_dataset: bool) -> None:
    """Labels change only while the frame is not in a dataset version and not rejected."""
    if in_dataset:
        raise ApiError(
            409,
            f"frame {frame_id} is in a dataset version already; its labels there cannot change "
            "(fix them in a new dataset version instead)",
        )
    if review_status == "rejected":
        raise ApiError(
            409,
            f"frame {frame_id} was rejected; accept it (POST .../feedback/{frame_id}/accept) to take it "
            "back, then edit its labels",
        )


def check_decidable(frame_id: int, in_dataset: bool) -> None:
    """Accept and reject: any frame not yet in a dataset version."""
    if in_dataset:
        raise ApiError(409, f"frame {frame_id} is in a dataset version already; it cannot be reviewed again")


_DECIDED: dict[str, ReviewStatus] = {
    "accept": "reviewed",
    "reject": "rejected",
    "auto-accept": "auto-accepted",
}


def review_change(
    action: Literal["accept", "reject", "auto-accept"], before_status: str, labels: Sequence[Label]
) -> tuple[ReviewStatus, Change]:
    """The review status an accept, reject or auto-accept leads to, and its history change."""
    status = _DECIDED[action]
    shown = [label.to_json() for label in labels]
    return status, Change(
        action,
        None,
        {"reviewStatus": before_status, "labels": shown if action != "auto-accept" else []},
        {"reviewStatus": status, "labels": shown if action != "reject" else []},
    )


def edit_status(review_status: str) -> str:
    """An edit puts a reviewed frame back in the queue: a person must accept the changed labels."""
    return "pending" if review_status in ("reviewed", "auto-accepted") else review_status


@dataclass(frozen=True)
class Included:
    """What a dataset version takes from one frame: its labels and where they come from."""

    frame_id: int
    review: Literal["reviewed", "auto-accepted"]
    labels: list[Label]
    newly_auto_accepted: bool  # the version's threshold accepted it now (the frame is to be marked)


def decide(
    frame_id: int,
    review_status: str,
    labels: Sequence[Label],
    detections: Sequence[dict[str, Any]],
    auto_accept_min_score: float | None,
) -> Included | str:
    """Which labels a dataset version takes from a frame, or why it takes none.

    Reviewed (or earlier auto-accepted) frames give their current labels; rejected frames nothing;
    pending frames nothing unless a threshold is given, then the model's proposals scoring at least
    that (a frame without any such proposal is left out: an empty label file would teach the model
    that nothing is there; a frame a person edited is left out too: their boxes are never replaced
    by the model's)."""
    if review_status == "reviewed":
        return Included(frame_id, "reviewed", list(labels), False)
    if review_status == "auto-accepted":
        return Included(frame_id, "auto-accepted", list(labels), False)
    if review_status == "rejected":
        return "rejected in review"
    if auto_accept_min_score is None:
        return "pending review (review it, or give autoAcceptMinScore)"
    if any(label.source == "person" for label in labels):  # a person's edit is never replaced
        return "edited by a person but not accepted yet: accept it in review"
    proposals = labels_from_proposals(detections, auto_accept_min_score)
    if not proposals:
        return f"no model proposal scores at least {auto_accept_min_score}"
    return Included(frame_id, "auto-accepted", proposals, True)


def frame_id_of_image(path: str) -> int | None:
    """The feedback frame an image of a dataset version came from (`..._feedback_<id>.jpg`)."""
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    found = _FEEDBACK_STEM.search(stem)
    return int(found.group(1)) if found else None


def provenance_summary(
    images: dict[str, dict[str, Any]],
    added: Sequence[int],
    excluded: Sequence[dict[str, Any]],
    min_score: float | None,
) -> dict[str, Any]:
    """Counts over a version's provenance file (every feedback image in it, earlier ones included),
    the frames this version added, and those it left out and why."""
    reviewed = [e for e in images.values() if e.get("review") == "reviewed"]
    auto = [e for e in images.values() if e.get("review") == "auto-accepted"]
    return {
        "file": "provenance.json",
        "reviewedFrames": len(reviewed),
        "reviewedLabels": sum(len(e.get("labels", [])) for e in reviewed),
        "autoAcceptedFrames": len(auto),
        "autoAcceptedLabels": sum(len(e.get("labels", [])) for e in auto),
        "addedFrames": sorted(added),
        "excluded": list(excluded),
        "autoAcceptMinScore": min_score,
    }
