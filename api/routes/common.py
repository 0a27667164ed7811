"""What the routers share: typed path and query parameters, the control-character check, cached lists."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.responses import Response

from visioninapp.api.container import ApiContainer
from visioninapp.api.listcache import cached_json
from visioninapp.api.security import CurrentUser
from visioninapp.web.errors import ApiError, ErrorDetail

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


def cached_list(container: ApiContainer, key: str, produce: Callable[[], Any]) -> Response:
    """A hot list served from the read cache (see `visioninapp.api.listcache`)."""
    return Response(cached_json(container, key, produce), media_type="application/json")
