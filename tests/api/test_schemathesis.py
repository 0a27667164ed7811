"""Property-based runs of schemathesis over the API's own OpenAPI document: no server error, and no
response that breaks the documented schema, status codes and media types.

- positive data with a platform admin's token (valid requests reach real data);
- negative data (every component schemathesis can make invalid: path, query, headers, bodies) with
  a project member's token, at least 50 examples per operation: each is a 4xx in the error model;
- a stateful run: schemathesis' state machine over the links it infers from the document (create a
  run or a deployment, then read, change, suspend, delete it), with the member's token.

Every operation is in each run, `/events` included: streams end after one poll here
(`STREAM_MAX_SECONDS = 0`), as a client's reconnect would see them."""

from __future__ import annotations

import re
import time
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import ApiEnv
from tests.api.test_api import TJ_SPEC, artifact

pytestmark = pytest.mark.services

POSITIVE_EXAMPLES = 12
NEGATIVE_EXAMPLES = 50
STATEFUL_SCENARIOS = 100
STATEFUL_STEPS = 10
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
_PROJECT = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MEMBER = "fuzz-member"


@pytest.fixture
def fuzzed(api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A project with one object of each kind, so that generated requests also reach real data,
    and a member (not a platform admin) of it."""
    from visioninapp.api.routes import activity

    monkeypatch.setattr(activity, "STREAM_MAX_SECONDS", 0.0)  # one poll, then the stream ends
    monkeypatch.setattr(activity, "POLL_SECONDS", 0.0)
    project = seeded_project(api)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", api.app)
    return {"api": api, "project": project, "schema": schema}


def seeded_project(api: ApiEnv) -> str:
    """A project with the member, a run, a model and a dataset."""
    project = api.new_project({MEMBER: "member"})
    api.client.post(
        f"/api/v1/projects/{project}/training-jobs",
        json={"name": "run-1", "spec": TJ_SPEC},
        headers=api.admin,
    )
    api.cluster.create("visioninapp.io", "modelartifacts", project, artifact("m1", project, map5095=0.3))
    api.client.post(f"/api/v1/projects/{project}/datasets", json={"name": "shapes"}, headers=api.admin)
    return project


def in_project(case: Any, project: str) -> None:
    """Most calls inside the real project: a valid project name (only) is swapped for it, so a
    negative case stays negative and a positive one positive."""
    value = (case.path_parameters or {}).get("project")
    if isinstance(value, str) and len(value) <= 63 and _PROJECT.fullmatch(value):
        case.path_parameters["project"] = project


def _has_inputs(operation: Any) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def run_operations(
    fuzzed: dict[str, Any], mode: GenerationMode, headers: dict[str, str], examples: int
) -> int:
    operations = [result.ok() for result in fuzzed["schema"].get_all_operations()]
    assert len(operations) >= 30
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS
    calls = 0
    skipped: list[str] = []
    started = time.monotonic()
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
        )
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            in_project(case, fuzzed["project"])
            case.call_and_validate(headers=headers, checks=checks)

        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # Nothing to make invalid: no parameter and no body (the health probes, /api/config).
            assert mode is GenerationMode.NEGATIVE and not _has_inputs(operation), operation.label
            skipped.append(operation.label)
    print(
        f"schemathesis {mode.value}: {len(operations)} operations, {calls} calls "
        f"in {time.monotonic() - started:.1f} s; no invalid input possible: {skipped}"
    )
    return calls


@pytest.mark.parametrize("api", ["mariadb"], indirect=True)
def test_api_conforms_to_its_openapi(fuzzed: dict[str, Any]) -> None:
    run_operations(fuzzed, GenerationMode.POSITIVE, fuzzed["api"].admin, POSITIVE_EXAMPLES)


@pytest.mark.parametrize("api", ["mariadb"], indirect=True)
def test_invalid_requests_of_a_member_are_4xx_never_5xx(fuzzed: dict[str, Any]) -> None:
    api: ApiEnv = fuzzed["api"]
    calls = run_operations(fuzzed, GenerationMode.NEGATIVE, api.as_user(MEMBER), NEGATIVE_EXAMPLES)
    assert calls >= 30 * NEGATIVE_EXAMPLES * 0.8  # hypothesis may stop early on a tiny input space


@pytest.mark.parametrize("api", ["mariadb"], indirect=True)
def test_stateful_workflows_of_a_member(fuzzed: dict[str, Any]) -> None:
    """Each scenario starts in a fresh project (the same state each time, so that hypothesis can
    replay a scenario), with the member's token on every call."""
    api: ApiEnv = fuzzed["api"]
    member = api.as_user(MEMBER)
    workflow = fuzzed["schema"].as_state_machine()
    steps, scenarios = 0, 0

    class MemberWorkflow(workflow):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            nonlocal scenarios
            scenarios += 1
            self.project = seeded_project(api)

        def before_call(self, case: Any) -> None:
            nonlocal steps
            steps += 1
            in_project(case, self.project)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": member}

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs or None)

    started = time.monotonic()
    MemberWorkflow.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate, hypothesis.Phase.shrink],
        )
    )
    print(
        f"schemathesis stateful: {scenarios} scenarios, {steps} calls in {time.monotonic() - started:.1f} s"
    )
    assert scenarios >= STATEFUL_SCENARIOS and steps >= STATEFUL_SCENARIOS
