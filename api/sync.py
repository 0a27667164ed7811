"""Cluster → SQL: run history and notifications from the CRs' status, for every project.

CRs created by kubectl or GitOps appear here too, since projects are namespaces. Notifications are
keyed by what they announce (e.g. `run-succeeded/<ns>/<name>/<uid>`), so each is created once
whatever the number of API replicas or restarts.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from visioninapp.api.db import Notification, Project, TrainingRun, utcnow
from visioninapp.api.domain.feedback import import_announced
from visioninapp.api.domain.retrain import run_policies
from visioninapp.k8s import Obj, parse_time
from visioninapp.web.errors import ApiError

if TYPE_CHECKING:
    from visioninapp.api.container import ApiContainer

__all__ = ["ClusterSync", "notification_for", "record_run"]

log = logging.getLogger(__name__)

TERMINAL = {"Succeeded": "run-succeeded", "Failed": "run-failed"}
RETRAIN_OUTCOMES = {
    "Promoted": "retrain-promoted",
    "GateFailed": "retrain-gate-failed",
    "Failed": "retrain-failed",
}


def record_run(session: Session, tj: Obj, created_by: str | None = None) -> TrainingRun:
    """Upsert the run history row of a TrainingJob object."""
    meta, status = tj["metadata"], tj.get("status") or {}
    run = session.scalars(
        select(TrainingRun).where(
            TrainingRun.project_name == meta["namespace"], TrainingRun.name == meta["name"]
        )
    ).first()
    if run is None:
        run = TrainingRun(
            project_name=meta["namespace"],
            name=meta["name"],
            created_by=created_by or meta.get("annotations", {}).get("visioninapp.io/created-by", ""),
            created_at=parse_time(meta.get("creationTimestamp")) or utcnow(),
        )
        session.add(run)
    run.spec = tj.get("spec") or {}
    run.phase = status.get("phase") or "Pending"
    run.artifact = status.get("artifact")
    run.message = status.get("message") or ""
    run.finished_at = parse_time(status.get("completionTime"))
    map50 = (status.get("metrics") or {}).get("mAP50")
    if map50 is not None and (run.best_map50 is None or map50 > run.best_map50):
        run.best_map50 = map50
    return run


def notification_for(kind: str, obj: Obj) -> Notification | None:
    meta, status = obj["metadata"], obj.get("status") or {}
    phase = status.get("phase")
    namespace, name = meta["namespace"], meta["name"]
    if kind == "TrainingJob" and phase in TERMINAL:
        code = TERMINAL[phase]
        metrics = status.get("metrics") or {}
        detail = f"mAP50 {metrics['mAP50']:.3f}" if metrics.get("mAP50") is not None else ""
        verb = "finished" if phase == "Succeeded" else "failed"
        return Notification(
            project_name=namespace,
            kind=code,
            subject=name,
            title=f"Training run {name} {verb}",
            message=status.get("message") or detail,
            dedup_key=f"{code}/{namespace}/{name}/{meta.get('uid', '')}",
        )
    if kind == "RetrainPolicy" and phase in RETRAIN_OUTCOMES and status.get("result"):
        code = RETRAIN_OUTCOMES[phase]
        # One per run; a run that could not start has no name: its trigger's time stands for it.
        attempt = status.get("run") or (status.get("lastTrigger") or {}).get("time", "")
        return Notification(
            project_name=namespace,
            kind=code,
            subject=name,
            title=f"Retrain {status.get('run') or 'start'} of {obj['spec']['line']}: {phase}",
            message=status["result"][:2000],
            dedup_key=f"{code}/{namespace}/{name}/{meta.get('uid', '')}/{attempt}",
        )
    if kind == "EdgeDeployment" and phase == "RolledBack":
        return Notification(
            project_name=namespace,
            kind="rollback",
            subject=name,
            title=f"Rollout {name} rolled back to {status.get('currentModel') or 'the previous model'}",
            message=status.get("message") or "",
            dedup_key=f"rollback/{namespace}/{name}/{meta.get('uid', '')}/{status.get('revision', '')}",
        )
    return None


def _add_once(session: Session, notification: Notification) -> bool:
    exists = session.scalars(
        select(Notification.id).where(Notification.dedup_key == notification.dedup_key)
    ).first()
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            session.add(notification)
    except IntegrityError:  # another replica won the race
        return False
    return True


class ClusterSync:
    def __init__(self, container: ApiContainer) -> None:
        self.container = container

    def sync_once(self) -> int:
        """One pass over every project; returns how many notifications it created."""
        container = self.container
        with container.db.session() as session:
            projects = list(session.scalars(select(Project.name)))
        created = 0
        for project in projects:
            try:
                jobs = container.clusters.training.list("TrainingJob", project)
                models = container.clusters.training.list("ModelArtifact", project)
                deployments = container.clusters.rollout.list("EdgeDeployment", project)
            except ApiError as error:
                log.warning("cluster sync of %s failed: %s", project, error.message)
                continue
            with container.db.session() as session:
                for tj in jobs:
                    record_run(session, tj)
                for kind, objs in (("TrainingJob", jobs), ("EdgeDeployment", deployments)):
                    for obj in objs:
                        notification = notification_for(kind, obj)
                        if notification is not None and _add_once(session, notification):
                            created += 1
            try:
                import_announced(container, project, deployments)
            except Exception:  # the store is down: the announcements wait for the next pass
                log.exception("importing the frames announced in %s failed", project)
            policies = run_policies(container, project, models)  # after the import: new frames count
            with container.db.session() as session:
                for policy in policies:
                    notification = notification_for("RetrainPolicy", policy)
                    if notification is not None and _add_once(session, notification):
                        created += 1
            container.search.index_many(
                "runs", [(f"{project}/{tj['metadata']['name']}", run_document(tj)) for tj in jobs]
            )
            container.search.index_many(
                "models", [(f"{project}/{ma['metadata']['name']}", model_document(ma)) for ma in models]
            )
            container.search.index_many(
                "deployments",
                [(f"{project}/{ed['metadata']['name']}", deployment_document(ed)) for ed in deployments],
            )
        container.notifier.deliver_pending(container.db)
        return created

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                self.sync_once()
            except Exception:
                log.exception("cluster sync failed")
            stop.wait(interval)


def run_document(tj: Obj) -> dict[str, Any]:
    meta, spec, status = tj["metadata"], tj.get("spec") or {}, tj.get("status") or {}
    model = spec.get("model") or {}
    return {
        "project": meta["namespace"],
        "name": meta["name"],
        "title": f"{meta['name']} {model.get('architecture') or model.get('baseModel') or ''}".strip(),
        "phase": status.get("phase") or "Pending",
        "dataset": (spec.get("dataset") or {}).get("uri"),
        "map50": (status.get("metrics") or {}).get("mAP50"),
        "message": status.get("message") or "",
        "time": meta.get("creationTimestamp"),
    }


def model_document(ma: Obj) -> dict[str, Any]:
    meta, spec = ma["metadata"], ma.get("spec") or {}
    source = spec.get("source") or {}
    return {
        "project": meta["namespace"],
        "name": meta["name"],
        "title": f"{spec.get('model', '')} {spec.get('version', '')}".strip(),
        "stage": spec.get("stage"),
        "classes": spec.get("classNames") or [],
        "trainingJob": source.get("trainingJob"),
        "map50": (spec.get("metrics") or {}).get("mAP50"),
        "time": meta.get("creationTimestamp"),
    }


def deployment_document(ed: Obj) -> dict[str, Any]:
    meta, spec, status = ed["metadata"], ed.get("spec") or {}, ed.get("status") or {}
    return {
        "project": meta["namespace"],
        "name": meta["name"],
        "title": f"{meta['name']} {spec.get('modelRef') or (spec.get('model') or {}).get('line', '')}",
        "phase": status.get("phase") or "Progressing",
        "message": status.get("message") or "",
        "time": meta.get("creationTimestamp"),
    }
