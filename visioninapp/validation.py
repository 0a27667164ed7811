"""Offline admission for our custom resources: what `kubectl` 1.35 and a Kubernetes 1.35 API server
accept, decided in Python without contacting either.

`validate(new, old=None)` judges one object as the API server would judge the JSON kubectl sends it;
`load_manifests(text)` reads YAML into that JSON as kubectl does. The CLI (`visioninapp validate`),
the API and the Kubernetes API harness call them, so they accept the same objects. A request meets
these stages in order, and, as for kubectl and the API server, the first stage that fails decides:

1. Reading (`load_manifests`): kubectl reads YAML with sigs.k8s.io/yaml (go-yaml v2, YAML 1.1) and
   sends JSON. So `y`, `n`, `yes`, `no`, `on`, `off` are booleans; dates and timestamps stay strings;
   `1e3`, `0o17`, `0x1F`, `08` and `1_000` are numbers; `10.0` is sent as `10`; map keys become
   strings; `.nan` and `.inf` make the document unconvertible (field `(document)`).
2. Kind: kubectl maps apiVersion and kind to a served resource first: our kinds, or the built-in
   kinds of a Kubernetes 1.35 API server. A kind served nowhere (a typo, or the kind of a CRD that
   is not ours) fails on `kind`; a served kind at an apiVersion that does not serve it on
   `apiVersion`; a missing one on that field. Built-in kinds are not ours to judge: `validate`
   returns no errors for a ConfigMap.
3. Metadata types: kubectl decodes `metadata` as an ObjectMeta, so a label value that is a number
   (`version: 3`) is refused there, on the whole field (`metadata.labels`).
4. Strict field validation: kubectl's default `--validate=strict` sends `fieldValidation=Strict`, so
   unknown fields anywhere (metadata, spec, status) are errors and nothing else is checked; with
   `--validate=false` (Ignore) or Warn the API server would drop them instead.
5. Namespace: a namespace that is not a DNS label cannot exist (the API server answers NotFound).
6. Validation: metadata (name or generateName, labels, annotations, finalizers, owner references,
   by Kubernetes' own rules); the CRD's structural schema after nulls are pruned and defaults
   applied (integers may be written as whole floats; `pattern` is matched by RE2 as Go's regexp
   does, `$` being the end of the text); the CRD's CEL rules, all skipped by the API server after a
   wrong type, an enum value not allowed, a required field missing, a string too long or too many
   items. The status is dropped on create and kept from the stored object on update, so its values
   are never checked here. With `old` (an update), transition rules (`oldSelf`) are evaluated, and
   an error in a value that did not change is allowed (CRD validation ratcheting, on since
   Kubernetes 1.33): values are matched through object fields and map keys, and a list, atomic,
   as a whole.

Field paths are the API server's: `spec.hyperparameters.epochs`, `spec.strategy.canary.steps[1]`,
map keys after a dot (`spec.nodeSelector.gpu`), and label, annotation and finalizer errors on the
whole field (`metadata.labels`).
"""

from __future__ import annotations

import copy
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from visioninapp.cel import CelError, evaluate_rule, regex_matches
from visioninapp.crds import crd_for
from visioninapp.resources import API_VERSION, RESOURCES

__all__ = [
    "FieldError",
    "ManifestError",
    "apply_defaults",
    "format_path",
    "is_ours",
    "load_manifests",
    "manifest_files",
    "schema_for_kind",
    "validate",
]

# Kubernetes' name rules (k8s.io/apimachinery/pkg/util/validation), used with `fullmatch`: Go
# anchors them with `^...$`, where `$` is the end of the text.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_MAX_ANNOTATIONS_BYTES = 256 * 1024
_MAX_GENERATED_PREFIX = 58  # the API server appends 5 random characters to generateName
_MAX_ENUM_SHOWN = 12
_INT64 = (-(2**63), 2**63 - 1)
_MAX_JSON_INTEGER = 2**53 - 1  # whole floats up to this are integers to the API server

