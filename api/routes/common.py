"""Helpers shared by the routers: typed parameters, paging, sorting, the read cache."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Path, Query, Request
from fastapi.responses import Response

from visioninapp.api.errors import ApiError, ErrorDetail
from visioninapp.api.security import CurrentUser
from visioninapp.api.services import Services

T = TypeVar("T")

# A Kubernetes object name (DNS-1123 subdomain): TrainingJobs, ModelArtifacts and EdgeDeployments
# applied with kubectl may have dots, so path parameters take what the API server takes.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[
    str,
    Path(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN, description="Kubernetes object name."),
]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")]
Sort = Annotated[
    str | None,
    Query(
        max_length=40,
        pattern=r"^-?[A-Za-z][A-Za-z0-9_]*$",
        description="Field to sort by; a leading `-` sorts descending, e.g. `-createdAt`.",
    ),
]

# C0 and C1 control characters (NUL included) and DEL: never part of a name, a filter or a cursor.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def no_control_characters(request: Request, user: CurrentUser) -> None:
    """Every /api/v1 route: a query or path parameter with a control character is a 422.

    Runs after authentication (CurrentUser), so an anonymous caller still gets the 401 first.
    """
    del user
    found = [
        (f"query.{name}", value)
        for name, value in request.query_params.multi_items()
        if CONTROL_CHARACTERS.search(name) or CONTROL_CHARACTERS.search(value)
    ]
    found += [
        (f"path.{name}", value)
        for name, value in request.path_params.items()
        if isinstance(value, str) and CONTROL_CHARACTERS.search(value)
    ]
    if found:
        details = [
            ErrorDetail(field=field, message="control characters (such as NUL) are not allowed")
            for field, _ in found
        ]
        raise ApiError(
            422, f"invalid request: {found[0][0]}: control characters (such as NUL) are not allowed", details
        )


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


# --- where a project's runs may read and write in the artifact store ---------------------------
#
# Layout of the platform's store (VISIONINAPP_ARTIFACTS_URI): `datasets/<project>/<dataset>/v<N>`
# (uploaded through the API), `<project>/...` (run outputs: the operator writes a run to
# `<output base>/<namespace>/<run>/`), `feedback/` and `logs/` (platform-wide). A project member may
# train on the project's datasets and write under the project's own prefix only; platform admins
# may name any URI (shared datasets such as local mode's `datasets/shapes/v1`, other buckets).

_SAFE_PATH = re.compile(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*/?")


def store_base(services: Services) -> str:
    return services.settings.resolved_artifacts_uri.rstrip("/")


def below(uri: str, prefix: str, *, inclusive: bool = False) -> bool:
    """Whether `uri` lies under the folder `prefix` (segment-wise: `p` never matches `p2`), with
    plain segments only: no `.`, `..`, empty segments, percent escapes or backslashes."""
    prefix = prefix.rstrip("/")
    if inclusive and uri.rstrip("/") == prefix:
        return True
    if not uri.startswith(prefix + "/"):
        return False
    rest = uri[len(prefix) + 1 :]
    return bool(_SAFE_PATH.fullmatch(rest)) and not any(part in (".", "..") for part in rest.split("/"))


def plain_relative_path(path: str) -> bool:
    """A path inside a folder: relative, plain segments, never `..`."""
    return bool(_SAFE_PATH.fullmatch(path)) and not any(part in (".", "..") for part in path.split("/"))


def project_write_prefix(services: Services, project: str) -> str:
    return f"{store_base(services)}/{project}"


def check_output_uri(services: Services, project: str, uri: str | None, field: str) -> None:
    """An output URI a project member may set: empty (the platform's default, in the project's
    prefix) or under `<artifacts>/<project>/`."""
    allowed = project_write_prefix(services, project)
    if uri is None or below(uri, allowed, inclusive=True):
        return
    message = (
        f"{field}: {uri!r} is outside project {project!r}; leave it empty (the default, "
        f"{allowed}/...) or name a folder under {allowed}/; only platform admins may write elsewhere"
    )
    raise ApiError(403, message, [ErrorDetail(field=field, message=message)])
