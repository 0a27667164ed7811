"""Who is calling and what they may do: Firebase principal → role in a project (admin, member, viewer)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy import select

from visioninapp.api.db import Membership, Project
from visioninapp.api.errors import ApiError
from visioninapp.api.services import Services
from visioninapp.backends.auth import AuthError, Principal

__all__ = [
    "ROLES",
    "Access",
    "CurrentUser",
    "ProjectAdmin",
    "ProjectReader",
    "ProjectWriter",
    "ServicesDep",
    "highest",
    "services_of",
]

ROLES = ("viewer", "member", "admin")
PROJECT_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a DNS label: projects are namespaces
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def highest(roles: list[str]) -> str:
    """The strongest of several roles (a user may be a member by uid and by email)."""
    return max(roles, key=lambda role: _RANK[role])


async def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services_of)]


def current_user(request: Request, services: ServicesDep) -> Principal:
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        principal = services.auth.authenticate(token, request.client.host if request.client else None)
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


def role_in(services: Services, user: Principal, project: str) -> str | None:
    """The caller's role in a project (None: not a member, or no such project), cached briefly."""
    # The identities, not the raw email: a token whose email is not verified must not share an entry.
    key = f"{role_cache_prefix(project)}{'|'.join(user.identities)}:{int(user.is_platform_admin)}"
    cached = services.cache.get(key)
    if cached is not None:
        return cached.decode() or None
    role = _role_from_db(services, user, project)
    services.cache.set(key, (role or "").encode(), services.settings.api_cache_ttl_seconds)
    return role


def _role_from_db(services: Services, user: Principal, project: str) -> str | None:
    with services.db.session() as session:
        if session.get(Project, project) is None:
            return None
        if user.is_platform_admin:
            return "admin"
        roles = session.scalars(
            select(Membership.role).where(
                Membership.project_name == project, Membership.principal.in_(user.identities)
            )
        ).all()
    return highest(list(roles)) if roles else None


def _rate_limit(services: Services, user: Principal) -> None:
    window = int(time.time() // 60)
    count = services.cache.incr(f"rate:{user.uid}:{window}", 60)
    if count > services.settings.api_write_rate_per_minute:
        raise ApiError(
            429,
            f"too many write requests: at most {services.settings.api_write_rate_per_minute} per minute; "
            "retry after the time in Retry-After",
        )


def _access(minimum: str):  # type: ignore[no-untyped-def]
    def dependency(
        request: Request,
        services: ServicesDep,
        user: CurrentUser,
        project: Annotated[
            str, Path(description="Project (namespace) name.", max_length=63, pattern=PROJECT_PATTERN)
        ],
    ) -> Access:
        role = role_in(services, user, project)
        if role is None:  # the same answer whether it does not exist or is not yours: nothing leaks
            raise ApiError(404, f"project {project!r} not found (or you are not a member)")
        access = Access(user, project, role)
        if not access.can(minimum):
            raise ApiError(403, f"your role in {project!r} is {role}; this needs {minimum} or higher")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            _rate_limit(services, user)
        return access

    return dependency


ProjectReader = Annotated[Access, Depends(_access("viewer"))]
ProjectWriter = Annotated[Access, Depends(_access("member"))]
ProjectAdmin = Annotated[Access, Depends(_access("admin"))]
