"""Projects (= namespaces) and their members."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from visioninapp.api.domain import projects
from visioninapp.api.routes.common import Limit, Offset
from visioninapp.api.schemas import MemberIn, MemberOut, Page, ProjectIn, ProjectOut
from visioninapp.api.security import Container, CurrentUser, ProjectAdmin, ProjectReader

router = APIRouter(tags=["projects"])

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


@router.get("/projects", response_model=Page[ProjectOut], summary="Projects you are a member of")
def list_projects(container: Container, user: CurrentUser, limit: Limit = 50, offset: Offset = 0) -> Any:
    return projects.list_projects(container, user, limit, offset)


@router.post(
    "/projects",
    response_model=ProjectOut,
    status_code=201,
    summary="Create a project (platform admins): its namespace, and you as its admin",
)
def create_project(body: ProjectIn, container: Container, user: CurrentUser) -> Any:
    return projects.create_project(container, body, user)


@router.get("/projects/{project}", response_model=ProjectOut, summary="One project")
def get_project(access: ProjectReader, container: Container) -> Any:
    return projects.get_project(container, access)


@router.get("/projects/{project}/members", response_model=list[MemberOut], summary="Members and their roles")
def list_members(access: ProjectReader, container: Container) -> Any:
    return projects.list_members(container, access.project)


@router.put(
    "/projects/{project}/members/{principal}",
    response_model=MemberOut,
    summary="Add a member or change a role (project admins)",
)
def put_member(principal: PrincipalName, body: MemberIn, access: ProjectAdmin, container: Container) -> Any:
    return projects.put_member(container, access.project, principal, body.role)


@router.delete("/projects/{project}/members/{principal}", status_code=204, summary="Remove a member")
def delete_member(principal: PrincipalName, access: ProjectAdmin, container: Container) -> None:
    projects.remove_member(container, access.project, principal)
