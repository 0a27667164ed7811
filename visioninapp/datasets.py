"""YOLO-format datasets: fetch from the artifact store, check before any GPU time is spent, list splits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from visioninapp.backends.storage import ArtifactStore, LocalArtifactStore, join_uri

__all__ = ["DatasetError", "fetch_dataset", "split_images", "validate_dataset"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_REPORTED = 10
PARALLEL_DOWNLOADS = 16


class DatasetError(ValueError):
    """The dataset is missing or malformed; the message lists the first bad files."""


def fetch_dataset(
    store: ArtifactStore,
    uri: str,
    data_yaml: str,
    target: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Make the dataset available locally and return the directory that holds it.

    `file://` datasets are used in place. Others are downloaded in parallel; files already present
    with the right size are skipped, so a restarted pod resumes an interrupted download.
    """
    if isinstance(store, LocalArtifactStore):
        root = store.path_of(uri)
        if not (root / data_yaml).is_file():
            raise DatasetError(f"dataset not found: {join_uri(uri, data_yaml)} does not exist")
        return root
    objects = store.list(uri)
    prefix = uri.rstrip("/") + "/"
    if not any(o.uri == prefix + data_yaml for o in objects):
        raise DatasetError(f"dataset not found: {prefix + data_yaml} does not exist")
    todo = []
    for obj in objects:
        local = target / obj.uri[len(prefix) :]
        if not (local.is_file() and local.stat().st_size == obj.size):
            todo.append((obj.uri, local))
    log.info("dataset %s: %d files, %d to download", uri, len(objects), len(todo))
    done = 0

    def download(item: tuple[str, Path]) -> None:
        store.get_file(item[0], item[1])

    with ThreadPoolExecutor(PARALLEL_DOWNLOADS) as pool:
        for _ in pool.map(download, todo):
            done += 1
            if progress:
                progress(done, len(todo))
    return target


def _class_names(data: dict[str, Any]) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            ordered = [str(names[i]) for i in range(len(names))]
        except KeyError:
            raise DatasetError("data.yaml: names must map the ids 0..nc-1 to class names") from None
    elif isinstance(names, list) and names:
        ordered = [str(n) for n in names]
    else:
        raise DatasetError("data.yaml: `names` is missing: list the class names (or map ids to names)")
    if "nc" in data and data["nc"] != len(ordered):
        raise DatasetError(f"data.yaml: nc is {data['nc']} but {len(ordered)} names are listed")
    return ordered


def _split_images(root: Path, entry: Any, split: str) -> list[Path]:
    if not isinstance(entry, str):
        raise DatasetError(f"data.yaml: `{split}` must be a folder or a .txt list of images")
    location = root / entry
    if location.is_dir():
        return sorted(p for p in location.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if location.suffix == ".txt" and location.is_file():
        return [root / line.strip() for line in location.read_text().splitlines() if line.strip()]
    raise DatasetError(f"data.yaml: {split} images not found at {entry}")


def label_of(image: Path) -> Path:
    parts = list(image.parts)
    index = len(parts) - 1 - parts[::-1].index("images")  # the last `images` folder of the path
    parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _label_problems(path: Path, nc: int) -> str | None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            return f"line {number}: expected `class cx cy w h`, got {len(fields)} values"
        try:
            class_id, *box = int(fields[0]), *map(float, fields[1:])
        except ValueError:
            return f"line {number}: not numbers: {line.strip()!r}"
        if not 0 <= class_id < nc:
            return f"line {number}: class id {class_id} out of range 0..{nc - 1}"
        if not all(0.0 <= v <= 1.0 for v in box) or box[2] <= 0 or box[3] <= 0:
            return f"line {number}: box {box} not normalised to 0..1"
    return None


def validate_dataset(root: Path, data_yaml: str, resolved_yaml: Path) -> list[str]:
    """Check pairs, class ids and boxes; write `resolved_yaml` with an absolute path for ultralytics.

    Returns the class names.
    """
    try:
        data = yaml.safe_load((root / data_yaml).read_text())
    except yaml.YAMLError as error:
        raise DatasetError(f"data.yaml is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DatasetError("data.yaml must be a mapping with train, val and names")
    names = _class_names(data)
    problems: list[str] = []
    expected_labels: set[Path] = set()
    for split in ("train", "val"):
        if split not in data:
            raise DatasetError(f"data.yaml: `{split}` is missing")
        images = _split_images(root, data[split], split)
        if not images:
            raise DatasetError(f"data.yaml: no {split} images under {data[split]}")
        for image in images:
            label = label_of(image)
            expected_labels.add(label)
            if not image.is_file():
                problems.append(f"{image.relative_to(root)}: listed but missing")
            elif label.is_file() and (problem := _label_problems(label, len(names))):
                problems.append(f"{label.relative_to(root)}: {problem}")
    for label in sorted((root / "labels").rglob("*.txt")):
        if label not in expected_labels:
            problems.append(f"{label.relative_to(root)}: label without an image")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise DatasetError(f"dataset has {len(problems)} bad file(s): {shown}{more}")
    resolved = {**data, "path": str(root.resolve()), "names": dict(enumerate(names)), "nc": len(names)}
    resolved_yaml.parent.mkdir(parents=True, exist_ok=True)
    resolved_yaml.write_text(yaml.safe_dump(resolved, sort_keys=False))
    log.info("dataset ok: %d images, %d classes", len(expected_labels), len(names))
    return names


def split_images(root: Path, split: str, data_yaml: str = "data.yaml") -> list[Path]:
    """Image paths of one split (`train`, `val`) of a local dataset."""
    try:
        data = yaml.safe_load((root / data_yaml).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read {root / data_yaml}: {error}") from None
    if not isinstance(data, dict) or split not in data:
        raise DatasetError(f"{root / data_yaml}: no `{split}` split")
    return _split_images(root, data[split], split)
