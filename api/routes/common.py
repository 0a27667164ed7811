"""Helpers shared by the routers: paging, sorting, the read cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query
from fastapi.responses import Response

from visioninapp.api.errors import ApiError
from visioninapp.api.services import Services

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")]
Sort = Annotated[
    str | None,
    Query(max_length=40, description="Field to sort by; a leading `-` sorts descending, e.g. `-createdAt`."),
]


def sort_items(items: list[dict[str, Any]], sort: str | None, allowed: Sequence[str]) -> list[dict[str, Any]]:
    if not sort:
        return items
    field = sort.lstrip("-")
    if field not in allowed:
        raise ApiError(400, f"cannot sort by {field!r}; sort by one of: {', '.join(allowed)}")
    present = [i for i in items if i.get(field) is not None]
    missing = [i for i in items if i.get(field) is None]  # unknown values last, whatever the direction
    present.sort(key=lambda i: i[field], reverse=sort.startswith("-"))
    return present + missing


def page(items: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    return {"items": items[offset : offset + limit], "total": len(items), "limit": limit, "offset": offset}


def list_cache_prefix(project: str, kind: str) -> str:
    return f"list:{project}:{kind}:"


_filling: dict[str, threading.Lock] = {}
_filling_guard = threading.Lock()


def cached_json(services: Services, key: str, produce: Callable[[], Any]) -> Response:
    """Serve a hot read from the cache; on a miss, compute, store and serve it.

    Concurrent misses of one key in this process wait for a single computation instead of each
    listing from the Kubernetes API (no thundering herd when an entry expires under load).
    """
    hit = services.cache.get(key)
    if hit is None:
        with _filling_guard:
            lock = _filling.setdefault(key, threading.Lock())
        with lock:
            hit = services.cache.get(key)
            if hit is None:
                hit = json.dumps(produce(), default=str, separators=(",", ":")).encode()
                services.cache.set(key, hit, services.settings.api_cache_ttl_seconds)
        with _filling_guard:
            _filling.pop(key, None)
    return Response(hit, media_type="application/json")


def invalidate(services: Services, project: str, *kinds: str) -> None:
    for kind in kinds:
        services.cache.delete_prefix(list_cache_prefix(project, kind))
