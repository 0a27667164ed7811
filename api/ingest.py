"""Dataset ingest: unpack safely, validate a YOLO dataset, normalise it, publish an immutable version.

Validation is the trainer's own (`visioninapp.datasets.validate_dataset`: image/label pairs, class
ids, boxes in range, every path contained in the dataset), so what the API accepts trains.
Preprocessing: EXIF orientation applied to the pixels (OpenCV's reader does it; YOLO labels describe
the image as displayed), images larger than `max_side` scaled down (labels are normalised, so they
stay valid), exact duplicates (same decoded pixels) removed with their labels.

Nothing of a refused or crashed upload becomes part of a version:

- the archive is unpacked into a work folder under `<data_dir>/ingest/` (`workspaces`), locked while its
  upload runs; the next upload removes folders whose lock is free (their process died);
- only the entries a dataset uses (data.yaml, images, label and list .txt files) are unpacked, and
  the bytes actually written are counted against `expansion_limit` (4x the upload limit, and 8x
  the archive's own size + 64 MiB);
- every version goes to a prefix of its own (`v<n>-<time>-<random>`), its files first and
  `manifest.json` last; the database row is written after the manifest, so a prefix without a row
  is never shown, never trained on (the trainer downloads exactly the manifest's files), and is
  deleted by a later upload of the same dataset once older than `STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import stat
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image

from visioninapp.backends.storage import ArtifactStore, join_uri, sha256_file
from visioninapp.datasets import (
    IMAGE_SUFFIXES,
    MANIFEST,
    DatasetError,
    contained,
    label_of,
    read_text_file,
    split_images,
    validate_dataset,
)
from visioninapp.images import ImageError, read_image

__all__ = [
    "DatasetError",
    "Ingested",
    "TooLarge",
    "discard_version",
    "expansion_limit",
    "extract_archive",
    "ingest_directory",
    "manifest_of",
    "new_version_uri",
    "sweep_versions",
    "upload_version",
]

log = logging.getLogger(__name__)
MAX_ARCHIVE_MEMBERS = 200_000
MAX_EXPANSION = 4  # an archive may unpack to 4x the upload limit (images barely compress; labels do)
MAX_RATIO = 8  # ... and to 8x its own size plus 64 MiB: a dataset zip is mostly JPEG/PNG (ratio ~1)
RATIO_SLACK = 64 * 1024 * 1024
CHUNK = 1024 * 1024
EXIF_ORIENTATION = 274
STALE_AFTER_S = 3600.0  # an unrecorded version prefix older than this is a dead upload's leftover
SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
VERSION_DIR = re.compile(r"^v(\d+)-(\d{8}T\d{6})-[0-9a-f]{8}$")
SAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")


class TooLarge(DatasetError):
    """The upload is over a size limit (HTTP 413)."""


@dataclass
class Ingested:
    root: Path
    class_names: list[str]
    class_counts: dict[str, int]
    images: dict[str, int]
    preprocessing: dict[str, Any] = field(default_factory=dict)


# Archives ----------------------------------------------------------------------------------------


def _wanted(path: PurePosixPath) -> bool:
    """Entries a dataset uses: data.yaml, images, and .txt files (labels, image lists)."""
    if "__MACOSX" in path.parts or path.name.startswith("._"):
        return False
    return path.name == "data.yaml" or path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == ".txt"


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if info.flag_bits & 0x1:
        raise DatasetError(f"archive entry {name!r} is encrypted: zip the dataset without a password")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise DatasetError(
            f"archive entry {name!r} uses an unsupported compression method ({info.compress_type}): "
            "zip the dataset with the standard deflate compression"
        )


def expansion_limit(archive_bytes: int, upload_limit_bytes: int) -> int:
    """How many bytes an archive may unpack to: bounded by the upload limit and by its own size."""
    return min(MAX_EXPANSION * upload_limit_bytes, MAX_RATIO * archive_bytes + RATIO_SLACK)


def extract_archive(archive: Path, target: Path, max_bytes: int) -> Path:
    """Unpack the dataset entries of a zip into `target`; returns the dataset root (data.yaml's folder).

    Refused (DatasetError; TooLarge for sizes): entries outside `target`, links, encrypted entries,
    unknown compression, a name that is both a file and a folder, and more than `max_bytes` actually
    written. Entries a dataset does not use are not unpacked.
    """
    target.mkdir(parents=True, exist_ok=True)
    with _archive_errors(), zipfile.ZipFile(archive) as bundle:
        _unpack(bundle, _dataset_members(bundle, target), target, max_bytes)
    candidates = sorted(p.parent for p in target.rglob("data.yaml") if p.is_file())
    if not candidates:
        raise DatasetError("no data.yaml in the archive: YOLO datasets name their classes and splits there")
    return min(candidates, key=lambda p: len(p.parts))


@contextlib.contextmanager
def _archive_errors() -> Iterator[None]:
    """Whatever a broken archive raises, as a DatasetError that says what to do."""
    try:
        yield
    except DatasetError:
        raise
    except (zipfile.BadZipFile, EOFError, UnicodeDecodeError):
        raise DatasetError(
            "not a zip archive, or a damaged one: upload the dataset folder zipped (data.yaml at its top)"
        ) from None
    except (NotImplementedError, RuntimeError, ValueError, OSError) as error:
        raise DatasetError(
            f"archive cannot be unpacked ({str(error)[:200]}): zip it again with deflate"
        ) from None
    except Exception as error:  # zlib.error, lzma.LZMAError: a corrupt compressed stream
        raise DatasetError(f"archive is damaged ({type(error).__name__}): zip the dataset again") from None


def _dataset_members(bundle: zipfile.ZipFile, target: Path) -> dict[PurePosixPath, zipfile.ZipInfo]:
    """The entries to unpack, by path; refuses the archive for any entry that is not safe to unpack."""
    members = bundle.infolist()
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise DatasetError(f"archive has {len(members)} entries; at most {MAX_ARCHIVE_MEMBERS}")
    chosen: dict[PurePosixPath, zipfile.ZipInfo] = {}
    folders: set[PurePosixPath] = set()
    for info in members:
        path = _member_path(info, target)
        if path is None:
            continue
        if path in chosen:
            raise DatasetError(f"archive has two entries named {info.filename!r}; keep one")
        chosen[path] = info
        folders.update(path.parents)
    clash = sorted(str(p) for p in chosen if p in folders)
    if clash:
        raise DatasetError(f"archive entry {clash[0]!r} is both a file and a folder; rename one of them")
    return chosen


def _member_path(info: zipfile.ZipInfo, target: Path) -> PurePosixPath | None:
    """The path of an entry to unpack, None for one a dataset does not use (never unpacked)."""
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(
            f"archive entry {info.filename!r} is a symbolic link: zip the files themselves (zip without -y)"
        )
    path = PurePosixPath(info.filename)
    if info.is_dir() or not _wanted(path):
        return None
    _check_member(info)
    contained(target, info.filename, "archive entry")
    return path


def _unpack(
    bundle: zipfile.ZipFile, chosen: dict[PurePosixPath, zipfile.ZipInfo], target: Path, max_bytes: int
) -> None:
    """Write the entries, counting the bytes actually written (declared sizes may lie)."""
    written = 0
    for path, info in chosen.items():
        destination = contained(target, str(path), "archive entry")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with bundle.open(info) as source, destination.open("xb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise TooLarge(
                        f"archive unpacks to more than {max_bytes:,} bytes (limits: "
                        "VISIONINAPP_API_MAX_UPLOAD_MB): split the dataset or shrink its images"
                    )
                out.write(chunk)


# Normalisation -----------------------------------------------------------------------------------


def _orientation(path: Path) -> int:
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def ingest_directory(root: Path, out: Path, max_side: int = 1920) -> Ingested:
    """Validate `root` (data.yaml + images/labels) and write the normalised dataset to `out`."""
    root = root.resolve()
    names = validate_dataset(root, "data.yaml", out.parent / "resolved-data.yaml")
    normaliser = _Normaliser(root, out, names, max_side)
    images: dict[str, int] = {}
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        kept = sum(
            normaliser.add(split, number, image_path)
            for number, image_path in enumerate(split_images(root, split))
        )
        if kept == 0:
            raise DatasetError(
                f"the {split} split is empty once exact duplicates are removed: add {split} images "
                "that differ from the others"
            )
        images[split] = kept
    data = {"path": ".", "train": "images/train", "val": "images/val", "nc": len(names), "names": names}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return Ingested(
        out,
        names,
        {name: normaliser.counts.get(name, 0) for name in names},
        images,
        {
            "exifRotated": normaliser.rotated,
            "resized": normaliser.resized,
            "duplicatesRemoved": normaliser.duplicates,
            "maxSide": max_side,
        },
    )


@dataclass
class _Normaliser:
    """Writes a dataset's images (as JPEG, upright, at most `max_side`) and labels to `out`, skipping
    exact duplicates; counts boxes per class and what it changed."""

    root: Path
    out: Path
    names: list[str]
    max_side: int
    seen: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    rotated: int = 0
    resized: int = 0
    duplicates: int = 0

    def add(self, split: str, number: int, image_path: Path) -> bool:
        """Write one image and its label; False for a duplicate of an image already written."""
        try:
            pixels = read_image(image_path)  # size checked from the header; EXIF orientation applied
        except ImageError as error:
            refusal = TooLarge if error.too_large else DatasetError
            raise refusal(
                f"{image_path.relative_to(self.root)}: {str(error).removeprefix(image_path.name + ': ')}"
            ) from None
        digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        if digest in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(digest)
        if _orientation(image_path) != 1:
            self.rotated += 1
        stem = f"{number:06d}_{SAFE_STEM.sub('_', image_path.stem)}"[:120]
        if not cv2.imwrite(
            str(self.out / "images" / split / f"{stem}.jpg"),
            self._scaled(pixels),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        ):
            raise DatasetError(f"{image_path.relative_to(self.root)}: cannot be re-encoded as JPEG")
        label = label_of(image_path)
        text = read_text_file(label, str(label.relative_to(self.root))) if label.is_file() else ""
        (self.out / "labels" / split / f"{stem}.txt").write_text(text)
        for line in text.splitlines():
            if line.split():
                self.counts[self.names[int(line.split()[0])]] += 1
        return True

    def _scaled(self, pixels: np.ndarray) -> np.ndarray:
        """Scaled down to `max_side` (labels are normalised, so they stay valid)."""
        height, width = pixels.shape[:2]
        if max(height, width) <= self.max_side:
            return pixels
        self.resized += 1
        scale = self.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


# Publishing --------------------------------------------------------------------------------------


def manifest_of(root: Path) -> tuple[list[dict[str, Any]], str]:
    files = [
        {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file()
    ]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return files, digest


def new_version_uri(dataset_uri: str, number: int) -> str:
    """A prefix no other upload uses: `v<n>-<UTC time>-<random>` under the dataset's prefix."""
    return join_uri(dataset_uri, f"v{number}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}")


def discard_version(store: ArtifactStore, uri: str) -> None:
    """Delete everything under a version prefix (a refused or failed upload's files)."""
    for stored in store.list(uri):
        store.delete(stored.uri)


def upload_version(
    root: Path, files: list[dict[str, Any]], digest: str, store: ArtifactStore, uri: str
) -> None:
    """Upload every file, then the manifest last (its presence marks a complete version).

    `uri` must be fresh (`new_version_uri`); if anything fails, what was uploaded is deleted again.
    """
    try:
        for entry in files:
            store.put_file(root / entry["path"], join_uri(uri, entry["path"]))
        store.put_bytes(
            json.dumps({"files": files, "sha256": digest}, indent=1).encode(), join_uri(uri, MANIFEST)
        )
    except Exception:
        with contextlib.suppress(Exception):
            discard_version(store, uri)
        raise


def sweep_versions(store: ArtifactStore, dataset_uri: str, recorded: set[str]) -> int:
    """Delete version prefixes under `dataset_uri` that no recorded version names (dead uploads).

    Prefixes newer than `STALE_AFTER_S` are left alone: their upload may still be running.
    Returns how many prefixes were removed.
    """
    prefix = dataset_uri.rstrip("/") + "/"
    keep = {uri.rstrip("/") for uri in recorded}
    groups: dict[str, list[str]] = {}
    for stored in store.list(dataset_uri):
        if not stored.uri.startswith(prefix):
            continue
        head = stored.uri[len(prefix) :].split("/", 1)[0]
        groups.setdefault(head, []).append(stored.uri)
    removed = 0
    now = datetime.now(UTC)
    for head, uris in groups.items():
        if join_uri(dataset_uri, head) in keep:
            continue
        match = VERSION_DIR.match(head)
        if match:
            started = datetime.strptime(match.group(2), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
            if (now - started).total_seconds() < STALE_AFTER_S:
                continue
        log.warning("removing %d file(s) of an unfinished dataset upload under %s", len(uris), head)
        for uri in uris:
            store.delete(uri)
        removed += 1
    return removed
