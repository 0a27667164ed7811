"""Property-based run of schemathesis over the API's own OpenAPI document, with a valid admin token:
no server error and no response that breaks the documented schema, status codes and media types."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import ApiEnv
from tests.api.test_api import TJ_SPEC, artifact

pytestmark = pytest.mark.services

EXAMPLES = 12
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture
def fuzzed(api: ApiEnv) -> dict[str, Any]:
    """A project with one object of each kind, so that generated requests also reach real data."""
    project = api.new_project()
    api.client.post(
        f"/api/v1/projects/{project}/training-jobs",
        json={"name": "run-1", "spec": TJ_SPEC},
        headers=api.admin,
    )
    api.cluster.create("visioninapp.io", "modelartifacts", project, artifact("m1", project, map5095=0.3))
    api.client.post(f"/api/v1/projects/{project}/datasets", json={"name": "shapes"}, headers=api.admin)
    return {"api": api, "project": project}


@pytest.mark.parametrize("api", ["mariadb"], indirect=True)
def test_api_conforms_to_its_openapi(fuzzed: dict[str, Any]) -> None:
    api: ApiEnv = fuzzed["api"]
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if not op.path.endswith("/events")]  # endless; see test_streams
    assert len(operations) >= 30

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            if "project" in (case.path_parameters or {}):
                case.path_parameters["project"] = fuzzed["project"]  # most calls inside a real project
            case.call_and_validate(headers=api.admin, checks=CHECKS)

        check()