# ObjectMeta's JSON fields (metav1), and the Go types kubectl decodes them into.
_META_FIELDS: dict[str, str] = {
    "annotations": "map[string]string",
    "creationTimestamp": "Time",
    "deletionGracePeriodSeconds": "int64",
    "deletionTimestamp": "Time",
    "finalizers": "[]string",
    "generateName": "string",
    "generation": "int64",
    "labels": "map[string]string",
    "managedFields": "[]ManagedFieldsEntry",
    "name": "string",
    "namespace": "string",
    "ownerReferences": "[]OwnerReference",
    "resourceVersion": "string",
    "selfLink": "string",
    "uid": "string",
}
_OWNER_REFERENCE_TYPES = {
    "apiVersion": "string",
    "kind": "string",
    "name": "string",
    "uid": "string",
    "controller": "bool",
    "blockOwnerDeletion": "bool",
}
_META_ITEM_FIELDS = {
    "ownerReferences": set(_OWNER_REFERENCE_TYPES),
    "managedFields": {"manager", "operation", "apiVersion", "time", "fieldsType", "fieldsV1", "subresource"},
}


# The kinds a Kubernetes 1.35 API server serves with its default API groups (its discovery, less
# subresources): kubectl maps an object to one of them, or to a CRD's kind, before sending it.
_BUILTIN_KINDS: dict[str, frozenset[str]] = {
    version: frozenset(kinds.split())
    for version, kinds in {
        "v1": "Binding ComponentStatus ConfigMap Endpoints Event LimitRange Namespace Node PersistentVolume "
        "PersistentVolumeClaim Pod PodTemplate ReplicationController ResourceQuota Secret Service "
        "ServiceAccount",
        "admissionregistration.k8s.io/v1": "MutatingWebhookConfiguration ValidatingAdmissionPolicy "
        "ValidatingAdmissionPolicyBinding ValidatingWebhookConfiguration",
        "apiextensions.k8s.io/v1": "CustomResourceDefinition",
        "apiregistration.k8s.io/v1": "APIService",
        "apps/v1": "ControllerRevision DaemonSet Deployment ReplicaSet StatefulSet",
        "authentication.k8s.io/v1": "SelfSubjectReview TokenReview",
        "authorization.k8s.io/v1": "LocalSubjectAccessReview SelfSubjectAccessReview SelfSubjectRulesReview "
        "SubjectAccessReview",
        "autoscaling/v1": "HorizontalPodAutoscaler",
        "autoscaling/v2": "HorizontalPodAutoscaler",
        "batch/v1": "CronJob Job",
        "certificates.k8s.io/v1": "CertificateSigningRequest",
        "coordination.k8s.io/v1": "Lease",
        "discovery.k8s.io/v1": "EndpointSlice",
        "events.k8s.io/v1": "Event",
        "flowcontrol.apiserver.k8s.io/v1": "FlowSchema PriorityLevelConfiguration",
        "networking.k8s.io/v1": "IPAddress Ingress IngressClass NetworkPolicy ServiceCIDR",
        "node.k8s.io/v1": "RuntimeClass",
        "policy/v1": "PodDisruptionBudget",
        "rbac.authorization.k8s.io/v1": "ClusterRole ClusterRoleBinding Role RoleBinding",
        "resource.k8s.io/v1": "DeviceClass ResourceClaim ResourceClaimTemplate ResourceSlice",
        "scheduling.k8s.io/v1": "PriorityClass",
        "storage.k8s.io/v1": "CSIDriver CSINode CSIStorageCapacity StorageClass VolumeAttachment "
        "VolumeAttributesClass",
    }.items()
}
_SERVED_KINDS = frozenset().union(*_BUILTIN_KINDS.values())


@dataclass(frozen=True)
class FieldError:
    """One reason an object is rejected: which object, which field, what to do."""

    object: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.path}: {self.message}"


