"""Offline admission: the examples pass, the invalid corpus fails naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from visioninapp.validation import apply_defaults, validate

HERE = Path(__file__).parent
CORPUS = sorted((HERE / "invalid").glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # type: ignore[no-any-return]


def _expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <field path>'"
    return first.removeprefix("# expect: ").strip()


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25


def test_examples_are_valid(repo: Path) -> None:
    files = sorted((repo / "manifests" / "examples").rglob("*.yaml"))
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert validate(doc) == [], path


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_invalid_object_is_rejected_naming_the_field(path: Path) -> None:
    errors = validate(_load(path))
    field = _expected_field(path)
    assert errors, f"{path.name} was accepted"
    assert any(e.path == field for e in errors), [str(e) for e in errors]


def test_defaults_are_applied_like_the_api_server() -> None:
    obj = {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "EdgeDeployment",
        "metadata": {"name": "d"},
        "spec": {"modelRef": "m", "strategy": {"canary": {}}},
    }
    defaulted = apply_defaults(obj)
    assert defaulted["spec"]["strategy"]["canary"]["steps"] == [10, 50, 100]
    assert defaulted["spec"]["runtime"]["port"] == 8080
    assert defaulted["spec"]["nodeSelector"] == {"visioninapp.io/edge": "true"}
    assert obj["spec"]["strategy"] == {"canary": {}}, "the input must not be modified"


def _artifact(repo: Path) -> dict[str, Any]:
    return _load(repo / "manifests" / "examples" / "modelartifact-imported.yaml")


def test_artifact_stage_may_change_but_nothing_else(repo: Path) -> None:
    old = _artifact(repo)
    promoted = copy.deepcopy(old)
    promoted["spec"]["stage"] = "production"
    assert validate(promoted, old=old) == []
    for change in (
        lambda s: s.update(version="v9"),
        lambda s: s["formats"][0].update(sha256="f" * 64),
        lambda s: s.update(classNames=["a", "b", "c"]),
        lambda s: s.pop("metrics"),
        lambda s: s["source"].update(trainingJob="other"),
    ):
        changed = copy.deepcopy(promoted)
        change(changed["spec"])
        errors = validate(changed, old=old)
        assert [e.path for e in errors] == ["spec"], errors
        assert "immutable" in errors[0].message


def test_training_job_model_is_immutable_but_epochs_may_change(repo: Path) -> None:
    old = _load(repo / "manifests" / "examples" / "trainingjob-aks-gpu.yaml")
    new = copy.deepcopy(old)
    new["spec"]["hyperparameters"]["epochs"] = 150
    new["spec"]["suspend"] = True
    assert validate(new, old=old) == []
    new["spec"]["model"] = {"architecture": "yolov8s"}
    assert [e.path for e in validate(new, old=old)] == ["spec.model"]
    # Without the old object, transition rules are not checked (a create).
    assert validate(new) == []


def test_objects_of_other_kinds_are_not_judged() -> None:
    assert validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}) == []


def test_errors_say_what_to_do() -> None:
    obj = _load(HERE / "invalid" / "tj-architecture-unsupported.yaml")
    (error,) = validate(obj)
    assert "yolo11n" in error.message and "yolox-s" in error.message
    assert str(error).startswith("TrainingJob/bad-tj: spec.model.architecture: ")
