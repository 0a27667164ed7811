"""Datasets (immutable versions in the artifact store) and edge feedback as retraining input."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi import Path as PathParam

from visioninapp.api.domain import datasets, feedback, labelling
from visioninapp.api.domain.datasets import NewVersion
from visioninapp.api.domain.labels import AddBox, DeleteBox, EditBox, ReplaceLabels, Replacement
from visioninapp.api.domain.uploads import LooseFiles, upload_archive, upload_files
from visioninapp.api.routes.common import Limit, Offset
from visioninapp.api.schemas import (
    LABEL_ID_PATTERN,
    DatasetIn,
    DatasetOut,
    DatasetVersionOut,
    FeedbackAccept,
    FeedbackOut,
    FrameReviewOut,
    LabelAdd,
    LabelPatch,
    LabelsReplace,
    Page,
    ReviewDecision,
)
from visioninapp.api.security import Container, ProjectReader, ProjectWriter

router = APIRouter(tags=["datasets"])

FrameId = Annotated[int, PathParam(ge=1, le=feedback.MAX_ID, description="A feedback frame's id.")]
LabelId = Annotated[
    str, PathParam(max_length=10, pattern=LABEL_ID_PATTERN, description="A label of the frame, e.g. `b2`.")
]
RevisionQuery = Annotated[
    int, Query(ge=0, le=2**31 - 1, description="The frame's revision you loaded; a stale one is a 409.")
]


@router.get(
    "/projects/{project}/datasets", response_model=Page[DatasetOut], summary="Datasets and their versions"
)
def list_datasets(access: ProjectReader, container: Container, limit: Limit = 50, offset: Offset = 0) -> Any:
    return datasets.list_datasets(container, access.project, limit, offset)


@router.post(
    "/projects/{project}/datasets", response_model=DatasetOut, status_code=201, summary="Create a dataset"
)
def create_dataset(body: DatasetIn, access: ProjectWriter, container: Container) -> Any:
    return datasets.create_dataset(container, access.project, body.name, body.description, access.user.label)


@router.get(
    "/projects/{project}/datasets/{name}", response_model=DatasetOut, summary="One dataset, every version"
)
def get_dataset(name: str, access: ProjectReader, container: Container) -> Any:
    return datasets.get_dataset(container, access.project, name)


@router.post(
    "/projects/{project}/datasets/{name}/versions",
    response_model=DatasetVersionOut,
    status_code=201,
    summary="Upload a new version: a zip of a YOLO dataset (data.yaml, images/, labels/)",
)
def upload_dataset_version(
    name: str,
    access: ProjectWriter,
    container: Container,
    archive: Annotated[
        UploadFile, File(description="Zip with data.yaml, images/{train,val}, labels/{train,val}.")
    ],
    note: Annotated[str, Form(max_length=2000, description="What changed in this version.")] = "",
) -> Any:
    return upload_archive(container, NewVersion(access.project, name, access.user.label, note), archive)


@router.post(
    "/projects/{project}/datasets/{name}/versions/files",
    response_model=DatasetVersionOut,
    status_code=201,
    summary="Upload a new version as loose files: images, their YOLO label .txt files, class names",
)
def upload_dataset_files(
    name: str,
    access: ProjectWriter,
    container: Container,
    images: Annotated[list[UploadFile], File(description="JPEG/PNG/WebP images.")],
    labels: Annotated[list[UploadFile], File(description="One `<image stem>.txt` per labelled image.")],
    class_names: Annotated[
        str,
        Form(alias="classNames", min_length=1, max_length=20000, description="Comma-separated, in id order."),
    ],
    val_fraction: Annotated[
        float, Form(alias="valFraction", ge=0.05, le=0.5, description="Share of images kept for validation.")
    ] = 0.2,
    note: Annotated[str, Form(max_length=2000)] = "",
) -> Any:
    new = NewVersion(access.project, name, access.user.label, note)
    return upload_files(container, new, LooseFiles(images, labels, class_names, val_fraction))


@router.get(
    "/projects/{project}/datasets/{name}/versions/{version}",
    response_model=DatasetVersionOut,
    summary="One version",
)
def get_dataset_version(name: str, version: int, access: ProjectReader, container: Container) -> Any:
    return datasets.get_version(container, access.project, name, version)


@router.post(
    "/projects/{project}/feedback/sync",
    response_model=Page[FeedbackOut],
    summary="Import new hard frames of the project's deployments from the artifact store",
)
def sync_feedback(access: ProjectWriter, container: Container) -> Any:
    return feedback.import_frames(container, access.project)


@router.get(
    "/projects/{project}/feedback", response_model=Page[FeedbackOut], summary="Hard frames from the edge"
)
def list_feedback(
    access: ProjectReader,
    container: Container,
    status: str | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Any:
    return feedback.list_frames(container, access.project, status, limit, offset)


@router.get(
    "/projects/{project}/feedback/{frame_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
    summary="The frame's JPEG",
)
def feedback_image(frame_id: FrameId, access: ProjectReader, container: Container) -> Response:
    data = feedback.frame_image(container, access.project, frame_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.post(
    "/projects/{project}/feedback/accept",
    response_model=DatasetVersionOut,
    status_code=201,
    summary="Add frames to a new dataset version with their reviewed labels (pending frames only "
    "with autoAcceptMinScore: the model's proposals scoring at least that)",
)
def accept_feedback(body: FeedbackAccept, access: ProjectWriter, container: Container) -> Any:
    return feedback.accept_frames(
        container,
        access.project,
        body.dataset,
        body.ids,
        body.note,
        access.user.label,
        body.auto_accept_min_score,
    )


# Review: a person (or a script, or another labelling tool) checks each frame's labels -------------


@router.get(
    "/projects/{project}/feedback/review-queue",
    response_model=Page[FeedbackOut],
    summary="Frames waiting for review, oldest first",
)
def review_queue(access: ProjectReader, container: Container, limit: Limit = 50, offset: Offset = 0) -> Any:
    return labelling.review_queue(container, access.project, limit, offset)


@router.get(
    "/projects/{project}/feedback/{frame_id}",
    response_model=FrameReviewOut,
    summary="One frame: its labels, review status, revision and annotation history",
)
def get_feedback_frame(frame_id: FrameId, access: ProjectReader, container: Container) -> Any:
    return labelling.get_frame(container, access.project, frame_id)


@router.post(
    "/projects/{project}/feedback/{frame_id}/labels",
    response_model=FrameReviewOut,
    status_code=201,
    summary="Draw a new box",
)
def add_label(frame_id: FrameId, body: LabelAdd, access: ProjectWriter, container: Container) -> Any:
    edit = AddBox(body.class_id, body.box)
    return labelling.edit_labels(container, access.project, frame_id, body.revision, edit, access.user.label)


@router.put(
    "/projects/{project}/feedback/{frame_id}/labels",
    response_model=FrameReviewOut,
    summary="Replace the frame's labels (for other labelling tools): one history row per difference",
)
def replace_labels(
    frame_id: FrameId, body: LabelsReplace, access: ProjectWriter, container: Container
) -> Any:
    edit = ReplaceLabels(tuple(Replacement(item.class_id, item.box, item.id) for item in body.labels))
    return labelling.edit_labels(container, access.project, frame_id, body.revision, edit, access.user.label)


@router.patch(
    "/projects/{project}/feedback/{frame_id}/labels/{label_id}",
    response_model=FrameReviewOut,
    summary="Move or resize a box (`box`), change its class (`classId`), or both",
)
def change_label(
    frame_id: FrameId, label_id: LabelId, body: LabelPatch, access: ProjectWriter, container: Container
) -> Any:
    edit = EditBox(label_id, body.box, body.class_id)
    return labelling.edit_labels(container, access.project, frame_id, body.revision, edit, access.user.label)


@router.delete(
    "/projects/{project}/feedback/{frame_id}/labels/{label_id}",
    response_model=FrameReviewOut,
    summary="Delete a box",
)
def delete_label(
    frame_id: FrameId, label_id: LabelId, revision: RevisionQuery, access: ProjectWriter, container: Container
) -> Any:
    edit = DeleteBox(label_id)
    return labelling.edit_labels(container, access.project, frame_id, revision, edit, access.user.label)


@router.post(
    "/projects/{project}/feedback/{frame_id}/accept",
    response_model=FrameReviewOut,
    summary="Accept the frame with its current labels (reviewed)",
)
def accept_frame(frame_id: FrameId, body: ReviewDecision, access: ProjectWriter, container: Container) -> Any:
    return labelling.decide_frame(
        container, access.project, frame_id, body.revision, "accept", body.note, access.user.label
    )


@router.post(
    "/projects/{project}/feedback/{frame_id}/reject",
    response_model=FrameReviewOut,
    summary="Reject the frame: it joins no dataset version",
)
def reject_frame(frame_id: FrameId, body: ReviewDecision, access: ProjectWriter, container: Container) -> Any:
    return labelling.decide_frame(
        container, access.project, frame_id, body.revision, "reject", body.note, access.user.label
    )