class ManifestError(ValueError):
    """A document kubectl could not turn into JSON (no field to name: `(document)`)."""


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    return {r.kind: crd_for(r)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for r in RESOURCES}


def schema_for_kind(kind: Any) -> dict[str, Any] | None:
    """The openAPIV3Schema of one of our kinds, or None for any other kind."""
    return _schemas().get(kind) if isinstance(kind, str) else None


def format_path(parts: list[str | int] | tuple[str | int, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(object)"


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "(not an object)"
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = metadata.get("name") or metadata.get("generateName") or "(unnamed)"
    name = name if isinstance(name, str) and name.isprintable() else repr(name)
    return f"{obj.get('kind') or '(no kind)'}/{name}"


def is_ours(obj: Any) -> bool:
    """Whether `obj` is one of our kinds at the served apiVersion (the objects `validate` judges)."""
    if not isinstance(obj, dict):
        return False
    return obj.get("apiVersion") == API_VERSION and schema_for_kind(obj.get("kind")) is not None


# --- reading YAML as kubectl does -------------------------------------------------------------
#
# sigs.k8s.io/yaml parses with go-yaml v2 into interface{} values, converts them to JSON-able values
# and calls json.Marshal; the API server decodes that JSON (integers as int64, other numbers as
# float64). `_go_scalar` is go-yaml v2's `resolve` for plain scalars; `_to_json` is the rest.

_GO_PLAIN_TAG = "tag:visioninapp.io,2025:go-yaml-plain"
_GO_WORDS: dict[str, Any] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), None),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
_GO_INT_FORMS = (
    (re.compile(r"0[bB]([01]+)"), 2),
    (re.compile(r"0[oO]([0-7]+)"), 8),
    (re.compile(r"0[xX]([0-9a-fA-F]+)"), 16),
    (re.compile(r"0([0-7]*)"), 8),  # a leading zero is octal in Go's base 0; "0" alone is zero
    (re.compile(r"([1-9][0-9]*)"), 10),
)
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_MAX_FLOAT32 = 3.4028234663852886e38
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")


def _go_base0(text: str) -> int | None:
    """strconv.ParseInt/ParseUint(text, 0, ...) without the range check; None if malformed."""
    for pattern, base in _GO_INT_FORMS:
        match = pattern.fullmatch(text)
        if match:
            return int(match.group(1) or "0", base)
    return None


def _go_scalar(text: str) -> Any:
    """The value go-yaml v2 gives an unquoted scalar decoded into interface{}."""
    if text in _GO_WORDS:
        return _GO_WORDS[text]
    if text[0] == ".":
        return float(text) if _DOT_FLOAT.fullmatch(text) else text
    if text[0] not in "+-0123456789":
        return text
    # A timestamp (2024-01-01, 2024-01-01T10:00:00Z) would be tried here; go-yaml hands it to an
    # interface{} as the original string, and no timestamp is also a number, so it stays a string.
    plain = text.replace("_", "")
    sign, digits = (plain[0], plain[1:]) if plain[0] in "+-" else ("", plain)
    magnitude = _go_base0(digits)
    if magnitude is not None:
        value = -magnitude if sign == "-" else magnitude
        if _INT64[0] <= value <= _INT64[1]:
            return value  # ParseInt
        if not sign and value < 2**64:
            return value  # ParseUint
    if _YAML_STYLE_FLOAT.fullmatch(plain):
        number = float(plain)
        if not math.isinf(number):  # ParseFloat reports a range error for overflows
            return number
    if magnitude is not None and not sign:
        return magnitude  # beyond 64 bits: go-yaml keeps a big.Int
    return text


