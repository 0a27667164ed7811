"""Fast example-based tests of the ingest decisions (api/ingest.py, visioninapp/datasets.py).

The selection for mutation testing (tools/mutate.py, docs/mutation.md); the property-based tests in
test_ingest_hypothesis.py cover the same functions more broadly but too slowly to run per mutant.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from visioninapp.api.ingest import (
    MAX_EXPANSION,
    MAX_RATIO,
    RATIO_SLACK,
    _check_member,
    _wanted,
    expansion_limit,
)
from visioninapp.datasets import (
    MAX_CLASS_NAME,
    MAX_CLASSES,
    MAX_PATH,
    DatasetError,
    _class_name,
    _class_names,
    _label_problems,
    contained,
    label_of,
)

# --- api/ingest.py ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "wanted"),
    [
        ("data.yaml", True),
        ("ds/data.yaml", True),
        ("ds/images/a.JPG", True),
        ("ds/images/a.png", True),
        ("ds/labels/a.txt", True),
        ("ds/labels/a.TXT", True),
        ("ds/train.txt", True),
        ("ds/readme.md", False),
        ("ds/data.yml", False),
        ("ds/Data.yaml", False),
        ("__MACOSX/ds/images/a.jpg", False),
        ("ds/__MACOSX/a.txt", False),
        ("ds/images/._a.jpg", False),
        ("ds/images/x._a.jpg", True),
    ],
)
def test_only_dataset_files_are_taken_from_an_archive(name: str, wanted: bool) -> None:
    assert _wanted(PurePosixPath(name)) is wanted


def member(name: str = "a.txt", flags: int = 0, compression: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.flag_bits = flags
    info.compress_type = compression
    return info


def test_encrypted_and_unusually_compressed_members_are_refused() -> None:
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        _check_member(member(compression=compression))
    _check_member(member(flags=0x8))  # a data descriptor is fine
    with pytest.raises(DatasetError, match=r"'s\.txt' is encrypted"):
        _check_member(member("s.txt", flags=0x9))
    with pytest.raises(DatasetError, match=r"'p.txt' uses an unsupported compression method \(98\)"):
        _check_member(member("p.txt", compression=98))  # PPMd


def test_an_archive_unpacks_to_the_smaller_of_its_two_limits() -> None:
    assert (MAX_EXPANSION, MAX_RATIO, RATIO_SLACK) == (4, 8, 64 * 1024 * 1024)
    mib = 1024 * 1024
    assert expansion_limit(10 * mib, 1000 * mib) == 8 * 10 * mib + 64 * mib  # its own size bounds it
    assert expansion_limit(1000 * mib, 100 * mib) == 400 * mib  # the upload limit bounds it
    assert expansion_limit(0, 1) == 4


# --- visioninapp/datasets.py --------------------------------------------------------------------


def test_a_contained_path_resolves_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    assert contained(tmp_path, "images/a.jpg", "x") == tmp_path.resolve() / "images" / "a.jpg"
    assert contained(tmp_path, Path("labels"), "x") == tmp_path.resolve() / "labels"
    assert contained(tmp_path, ".", "x") == tmp_path.resolve()
    assert contained(tmp_path, "a" * MAX_PATH, "x").name == "a" * MAX_PATH


@pytest.mark.parametrize(
    ("relative", "problem"),
    [
        ("", "is empty or longer than 1024 characters"),
        ("a" * (MAX_PATH + 1), "is empty or longer than 1024 characters"),
        ("a\x00b", "has control characters or backslashes"),
        ("a\nb", "has control characters or backslashes"),
        ("a\\b", "has control characters or backslashes"),
        ("/etc/passwd", "leaves the dataset folder"),
        ("images/../../x", "leaves the dataset folder"),
        ("c:/x", "leaves the dataset folder"),
    ],
)
def test_paths_leaving_the_dataset_are_refused(tmp_path: Path, relative: str, problem: str) -> None:
    with pytest.raises(DatasetError) as caught:
        contained(tmp_path, relative, "data.yaml `train`")
    assert str(caught.value).startswith("data.yaml `train`: path ")
    assert problem in str(caught.value)


def test_a_symlink_out_of_the_dataset_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(DatasetError, match="leads outside the dataset folder"):
        contained(root, "link/x.jpg", "train")
    (root / "inner").mkdir()
    (root / "ok").symlink_to(root / "inner")
    assert contained(root, "ok/x.jpg", "train") == (root / "inner" / "x.jpg").resolve()


def test_a_label_lies_in_the_last_images_folder_swapped_for_labels() -> None:
    assert label_of(Path("ds/images/train/a.jpg")) == Path("ds/labels/train/a.txt")
    assert label_of(Path("images/ds/images/a.png")) == Path("images/ds/labels/a.txt")
    with pytest.raises(DatasetError, match=r"a\.jpg: images must be under an `images` folder"):
        label_of(Path("ds/pictures/a.jpg"))


def label(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "a.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", None),
        ("0 0.5 0.5 0.2 0.2\n\n1 0 1 1 1\n", None),
        ("2 0.5 0.5 0.2 0.2", "line 1: class id 2 out of range 0..1"),
        ("-1 0.5 0.5 0.2 0.2", "line 1: class id -1 out of range 0..1"),
        ("0 0.5 0.5 0.2", "line 1: expected `class cx cy w h`, got 4 values"),
        ("0 0.5 0.5 0.2 0.2 0.9", "line 1: expected `class cx cy w h`, got 6 values"),
        ("\n0 0.5 x 0.2 0.2", "line 2: not numbers: '0 0.5 x 0.2 0.2'"),
        ("0.5 0.5 0.5 0.2 0.2", "line 1: not numbers: '0.5 0.5 0.5 0.2 0.2'"),
        ("0 1.5 0.5 0.2 0.2", "line 1: box [1.5, 0.5, 0.2, 0.2] not normalised to 0..1"),
        ("0 0.5 -0.1 0.2 0.2", "line 1: box [0.5, -0.1, 0.2, 0.2] not normalised to 0..1"),
        ("0 0.5 0.5 0 0.2", "line 1: box [0.5, 0.5, 0.0, 0.2] not normalised to 0..1"),
        ("0 0.5 0.5 0.2 0", "line 1: box [0.5, 0.5, 0.2, 0.0] not normalised to 0..1"),
    ],
)
def test_label_lines_are_checked_one_by_one(tmp_path: Path, text: str, problem: str | None) -> None:
    assert _label_problems(label(tmp_path, text), 2) == problem


def test_an_unreadable_label_names_its_problem_without_the_prefix(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xff\xfe")
    assert _label_problems(path, 2) == "not UTF-8 text; save it as UTF-8"


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"names": ["helmet", " head "]}, ["helmet", "head"]),
        ({"names": {0: "helmet", 1: "head"}, "nc": 2}, ["helmet", "head"]),
        ({"names": {1: "head", 0: "helmet"}}, ["helmet", "head"]),
        ({"names": [0, 1.5]}, ["0", "1.5"]),
        ({"names": ["x" * MAX_CLASS_NAME]}, ["x" * MAX_CLASS_NAME]),
    ],
)
def test_class_names_in_id_order(data: dict[str, Any], names: list[str]) -> None:
    assert _class_names(data) == names


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({}, "`names` is missing"),
        ({"names": []}, "`names` is missing"),
        ({"names": {}}, "`names` is missing"),
        ({"names": "helmet"}, "`names` is missing"),
        ({"names": {0: "a", 2: "b"}}, "names must map the ids 0..nc-1 to class names"),
        ({"names": ["a", "b"], "nc": 3}, "nc is 3 but 2 names are listed"),
        ({"names": ["a"] * (MAX_CLASSES + 1)}, f"{MAX_CLASSES + 1} classes; at most {MAX_CLASSES}"),
        ({"names": {i: "a" for i in range(MAX_CLASSES + 1)}}, f"at most {MAX_CLASSES}"),
        ({"names": ["a", True]}, "class 1 must be a name (text), not bool"),
        ({"names": ["a", None]}, "class 1 must be a name (text), not NoneType"),
        ({"names": ["  "]}, "class 0 name must be 1 to 200 characters"),
        ({"names": ["x" * (MAX_CLASS_NAME + 1)]}, "class 0 name must be 1 to 200 characters"),
        ({"names": ["a\u200bb"]}, "class 0 name 'a\\u200bb' has control characters"),
        ({"names": ["a\u2028b"]}, "has control characters"),
        ({"names": ["a\u2029b"]}, "has control characters"),
        ({"names": ["a\x07b"]}, "has control characters"),
    ],
)
def test_bad_class_names_are_refused(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(DatasetError) as caught:
        _class_names(data)
    assert str(caught.value).startswith("data.yaml: ")
    assert problem in str(caught.value)


def test_the_maximum_number_of_classes_is_allowed() -> None:
    assert len(_class_names({"names": ["a"] * MAX_CLASSES})) == MAX_CLASSES
    assert _class_name(7, 0) == "7"


# --- whole messages, and how much of a user's text they quote (mutation kills) -------------------


def test_the_compression_refusal_says_how_to_zip_it() -> None:
    with pytest.raises(DatasetError) as caught:
        _check_member(member("p.txt", compression=98))
    assert str(caught.value).endswith(": zip the dataset with the standard deflate compression")


def test_path_refusals_say_what_to_do_and_quote_at_most_200_characters(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        contained(tmp_path, "/" + "a" * 300, "train")
    assert str(caught.value) == (
        f"train: path {'/' + 'a' * 199!r} leaves the dataset folder; use a path relative to data.yaml, "
        "inside the dataset (no leading /, no ..)"
    )
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "link").symlink_to(tmp_path)
    with pytest.raises(DatasetError) as caught:
        contained(tmp_path / "ds", "link/x", "train")
    assert str(caught.value) == (
        "train: path 'link/x' leads outside the dataset folder (through a symlink); "
        "put the files themselves in the dataset"
    )


def test_refusals_quote_a_bounded_part_of_the_users_text(tmp_path: Path) -> None:
    long_name = "\x07" + "n" * 100
    with pytest.raises(DatasetError) as caught:
        _class_names({"names": [long_name]})
    assert f"{long_name[:40]!r} has control characters" in str(caught.value)
    with pytest.raises(DatasetError) as caught:
        _class_names({"names": ["a"], "nc": "9" * 30})
    assert str(caught.value) == f"data.yaml: nc is {'9' * 20} but 1 names are listed"
    line = "0 " + "x" * 100 + " 0.5 0.5 0.5"
    assert _label_problems(label(tmp_path, line), 2) == f"line 1: not numbers: {line[:80]!r}"
