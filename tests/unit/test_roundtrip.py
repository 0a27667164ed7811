"""Property-based: any object the CRD schema accepts round-trips through the typed models."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from visioninapp.cel import evaluate_rule
from visioninapp.resources import RESOURCES
from visioninapp.validation import apply_defaults, schema_for_kind, validate

URIS = st.sampled_from(["s3://datasets/shapes/v1", "s3://models-eu.prod/a/b/model.onnx", "file:///tmp/x"])
WORDS = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)


def _from_schema(schema: dict[str, Any], key: str = "") -> st.SearchStrategy[Any]:
    """Values the structural schema accepts (CEL rules are checked afterwards, by `assume`)."""
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(1, 50), st.sampled_from(["10%", "25%", "100%"]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind in _BY_TYPE:
        return _BY_TYPE[kind](schema)
    raise AssertionError(f"no strategy for {schema}")


def _integers(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum", 0), schema.get("maximum", 10**6)
    step = schema.get("multipleOf", 1)
    return st.integers(-(-low // step), high // step).map(lambda v: v * step)


def _numbers(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum", 0), schema.get("maximum", 10**4)
    return st.floats(
        low,
        high,
        exclude_min=bool(schema.get("exclusiveMinimum")),
        exclude_max=bool(schema.get("exclusiveMaximum")),
        allow_nan=False,
    )


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if schema.get("format") == "date-time":
        return st.just("2026-11-23T10:00:00Z")
    if any("s3://" in rule["message"] for rule in schema.get("x-kubernetes-validations", [])):
        return URIS
    if "pattern" in schema:
        limit = schema.get("maxLength", 64)
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda s: schema.get("minLength", 0) <= len(s) <= limit
        )
    return WORDS


def _arrays(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.lists(
        _from_schema(schema["items"]),
        min_size=schema.get("minItems", 0),
        max_size=min(schema.get("maxItems", 3), 3),
    )


def _objects(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "properties" not in schema:
        return st.dictionaries(
            WORDS, _from_schema(schema.get("additionalProperties", {"type": "string"})), max_size=2
        )
    required = set(schema.get("required", []))
    fields = {
        name: _from_schema(prop, name) if name in required else st.none() | _from_schema(prop, name)
        for name, prop in schema["properties"].items()
    }
    return st.fixed_dictionaries(fields).map(lambda d: {k: v for k, v in d.items() if v is not None})


_BY_TYPE: dict[str, Callable[[dict[str, Any]], st.SearchStrategy[Any]]] = {
    "integer": _integers,
    "number": _numbers,
    "string": _strings,
    "array": _arrays,
    "object": _objects,
}


def _cel_ok(schema: dict[str, Any], value: Any) -> bool:
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" not in rule["rule"] and not evaluate_rule(rule["rule"], value):
            return False
    if isinstance(value, dict):
        return all(_cel_ok(p, value[k]) for k, p in schema.get("properties", {}).items() if k in value)
    if isinstance(value, list) and "items" in schema:
        return all(_cel_ok(schema["items"], v) for v in value)
    return True


def _objects(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    spec_schema = schema_for_kind(kind)["properties"]["spec"]  # type: ignore[index]
    return _from_schema(spec_schema).map(
        lambda spec: {
            "apiVersion": "visioninapp.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": "generated"},
            "spec": spec,
        }
    )


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ([], {})}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _check_round_trip(obj: dict[str, Any]) -> None:
    schema = schema_for_kind(obj["kind"])["properties"]["spec"]  # type: ignore[index]
    defaulted = apply_defaults(obj)
    assume(_cel_ok(schema, defaulted["spec"]))
    assert validate(obj) == []
    resource = next(r for r in RESOURCES if r.kind == obj["kind"])
    model = resource.object_model.model_validate(obj)
    wire = model.wire()
    # An empty list or map means the same as an absent one (omitempty), in Kubernetes as here.
    assert _without_empty(wire["spec"]) == _without_empty(defaulted["spec"]), (
        "the model and the CRD default differently"
    )
    assert resource.object_model.model_validate(wire).wire() == wire


PROFILE = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow]
)


@PROFILE
@given(_objects("TrainingJob"))
def test_training_jobs_round_trip(obj: dict[str, Any]) -> None:
    _check_round_trip(obj)


@PROFILE
@given(_objects("ModelArtifact"))
def test_model_artifacts_round_trip(obj: dict[str, Any]) -> None:
    _check_round_trip(obj)


@PROFILE
@given(_objects("EdgeDeployment"))
def test_edge_deployments_round_trip(obj: dict[str, Any]) -> None:
    _check_round_trip(obj)