def _go_float32_key(number: float) -> str:
    """strconv.FormatFloat(number, 'g', -1, 32): how sigs.k8s.io/yaml writes a float map key."""
    if math.isnan(number):
        return ".nan"
    if math.isinf(number) or abs(number) > _MAX_FLOAT32:  # +Inf once a float32
        return ".inf" if number > 0 else "-.inf"
    single = struct.unpack("f", struct.pack("f", number))[0]
    for precision in range(1, 10):
        text = f"{single:.{precision - 1}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            break
    mantissa, exponent_text = text.split("e")
    exponent = int(exponent_text)
    digits = mantissa.replace(".", "").lstrip("-").rstrip("0") or "0"
    negative = "-" if mantissa.startswith("-") else ""
    if exponent < -4 or exponent >= 6:
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{negative}{body}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if exponent >= 0:
        whole, fraction = digits[: exponent + 1].ljust(exponent + 1, "0"), digits[exponent + 1 :]
    else:
        whole, fraction = "0", "0" * (-exponent - 1) + digits
    return f"{negative}{whole}{'.' + fraction if fraction else ''}"


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return _go_float32_key(key)
    raise ManifestError(f"error converting YAML to JSON: unsupported map key {key!r}")


def _to_json(value: Any) -> Any:
    """The value the API server decodes from json.Marshal(value)."""
    if isinstance(value, dict):
        return {_json_key(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {_json_key(k): None for k in value}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else float(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ManifestError(f"error converting YAML to JSON: json: unsupported value: {value}")
        # Go writes floats below 1e21 without an exponent; a whole one then reads back as an int64.
        if value.is_integer() and abs(value) < 1e21 and _INT64[0] <= value <= _INT64[1]:
            return int(value)
        return value
    if isinstance(value, bytes):  # !!binary
        return value.decode("utf-8", "replace")
    return str(value)


class _KubectlLoader(yaml.SafeLoader):
    """PyYAML's parser with go-yaml v2's resolution of plain scalars."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            return "tag:yaml.org,2002:merge" if value == "<<" else _GO_PLAIN_TAG
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]


def _construct_plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return _go_scalar(loader.construct_scalar(node))  # type: ignore[arg-type]


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    # An explicit tag kubectl does not know (`!Ref x`, `!!timestamp ...`): the value as written.
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_KubectlLoader.add_constructor(_GO_PLAIN_TAG, _construct_plain)
_KubectlLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_any)
_KubectlLoader.add_constructor(None, _construct_any)


def load_manifests(text: str) -> list[Any]:
    """The objects in a YAML or JSON stream, as kubectl sends them: documents converted to JSON
    values (see the module docstring), empty documents skipped and lists (`items`) flattened.

    Raises `ManifestError` (a document that cannot be converted) or `yaml.YAMLError`."""
    objects: list[Any] = []
    for document in yaml.load_all(text, Loader=_KubectlLoader):  # a SafeLoader
        if document is None:
            continue
        value = _to_json(document)
        if isinstance(value, dict) and isinstance(value.get("items"), list):
            objects.extend(value["items"])  # kubectl creates the items of any list
        else:
            objects.append(value)
    return objects


def manifest_files(path: Path) -> list[Path]:
    """`path` itself, or the .yaml, .yml and .json files under a directory (as `kubectl -f DIR -R`)."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file())


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


# --- stage 2: kind ------------------------------------------------------------------------------


def _kind_errors(label: str, obj: dict[str, Any]) -> list[FieldError]:
    """kubectl's mapping of apiVersion and kind to a resource the API server serves (ours or built in)."""
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    errors = []
    if not api_version:
        errors.append(FieldError(label, "apiVersion", f"required, e.g. {API_VERSION!r}"))
    if not kind:
        errors.append(FieldError(label, "kind", "required: one of " + ", ".join(_schemas())))
    if errors or is_ours(obj) or kind in _BUILTIN_KINDS.get(str(api_version), ()):
        return errors
    if schema_for_kind(kind) is not None:
        return [
            FieldError(label, "apiVersion", f"{api_version!r} does not serve {kind}; use {API_VERSION!r}")
        ]
    if kind in _SERVED_KINDS:
        versions = sorted(v for v, kinds in _BUILTIN_KINDS.items() if kind in kinds)
        return [
            FieldError(
                label, "apiVersion", f"{api_version!r} does not serve {kind}; {', '.join(versions)} do"
            )
        ]
    return [
        FieldError(
            label,
            "kind",
            f"no kind {kind!r} is served (in {api_version!r} or elsewhere): use one of "
            f"{', '.join(_schemas())} ({API_VERSION}), or a built-in Kubernetes kind",
        )
    ]


# --- stage 3: metadata types, as kubectl decodes an ObjectMeta ------------------------------------


def _go_type_ok(go_type: str, value: Any) -> bool:
    if value is None:
        return True  # JSON null leaves a Go field at its zero value
    if go_type == "string":
        return isinstance(value, str)
    if go_type == "int64":
        return isinstance(value, int) and not isinstance(value, bool)
    if go_type == "Time":
        return isinstance(value, str) and bool(_RFC3339.fullmatch(value))
    if go_type == "map[string]string":
        return isinstance(value, dict) and all(v is None or isinstance(v, str) for v in value.values())
    if go_type == "[]string":
        return isinstance(value, list) and all(v is None or isinstance(v, str) for v in value)
    return isinstance(value, list) and all(v is None or isinstance(v, dict) for v in value)


def _metadata_type_error(label: str, metadata: Any) -> FieldError | None:
    """The first metadata field (in the JSON's key order, sorted) that is no ObjectMeta value."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return FieldError(label, "metadata", f"expected an object (ObjectMeta), got {metadata!r}")
    for key in sorted(metadata):
        go_type = _META_FIELDS.get(key)
        if go_type is not None and not _go_type_ok(go_type, metadata[key]):
            return FieldError(label, f"metadata.{key}", f"{metadata[key]!r} is not a {go_type}")
        if key == "ownerReferences":
            for reference in metadata[key] or []:
                for name in sorted(reference or {}):
                    value, go_type = reference[name], _OWNER_REFERENCE_TYPES.get(name, "")
                    if (
                        value is not None
                        and go_type
                        and not isinstance(value, bool if go_type == "bool" else str)
                    ):
                        return FieldError(label, f"metadata.{key}.{name}", f"{value!r} is not a {go_type}")
    return None


# --- stage 4: unknown fields (fieldValidation=Strict) -------------------------------------------


def _unknown_metadata_fields(metadata: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(metadata, dict):
        return
    for key, value in metadata.items():
        if key not in _META_FIELDS:
            yield (
                format_path(["metadata", key]),
                "unknown field; known fields here: " + ", ".join(_META_FIELDS),
            )
        elif key in _META_ITEM_FIELDS and isinstance(value, list):
            known = _META_ITEM_FIELDS[key]
            for index, item in enumerate(value):
                for name in item if isinstance(item, dict) else ():
                    if name not in known:
                        yield format_path(["metadata", key, index, name]), "unknown field"


def _unknown_fields(schema: dict[str, Any], value: Any, path: list[str | int]) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict) and "properties" in schema:
        for key, child in value.items():
            if key not in schema["properties"]:
                known = ", ".join(schema["properties"])
                yield format_path([*path, key]), f"unknown field; known fields here: {known}"
            elif path or key != "metadata":
                yield from _unknown_fields(schema["properties"][key], child, [*path, key])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, child in value.items():
            yield from _unknown_fields(schema["additionalProperties"], child, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _unknown_fields(schema["items"], item, [*path, index])


# --- stage 6: metadata validation (k8s.io/apimachinery ValidateObjectMeta) ------------------------


def _qualified_name_problem(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) > 2:
        return "a qualified name has at most one '/'"
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            return "the prefix part must be non-empty"
        if len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix):
            return "the prefix part must be a lowercase DNS subdomain, e.g. 'example.com'"
    short = parts[-1]
    if not short:
        return "the name part must be non-empty"
    if len(short) > 63:
        return "the name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.fullmatch(short):
        return (
            "the name part must consist of alphanumeric characters, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return None


def _subdomain_ok(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(name))


def _owner_reference_errors(label: str, references: list[Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    controllers = []
    for reference in references:
        reference = reference or {}
        api_version = reference.get("apiVersion") or ""
        version = api_version.split("/")[-1] if api_version.count("/") <= 1 else ""
        for field, missing in (
            ("apiVersion", not version),
            ("kind", not reference.get("kind")),
            ("name", not reference.get("name")),
            ("uid", not reference.get("uid")),
        ):
            if missing:
                errors.append(FieldError(label, f"metadata.ownerReferences.{field}", "must not be empty"))
        if api_version == "v1" and reference.get("kind") == "Event":
            errors.append(FieldError(label, "metadata.ownerReferences", "an Event cannot be an owner"))
        if reference.get("controller") is True:
            controllers.append(f"{reference.get('kind')}/{reference.get('name')}")
    if len(controllers) > 1:
        errors.append(
            FieldError(
                label, "metadata.ownerReferences", f"only one controller reference: {', '.join(controllers)}"
            )
        )
    return errors


def _metadata_errors(label: str, metadata: dict[str, Any]) -> tuple[list[FieldError], bool]:
    """ValidateObjectMeta's errors, and whether one of them (Required, TooLong) blocks CEL rules."""
    errors, name_blocks = _name_errors(label, metadata)
    errors.extend(_label_errors(label, metadata.get("labels") or {}))
    annotation_errors, annotations_block = _annotation_errors(label, metadata.get("annotations") or {})
    errors.extend(annotation_errors)
    for finalizer in metadata.get("finalizers") or []:
        problem = _qualified_name_problem(finalizer or "")
        if problem:
            errors.append(FieldError(label, "metadata.finalizers", f"finalizer {finalizer!r}: {problem}"))
    errors.extend(_owner_reference_errors(label, metadata.get("ownerReferences") or []))
    return errors, name_blocks or annotations_block


_NAMING = (
    "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, "
    "at most 253 characters"
)


def _name_errors(label: str, metadata: dict[str, Any]) -> tuple[list[FieldError], bool]:
    """The errors of metadata.name and metadata.generateName, and whether the name is missing."""
    errors: list[FieldError] = []
    name, generate = metadata.get("name") or "", metadata.get("generateName") or ""
    if generate:
        # The API server checks the prefix (a trailing '-' masked as Kubernetes does) and then the
        # name it generates: the prefix, cut to 58 characters, and 5 random lowercase alphanumerics.
        masked = generate[:-2] + "a" if len(generate) > 1 and generate.endswith("-") else generate
        if not _subdomain_ok(masked):
            errors.append(
                FieldError(label, "metadata.generateName", f"{generate!r} is not a valid prefix: {_NAMING}")
            )
        if not name and not _subdomain_ok(generate[:_MAX_GENERATED_PREFIX] + "xxxxx"):
            errors.append(
                FieldError(label, "metadata.name", f"names generated from {generate!r} are not valid")
            )
    if not name and not generate:
        errors.append(
            FieldError(label, "metadata.name", "required: set metadata.name (or metadata.generateName)")
        )
        return errors, True
    if name and not _subdomain_ok(name):
        errors.append(FieldError(label, "metadata.name", f"{name!r} is not a valid name: {_NAMING}"))
    return errors, False


def _label_errors(label: str, labels: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in labels.items():
        problem = _qualified_name_problem(key)
        if problem:
            errors.append(FieldError(label, "metadata.labels", f"label key {key!r}: {problem}"))
        if value and (len(value) > 63 or not _LABEL_VALUE.fullmatch(value)):
            errors.append(
                FieldError(
                    label,
                    "metadata.labels",
                    f"label value {value!r} (key {key!r}): at most 63 alphanumeric characters, '-', '_' "
                    "or '.', starting and ending with an alphanumeric character, or empty",
                )
            )
    return errors


def _annotation_errors(label: str, annotations: dict[str, Any]) -> tuple[list[FieldError], bool]:
    """The errors of the annotations' keys and total size, and whether they are too large (blocking)."""
    errors: list[FieldError] = []
    for key in annotations:
        problem = _qualified_name_problem(key.lower())
        if problem:
            errors.append(FieldError(label, "metadata.annotations", f"annotation key {key!r}: {problem}"))
    size = sum(len(k.encode()) + len((v or "").encode()) for k, v in annotations.items())
    if size > _MAX_ANNOTATIONS_BYTES:
        errors.append(
            FieldError(label, "metadata.annotations", f"{size} bytes: at most {_MAX_ANNOTATIONS_BYTES}")
        )
        return errors, True
    return errors, False


# --- stage 6: the structural schema, with ratcheting ---------------------------------------------


def _is_integer(checker: Any, instance: Any) -> bool:
    # The API server takes a whole float for an integer (kube-openapi's IsFloat64AJSONInteger).
    if isinstance(instance, bool):
        return False
    if isinstance(instance, int):
        return _INT64[0] <= instance <= _INT64[1]
    return isinstance(instance, float) and instance.is_integer() and abs(instance) <= _MAX_JSON_INTEGER


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not regex_matches(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_SchemaValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    validators={"pattern": _re2_pattern},
    type_checker=jsonschema.Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


# Schema keywords whose failures are Required, NotSupported, TypeInvalid, TooLong or TooMany errors.
_BLOCKING = frozenset({"type", "anyOf", "enum", "required", "maxLength", "maxItems", "maxProperties"})


def _same(new: Any, old: Any) -> bool:
    """Go's reflect.DeepEqual on decoded JSON: 1, 1.0 and true all differ."""
    if type(new) is not type(old):
        return False
    if isinstance(new, dict):
        return new.keys() == old.keys() and all(_same(new[k], old[k]) for k in new)
    if isinstance(new, list):
        return len(new) == len(old) and all(_same(a, b) for a, b in zip(new, old, strict=True))
    return bool(new == old)


def _ratcheted(new: Any, old: Any, node: list[str | int] | tuple[str | int, ...]) -> bool:
    """Whether an error raised at `node` is allowed on this update (CRD validation ratcheting).

    Old and new values are correlated through object fields and map keys (not through the items
    of atomic lists, which all our lists are); the error is allowed when the nearest correlated
    node at or above `node` did not change. The object root is never unchanged (its metadata is
    rewritten on every update)."""
    if old is None:
        return False
    correlated = 0
    for step in node:
        if isinstance(step, int) or not (isinstance(new, dict) and isinstance(old, dict)):
            break
        if step not in new or step not in old:
            break
        new, old, correlated = new[step], old[step], correlated + 1
    return correlated > 0 and _same(new, old)


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


def _schema_errors(
    schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None
) -> tuple[list[tuple[str, str]], bool]:
    """Schema errors (path, message) left after ratcheting, and whether one of them blocks the CEL
    rules: the API server skips them all after a wrong type, an unsupported (enum) value, a missing
    required field, a too long string or too many items (its `hasBlockingErr`)."""
    found: list[tuple[str, str]] = []
    blocking = False
    for error in sorted(
        _SchemaValidator(schema).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))
    ):
        node = list(error.absolute_path)
        if _ratcheted(obj, old, node):
            continue
        path = format_path(node)
        if error.validator == "required":
            missing = [n for n in error.validator_value if n not in (error.instance or {})]
            path = format_path([*node, missing[0]]) if missing else path
        blocking = blocking or error.validator in _BLOCKING
        found.append((path, _schema_message(error)))
    return found, blocking


# --- stage 6: CEL rules, with ratcheting ---------------------------------------------------------


def _cel_errors(
    schema: dict[str, Any], value: Any, old: Any, path: list[str | int], unchanged: bool
) -> Iterator[tuple[str, str]]:
    """Errors of the CEL rules at and below `path`. `old` is the correlated old value (None when
    there is none); `unchanged` whether the nearest correlated node at or above did not change."""
    here = format_path(path)
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue  # transition rules need a correlated old value
        try:
            ok = evaluate_rule(rule["rule"], value, old if transition else None)
        except CelError as error:
            ok, rule = False, {**rule, "message": f"{rule['message']} ({error})"}
        if not ok and (transition or not unchanged):
            yield (here + rule["fieldPath"] if rule.get("fieldPath") else here), rule["message"]
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        children = (
            ((key, schema["properties"][key]) for key in schema.get("properties", {}) if key in value)
            if "properties" in schema
            else ((key, extra) for key in value)
            if isinstance(extra, dict)
            else ()
        )
        for key, child_schema in children:
            child_old = old.get(key) if isinstance(old, dict) else None
            child_unchanged = _same(value[key], child_old) if child_old is not None else unchanged
            yield from _cel_errors(child_schema, value[key], child_old, [*path, key], child_unchanged)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        # Atomic lists: items are not correlated with the old list (no oldSelf; the list ratchets).
        for index, item in enumerate(value):
            yield from _cel_errors(schema["items"], item, None, [*path, index], unchanged)


# --- the whole admission -------------------------------------------------------------------------


def validate(new: dict[str, Any], old: dict[str, Any] | None = None) -> list[FieldError]:
    """Check one of our custom objects as kubectl and the API server would; empty means accepted.

    `old` is the stored object for an update: CEL transition rules (`oldSelf`) are checked and
    unchanged invalid values ratcheted then. Objects of built-in Kubernetes kinds are not ours to
    judge and yield no errors; a kind nobody serves is an error. The stages: see the module docstring.
    """
    label = _describe(new)
    if not isinstance(new, dict):
        return [FieldError(label, "(object)", "expected a mapping with apiVersion, kind and metadata")]
    errors = _kind_errors(label, new)
    if errors or not is_ours(new):
        return errors  # a built-in kind (ConfigMap, ...) is not ours to judge
    schema = _schemas()[new["kind"]]
    metadata_error = _metadata_type_error(label, new.get("metadata"))
    if metadata_error is not None:
        return [metadata_error]

    unknown = [*_unknown_metadata_fields(new.get("metadata")), *_unknown_fields(schema, new, [])]
    if unknown:
        return [FieldError(label, path, message) for path, message in unknown]

    metadata = _prune_nulls(new.get("metadata") or {})
    namespace = metadata.get("namespace")
    if namespace and (len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace)):
        return [
            FieldError(
                label,
                "metadata.namespace",
                f"{namespace!r} cannot exist: a namespace is a DNS label (lowercase letters, digits "
                "and '-', starting and ending with a letter or digit, at most 63 characters)",
            )
        ]

    metadata_errors, blocking = _metadata_errors(label, metadata)
    errors.extend(metadata_errors)
    obj = apply_defaults(new)
    obj.pop("status", None)  # dropped on create, kept from the stored object on update
    old_obj = apply_defaults(old) if isinstance(old, dict) else None
    if old_obj is not None:
        old_obj.pop("status", None)
    body_schema = {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "status"}}
    schema_errors, schema_blocking = _schema_errors(body_schema, obj, old_obj)
    errors.extend(FieldError(label, path, message) for path, message in schema_errors)
    spec = obj.get("spec")
    if isinstance(spec, dict) and not (blocking or schema_blocking):
        # The API server skips every CEL rule after a blocking error (see `_schema_errors`).
        old_spec = old_obj.get("spec") if old_obj else None
        unchanged = isinstance(old_spec, dict) and _same(spec, old_spec)
        for path, message in _cel_errors(schema["properties"]["spec"], spec, old_spec, ["spec"], unchanged):
            errors.append(FieldError(label, path, message))
    return errors
