"""Projects (= namespaces) and their members."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from visioninapp.api.container import ApiContainer
from visioninapp.api.db import Membership, Project
from visioninapp.api.paging import fetch_page, page_of
from visioninapp.api.schemas import MemberOut, ProjectIn, ProjectOut
from visioninapp.api.security import Access, member_roles, memberships_of, role_cache_prefix
from visioninapp.backends.auth import Principal
from visioninapp.web.errors import ApiError

__all__ = [
    "create_project",
    "get_project",
    "list_members",
    "list_projects",
    "project_out",
    "put_member",
    "remove_member",
]


def project_out(project: Project, role: str) -> dict[str, Any]:
    return ProjectOut(
        name=project.name,
        display_name=project.display_name,
        description=project.description,
        role=role,
        created_at=project.created_at,
    ).model_dump(by_alias=True)


def list_projects(container: ApiContainer, user: Principal, limit: int, offset: int) -> dict[str, Any]:
    """Every project for platform admins (as admin), else those the user is a member of, by name."""
    query = select(Project).order_by(Project.name)
    if not user.is_platform_admin:
        query = query.where(Project.name.in_(memberships_of(user)))
    with container.db.session() as session:
        rows, total = fetch_page(session, query, limit, offset)
        if user.is_platform_admin:
            items = [project_out(p, "admin") for p in rows]
        else:  # a membership removed since the page was read drops its project (never a default role)
            roles = member_roles(session, user, [p.name for p in rows])
            items = [project_out(p, roles[p.name]) for p in rows if p.name in roles]
    return page_of(items, total, limit, offset)


def create_project(container: ApiContainer, body: ProjectIn, user: Principal) -> dict[str, Any]:
    """The namespace in each cluster, then the project with its creator as admin."""
    if not user.is_platform_admin:
        raise ApiError(403, "only platform admins create projects; ask one to create it and add you")
    with container.db.session() as session:
        if session.get(Project, body.name) is not None:
            raise ApiError(409, f"project {body.name!r} already exists")
    container.cache.delete_prefix(role_cache_prefix(body.name))  # "not a member" answers cached before
    container.clusters.training.ensure_namespace(body.name)
    if container.clusters.rollout is not container.clusters.training:
        container.clusters.rollout.ensure_namespace(body.name)
    with container.db.session() as session:
        project = Project(
            name=body.name,
            display_name=body.display_name or body.name,
            description=body.description,
            created_by=user.label,
        )
        project.members.append(Membership(principal=user.uid, role="admin"))
        session.add(project)
    container.search.index(
        "projects",
        body.name,
        {
            "project": body.name,
            "name": body.name,
            "title": project.display_name,
            "description": body.description,
        },
    )
    return project_out(project, "admin")


def get_project(container: ApiContainer, access: Access) -> dict[str, Any]:
    with container.db.session() as session:
        project = session.get(Project, access.project)
        if project is None:  # the access check found it a moment ago: deleted since
            raise ApiError(404, f"project {access.project!r} not found (or you are not a member)")
        return project_out(project, access.role)


def list_members(container: ApiContainer, project: str) -> list[dict[str, Any]]:
    with container.db.session() as session:
        rows = session.scalars(
            select(Membership).where(Membership.project_name == project).order_by(Membership.principal)
        )
        return [MemberOut(principal=m.principal, role=m.role).model_dump(by_alias=True) for m in rows]


def _admins(session: Session, project: str) -> int:
    query = select(func.count()).where(Membership.project_name == project, Membership.role == "admin")
    return session.scalar(query) or 0


def _membership(session: Session, project: str, principal: str) -> Membership | None:
    query = select(Membership).where(Membership.project_name == project, Membership.principal == principal)
    return session.scalars(query).first()


def put_member(container: ApiContainer, project: str, principal: str, role: str) -> dict[str, Any]:
    """Add a member or change a role; a project keeps at least one admin."""
    with container.db.session() as session:
        member = _membership(session, project, principal)
        if member is None:
            session.add(Membership(project_name=project, principal=principal, role=role))
        else:
            if member.role == "admin" and role != "admin" and _admins(session, project) == 1:
                raise ApiError(
                    409, "cannot demote the last admin of a project; make someone else admin first"
                )
            member.role = role
    container.cache.delete_prefix(role_cache_prefix(project))
    return {"principal": principal, "role": role}


def remove_member(container: ApiContainer, project: str, principal: str) -> None:
    with container.db.session() as session:
        member = _membership(session, project, principal)
        if member is None:
            raise ApiError(404, f"{principal!r} is not a member of {project!r}")
        if member.role == "admin" and _admins(session, project) == 1:
            raise ApiError(409, "cannot remove the last admin of a project; make someone else admin first")
        session.delete(member)
    container.cache.delete_prefix(role_cache_prefix(project))
