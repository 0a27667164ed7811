"""The generated CRDs: up to date, structural, bounded, and every rule compiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from visioninapp.crds import crd_for, crd_yaml
from visioninapp.resources import RESOURCES

ALLOWED_KEYS = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "default",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "pattern",
    "format",
    "multipleOf",
    "additionalProperties",
    "anyOf",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
}


def _nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        found += _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += _nodes(schema["additionalProperties"], f"{path}{{}}")
    for variant in schema.get("anyOf", []):
        found += _nodes(variant, f"{path}|")
    return found


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_crd_files_match_the_models(resource: Any, repo: Path) -> None:
    path = repo / "crds" / f"{resource.plural}.yaml"
    assert path.read_text() == crd_yaml(resource), "crds/ is stale: run `visioninapp crds generate`"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_schema_is_structural_and_bounded(resource: Any) -> None:
    crd = crd_for(resource)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema["properties"]["spec"], "spec") + _nodes(
        schema["properties"]["status"], "status"
    ):
        assert set(node) <= ALLOWED_KEYS, f"{path}: keys not allowed in a CRD: {set(node) - ALLOWED_KEYS}"
        if node.get("x-kubernetes-int-or-string") or path.endswith("|"):
            continue
        assert "type" in node, f"{path}: no type"
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node or node.get("format") == "date-time", (
                f"{path}: unbounded string"
            )
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: unbounded map"
        if path.count(".") >= 1 and not path.endswith(("[]", "}")):
            assert node.get("description"), f"{path}: no description"


def test_names_columns_and_categories() -> None:
    by_kind = {r.kind: crd_for(r) for r in RESOURCES}
    assert {k: c["spec"]["names"]["shortNames"] for k, c in by_kind.items()} == {
        "TrainingJob": ["tj"],
        "ModelArtifact": ["ma"],
        "EdgeDeployment": ["ed"],
        "RetrainPolicy": ["rp"],
    }
    for crd in by_kind.values():
        assert crd["spec"]["group"] == "visioninapp.io"
        assert crd["spec"]["names"]["categories"] == ["visioninapp"]
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in by_kind["TrainingJob"]["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert [c for c in columns if c != "Epochs"] == ["Phase", "Epoch", "mAP50-95", "Artifact", "Age"]


def test_every_status_has_generation_phase_and_conditions() -> None:
    for resource in RESOURCES:
        status = crd_for(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        props = status["properties"]
        assert {"observedGeneration", "phase", "conditions"} <= set(props)
        condition = props["conditions"]["items"]
        assert set(condition["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


def test_crd_files_are_valid_yaml_crds(repo: Path) -> None:
    for path in sorted((repo / "crds").glob("*s.yaml")):  # kustomization.yaml lists them
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition"
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.visioninapp.io"


def test_the_kustomize_component_lists_every_crd(repo: Path) -> None:
    """manifests/base (kubectl apply -k, GitOps) installs the CRDs through crds/kustomization.yaml."""
    listed = yaml.safe_load((repo / "crds" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(f"{resource.plural}.yaml" for resource in RESOURCES)
