"""Zip-slip: an archive entry whose name leads out of the unpack folder is refused by the project's
own containment check (not by zipfile, which `extract_archive` does not use to pick paths), and
nothing is written outside the folder — each hostile name on its own, next to a valid dataset."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from visioninapp.api.ingest import extract_archive
from visioninapp.datasets import DatasetError


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


DATASET = {
    "dataset/data.yaml": b"train: images/train\nval: images/val\nnames: [a]\n",
    "dataset/images/train/a.jpg": _jpeg(),
    "dataset/labels/train/a.txt": b"0 0.5 0.5 0.2 0.2\n",
    "dataset/images/val/b.jpg": _jpeg(),
}


def hostile_names(outside: Path) -> dict[str, str]:
    """Entry names that leave `work/source` (the unpack folder) for `outside` = its grandparent."""
    return {
        "parent": "../../escaped.jpg",
        "parent inside a folder": "dataset/../../../escaped.txt",
        "parent deep in the tree": "dataset/images/train/../../../../../escaped.jpg",
        "absolute": f"{outside}/escaped.jpg",
        "backslashes": "..\\..\\escaped.jpg",
        "drive letter": "C:/escaped.jpg",
    }


def archive_with(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "work" / "upload.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(name, b"0 0.5 0.5 0.1 0.1\n" if name.endswith(".txt") else _jpeg())
        for entry, data in DATASET.items():
            bundle.writestr(entry, data)
    return path


def test_a_valid_archive_unpacks(tmp_path: Path) -> None:
    root = extract_archive(
        archive_with(tmp_path, "dataset/images/train/c.jpg"), tmp_path / "work" / "source", 1 << 20
    )
    assert root == (tmp_path / "work" / "source" / "dataset").resolve()
    assert (root / "images" / "train" / "c.jpg").is_file()


@pytest.mark.parametrize("label", list(hostile_names(Path("/x"))))
def test_an_entry_leaving_the_folder_is_refused_and_nothing_escapes(tmp_path: Path, label: str) -> None:
    name = hostile_names(tmp_path)[label]
    archive = archive_with(tmp_path, name)
    with pytest.raises(DatasetError, match=r"leaves the dataset folder|backslashes") as refused:
        extract_archive(archive, tmp_path / "work" / "source", 1 << 20)
    assert "archive entry" in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"], label  # nothing beside work/
    written = [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
    assert written == [archive], label  # refused before anything was unpacked
