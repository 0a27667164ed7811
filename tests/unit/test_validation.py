"""Offline admission: the examples pass, the corpus gets the verdict its header states.

The corpus (each file starts with `# expect: <field path>` or `# expect: valid`):

* tests/unit/invalid/: objects the API server rejects, naming that field (also read by test_cli.py);
* tests/unit/corpus/valid/: objects it accepts, often ones a naive reader would refuse;
* tests/unit/corpus/updates/: updates, NAME.yaml over the stored NAME.old.yaml (`--old`).

File names start with their area: regex-, yaml- (YAML read as kubectl reads it), kind-, meta-
(metadata), status-, ratchet- (updates of objects stored before a schema tightened); the others
(tj-, ma-, ed-, transition-) check the schema and CEL rules of one kind. tests/k8s/
test_crd_differential.py runs the same files through the real API server and compares.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from visioninapp.validation import ManifestError, apply_defaults, load_manifests, validate

HERE = Path(__file__).parent
CORPUS = sorted((HERE / "invalid").glob("*.yaml"))
VALID = sorted((HERE / "corpus" / "valid").glob("*.yaml"))
UPDATES = sorted(p for p in (HERE / "corpus" / "updates").glob("*.yaml") if not p.name.endswith(".old.yaml"))
AREAS = ("regex", "yaml", "kind", "meta", "status", "ratchet")


def _load(path: Path) -> dict[str, Any]:
    (obj,) = load_manifests(path.read_text())
    return obj  # type: ignore[no-any-return]


def _old(path: Path) -> Path:
    return path.with_name(f"{path.stem}.old.yaml")


def _expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <field path>'"
    return first.removeprefix("# expect: ").strip()


def _verdict(path: Path, old: Path | None = None) -> list[str]:
    """The fields `validate` names, or ["(document)"] when the file cannot be read as kubectl does."""
    try:
        obj = _load(path)
        old_obj = _load(old) if old is not None else None
    except ManifestError:
        return ["(document)"]
    return [e.path for e in validate(obj, old_obj)]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 25
    files = [*CORPUS, *VALID, *UPDATES]
    for area in AREAS:
        cases = [p.name for p in files if p.name.startswith(f"{area}-")]
        assert len(cases) >= 3, f"the {area} area has {len(cases)} cases: {cases}"


def test_corpus_headers_match_their_folder() -> None:
    assert all(_expected_field(p) != "valid" for p in CORPUS)
    assert all(_expected_field(p) == "valid" for p in VALID)
    assert all(_old(p).is_file() for p in UPDATES), "each update needs its NAME.old.yaml"
    olds = {p.name for p in (HERE / "corpus" / "updates").glob("*.old.yaml")}
    assert olds == {_old(p).name for p in UPDATES}, "an .old.yaml without its update"
    keys = [(obj["kind"], obj["metadata"]["name"]) for obj in map(_load, UPDATES)]
    assert len(set(keys)) == len(keys), "each update pair needs an object of its own (they share a namespace)"
    for path in UPDATES:
        new, old = _load(path), _load(_old(path))
        assert (new["kind"], new["metadata"]["name"]) == (old["kind"], old["metadata"]["name"]), path.name


def test_examples_are_valid(repo: Path) -> None:
    files = sorted((repo / "manifests" / "examples").rglob("*.yaml"))
    assert files
    for path in files:
        for doc in load_manifests(path.read_text()):
            assert validate(doc) == [], path


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_invalid_object_is_rejected_naming_the_field(path: Path) -> None:
    fields = _verdict(path)
    field = _expected_field(path)
    assert fields, f"{path.name} was accepted"
    assert field in fields, fields


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_object_is_accepted(path: Path) -> None:
    assert _verdict(path) == []


@pytest.mark.parametrize("path", UPDATES, ids=lambda p: p.stem)
def test_update_gets_its_verdict(path: Path) -> None:
    fields = _verdict(path, _old(path))
    field = _expected_field(path)
    if field == "valid":
        assert fields == []
    else:
        assert field in fields, fields


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10.0", 10),  # kubectl writes whole floats as JSON integers
        ("1e3", 1000),
        ("1.5e1", 15),
        ("9e-1", 0.9),
        ("0o17", 15),
        ("017", 15),
        ("08", 8),
        ("0x1F", 31),
        ("-0b11", -3),
        ("1_000", 1000),
        ("+5", 5),
        (".5", 0.5),
        ("1e20", 1e20),  # beyond int64: a float to the API server
        ("y", True),
        ("Off", False),
        ("~", None),
        ("2024-01-01", "2024-01-01"),
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"),
        ("1:30", "1:30"),
        ("'yes'", "yes"),
        ("!!str 10", "10"),
        ("!!float 2", 2),
        ("-x", "-x"),
    ],
)
def test_yaml_is_read_as_kubectl_reads_it(text: str, value: Any) -> None:
    (obj,) = load_manifests(f"kind: X\nv: {text}\n")
    assert obj["v"] == value and type(obj["v"]) is type(value), obj["v"]


def test_yaml_keys_become_strings_and_lists_are_flattened() -> None:
    text = "kind: List\nitems:\n- {on: a, 1.50: b, 2024-01-01: c, 1e7: d}\n---\n# only a comment\n"
    assert load_manifests(text) == [{"true": "a", "1.5": "b", "2024-01-01": "c", "1e+07": "d"}]


def test_yaml_without_a_json_form_is_refused() -> None:
    for text in ("v: .nan\n", "v: -.inf\n", "v: {~: x}\n"):
        with pytest.raises(ManifestError):
            load_manifests(text)


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


def test_unchanged_invalid_values_are_ratcheted_on_update(repo: Path) -> None:
    old = _load(repo / "manifests" / "examples" / "trainingjob-aks-gpu.yaml")
    old["spec"]["hyperparameters"]["optimizer"] = "Lion"  # stored before the schema refused it
    new = copy.deepcopy(old)
    new["spec"]["suspend"] = True
    assert [e.path for e in validate(new)] == ["spec.hyperparameters.optimizer"]
    assert validate(new, old=old) == []
    new["spec"]["hyperparameters"]["optimizer"] = "Lion2"
    assert [e.path for e in validate(new, old=old)] == ["spec.hyperparameters.optimizer"]


def test_objects_of_built_in_kinds_are_not_judged_but_unknown_kinds_are_refused() -> None:
    assert validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}) == []
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}}
    assert [e.path for e in validate(widget)] == ["kind"]
    deployment = {"apiVersion": "apps/v2", "kind": "Deployment", "metadata": {"name": "x"}}
    assert [e.path for e in validate(deployment)] == ["apiVersion"]


def test_patterns_are_matched_as_go_regexp_does() -> None:
    obj = _load(HERE / "invalid" / "regex-memory-trailing-newline.yaml")
    assert obj["spec"]["resources"]["memory"] == "16Gi\n"
    assert [e.path for e in validate(obj)] == ["spec.resources.memory"]
    obj["spec"]["resources"]["memory"] = "16Gi"
    assert validate(obj) == []


def test_errors_say_what_to_do() -> None:
    obj = _load(HERE / "invalid" / "tj-architecture-unsupported.yaml")
    (error,) = validate(obj)
    assert "yolov7" in error.message and "yolo11n" in error.message and "yolox-nano" in error.message
    assert str(error).startswith("TrainingJob/bad-tj: spec.model.architecture: ")


def test_camera_errors_say_what_to_do() -> None:
    """Each camera rule names the field and says the fix (the corpus checks the fields alone)."""
    said = {
        "ed-camera-two-sources": "set exactly one camera source",
        "ed-camera-no-source": "set exactly one camera source",
        "ed-camera-credentials-without-url": "credentialsSecret only applies to an RTSP url",
        "ed-camera-nodes-and-selector": "either by list (nodes) or by labels (nodeSelector)",
        "ed-camera-duplicate-names": "camera names must be unique",
    }
    for name, words in said.items():
        (error,) = validate(_load(HERE / "invalid" / f"{name}.yaml"))
        assert words in error.message, (name, error.message)
    (error,) = validate(_load(HERE / "invalid" / "ed-camera-credentials-in-url.yaml"))
    assert error.path == "spec.cameras[0].url"
