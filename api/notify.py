"""Notifications (run finished or failed, rollback): stored once, streamed by SSE, POSTed to a webhook."""

from __future__ import annotations

import logging

import httpx
from sqlalchemy import select

from visioninapp.api.db import Database, Notification

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, webhook_url: str | None, timeout: float = 5.0) -> None:
        self.webhook_url = webhook_url
        self.timeout = timeout

    def deliver_pending(self, db: Database, limit: int = 50) -> int:
        """POST undelivered notifications to the webhook, oldest first; a failure is retried next time."""
        if not self.webhook_url:
            return 0
        delivered = 0
        with db.session() as session:
            pending = session.scalars(
                select(Notification)
                .where(Notification.delivered.is_(False))
                .order_by(Notification.id)
                .limit(limit)
            ).all()
            for notification in pending:
                payload = {
                    "id": notification.id,
                    "project": notification.project_name,
                    "kind": notification.kind,
                    "subject": notification.subject,
                    "title": notification.title,
                    "message": notification.message,
                    "createdAt": notification.created_at.isoformat(),
                }
                try:
                    response = httpx.post(self.webhook_url, json=payload, timeout=self.timeout)
                    response.raise_for_status()
                except httpx.HTTPError as error:
                    log.warning("webhook delivery failed (will retry): %s", error)
                    break
                notification.delivered = True
                delivered += 1
        return delivered
