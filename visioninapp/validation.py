"""Offline admission for our custom resources: what a Kubernetes API server checks, in Python.

`validate(new, old=None)` applies schema defaults, rejects unknown fields (as kubectl's strict field
validation does), checks the structural OpenAPI schema of the generated CRD and evaluates the CRD's
CEL rules (`x-kubernetes-validations`, transition rules with `old`). The CLI (`visioninapp
validate`), the API and the Kubernetes API harness all call it, so they accept the same objects.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema

from visioninapp.cel import CelError, evaluate_rule
from visioninapp.crds import crd_for
from visioninapp.resources import API_VERSION, RESOURCES

__all__ = ["FieldError", "apply_defaults", "format_path", "schema_for_kind", "validate"]

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_ENUM_SHOWN = 12


@dataclass(frozen=True)
class FieldError:
    """One reason an object is rejected: which object, which field, what to do."""

    object: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.path}: {self.message}"


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    return {r.kind: crd_for(r)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for r in RESOURCES}


def schema_for_kind(kind: str) -> dict[str, Any] | None:
    """The openAPIV3Schema of one of our kinds, or None for any other kind."""
    return _schemas().get(kind)


def format_path(parts: list[str | int] | tuple[str | int, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(object)"


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "(not an object)"
    name = (obj.get("metadata") or {}).get("name") or "(unnamed)"
    return f"{obj.get('kind') or '(no kind)'}/{name}"


# --- defaulting and pruning, as the API server does before validation ---------------------------


def _prune_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


def _default(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = _default(prop, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = _default(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_default(schema["items"], item) for item in value]
    return value


def apply_defaults(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with nulls pruned and the CRD's defaults applied (other kinds: unchanged)."""
    schema = schema_for_kind(obj.get("kind", "")) if isinstance(obj, dict) else None
    result = _prune_nulls(copy.deepcopy(obj))
    if schema is None:
        return result  # type: ignore[no-any-return]
    if isinstance(result.get("spec"), dict):
        result["spec"] = _default(schema["properties"]["spec"], result["spec"])
    return result  # type: ignore[no-any-return]


# --- checks -------------------------------------------------------------------------------------


