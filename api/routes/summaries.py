"""Run summaries with recommendations, and accepting the proposed next run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from visioninapp.api.db import Dataset, DatasetVersion, EpochMetric, RunSummary, TrainingRun
from visioninapp.api.errors import ApiError
from visioninapp.api.routes.common import Limit, ObjectName, Offset, page
from visioninapp.api.routes.training import create_training_job
from visioninapp.api.schemas import Page, ProposalAccept, SummaryOut, TrainingJobIn, TrainingJobOut
from visioninapp.api.security import ProjectReader, ProjectWriter, ServicesDep
from visioninapp.api.services import Services
from visioninapp.api.summaries import RunFacts, chat_model_from, summarise
from visioninapp.resources.trainingjob import TrainingJobSpec

router = APIRouter(tags=["summaries"])


def summary_out(row: RunSummary) -> dict[str, Any]:
    return SummaryOut(
        training_job=row.training_job,
        generator=row.generator,
        text=row.text,
        findings=row.findings,
        proposal=row.proposal,
        created_at=row.created_at,
    ).model_dump(mode="json", by_alias=True)


def gather(services: Services, project: str, name: str) -> RunFacts:
    try:
        tj = services.clusters.training.get("TrainingJob", project, name)
        spec, status = tj.get("spec") or {}, tj.get("status") or {}
        phase, artifact = status.get("phase") or "Pending", status.get("artifact")
    except ApiError as error:
        if error.status != 404:
            raise
        tj = None
    with services.db.session() as session:
        run = session.scalars(
            select(TrainingRun).where(TrainingRun.project_name == project, TrainingRun.name == name)
        ).first()
        if tj is None:
            if run is None:
                raise ApiError(404, f"training job {name!r} not found in {project!r}")
            spec, phase, artifact = run.spec, run.phase, run.artifact
        epochs = [
            {"epoch": e.epoch, "mAP50": e.map50, "mAP50_95": e.map50_95, "losses": e.losses}
            for e in session.scalars(
                select(EpochMetric)
                .where(EpochMetric.project_name == project, EpochMetric.training_job == name)
                .order_by(EpochMetric.epoch)
            )
        ]
        dataset_uri = (spec.get("dataset") or {}).get("uri", "")
        version = session.scalars(
            select(DatasetVersion)
            .join(Dataset)
            .where(Dataset.project_name == project, DatasetVersion.uri == dataset_uri)
        ).first()
        class_counts = dict(version.class_counts) if version is not None else {}
        earlier = [
            {"name": r.name, "mAP50_95": None, "mAP50": r.best_map50}
            for r in session.scalars(
                select(TrainingRun).where(
                    TrainingRun.project_name == project,
                    TrainingRun.name != name,
                    TrainingRun.phase == "Succeeded",
                )
            )
        ]
    artifacts = services.clusters.training.list("ModelArtifact", project)
    by_name = {a["metadata"]["name"]: a for a in artifacts}
    for entry in earlier:
        source_of = [
            a for a in artifacts if (a["spec"].get("source") or {}).get("trainingJob") == entry["name"]
        ]
        if source_of:
            entry["mAP50_95"] = (source_of[0]["spec"].get("metrics") or {}).get("mAP50_95")
    production = next((a for a in artifacts if a["spec"].get("stage") == "production"), None)
    production_view = (
        {
            "name": production["metadata"]["name"],
            "mAP50_95": (production["spec"].get("metrics") or {}).get("mAP50_95"),
        }
        if production is not None and production["metadata"]["name"] != artifact
        else None
    )
    if artifact in by_name and not epochs:
        final = (by_name[artifact]["spec"].get("metrics") or {}).get("mAP50_95")
        epochs = [{"epoch": 1, "mAP50_95": final}] if final is not None else []
    return RunFacts(name, spec, phase, epochs, class_counts, earlier, production_view, artifact)


@router.post(
    "/projects/{project}/training-jobs/{name}/summary",
    response_model=SummaryOut,
    status_code=201,
    summary="Write a summary with recommendations and a next-run proposal",
)
def create_summary(name: ObjectName, access: ProjectWriter, services: ServicesDep) -> Any:
    facts = gather(services, access.project, name)
    try:
        chat_model = chat_model_from(services.settings.llm_model)
    except RuntimeError as error:
        raise ApiError(503, str(error)) from None
    result = summarise(facts, chat_model)
    with services.db.session() as session:
        row = RunSummary(
            project_name=access.project,
            training_job=name,
            generator=result.generator,
            text=result.text,
            findings=result.findings,
            proposal=result.proposal,
        )
        session.add(row)
        session.flush()
        return summary_out(row)


def _latest(services: Services, project: str, name: str) -> RunSummary | None:
    with services.db.session() as session:
        return session.scalars(
            select(RunSummary)
            .where(RunSummary.project_name == project, RunSummary.training_job == name)
            .order_by(RunSummary.id.desc())
        ).first()


@router.get(
    "/projects/{project}/training-jobs/{name}/summaries",
    response_model=Page[SummaryOut],
    summary="Summaries of a run, newest first (empty until one is written)",
)
def list_summaries(
    name: ObjectName, access: ProjectReader, services: ServicesDep, limit: Limit = 20, offset: Offset = 0
) -> Any:
    with services.db.session() as session:
        rows = session.scalars(
            select(RunSummary)
            .where(RunSummary.project_name == access.project, RunSummary.training_job == name)
            .order_by(RunSummary.id.desc())
        ).all()
        return page([summary_out(row) for row in rows], limit, offset)


@router.post(
    "/projects/{project}/training-jobs/{name}/summary/accept",
    response_model=TrainingJobOut,
    status_code=201,
    summary="Start the proposed next run",
)
def accept_proposal(
    name: ObjectName, body: ProposalAccept, access: ProjectWriter, services: ServicesDep
) -> Any:
    latest = _latest(services, access.project, name)
    if latest is None:
        raise ApiError(404, f"no summary of {name!r} yet: write one first (POST .../summary)")
    proposal = latest.proposal
    try:
        spec = TrainingJobSpec.model_validate(proposal["spec"])
    except (KeyError, ValueError) as error:
        raise ApiError(409, f"the proposal is no longer a valid TrainingJob spec: {error}") from None
    return create_training_job(TrainingJobIn(name=body.name, spec=spec), access, services)
