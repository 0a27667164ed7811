"""New dataset versions from uploads: a zip of a YOLO dataset, or loose images and label files.

Uploads are streamed to a work folder with their size counted while written (the request body is
already bounded by the middleware; this bounds each file and all of them together).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

import yaml

from visioninapp.api.container import ApiContainer
from visioninapp.api.domain.datasets import NewVersion, find_dataset, publish_version, rejected, workspace
from visioninapp.api.ingest import DatasetError, expansion_limit, extract_archive
from visioninapp.datasets import IMAGE_SUFFIXES
from visioninapp.web.errors import ApiError

__all__ = ["LooseFiles", "Upload", "upload_archive", "upload_files"]

MB = 1024 * 1024


class Upload(Protocol):
    """An uploaded file (FastAPI's UploadFile), as far as the ingest reads it."""

    @property
    def filename(self) -> str | None: ...

    @property
    def file(self) -> BinaryIO: ...


def save_upload(upload: Upload, target: Path, limit_mb: int, budget: list[int] | None = None) -> None:
    """Stream an upload to `target`, refusing (413) past `limit_mb`, or past `budget[0]` bytes in all."""
    written = 0
    with target.open("xb") as out:
        while chunk := upload.file.read(MB):
            written += len(chunk)
            if written > limit_mb * MB:
                raise ApiError(413, f"upload larger than {limit_mb} MB (VISIONINAPP_API_MAX_UPLOAD_MB)")
            if budget is not None:
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise ApiError(
                        413,
                        "the files together are larger than the upload limit "
                        "(VISIONINAPP_API_MAX_UPLOAD_MB): upload the dataset in parts or as a zip",
                    )
            out.write(chunk)


def upload_archive(container: ApiContainer, new: NewVersion, archive: Upload) -> dict[str, Any]:
    """A zip with data.yaml, images/ and labels/ as the dataset's next version."""
    with container.db.session() as session:
        find_dataset(session, new.project, new.dataset)  # 404 before reading the upload
    limit_mb = container.settings.api_max_upload_mb
    with workspace(container) as work:
        zipped = work / "upload.zip"
        save_upload(archive, zipped, limit_mb)
        try:
            root = extract_archive(
                zipped, work / "source", expansion_limit(zipped.stat().st_size, limit_mb * MB)
            )
        except DatasetError as error:
            raise rejected(error) from None
        zipped.unlink()
        return publish_version(container, new, root, work)


@dataclass(frozen=True)
class LooseFiles:
    images: Sequence[Upload]
    labels: Sequence[Upload]  # one `<image stem>.txt` per labelled image
    class_names: str  # comma-separated, in id order
    val_fraction: float


def upload_files(container: ApiContainer, new: NewVersion, files: LooseFiles) -> dict[str, Any]:
    """Loose images and YOLO label files laid out as a dataset (every n-th image validates)."""
    names = [n.strip() for n in files.class_names.split(",") if n.strip()]
    if not names:
        raise ApiError(422, "classNames must list at least one class, comma-separated in id order")
    with container.db.session() as session:
        find_dataset(session, new.project, new.dataset)
    labels = _labels_by_stem(files.labels)
    images = _images_by_stem(files.images, set(labels))
    limit_mb = container.settings.api_max_upload_mb
    budget = [limit_mb * MB]  # all files together stay within the upload limit
    with workspace(container) as work:
        root = work / "source"
        every = max(2, round(1 / files.val_fraction))  # a stable, spread-out split
        for number, (stem, suffix, image) in enumerate(images):
            split = "val" if number % every == every - 1 else "train"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            save_upload(image, root / "images" / split / f"{stem}{suffix}", limit_mb, budget)
            if stem in labels:
                save_upload(labels[stem], root / "labels" / split / f"{stem}.txt", 1, budget)
        data = {"path": ".", "train": "images/train", "val": "images/val", "names": names}
        (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return publish_version(container, new, root, work)


def _labels_by_stem(labels: Sequence[Upload]) -> dict[str, Upload]:
    by_stem: dict[str, Upload] = {}
    for upload in labels:
        stem, _ = _upload_stem(upload, {".txt"}, "label")
        if stem in by_stem:
            raise ApiError(422, f"two label files named {stem}.txt; one per image")
        by_stem[stem] = upload
    return by_stem


def _images_by_stem(images: Sequence[Upload], label_stems: set[str]) -> list[tuple[str, str, Upload]]:
    """(stem, suffix, upload) sorted by stem; stems unique, every label's stem among them."""
    named = [(*_upload_stem(image, IMAGE_SUFFIXES, "image"), image) for image in images]
    stems = [stem for stem, _, _ in named]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})[:10]
        raise ApiError(422, f"images share a name (without extension): {', '.join(twice)}; rename them")
    orphans = sorted(label_stems - set(stems))
    if orphans:
        raise ApiError(422, f"labels without an image: {', '.join(orphans[:10])}")
    return sorted(named, key=lambda item: item[0])


def _upload_stem(upload: Upload, kinds: set[str], what: str) -> tuple[str, str]:
    """(stem, suffix) of an uploaded file's name; 422 for names that cannot be dataset files."""
    raw = upload.filename or ""
    name = PurePosixPath(raw.replace("\\", "/")).name
    if not name or any(unicodedata.category(c) == "Cc" for c in raw) or len(name) > 200:
        shown = raw[:80].encode("unicode_escape").decode("ascii")
        raise ApiError(
            422, f"{what} file name {shown!r} is empty, too long or has control characters; rename the file"
        )
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in kinds:
        raise ApiError(422, f"{what} {name!r}: expected one of {', '.join(sorted(kinds))}")
    return PurePosixPath(name).stem, suffix