def _unknown_fields(schema: dict[str, Any], value: Any, path: list[str | int]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, child in value.items():
            if key not in schema["properties"]:
                known = ", ".join(schema["properties"])
                found.append((format_path([*path, key]), f"unknown field; known fields here: {known}"))
            else:
                found.extend(_unknown_fields(schema["properties"][key], child, [*path, key]))
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, child in value.items():
            found.extend(_unknown_fields(schema["additionalProperties"], child, [*path, key]))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found.extend(_unknown_fields(schema["items"], item, [*path, index]))
    return found


def _schema_message(error: jsonschema.ValidationError) -> str:
    validator, expected, value = error.validator, error.validator_value, error.instance
    hint = error.schema.get("description") if isinstance(error.schema, dict) else None
    if validator == "enum":
        choices = ", ".join(map(str, expected[:_MAX_ENUM_SHOWN]))
        more = f", ... ({len(expected)} in all)" if len(expected) > _MAX_ENUM_SHOWN else ""
        message = f"{value!r} is not allowed; use one of: {choices}{more}"
    elif validator == "type":
        message = f"expected {expected}, got {type(value).__name__} {value!r}"
    elif validator == "required":
        missing = [name for name in expected if name not in (value or {})]
        return f"required field missing: {', '.join(missing)}"
    elif validator in ("minimum", "maximum"):
        exclusive = error.schema.get(f"exclusive{validator.capitalize()}") is True
        relation = {
            ("minimum", False): ">=",
            ("minimum", True): ">",
            ("maximum", False): "<=",
            ("maximum", True): "<",
        }[(validator, exclusive)]
        message = f"{value!r} is out of range: must be {relation} {expected}"
    elif validator == "pattern":
        message = f"{value!r} is not valid: it must match {expected}"
    elif validator in ("maxLength", "minLength", "maxItems", "minItems", "maxProperties"):
        size = len(value)
        message = (
            f"has {size} {'characters' if 'Length' in validator else 'entries'}: {validator} is {expected}"
        )
    elif validator == "multipleOf":
        message = f"{value!r} must be a multiple of {expected}"
    elif validator == "anyOf" and error.schema.get("x-kubernetes-int-or-string"):
        message = f"{value!r} must be an integer or a string like '25%'"
    else:
        message = error.message
    return f"{message} ({hint})" if hint else message


def _cel_errors(
    schema: dict[str, Any], value: Any, old: Any, path: list[str | int], skip: set[str]
) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    here = format_path(path)
    if any(here == bad or here.startswith(bad + ".") or here.startswith(bad + "[") for bad in skip):
        return found
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        try:
            ok = evaluate_rule(rule["rule"], value, old if transition else None)
        except CelError as error:
            ok, rule = False, {**rule, "message": f"{rule['message']} ({error})"}
        if not ok:
            target = here + rule["fieldPath"] if rule.get("fieldPath") else here
            found.append((target, rule["message"]))
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            if key in value:
                child_old = old.get(key) if isinstance(old, dict) else None
                found.extend(_cel_errors(prop, value[key], child_old, [*path, key], skip))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, child in value.items():
                child_old = old.get(key) if isinstance(old, dict) else None
                found.extend(_cel_errors(extra, child, child_old, [*path, key], skip))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        # Atomic lists: Kubernetes does not correlate items with the old list, so no oldSelf.
        for index, item in enumerate(value):
            found.extend(_cel_errors(schema["items"], item, None, [*path, index], skip))
    return found


def validate(new: dict[str, Any], old: dict[str, Any] | None = None) -> list[FieldError]:
    """Check one of our custom objects as the API server would; an empty list means accepted.

    `old` is the stored object for an update: CEL transition rules (`oldSelf`) are checked then.
    Objects of other kinds are not ours to judge and yield no errors.
    """
    label = _describe(new)
    if not isinstance(new, dict):
        return [FieldError(label, "(object)", "expected a mapping with apiVersion, kind and metadata")]
    schema = schema_for_kind(new.get("kind", ""))
    if schema is None:
        return []
    errors: list[FieldError] = []
    if new.get("apiVersion") != API_VERSION:
        errors.append(
            FieldError(label, "apiVersion", f"{new.get('apiVersion')!r} is not served; use {API_VERSION!r}")
        )
    errors.extend(_metadata_errors(label, new.get("metadata")))

    obj = apply_defaults(new)
    obj.pop("status", None)  # the status subresource is written separately and never by users
    old_obj = apply_defaults(old) if old is not None else None

    for path, message in _unknown_fields(schema, obj, []):
        errors.append(FieldError(label, path, message))
    body_schema = {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "status"}}
    broken: set[str] = set()
    validator = jsonschema.Draft4Validator(body_schema)
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = format_path(list(error.absolute_path))
        if error.validator == "required":
            missing = [n for n in error.validator_value if n not in (error.instance or {})]
            path = format_path([*error.absolute_path, missing[0]]) if missing else path
        broken.add(path)
        errors.append(FieldError(label, path, _schema_message(error)))
    spec = obj.get("spec")
    if isinstance(spec, dict):
        old_spec = old_obj.get("spec") if old_obj else None
        for path, message in _cel_errors(schema["properties"]["spec"], spec, old_spec, ["spec"], broken):
            errors.append(FieldError(label, path, message))
    return errors


def _metadata_errors(label: str, metadata: Any) -> list[FieldError]:
    if not isinstance(metadata, dict):
        return [FieldError(label, "metadata", "required: an object with at least a name")]
    name = metadata.get("name")
    if not name and not metadata.get("generateName"):
        return [FieldError(label, "metadata.name", "required field missing")]
    if name and (len(name) > 253 or not _NAME.match(name)):
        return [
            FieldError(
                label,
                "metadata.name",
                f"{name!r} is not a valid name: lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit, at most 253 characters",
            )
        ]
    return []
