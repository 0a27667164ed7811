"""Search across projects, notifications, and the live event stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from visioninapp.api.db import EdgeWindow, EpochMetric, LogLine, Membership, Notification
from visioninapp.api.errors import ApiError
from visioninapp.api.routes.common import OBJECT_NAME_PATTERN, Limit, Offset
from visioninapp.api.routes.training import epoch_view
from visioninapp.api.schemas import NotificationOut, Page, SearchHitOut
from visioninapp.api.security import PROJECT_PATTERN, CurrentUser, ProjectReader, ServicesDep, role_in
from visioninapp.api.services import Services
from visioninapp.backends.elastic import COLLECTIONS

router = APIRouter(tags=["activity"])
log = logging.getLogger(__name__)
Collection = Literal[COLLECTIONS]  # type: ignore[valid-type]

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 15.0
# A stream ends after this long (after a poll); the client reconnects with its Last-Event-ID, so
# nothing is lost, and no connection (or proxy slot) is held forever.
STREAM_MAX_SECONDS = 3600.0


@router.get("/search", response_model=list[SearchHitOut], summary="Full-text search over your projects")
def search(
    services: ServicesDep,
    user: CurrentUser,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words to find.")],
    project: Annotated[
        str | None, Query(max_length=63, pattern=PROJECT_PATTERN, description="Only this project.")
    ] = None,
    collections: Annotated[
        list[Collection] | None,
        Query(max_length=len(COLLECTIONS), description=f"Only these collections: {', '.join(COLLECTIONS)}."),
    ] = None,
    limit: Limit = 20,
) -> Any:
    unknown = sorted(set(collections or []) - set(COLLECTIONS))
    if unknown:
        raise ApiError(400, f"unknown collections {unknown}; use any of {', '.join(COLLECTIONS)}")
    if project is not None:
        if role_in(services, user, project) is None:
            raise ApiError(404, f"project {project!r} not found (or you are not a member)")
        scopes: list[str | None] = [project]
    elif user.is_platform_admin:
        scopes = [None]
    else:
        with services.db.session() as session:
            scopes = sorted(
                set(
                    session.scalars(
                        select(Membership.project_name).where(Membership.principal.in_(user.identities))
                    )
                )
            )
    hits = []
    for scope in scopes:
        hits += services.search.search(q, collections or None, project=scope, limit=limit)
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


@router.get(
    "/projects/{project}/notifications",
    response_model=Page[NotificationOut],
    summary="Runs finished or failed, rollbacks; newest first",
)
def list_notifications(
    access: ProjectReader, services: ServicesDep, limit: Limit = 50, offset: Offset = 0
) -> Any:
    with services.db.session() as session:
        where = Notification.project_name == access.project
        total = session.scalar(select(func.count()).select_from(Notification).where(where)) or 0
        rows = session.scalars(
            select(Notification).where(where).order_by(Notification.id.desc()).limit(limit).offset(offset)
        ).all()
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
    return {"items": items, "total": total, "limit": limit, "offset": offset}


# The live stream: new rows since a cursor, one cursor per table, resumable through Last-Event-ID.
_TABLES = {"epoch": EpochMetric, "log": LogLine, "notification": Notification, "edge": EdgeWindow}
# `kind-id` parts joined by dots, e.g. `epoch-12.log-40.notification-0.edge-7`; ids are ASCII digits
# that fit a signed 64-bit column (18 digits), so a cursor never reaches SQL as an overflow.
_PART = rf"({'|'.join(_TABLES)})-[0-9]{{1,18}}"
CURSOR_PATTERN = rf"^{_PART}(\.{_PART}){{0,{len(_TABLES) - 1}}}$"
_CURSOR_HELP = "A cursor: an event id of this stream, e.g. `epoch-12.log-40.notification-0.edge-7`."


def _cursor(text: str | None) -> dict[str, int]:
    """The cursor of a validated id (CURSOR_PATTERN): unnamed kinds start at 0."""
    cursor = dict.fromkeys(_TABLES, 0)
    for part in (text or "").split("."):
        name, _, value = part.partition("-")
        if name in cursor and value.isascii() and value.isdigit():
            cursor[name] = int(value)
    return cursor


def _cursor_text(cursor: dict[str, int]) -> str:
    return ".".join(f"{name}-{value}" for name, value in cursor.items())


def _row(kind: str, row: Any) -> dict[str, Any]:
    if kind == "epoch":
        return {"trainingJob": row.training_job, **epoch_view(row)}
    if kind == "log":
        return {
            "trainingJob": row.training_job,
            "level": row.level,
            "message": row.message,
            "time": row.time.isoformat(),
        }
    if kind == "notification":
        return {
            "id": row.id,
            "kind": row.kind,
            "subject": row.subject,
            "title": row.title,
            "message": row.message,
        }
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


def _fresh(
    services: Services, project: str, cursor: dict[str, int], job: str | None
) -> list[tuple[str, int, dict[str, Any]]]:
    found: list[tuple[str, int, dict[str, Any]]] = []
    with services.db.session() as session:
        for kind, table in _TABLES.items():
            query = select(table).where(table.project_name == project, table.id > cursor[kind])
            if job and kind in ("epoch", "log"):
                query = query.where(table.training_job == job)
            for row in session.scalars(query.order_by(table.id).limit(500)):
                found.append((kind, row.id, _row(kind, row)))
    return found


@router.get(
    "/projects/{project}/events",
    summary="Live updates as Server-Sent Events: epoch, log, notification and edge events",
    description="A `text/event-stream`. Each event's id is a cursor: reconnect with `Last-Event-ID` "
    "(or `after`) to resume without gaps. Send the bearer token in the Authorization header "
    "(use fetch streaming in browsers; EventSource cannot send headers).",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def events(
    request: Request,
    access: ProjectReader,
    services: ServicesDep,
    training_job: Annotated[
        str | None, Query(alias="trainingJob", max_length=253, pattern=OBJECT_NAME_PATTERN)
    ] = None,
    after: Annotated[
        str | None, Query(max_length=200, pattern=CURSOR_PATTERN, description=_CURSOR_HELP)
    ] = None,
    last_event_id: Annotated[
        str | None, Header(max_length=200, pattern=CURSOR_PATTERN, description=_CURSOR_HELP)
    ] = None,
) -> StreamingResponse:
    cursor = _cursor(last_event_id or after)
    project = access.project

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        quiet = 0.0
        ends = time.monotonic() + STREAM_MAX_SECONDS
        while not await request.is_disconnected():
            try:
                found = await run_in_threadpool(_fresh, services, project, cursor, training_job)
            except Exception:  # the 200 is sent: say so in the stream, and let the client reconnect
                log.exception("event stream of %s failed at %s", project, _cursor_text(cursor))
                message = {"message": "the stream failed; reconnect with the last event id"}
                yield f"event: error\ndata: {json.dumps(message)}\n\n".encode()
                return
            for kind, row_id, data in found:
                cursor[kind] = row_id
                yield f"event: {kind}\nid: {_cursor_text(cursor)}\ndata: {json.dumps(data)}\n\n".encode()
            if found:
                quiet = 0.0
            else:
                quiet += POLL_SECONDS
                if quiet >= HEARTBEAT_SECONDS:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
            if time.monotonic() >= ends:
                return
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
