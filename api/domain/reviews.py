"""Run summaries: the facts of a run gathered from the cluster and SQL, summarised with
recommendations (`visioninapp.api.summaries`), stored, and the proposed next run started on request."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import Dataset, DatasetVersion, RunSummary, TrainingRun
from visioninapp.api.domain.training import KIND, create_job, epoch_rows, history_row
from visioninapp.api.paging import fetch_page, page_of
from visioninapp.api.schemas import SummaryOut, TrainingJobIn
from visioninapp.api.security import Access
from visioninapp.api.summaries import RunFacts, chat_model_from, summarise
from visioninapp.k8s import Obj
from visioninapp.resources.trainingjob import TrainingJobSpec
from visioninapp.web.errors import ApiError

__all__ = ["accept_proposal", "gather", "list_summaries", "summary_out", "write_summary"]


def summary_out(row: RunSummary) -> dict[str, Any]:
    return SummaryOut(
        training_job=row.training_job,
        generator=row.generator,
        text=row.text,
        findings=row.findings,
        proposal=row.proposal,
        created_at=row.created_at,
    ).model_dump(mode="json", by_alias=True)


def _metric(artifact: Obj, name: str = "mAP50_95") -> Any:
    return (artifact["spec"].get("metrics") or {}).get(name)


def gather(container: ApiContainer, project: str, name: str) -> RunFacts:
    """What the summary graph needs: the run (live, else from the history), its epochs, its dataset's
    class counts, earlier finished runs and the production model of the project."""
    tj = container.clusters.training.find(KIND, project, name)
    with container.db.session() as session:
        spec, phase, artifact = _run_state(session, tj, project, name)
        epochs = _epochs(session, project, name)
        class_counts = _class_counts(session, project, (spec.get("dataset") or {}).get("uri", ""))
        earlier: list[dict[str, Any]] = [
            {"name": r.name, "mAP50_95": None, "mAP50": r.best_map50}
            for r in session.scalars(
                select(TrainingRun).where(
                    TrainingRun.project_name == project,
                    TrainingRun.name != name,
                    TrainingRun.phase == "Succeeded",
                )
            )
        ]
    artifacts = container.clusters.training.list("ModelArtifact", project)
    for entry in earlier:
        source_of = [
            a for a in artifacts if (a["spec"].get("source") or {}).get("trainingJob") == entry["name"]
        ]
        if source_of:
            entry["mAP50_95"] = _metric(source_of[0])
    production = next((a for a in artifacts if a["spec"].get("stage") == "production"), None)
    production_view = (
        {"name": production["metadata"]["name"], "mAP50_95": _metric(production)}
        if production is not None and production["metadata"]["name"] != artifact
        else None
    )
    own = next((a for a in artifacts if a["metadata"]["name"] == artifact), None)
    if own is not None and not epochs:  # no epoch events (e.g. imported): the artifact's final metric
        final = _metric(own)
        epochs = [{"epoch": 1, "mAP50_95": final}] if final is not None else []
    return RunFacts(name, spec, phase, epochs, class_counts, earlier, production_view, artifact)


def _run_state(
    session: Session, tj: Obj | None, project: str, name: str
) -> tuple[dict[str, Any], str, str | None]:
    """(spec, phase, artifact) of the live object, else of the history row."""
    if tj is not None:
        status = tj.get("status") or {}
        return tj.get("spec") or {}, status.get("phase") or "Pending", status.get("artifact")
    run = history_row(session, project, name)
    if run is None:
        raise ApiError(404, f"training job {name!r} not found in {project!r}")
    return run.spec, run.phase, run.artifact


def _epochs(session: Session, project: str, name: str) -> list[dict[str, Any]]:
    return [
        {"epoch": e.epoch, "mAP50": e.map50, "mAP50_95": e.map50_95, "losses": e.losses}
        for e in epoch_rows(session, project, name)
    ]


def _class_counts(session: Session, project: str, dataset_uri: str) -> dict[str, int]:
    version = session.scalars(
        select(DatasetVersion)
        .join(Dataset)
        .where(Dataset.project_name == project, DatasetVersion.uri == dataset_uri)
    ).first()
    return dict(version.class_counts) if version is not None else {}


def write_summary(container: ApiContainer, project: str, name: str) -> dict[str, Any]:
    facts = gather(container, project, name)
    try:
        chat_model = chat_model_from(container.settings.llm_model)
    except RuntimeError as error:  # the configured model's packages are missing
        raise ApiError(503, str(error)) from None
    result = summarise(facts, chat_model)
    with container.db.session() as session:
        row = RunSummary(
            project_name=project,
            training_job=name,
            generator=result.generator,
            text=result.text,
            findings=result.findings,
            proposal=result.proposal,
        )
        session.add(row)
        session.flush()
        return summary_out(row)


def _newest_first(project: str, name: str) -> Select[RunSummary]:
    return (
        select(RunSummary)
        .where(RunSummary.project_name == project, RunSummary.training_job == name)
        .order_by(RunSummary.id.desc())
    )


def list_summaries(
    container: ApiContainer, project: str, name: str, limit: int, offset: int
) -> dict[str, Any]:
    with container.db.session() as session:
        rows, total = fetch_page(session, _newest_first(project, name), limit, offset)
        return page_of([summary_out(row) for row in rows], total, limit, offset)


def accept_proposal(container: ApiContainer, name: str, new_name: str, access: Access) -> dict[str, Any]:
    """Start the next run that the newest summary of `name` proposes, as `new_name`."""
    with container.db.session() as session:
        latest = session.scalars(_newest_first(access.project, name)).first()
        if latest is None:
            raise ApiError(404, f"no summary of {name!r} yet: write one first (POST .../summary)")
        proposal = latest.proposal
    try:
        spec = TrainingJobSpec.model_validate(proposal["spec"])
    except (KeyError, ValueError) as error:
        raise ApiError(409, f"the proposal is no longer a valid TrainingJob spec: {error}") from None
    return create_job(container, TrainingJobIn(name=new_name, spec=spec), access)
