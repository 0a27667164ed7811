"""Run summaries with recommendations, and accepting the proposed next run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from visioninapp.api.domain import reviews
from visioninapp.api.routes.common import Limit, ObjectName, Offset
from visioninapp.api.schemas import Page, ProposalAccept, SummaryOut, TrainingJobOut
from visioninapp.api.security import Container, ProjectReader, ProjectWriter

router = APIRouter(tags=["summaries"])


@router.post(
    "/projects/{project}/training-jobs/{name}/summary",
    response_model=SummaryOut,
    status_code=201,
    summary="Write a summary with recommendations and a next-run proposal",
)
def create_summary(name: ObjectName, access: ProjectWriter, container: Container) -> Any:
    return reviews.write_summary(container, access.project, name)


@router.get(
    "/projects/{project}/training-jobs/{name}/summaries",
    response_model=Page[SummaryOut],
    summary="Summaries of a run, newest first (empty until one is written)",
)
def list_summaries(
    name: ObjectName, access: ProjectReader, container: Container, limit: Limit = 20, offset: Offset = 0
) -> Any:
    return reviews.list_summaries(container, access.project, name, limit, offset)


@router.post(
    "/projects/{project}/training-jobs/{name}/summary/accept",
    response_model=TrainingJobOut,
    status_code=201,
    summary="Start the proposed next run",
)
def accept_proposal(
    name: ObjectName, body: ProposalAccept, access: ProjectWriter, container: Container
) -> Any:
    return reviews.accept_proposal(container, name, body.name, access)
