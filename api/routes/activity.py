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

from visioninapp.api.domain import activity
from visioninapp.api.domain.activity import CURSOR_PATTERN, cursor_of, cursor_text
from visioninapp.api.routes.common import OBJECT_NAME_PATTERN, Limit, Offset
from visioninapp.api.schemas import NotificationOut, Page, SearchHitOut
from visioninapp.api.security import PROJECT_PATTERN, Container, CurrentUser, ProjectReader
from visioninapp.backends.elastic import COLLECTIONS

router = APIRouter(tags=["activity"])
log = logging.getLogger(__name__)
# The backend's tuple as a Literal (a 422 names the choices); mypy takes only literal values there.
Collection = Literal[COLLECTIONS]  # type: ignore[valid-type]

POLL_SECONDS = 1.0
HEARTBEAT_SECONDS = 15.0
# A stream ends after this long (after a poll); the client reconnects with its Last-Event-ID, so
# nothing is lost, and no connection (or proxy slot) is held forever.
STREAM_MAX_SECONDS = 3600.0
_CURSOR_HELP = "A cursor: an event id of this stream, e.g. `epoch-12.log-40.notification-0.edge-7`."


@router.get("/search", response_model=list[SearchHitOut], summary="Full-text search over your projects")
def search(
    container: Container,
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
    return activity.search(container, user, q, project, collections, limit)


@router.get(
    "/projects/{project}/notifications",
    response_model=Page[NotificationOut],
    summary="Runs finished or failed, rollbacks; newest first",
)
def list_notifications(
    access: ProjectReader, container: Container, limit: Limit = 50, offset: Offset = 0
) -> Any:
    return activity.list_notifications(container, access.project, limit, offset)


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
    container: Container,
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
    cursor = cursor_of(last_event_id or after)
    project = access.project

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        quiet = 0.0
        ends = time.monotonic() + STREAM_MAX_SECONDS
        while not await request.is_disconnected():
            try:
                found = await run_in_threadpool(
                    activity.fresh_events, container, project, cursor, training_job
                )
            except Exception:  # the 200 is sent: say so in the stream, and let the client reconnect
                log.exception("event stream of %s failed at %s", project, cursor_text(cursor))
                message = {"message": "the stream failed; reconnect with the last event id"}
                yield f"event: error\ndata: {json.dumps(message)}\n\n".encode()
                return
            for kind, row_id, data in found:
                cursor[kind] = row_id
                yield f"event: {kind}\nid: {cursor_text(cursor)}\ndata: {json.dumps(data)}\n\n".encode()
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
