"""Offline admission in detail (visioninapp/validation.py): the exact messages of metadata key
errors, the length limits at their boundaries, and how CRD validation ratcheting correlates an
update with the stored object (depth, map keys, values whose type changed, the object root).

The corpus tests (test_validation.py) check which field an error names; these check what it says
and where a limit lies, one character either side.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from visioninapp.validation import FieldError, format_path, is_ours, validate

LABEL = "EdgeDeployment/d"
NAMING = (
    "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, "
    "at most 253 characters"
)


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "EdgeDeployment",
        "metadata": {"name": "d"},
        "spec": {"modelRef": "m", **spec},
    }


def with_metadata(**metadata: Any) -> dict[str, Any]:
    obj = deployment()
    obj["metadata"].update(metadata)
    return obj


# --- qualified names: label and annotation keys, finalizers --------------------------------------

PREFIX_253 = ".".join(["a" * 63] * 4)[:253]  # a DNS subdomain of exactly 253 characters
assert len(PREFIX_253) == 253 and not PREFIX_253.endswith(".")

QUALIFIED_NAME_PROBLEMS = [
    ("a/b/c", "a qualified name has at most one '/'"),
    ("/name", "the prefix part must be non-empty"),
    ("Example.com/name", "the prefix part must be a lowercase DNS subdomain, e.g. 'example.com'"),
    (PREFIX_253 + "a/name", "the prefix part must be a lowercase DNS subdomain, e.g. 'example.com'"),
    ("example.com/", "the name part must be non-empty"),
    ("x" * 64, "the name part must be no more than 63 characters"),
    ("example.com/" + "x" * 64, "the name part must be no more than 63 characters"),
    (
        "-x",
        "the name part must consist of alphanumeric characters, '-', '_' or '.', "
        "starting and ending with an alphanumeric character",
    ),
]


@pytest.mark.parametrize(("key", "problem"), QUALIFIED_NAME_PROBLEMS)
def test_a_bad_label_key_says_what_is_wrong(key: str, problem: str) -> None:
    assert validate(with_metadata(labels={key: "v"})) == [
        FieldError(LABEL, "metadata.labels", f"label key {key!r}: {problem}")
    ]


@pytest.mark.parametrize(("key", "problem"), QUALIFIED_NAME_PROBLEMS)
def test_a_bad_finalizer_says_what_is_wrong(key: str, problem: str) -> None:
    assert validate(with_metadata(finalizers=[key])) == [
        FieldError(LABEL, "metadata.finalizers", f"finalizer {key!r}: {problem}")
    ]


def test_an_annotation_key_is_judged_in_lowercase_and_says_what_is_wrong() -> None:
    assert validate(with_metadata(annotations={"Example.COM/Note": "x"})) == []
    problem = "a qualified name has at most one '/'"
    assert validate(with_metadata(annotations={"a/b/c": "x"})) == [
        FieldError(LABEL, "metadata.annotations", f"annotation key 'a/b/c': {problem}")
    ]


@pytest.mark.parametrize("key", [PREFIX_253 + "/name", "x" * 63, f"{PREFIX_253}/{'x' * 63}"])
def test_key_parts_at_their_length_limits_are_valid(key: str) -> None:
    assert validate(with_metadata(labels={key: "v"}, annotations={key: "v"}, finalizers=[key])) == []


def test_a_name_may_have_253_characters_and_not_254() -> None:
    assert validate(with_metadata(name=PREFIX_253)) == []
    longer = PREFIX_253 + "a"
    assert validate(with_metadata(name=longer)) == [
        FieldError(f"EdgeDeployment/{longer}", "metadata.name", f"{longer!r} is not a valid name: {NAMING}")
    ]


# --- ratcheting: which stored value an error is matched with ------------------------------------


def test_the_object_root_is_never_ratcheted() -> None:
    """Even an update identical to the stored object: the root always changes (its metadata)."""
    rootless = deployment()
    del rootless["spec"]
    assert validate(rootless, old=copy.deepcopy(rootless)) == [
        FieldError(LABEL, "spec", "required field missing: spec")
    ]


def test_an_error_one_level_down_is_ratcheted_when_that_level_is_unchanged() -> None:
    stored = deployment(nodeSelector={"zone": "a"})
    del stored["spec"]["modelRef"]  # stored before a model (modelRef or a line) was required
    relabelled = copy.deepcopy(stored)
    relabelled["metadata"]["labels"] = {"team": "vision"}
    assert validate(relabelled, old=stored) == []
    moved = copy.deepcopy(stored)
    moved["spec"]["nodeSelector"] = {"zone": "b"}
    missing = "set exactly one of modelRef (one ModelArtifact) or model (a line's stage to follow)"
    assert validate(moved, old=stored) == [FieldError(LABEL, "spec", missing)]


def test_a_value_under_a_field_whose_type_changed_is_not_ratcheted() -> None:
    """Stored when `strategy` was a number: nothing under the new object can match it."""
    stored = deployment(strategy=5)
    updated = deployment(strategy={"maxUnavailable": "0%"})
    assert [e.path for e in validate(updated, old=stored)] == ["spec.strategy.maxUnavailable"]


def test_a_map_key_the_stored_object_lacks_is_new() -> None:
    stored = deployment(nodeSelector={"zone": "a"})
    updated = deployment(nodeSelector={"zone": "a", "rack": "r" * 64})
    (error,) = validate(updated, old=stored)
    assert error.path == "spec.nodeSelector.rack" and error.message.startswith("has 64 characters")


def test_a_whole_float_is_not_the_stored_integer_it_equals() -> None:
    """Go's DeepEqual on decoded JSON: 70000 (int64) and 70000.0 (float64) differ, so changed."""
    stored = deployment(runtime={"port": 70000})  # stored before the maximum
    assert validate(copy.deepcopy(stored), old=stored) == []
    updated = deployment(runtime={"port": 70000.0})
    assert [e.path for e in validate(updated, old=stored)] == ["spec.runtime.port"]


# --- small public helpers -----------------------------------------------------------------------


def test_format_path_names_the_whole_object_when_the_path_is_empty() -> None:
    assert format_path([]) == "(object)"
    assert format_path(("spec", "strategy", "canary", "steps", 1)) == "spec.strategy.canary.steps[1]"


@pytest.mark.parametrize("thing", [None, "EdgeDeployment", ["EdgeDeployment"], 3])
def test_only_mappings_can_be_ours(thing: object) -> None:
    assert is_ours(thing) is False
    assert is_ours(deployment()) is True
