"""Who is calling and what they may do: Firebase principal → role in a project (admin, member, viewer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import Membership, Project
from visioninapp.backends.auth import AuthError, Principal
from visioninapp.web.errors import ApiError

__all__ = [
    "ROLES",
    "Access",
    "Container",
    "CurrentUser",
    "ProjectAdmin",
    "ProjectReader",
    "ProjectWriter",
    "container_of",
    "highest",
]

ROLES = ("viewer", "member", "admin")
PROJECT_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a DNS label: projects are namespaces
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def highest(roles: list[str]) -> str:
    """The strongest of several roles (a user may be a member by uid and by email)."""
    return max(roles, key=lambda role: _RANK[role])


async def container_of(request: Request) -> ApiContainer:
    container: ApiContainer = request.app.state.container
    return container


Container = Annotated[ApiContainer, Depends(container_of)]


def current_user(request: Request, container: Container) -> Principal:
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        principal = container.auth.authenticate(token, request.client.host if request.client else None)
    except AuthError as error:
        raise ApiError(401, str(error)) from None
    request.state.user = principal.uid
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


@dataclass(frozen=True)
class Access:
    user: Principal
    project: str
    role: str

    def can(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


def role_cache_prefix(project: str) -> str:
    return f"role:{project}:"


def role_in(container: ApiContainer, user: Principal, project: str) -> str | None:
    """The caller's role in a project (None: not a member, or no such project), cached briefly."""
    # The identities, not the raw email: a token whose email is not verified must not share an entry.
    key = f"{role_cache_prefix(project)}{'|'.join(user.identities)}:{int(user.is_platform_admin)}"
    cached = container.cache.get(key)
    if cached is not None:
        return cached.decode() or None
    role = _role_from_db(container, user, project)
    container.cache.set(key, (role or "").encode(), container.settings.api_cache_ttl_seconds)
    return role


def _role_from_db(container: ApiContainer, user: Principal, project: str) -> str | None:
    with container.db.session() as session:
        if session.get(Project, project) is None:
            return None
        if user.is_platform_admin:
            return "admin"
        return member_roles(session, user, [project]).get(project)


def memberships_of(user: Principal) -> Select[str]:
    """The names of the projects the user is a member of, by any of their identities (uid, verified
    email), as a query to select from or filter by."""
    return select(Membership.project_name).where(Membership.principal.in_(user.identities))


def member_roles(session: Session, user: Principal, projects: list[str]) -> dict[str, str]:
    """The user's strongest role in each of `projects` they are a member of (someone may be a member
    by uid and by email); projects they are not a member of are absent."""
    found: dict[str, list[str]] = {}
    query = select(Membership.project_name, Membership.role).where(
        Membership.project_name.in_(projects), Membership.principal.in_(user.identities)
    )
    for project, role in session.execute(query):
        found.setdefault(project, []).append(role)
    return {project: highest(roles) for project, roles in found.items()}


def _rate_limit(container: ApiContainer, user: Principal) -> None:
    now = time.time()
    window = int(now // 60)
    count = container.cache.incr(f"rate:{user.uid}:{window}", 60)
    if count > container.settings.api_write_rate_per_minute:
        raise ApiError(
            429,
            f"too many write requests: at most {container.settings.api_write_rate_per_minute} per minute; "
            "retry after the time in Retry-After",
            retry_after=max(1, (window + 1) * 60 - int(now)),  # when this minute's count starts again
        )


def _access(minimum: str) -> Callable[[Request, ApiContainer, Principal, str], Access]:
    """The dependency that admits callers with at least role `minimum` in the path's project."""

    def dependency(
        request: Request,
        container: Container,
        user: CurrentUser,
        project: Annotated[
            str, Path(description="Project (namespace) name.", max_length=63, pattern=PROJECT_PATTERN)
        ],
    ) -> Access:
        role = role_in(container, user, project)
        if role is None:  # the same answer whether it does not exist or is not yours: nothing leaks
            raise ApiError(404, f"project {project!r} not found (or you are not a member)")
        access = Access(user, project, role)
        if not access.can(minimum):
            raise ApiError(403, f"your role in {project!r} is {role}; this needs {minimum} or higher")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            _rate_limit(container, user)
        return access

    return dependency


ProjectReader = Annotated[Access, Depends(_access("viewer"))]
ProjectWriter = Annotated[Access, Depends(_access("member"))]
ProjectAdmin = Annotated[Access, Depends(_access("admin"))]
