"""Projects (= namespaces) and their members."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from visioninapp.api.db import Membership, Project
from visioninapp.api.errors import ApiError
from visioninapp.api.routes.common import Limit, Offset, page
from visioninapp.api.schemas import MemberIn, MemberOut, Page, ProjectIn, ProjectOut
from visioninapp.api.security import (
    CurrentUser,
    ProjectAdmin,
    ProjectReader,
    ServicesDep,
    highest,
    role_cache_prefix,
)

router = APIRouter(tags=["projects"])


def _project_out(project: Project, role: str) -> dict[str, Any]:
    return ProjectOut(
        name=project.name,
        display_name=project.display_name,
        description=project.description,
        role=role,
        created_at=project.created_at,
    ).model_dump(by_alias=True)


@router.get("/projects", response_model=Page[ProjectOut], summary="Projects you are a member of")
def list_projects(services: ServicesDep, user: CurrentUser, limit: Limit = 50, offset: Offset = 0) -> Any:
    with services.db.session() as session:
        if user.is_platform_admin:
            rows = [(p, "admin") for p in session.scalars(select(Project).order_by(Project.name))]
        else:
            query = (
                select(Project, Membership.role)
                .join(Membership)
                .where(Membership.principal.in_(user.identities))
                .order_by(Project.name)
            )
            found: dict[str, tuple[Project, list[str]]] = {}
            for project, role in session.execute(query):
                found.setdefault(project.name, (project, []))[1].append(role)
            rows = [(project, highest(roles)) for project, roles in found.values()]
        items = [_project_out(p, r) for p, r in rows]
    return page(items, limit, offset)


@router.post(
    "/projects",
    response_model=ProjectOut,
    status_code=201,
    summary="Create a project (platform admins): its namespace, and you as its admin",
)
def create_project(body: ProjectIn, services: ServicesDep, user: CurrentUser) -> Any:
    if not user.is_platform_admin:
        raise ApiError(403, "only platform admins create projects; ask one to create it and add you")
    with services.db.session() as session:
        if session.get(Project, body.name) is not None:
            raise ApiError(409, f"project {body.name!r} already exists")
    services.cache.delete_prefix(role_cache_prefix(body.name))  # "not a member" answers cached before
    services.clusters.training.ensure_namespace(body.name)
    if services.clusters.rollout is not services.clusters.training:
        services.clusters.rollout.ensure_namespace(body.name)
    with services.db.session() as session:
        project = Project(
            name=body.name,
            display_name=body.display_name or body.name,
            description=body.description,
            created_by=user.label,
        )
        project.members.append(Membership(principal=user.uid, role="admin"))
        session.add(project)
    services.search.index(
        "projects",
        body.name,
        {
            "project": body.name,
            "name": body.name,
            "title": project.display_name,
            "description": body.description,
        },
    )
    return _project_out(project, "admin")


@router.get("/projects/{project}", response_model=ProjectOut, summary="One project")
def get_project(access: ProjectReader, services: ServicesDep) -> Any:
    with services.db.session() as session:
        project = session.get(Project, access.project)
        assert project is not None
        return _project_out(project, access.role)


@router.get("/projects/{project}/members", response_model=list[MemberOut], summary="Members and their roles")
def list_members(access: ProjectReader, services: ServicesDep) -> Any:
    with services.db.session() as session:
        rows = session.scalars(
            select(Membership).where(Membership.project_name == access.project).order_by(Membership.principal)
        )
        return [MemberOut(principal=m.principal, role=m.role).model_dump(by_alias=True) for m in rows]


# A Firebase uid (at most 128 characters) or an email (at most 254): no whitespace or control characters.
PrincipalName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=254,
        pattern=r"^[^\x00-\x20\x7f-\x9f]+$",
        description="Firebase uid or email (an email counts only for tokens whose email is verified).",
    ),
]


def _admins(session: Session, project: str) -> list[Membership]:
    query = select(Membership).where(Membership.project_name == project, Membership.role == "admin")
    return list(session.scalars(query).all())


def _membership(session: Session, project: str, principal: str) -> Membership | None:
    query = select(Membership).where(Membership.project_name == project, Membership.principal == principal)
    return session.scalars(query).first()


@router.put(
    "/projects/{project}/members/{principal}",
    response_model=MemberOut,
    summary="Add a member or change a role (project admins)",
)
def put_member(principal: PrincipalName, body: MemberIn, access: ProjectAdmin, services: ServicesDep) -> Any:
    with services.db.session() as session:
        member = _membership(session, access.project, principal)
        if member is None:
            session.add(Membership(project_name=access.project, principal=principal, role=body.role))
        else:
            if member.role == "admin" and body.role != "admin" and len(_admins(session, access.project)) == 1:
                raise ApiError(
                    409, "cannot demote the last admin of a project; make someone else admin first"
                )
            member.role = body.role
    services.cache.delete_prefix(role_cache_prefix(access.project))
    return {"principal": principal, "role": body.role}


@router.delete("/projects/{project}/members/{principal}", status_code=204, summary="Remove a member")
def delete_member(principal: PrincipalName, access: ProjectAdmin, services: ServicesDep) -> None:
    with services.db.session() as session:
        member = _membership(session, access.project, principal)
        if member is None:
            raise ApiError(404, f"{principal!r} is not a member of {access.project!r}")
        if member.role == "admin" and len(_admins(session, access.project)) == 1:
            raise ApiError(409, "cannot remove the last admin of a project; make someone else admin first")
        session.delete(member)
    services.cache.delete_prefix(role_cache_prefix(access.project))
