"""Random zip archives through the API's ingest (unpack, validate, normalise): the outcome is a
dataset or a DatasetError, never another exception, and nothing is ever written outside the work root."""

from __future__ import annotations

import io
import stat
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from visioninapp.api.ingest import extract_archive, ingest_directory
from visioninapp.datasets import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name")


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg()
PARTS = ["dataset", "images", "labels", "train", "val", "..", ".", "", "/", "C:", "\\x", "a\x00", "__MACOSX"]
LEAVES = ["data.yaml", "a.jpg", "a.txt", "b.png", "list.txt", "x.bin", "a.jpg/b.jpg"]
YAMLS = [
    b"train: images/train\nval: images/val\nnames: [a]\n",
    b"train: ../../etc\nval: images/val\nnames: [a]\n",
    b"train: /etc\nval: /tmp\nnames: [a]\n",
    b"train: list.txt\nval: list.txt\nnames: {0: a}\n",
    b"a: &a [1]\ntrain: *a\nval: images/val\nnames: [*a]\n",
    b"\xff\xfe",
    b'train: [images/train]\nval: images/val\nnames: ["\\x07"]\n',
]
CONTENTS = [
    JPEG,
    b"0 0.5 0.5 0.1 0.1\n",
    b"../../../../etc/passwd\n/etc/hostname\nimages/train/a.jpg\n",
    b"",
    b"\xff\x00",
]


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for _ in range(draw(st.integers(1, 12))):
            folders = draw(st.lists(st.sampled_from(PARTS), max_size=4))
            leaf = draw(st.sampled_from(LEAVES))
            info = zipfile.ZipInfo("/".join([*folders, leaf]))
            info.compress_type = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
            if draw(st.booleans()) and draw(st.booleans()):
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            data = draw(st.sampled_from(YAMLS)) if leaf == "data.yaml" else draw(st.sampled_from(CONTENTS))
            bundle.writestr(info, data)
        if draw(st.booleans()):  # a plausible dataset next to the noise
            bundle.writestr("ds/data.yaml", draw(st.sampled_from(YAMLS)))
            bundle.writestr("ds/images/train/t.jpg", JPEG)
            bundle.writestr("ds/images/val/v.jpg", JPEG[:-2] + b"\x00\x00")
            bundle.writestr("ds/labels/train/t.txt", draw(st.sampled_from(CONTENTS)))
    raw = buffer.getvalue()
    if draw(st.booleans()):  # flip a byte somewhere
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archives())
def test_random_archives_never_escape_and_never_crash(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "work"
        root.mkdir()
        (root / "upload.zip").write_bytes(data)
        try:
            source = extract_archive(root / "upload.zip", root / "source", 1024 * 1024)
            ingest_directory(source, root / "normalised")
        except DatasetError:
            pass
        assert sorted(p.name for p in base.iterdir()) == ["work"]  # nothing beside the root
        for path in root.rglob("*"):
            assert not path.is_symlink(), path
            assert path.resolve().is_relative_to(root.resolve()), path
