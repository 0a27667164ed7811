"""The deployment ledger: per node, which model (artifact, file, pod template revision) it served,
from when to when. Written as EdgeEvents arrive (one row per stretch, not per window: a month of a
1,000-node fleet stays small) and kept when the deployment changes or is deleted, so the question
"which model saw this frame on that node last Tuesday" has an answer.

A node's newest stretch goes on while its windows report the same model, file and revision without
a gap longer than `GAP` (a node powered off for an hour starts a new stretch when it is back).
Windows that report no model served (nothing loaded yet) change nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from visioninapp.api.db import LedgerEntry
from visioninapp.api.paging import fetch_page, page_of
from visioninapp.events import EdgeEvent

if TYPE_CHECKING:  # the consumers record windows here, and the container holds the consumers
    from visioninapp.api.container import ApiContainer

__all__ = ["GAP", "continues", "ledger_page", "record_window"]

GAP = timedelta(minutes=5)  # 20 windows of the default 15 s: a restart or a short outage is no gap


def continues(entry: LedgerEntry, event: EdgeEvent) -> bool:
    """Whether `event`'s window extends the node's newest stretch `entry`."""
    same = (entry.model_version, entry.model_sha256, entry.revision) == (
        event.model_version,
        event.model_sha256,
        event.revision,
    )
    return same and event.window_start - entry.last_seen <= GAP


def record_window(session: Session, event: EdgeEvent) -> None:
    """Extend the node's newest stretch with the window, or open a new one."""
    if event.model_version is None:
        return
    newest = session.scalars(
        select(LedgerEntry)
        .where(
            LedgerEntry.project_name == event.namespace,
            LedgerEntry.deployment == event.deployment,
            LedgerEntry.node == event.node,
        )
        .order_by(LedgerEntry.id.desc())
        .limit(1)
    ).first()
    if newest is not None and continues(newest, event):
        newest.last_seen = max(newest.last_seen, event.window_end)
        return
    session.add(
        LedgerEntry(
            project_name=event.namespace,
            deployment=event.deployment,
            node=event.node,
            model_version=event.model_version,
            model_sha256=event.model_sha256,
            revision=event.revision,
            started=event.window_start,
            last_seen=event.window_end,
        )
    )
    session.flush()  # the next window of this batch must find this stretch


def ledger_page(
    container: ApiContainer, project: str, deployment: str, node: str | None, limit: int, offset: int
) -> dict[str, Any]:
    """The deployment's stretches, newest first (one node's with `node`). A node's newest stretch
    is `current` (no `until`) while its last window is less than `GAP` old."""
    query = select(LedgerEntry).where(
        LedgerEntry.project_name == project, LedgerEntry.deployment == deployment
    )
    if node is not None:
        query = query.where(LedgerEntry.node == node)
    with container.db.session() as session:
        rows, total = fetch_page(session, query.order_by(LedgerEntry.id.desc()), limit, offset)
        newest = {row.node: row.id for row in session.execute(_newest_ids(project, deployment))}
        now = datetime.now(UTC)
        items = [_out(row, newest.get(row.node) == row.id and now - row.last_seen <= GAP) for row in rows]
    return page_of(items, total, limit, offset)


def _newest_ids(project: str, deployment: str) -> Select[str, int]:
    return (
        select(LedgerEntry.node, func.max(LedgerEntry.id).label("id"))
        .where(LedgerEntry.project_name == project, LedgerEntry.deployment == deployment)
        .group_by(LedgerEntry.node)
    )


def _out(row: LedgerEntry, current: bool) -> dict[str, Any]:
    until: datetime | None = None if current else row.last_seen
    return {
        "node": row.node,
        "model": row.model_version,
        "sha256": row.model_sha256,
        "revision": row.revision,
        "since": row.started,
        "until": until,
        "last_seen": row.last_seen,
        "current": current,
    }
