"""Building blocks shared by the three resources: the model base class, CEL rules, common types.

Every constraint is declared once, on the pydantic model. The CRD generator turns the models into
OpenAPI schemas, and the CEL rules attached here become `x-kubernetes-validations`. The models also
evaluate their own (non-transition) CEL rules, so the API and the CLI reject the same objects a
cluster would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from pydantic_core import core_schema as cs

from visioninapp.cel import evaluate_rule

__all__ = [
    "ADMITTED",
    "DATASET_URI_RULE",
    "DNS_LABEL_PATTERN",
    "STORAGE_URI_RULE",
    "CelRule",
    "Condition",
    "ConditionStatus",
    "DatasetUri",
    "DnsLabel",
    "DnsSubdomain",
    "KubeModel",
    "Quantity",
    "StorageUri",
    "Toleration",
]

GROUP = "visioninapp.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


# `Model.model_validate(obj, context=ADMITTED)` skips CEL rules: for objects read from the API server.
ADMITTED_KEY = "admitted-by-api-server"
ADMITTED = {ADMITTED_KEY: True}


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry.

    `rule` is CEL over `self` (and `oldSelf` for transition rules). `field_path` points the error at
    a child field, as Kubernetes' `fieldPath` does.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    @property
    def is_transition(self) -> bool:
        return "oldSelf" in self.rule

    def to_schema(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        if self.reason:
            entry["reason"] = self.reason
        return entry

    # Used as an `Annotated` marker on a field: adds the rule to the field's schema and checks it.
    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.setdefault("x-kubernetes-validations", []).append(self.to_schema())
        return schema

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> CoreSchema:
        schema: CoreSchema = handler(source)
        if self.is_transition:
            return schema
        return cs.with_info_after_validator_function(self._check, schema)

    def _check(self, value: Any, info: ValidationInfo) -> Any:
        if (info.context or {}).get(ADMITTED_KEY):
            return value
        plain = (
            value.model_dump(mode="json", by_alias=True, exclude_none=True)
            if isinstance(value, BaseModel)
            else value
        )
        if not evaluate_rule(self.rule, plain):
            raise ValueError(self.message)
        return value


class KubeModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, unknown fields rejected.

    Subclasses list their object-level CEL rules in `cel_rules`; they end up in the CRD and are
    checked on validation (transition rules only by `visioninapp.validation.validate` with an old
    object).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=True,
    )
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.cel_rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [rule.to_schema() for rule in cls.cel_rules]
        return schema

    @model_validator(mode="after")
    def _check_cel_rules(self, info: ValidationInfo) -> KubeModel:
        if not self.cel_rules or (info.context or {}).get(ADMITTED_KEY):
            return self  # an object read back from the API server passed these rules there
        wire = self.wire()
        broken = [
            r.message for r in self.cel_rules if not r.is_transition and not evaluate_rule(r.rule, wire)
        ]
        if broken:
            raise ValueError("; ".join(broken))
        return self

    def wire(self) -> dict[str, Any]:
        """The object as it is stored in Kubernetes: camelCase keys, absent instead of null."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- common field types -------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
"""A Kubernetes DNS-1123 label: lowercase letters, digits and '-', at most 63 characters."""

DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
"""A Kubernetes object name (DNS-1123 subdomain)."""

STORAGE_URI_RULE = CelRule(
    rule=("self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$') || self.matches('^file:///.*$')"),
    message=(
        "must be a storage URI: s3://<bucket>/<key> (bucket: 3-63 lowercase letters, digits, dots "
        "or hyphens) in a cluster, or file:///<absolute path> in local mode"
    ),
    reason="FieldValueInvalid",
)
StorageUri = Annotated[str, Field(min_length=6, max_length=1024), STORAGE_URI_RULE]
"""`s3://bucket/key` in a cluster, `file:///path` in local mode (one URI type, checked by scheme)."""

STORE_KEY_PATTERN = r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*/?$"
DATASET_URI_RULE = CelRule(
    rule=(
        "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$') || self.matches('^file:///.*$') "
        f"|| self.matches('{STORE_KEY_PATTERN}')"
    ),
    message=(
        "must be s3://<bucket>/<key>, file:///<absolute path>, or a key relative to the platform's "
        "artifact store such as datasets/shapes/v1 (lowercase letters, digits, '.', '_', '-' and '/')"
    ),
    reason="FieldValueInvalid",
)
DatasetUri = Annotated[str, Field(min_length=1, max_length=1024), DATASET_URI_RULE]
"""A StorageUri, or a key relative to the operator's artifact store (`VISIONINAPP_ARTIFACTS_URI`):
the same manifest then works in local mode and on any cluster whose store holds that key."""

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"
Quantity = Annotated[str, Field(max_length=32, pattern=QUANTITY_PATTERN)]
"""A Kubernetes resource quantity such as `500m`, `4`, `16Gi`."""

SHA256_PATTERN = r"^[a-f0-9]{64}$"
Sha256 = Annotated[str, Field(min_length=64, max_length=64, pattern=SHA256_PATTERN)]

LabelKey = Annotated[str, Field(min_length=1, max_length=317)]
LabelValue = Annotated[str, Field(max_length=63)]
NodeSelector = Annotated[dict[LabelKey, LabelValue], Field(max_length=16)]


class Toleration(KubeModel):
    """A pod toleration, as in the core Pod spec (for GPU, spot and edge node taints)."""

    key: str | None = Field(None, max_length=317, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="`Exists` or `Equal`.")
    value: str | None = Field(None, max_length=63, description="Taint value for `Equal`.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="How long a `NoExecute` taint is tolerated before eviction."
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, e.g. `Succeeded` or `Verified`.")
    status: ConditionStatus = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition, searchable.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="The `.metadata.generation` the condition was set for."
    )


_SAFE_NAME = re.compile(r"[^a-z0-9-]+")


def to_dns_label(text: str, max_length: int = 63) -> str:
    """Turn free text into a DNS-1123 label (for derived object names)."""
    label = _SAFE_NAME.sub("-", text.lower()).strip("-")[:max_length].rstrip("-")
    return label or "x"
