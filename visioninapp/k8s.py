"""Kubernetes object helpers every component shares: the plain-object type, timestamps as the API
server writes them, conditions, owner references and our managed-by label."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from visioninapp.resources import API_VERSION

__all__ = [
    "MANAGED_BY",
    "Obj",
    "StatusDraft",
    "controller_reference",
    "iso_time",
    "parse_time",
    "set_condition",
]

Obj = dict[str, Any]  # a Kubernetes object (or part of one) as JSON
MANAGED_BY = {"app.kubernetes.io/managed-by": "visioninapp-operator"}


def iso_time(moment: datetime) -> str:
    """A timestamp as Kubernetes writes it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """A Kubernetes timestamp (or None): aware, in UTC. Python 3.11 reads the "Z" itself, ~20x
    quicker than strptime."""
    return datetime.fromisoformat(text) if text else None


def controller_reference(kind: str, name: str, uid: str) -> Obj:
    """The owner reference that makes one of our resources the controller of an object: deleting the
    resource deletes the object (after it, with foreground deletion)."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def set_condition(
    conditions: list[Obj],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
    order: Sequence[str] = (),
) -> list[Obj]:
    """Conditions with `type_` set; `lastTransitionTime` moves only when the status changes. Sorted by
    `order` (types not in it last, in their previous order)."""
    result, found = [], False
    for condition in conditions:
        if condition["type"] != type_:
            result.append(condition)
            continue
        found = True
        changed = condition["status"] != status
        result.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": iso_time(now) if changed else condition["lastTransitionTime"],
                "observedGeneration": generation,
            }
        )
    if not found:
        result.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": iso_time(now),
                "observedGeneration": generation,
            }
        )
    return sorted(result, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


class StatusDraft:
    """The status one reconciliation builds up for an object: the stored status, its conditions (set
    by type, sorted by `order`) and `wanted`, the merge patch so far, stamped with the generation it
    answers."""

    order: Sequence[str] = ()

    def __init__(self, body: Obj, now: datetime) -> None:
        self.now = now
        self.uid: str = body["metadata"]["uid"]
        self.status: Obj = dict(body.get("status") or {})
        self.generation = int(body["metadata"].get("generation") or 1)
        self.conditions: list[Obj] = list(self.status.get("conditions") or [])
        self.wanted: Obj = {"observedGeneration": self.generation}

    def condition(self, type_: str, value: bool, reason: str, message: str) -> None:
        """Set a True/False condition; its transition time moves only when the value changes."""
        status = "True" if value else "False"
        self.conditions = set_condition(
            self.conditions, type_, status, reason, message, self.now, self.generation, self.order
        )
