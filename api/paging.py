"""Pages of list results: `{items, total, limit, offset}`, counted and sliced in SQL where the rows
live there; lists built from the Kubernetes API (which has no offsets) are sorted and sliced here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from visioninapp.web.errors import ApiError

__all__ = ["fetch_page", "page", "page_of", "sort_items"]

Row = TypeVar("Row")


def page_of(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def page(items: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    """A page of a list already in memory."""
    return page_of(items[offset : offset + limit], len(items), limit, offset)


def fetch_page(session: Session, query: Select[Row], limit: int, offset: int) -> tuple[Sequence[Row], int]:
    """One page of an ordered query's rows and the number of all its rows, both computed by the database."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = session.scalars(query.limit(limit).offset(offset)).all() if offset < total else []
    return rows, total


def sort_items(items: list[dict[str, Any]], sort: str | None, allowed: Sequence[str]) -> list[dict[str, Any]]:
    """`sort` is a field name, `-` first for descending; items without the field come last."""
    if not sort:
        return items
    field = sort.lstrip("-")
    if field not in allowed:
        raise ApiError(400, f"cannot sort by {field!r}; sort by one of: {', '.join(allowed)}")
    present = [i for i in items if i.get(field) is not None]
    missing = [i for i in items if i.get(field) is None]  # unknown values last, whatever the direction
    present.sort(key=lambda i: i[field], reverse=sort.startswith("-"))
    return present + missing
