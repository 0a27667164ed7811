"""Generate the CustomResourceDefinitions in `crds/` from the typed models.

Pydantic writes JSON Schema (2020-12); Kubernetes wants a structural OpenAPI v3.0 subset: no `$ref`,
no `anyOf` with null for optional fields, boolean `exclusiveMinimum`, no `additionalProperties:
false`, no `title`, a `type` everywhere. `structural_schema` does that translation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from visioninapp.cel import compile_rule
from visioninapp.resources import GROUP, RESOURCES, VERSION, ResourceKind

__all__ = ["crd_for", "crd_yaml", "structural_schema", "write_crds"]

CATEGORY = "visioninapp"
# `x-families` groups the architectures for the console (OpenAPI only; a CRD allows no such keyword).
_DROPPED_KEYS = {
    "title",
    "examples",
    "additionalProperties",
    "$defs",
    "discriminator",
    "propertyNames",
    "x-families",
}


class _KubeJsonSchema(GenerateJsonSchema):
    """Pydantic's generator, plus the defaults of `default_factory` fields (Kubernetes applies them)."""

    def default_schema(self, schema: Any) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().default_schema(schema)
        json_schema = self.generate_inner(schema["schema"])
        json_schema["default"] = _wire(factory())
        return json_schema


def _wire(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list):
        return [_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    return value


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target = dict(defs[schema["$ref"].rsplit("/", 1)[-1]])
        target.update({k: v for k, v in schema.items() if k != "$ref"})
        return _resolve(target, defs)
    return schema


def structural_schema(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Translate one pydantic JSON schema node into a Kubernetes structural schema node."""
    defs = defs if defs is not None else schema.get("$defs", {})
    schema = _resolve(schema, defs)
    if schema.get("anyOf") is not None:
        return _union_schema(schema, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        out.update(_keyword(key, value, schema, defs))
    _complete(schema, out, defs)
    return out


def _union_schema(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """An `anyOf` node: an optional value (one variant besides null), or an int-or-string."""
    variants = schema["anyOf"]
    non_null = [_resolve(v, defs) for v in variants if v.get("type") != "null"]
    outer = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(non_null) == 1:
        return structural_schema({**non_null[0], **outer}, defs)
    if {v.get("type") for v in non_null} != {"integer", "string"}:
        raise ValueError(f"cannot express this union in a structural schema: {variants}")
    # The one union a structural schema allows is exactly `anyOf: [{type: integer}, {type:
    # string}]`; each variant's bounds move up beside it, where JSON Schema applies numeric
    # keywords to numbers only and string keywords to strings only.
    out: dict[str, Any] = {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }
    for variant in non_null:
        bounds = structural_schema(variant, defs)
        out.update({k: v for k, v in bounds.items() if k != "type"})
    for key in ("description", "default"):
        if key in outer:
            out[key] = outer[key]
    return out


def _keyword(key: str, value: Any, schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """What one keyword of a pydantic schema node becomes in the structural node (`{}`: dropped)."""
    if key in _DROPPED_KEYS or key == "$ref":
        return {}
    if key == "properties":
        return {"properties": {name: structural_schema(prop, defs) for name, prop in value.items()}}
    if key == "items":
        return {"items": structural_schema(value, defs)}
    if key in ("exclusiveMinimum", "exclusiveMaximum"):
        return {"minimum" if key == "exclusiveMinimum" else "maximum": value, key: True}
    if key == "const":
        return {"enum": [value]}
    if key == "maxLength" and schema.get("type") == "object":
        return {"maxProperties": value}
    if (key == "format" and value != "date-time") or (key == "default" and value is None):
        return {}
    return {key: value}


def _complete(schema: dict[str, Any], out: dict[str, Any], defs: dict[str, Any]) -> None:
    """What a structural node needs beyond its keywords: a type for enums, the schema of a map's
    values, no `maxLength` on objects, and defaults as Kubernetes applies them."""
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if schema.get("type") == "object" and "additionalProperties" in schema and "properties" not in schema:
        extra = schema["additionalProperties"]
        out["additionalProperties"] = structural_schema(extra, defs) if isinstance(extra, dict) else {}
    if "maxLength" in schema and schema.get("type") == "object":
        out.pop("maxLength", None)
    if (
        out.get("type") == "object"
        and isinstance(out.get("default"), dict)
        and "properties" in out
        and "x-kubernetes-validations" not in out
    ):
        # Kubernetes applies nested defaults inside an empty object: `{}` is enough and stays in sync.
        # Not under CEL rules: the API server checks a default against them before nested defaults.
        out["default"] = {}
    if out.get("default") in ([], {}) and out.get("type") in ("array", "object") and "properties" not in out:
        out.pop("default")  # an empty list or map is the same as an absent one


def _model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(  # type: ignore[attr-defined]
        by_alias=True, mode="validation", schema_generator=_KubeJsonSchema
    )
    return structural_schema(raw)


def crd_for(resource: ResourceKind) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource kind."""
    spec_schema = _model_schema(resource.spec_model)
    status_schema = _model_schema(resource.status_model)
    status_schema.pop("required", None)
    _check_rules(spec_schema)
    schema = {
        "type": "object",
        "description": resource.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in resource.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": resource.crd_name, "labels": {"app.kubernetes.io/part-of": "visioninapp"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _check_rules(schema: dict[str, Any]) -> None:
    """Compile every CEL rule, so a broken rule fails generation, not a user's `kubectl apply`."""
    for rule in schema.get("x-kubernetes-validations", []):
        compile_rule(rule["rule"])
    for child in schema.get("properties", {}).values():
        _check_rules(child)
    if "items" in schema:
        _check_rules(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        _check_rules(schema["additionalProperties"])


def crd_yaml(resource: ResourceKind) -> str:
    header = "# Generated by `visioninapp crds generate` from visioninapp/resources. Do not edit.\n"
    return header + yaml.safe_dump(crd_for(resource), sort_keys=False, width=100)


def write_crds(directory: Path) -> list[Path]:
    """Write one YAML file per resource into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for resource in RESOURCES:
        path = directory / f"{resource.plural}.yaml"
        path.write_text(crd_yaml(resource))
        written.append(path)
    return written
