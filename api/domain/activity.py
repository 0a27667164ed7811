"""Search across a user's projects, notifications, and the rows behind the live event stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import EdgeWindow, EpochMetric, LogLine, Notification
from visioninapp.api.domain.training import epoch_view
from visioninapp.api.paging import fetch_page, page_of
from visioninapp.api.schemas import NotificationOut
from visioninapp.api.security import memberships_of, role_in
from visioninapp.backends.auth import Principal
from visioninapp.backends.elastic import COLLECTIONS
from visioninapp.web.errors import ApiError

__all__ = [
    "CURSOR_PATTERN",
    "cursor_of",
    "cursor_text",
    "fresh_events",
    "list_notifications",
    "search",
]


def _scopes(container: ApiContainer, user: Principal, project: str | None) -> list[str | None]:
    """The projects a search covers: the one named, every project (None) for platform admins, or the
    user's own."""
    if project is not None:
        if role_in(container, user, project) is None:
            raise ApiError(404, f"project {project!r} not found (or you are not a member)")
        return [project]
    if user.is_platform_admin:
        return [None]
    with container.db.session() as session:
        return [*sorted(set(session.scalars(memberships_of(user))))]


def search(
    container: ApiContainer,
    user: Principal,
    text: str,
    project: str | None,
    collections: Sequence[str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The best `limit` hits over the projects the user may read, best first."""
    unknown = sorted(set(collections or []) - set(COLLECTIONS))
    if unknown:
        raise ApiError(400, f"unknown collections {unknown}; use any of {', '.join(COLLECTIONS)}")
    hits = []
    for scope in _scopes(container, user, project):
        hits += container.search.search(
            text, list(collections) if collections else None, project=scope, limit=limit
        )
    hits.sort(key=lambda h: h.score, reverse=True)
    return [
        {
            "collection": h.collection,
            "id": h.id,
            "score": h.score,
            "project": h.document.get("project"),
            "title": h.document.get("title"),
            "highlight": h.highlight,
            "document": h.document,
        }
        for h in hits[:limit]
    ]


def list_notifications(container: ApiContainer, project: str, limit: int, offset: int) -> dict[str, Any]:
    """Newest first."""
    query = select(Notification).where(Notification.project_name == project).order_by(Notification.id.desc())
    with container.db.session() as session:
        rows, total = fetch_page(session, query, limit, offset)
        items = [
            NotificationOut(
                id=n.id,
                kind=n.kind,
                subject=n.subject,
                title=n.title,
                message=n.message,
                created_at=n.created_at,
            ).model_dump(mode="json", by_alias=True)
            for n in rows
        ]
    return page_of(items, total, limit, offset)


# The live stream: new rows since a cursor, one cursor per table, resumable through Last-Event-ID.
_KINDS = ("epoch", "log", "notification", "edge")
# `kind-id` parts joined by dots, e.g. `epoch-12.log-40.notification-0.edge-7`; ids are ASCII digits
# that fit a signed 64-bit column (18 digits), so a cursor never reaches SQL as an overflow.
_PART = rf"({'|'.join(_KINDS)})-[0-9]{{1,18}}"
CURSOR_PATTERN = rf"^{_PART}(\.{_PART}){{0,{len(_KINDS) - 1}}}$"
EVENTS_PER_KIND = 500  # per poll


def cursor_of(text: str | None) -> dict[str, int]:
    """The cursor of a validated id (CURSOR_PATTERN): unnamed kinds start at 0."""
    cursor = dict.fromkeys(_KINDS, 0)
    for part in (text or "").split("."):
        name, _, value = part.partition("-")
        if name in cursor and value.isascii() and value.isdigit():
            cursor[name] = int(value)
    return cursor


def cursor_text(cursor: dict[str, int]) -> str:
    return ".".join(f"{name}-{value}" for name, value in cursor.items())


def fresh_events(
    container: ApiContainer, project: str, cursor: dict[str, int], job: str | None
) -> list[tuple[str, int, dict[str, Any]]]:
    """(kind, id, data) of the rows after `cursor`, kind by kind, oldest first; `job` limits epochs
    and log lines to one run."""
    found: list[tuple[str, int, dict[str, Any]]] = []
    with container.db.session() as session:
        epochs = select(EpochMetric).where(
            EpochMetric.project_name == project, EpochMetric.id > cursor["epoch"]
        )
        logs = select(LogLine).where(LogLine.project_name == project, LogLine.id > cursor["log"])
        if job:
            epochs = epochs.where(EpochMetric.training_job == job)
            logs = logs.where(LogLine.training_job == job)
        for epoch in session.scalars(epochs.order_by(EpochMetric.id).limit(EVENTS_PER_KIND)):
            found.append(("epoch", epoch.id, {"trainingJob": epoch.training_job, **epoch_view(epoch)}))
        for line in session.scalars(logs.order_by(LogLine.id).limit(EVENTS_PER_KIND)):
            found.append(("log", line.id, _log_event(line)))
        notifications = select(Notification).where(
            Notification.project_name == project, Notification.id > cursor["notification"]
        )
        for notification in session.scalars(notifications.order_by(Notification.id).limit(EVENTS_PER_KIND)):
            found.append(("notification", notification.id, _notification_event(notification)))
        windows = select(EdgeWindow).where(EdgeWindow.project_name == project, EdgeWindow.id > cursor["edge"])
        for window in session.scalars(windows.order_by(EdgeWindow.id).limit(EVENTS_PER_KIND)):
            found.append(("edge", window.id, _edge_event(window)))
    return found


def _log_event(row: LogLine) -> dict[str, Any]:
    return {
        "trainingJob": row.training_job,
        "level": row.level,
        "message": row.message,
        "time": row.time.isoformat(),
    }


def _notification_event(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "subject": row.subject,
        "title": row.title,
        "message": row.message,
    }


def _edge_event(row: EdgeWindow) -> dict[str, Any]:
    return {
        "deployment": row.deployment,
        "node": row.node,
        "model": row.model_version,
        "requests": row.requests,
        "errors": row.errors,
        "p95Ms": row.p95_ms,
        "ready": row.ready,
        "windowEnd": row.window_end.isoformat(),
    }
