"""Dataset ingest: validate a YOLO dataset, normalise it with OpenCV, store it as an immutable version.

Validation is the trainer's own (`visioninapp.datasets.validate_dataset`: image/label pairs, class
ids, boxes in range), so what the API accepts trains. Preprocessing: EXIF orientation applied to
the pixels (OpenCV's reader does it; YOLO labels describe the image as displayed), images larger
than `max_side` scaled down (labels are normalised, so they stay valid), exact duplicates (same
decoded pixels) removed with their labels.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image

from visioninapp.backends.storage import ArtifactStore, join_uri, sha256_file
from visioninapp.datasets import DatasetError, label_of, split_images, validate_dataset

__all__ = ["DatasetError", "Ingested", "extract_archive", "ingest_directory", "upload_version"]

MAX_ARCHIVE_MEMBERS = 200_000
MAX_UNCOMPRESSED_BYTES = 20 * 1024**3
EXIF_ORIENTATION = 274


@dataclass
class Ingested:
    root: Path
    class_names: list[str]
    class_counts: dict[str, int]
    images: dict[str, int]
    preprocessing: dict[str, Any] = field(default_factory=dict)


def extract_archive(archive: Path, target: Path) -> Path:
    """Unpack a zip safely (no paths outside `target`, bounded size); returns the dataset root."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise DatasetError(f"archive has {len(members)} entries; at most {MAX_ARCHIVE_MEMBERS}")
            if sum(m.file_size for m in members) > MAX_UNCOMPRESSED_BYTES:
                raise DatasetError("archive expands to more than 20 GiB; split the dataset")
            base = target.resolve()
            for member in members:
                destination = (target / member.filename).resolve()
                if base not in destination.parents and destination != base:
                    raise DatasetError(f"archive entry {member.filename!r} points outside the dataset")
            bundle.extractall(target)
    except zipfile.BadZipFile:
        raise DatasetError(
            "not a zip archive: upload the dataset folder zipped (data.yaml at its top)"
        ) from None
    candidates = sorted(p.parent for p in target.rglob("data.yaml") if "__MACOSX" not in p.parts)
    if not candidates:
        raise DatasetError("no data.yaml in the archive: YOLO datasets name their classes and splits there")
    return min(candidates, key=lambda p: len(p.parts))


def _orientation(path: Path) -> int:
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def ingest_directory(root: Path, out: Path, max_side: int = 1920) -> Ingested:
    """Validate `root` (data.yaml + images/labels) and write the normalised dataset to `out`."""
    names = validate_dataset(root, "data.yaml", out.parent / "resolved-data.yaml")
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    images: dict[str, int] = {}
    rotated = resized = duplicates = 0
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        kept = 0
        for number, image_path in enumerate(split_images(root, split)):
            pixels = cv2.imread(str(image_path), cv2.IMREAD_COLOR)  # applies the EXIF orientation
            if pixels is None:
                raise DatasetError(f"{image_path.relative_to(root)}: not a readable image")
            digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            if _orientation(image_path) != 1:
                rotated += 1
            height, width = pixels.shape[:2]
            if max(height, width) > max_side:
                scale = max_side / max(height, width)
                pixels = cv2.resize(
                    pixels, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
                )
                resized += 1
            stem = f"{number:06d}_{image_path.stem}"[:120]
            cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
            label = label_of(image_path)
            text = label.read_text() if label.is_file() else ""
            (out / "labels" / split / f"{stem}.txt").write_text(text)
            for line in text.splitlines():
                if line.split():
                    counts[names[int(line.split()[0])]] += 1
            kept += 1
        images[split] = kept
    data = {"path": ".", "train": "images/train", "val": "images/val", "nc": len(names), "names": names}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return Ingested(
        out,
        names,
        {name: counts.get(name, 0) for name in names},
        images,
        {"exifRotated": rotated, "resized": resized, "duplicatesRemoved": duplicates, "maxSide": max_side},
    )


def manifest_of(root: Path) -> tuple[list[dict[str, Any]], str]:
    files = [
        {"path": str(path.relative_to(root)), "sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file()
    ]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return files, digest


def upload_version(
    root: Path, files: list[dict[str, Any]], digest: str, store: ArtifactStore, uri: str
) -> None:
    """Upload every file, then the manifest last (its presence marks a complete version)."""
    for entry in files:
        store.put_file(root / entry["path"], join_uri(uri, entry["path"]))
    store.put_bytes(
        json.dumps({"files": files, "sha256": digest}, indent=1).encode(), join_uri(uri, "manifest.json")
    )
