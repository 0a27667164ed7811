"""YOLO-format datasets: fetch from the artifact store, check before any GPU time is spent, list splits.

Every path that comes from a user's file (data.yaml's `train:`/`val:`, the lines of a list .txt, a
manifest's entries, a zip's member names) goes through `contained`: relative, no `..`, and still
inside the dataset folder once symlinks are resolved. data.yaml is read by `load_data_yaml`: bounded,
UTF-8, no YAML aliases (a few hundred bytes of nested aliases expand to megabytes).
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from visioninapp.backends.storage import (
    ArtifactStore,
    LocalArtifactStore,
    ObjectNotFound,
    join_uri,
    sha256_file,
)

__all__ = [
    "MANIFEST",
    "DatasetError",
    "contained",
    "fetch_dataset",
    "load_data_yaml",
    "read_manifest",
    "split_images",
    "validate_dataset",
]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_REPORTED = 10
PARALLEL_DOWNLOADS = 16
MANIFEST = "manifest.json"
MAX_YAML_BYTES = 1024 * 1024
MAX_LIST_BYTES = 64 * 1024 * 1024
MAX_LABEL_BYTES = 4 * 1024 * 1024
MAX_CLASSES = 10_000
MAX_CLASS_NAME = 200
MAX_PATH = 1024


class DatasetError(ValueError):
    """The dataset is missing or malformed; the message lists the first bad files."""


def contained(root: Path, relative: str | Path, what: str) -> Path:
    """`root / relative`, refused (DatasetError) unless it stays inside `root`.

    The one containment check for paths from users' files: absolute paths, `..`, backslashes, NUL and
    other control characters are refused outright, and the resolved path (symlinks followed) must
    still be under the resolved `root`.
    """
    text = str(relative)
    shown = text[:200].encode("unicode_escape").decode("ascii")
    if not text or len(text) > MAX_PATH:
        raise DatasetError(f"{what}: path {shown!r} is empty or longer than {MAX_PATH} characters")
    if any(unicodedata.category(c) == "Cc" for c in text) or "\\" in text:
        raise DatasetError(
            f"{what}: path {shown!r} has control characters or backslashes; use plain / separated names"
        )
    pure = PurePosixPath(text)
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise DatasetError(
            f"{what}: path {shown!r} leaves the dataset folder; use a path relative to data.yaml, "
            "inside the dataset (no leading /, no ..)"
        )
    base = root.resolve()
    target = (root / pure).resolve()
    if target != base and not target.is_relative_to(base):
        raise DatasetError(
            f"{what}: path {shown!r} leads outside the dataset folder (through a symlink); "
            "put the files themselves in the dataset"
        )
    return target


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: data.yaml never needs them, alias bombs do."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event: Any = self.peek_event()  # type: ignore[no-untyped-call]
            raise DatasetError(
                f"data.yaml line {event.start_mark.line + 1}: YAML aliases (*name) are not allowed; "
                "write the values out"
            )
        return super().compose_node(parent, index)


def load_data_yaml(path: Path) -> dict[str, Any]:
    """data.yaml as a mapping: at most 1 MiB, UTF-8, plain YAML without aliases."""
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise DatasetError(
                f"{path.name} is larger than {MAX_YAML_BYTES // 1024} KiB; it only names classes and splits"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path.name} is not UTF-8 text; save it as UTF-8") from None
    except OSError as error:
        raise DatasetError(f"cannot read {path.name}: {error.strerror}") from None
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as error:
        raise DatasetError(f"{path.name} is not valid YAML: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise DatasetError(f"{path.name} is nested too deeply") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path.name} must be a mapping with train, val and names")
    return data


def read_text_file(path: Path, what: str, limit: int = MAX_LABEL_BYTES) -> str:
    """A small UTF-8 text file from a user (labels, image lists); DatasetError when it is not."""
    try:
        if path.stat().st_size > limit:
            raise DatasetError(f"{what}: larger than {limit // 1024} KiB")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{what}: not UTF-8 text; save it as UTF-8") from None
    except OSError as error:
        raise DatasetError(f"{what}: cannot be read ({error.strerror})") from None


def read_manifest(store: ArtifactStore, uri: str) -> list[dict[str, Any]] | None:
    """The files of a published version (`manifest.json`, written last), or None when it has none."""
    try:
        raw = store.get_bytes(join_uri(uri, MANIFEST))
    except ObjectNotFound:
        return None
    try:
        files = json.loads(raw)["files"]
        entries = [
            {"path": str(f["path"]), "sha256": str(f["sha256"]), "size": int(f["size"])} for f in files
        ]
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"{join_uri(uri, MANIFEST)} is corrupt: upload the dataset again") from None
    return entries


def _local_matches(path: Path, entry: dict[str, Any]) -> bool:
    return path.is_file() and path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]


def _dataset_files(store: ArtifactStore, uri: str) -> list[dict[str, Any]]:
    """The files of a dataset (path, sha256, size): its manifest's, or (no manifest) every file under
    the prefix except ultralytics' `*.cache`, with no sha256."""
    manifest = read_manifest(store, uri)
    if manifest is not None:
        return manifest
    listed = uri.rstrip("/") + "/"
    if isinstance(store, LocalArtifactStore):  # its listing names files by their resolved paths
        listed = store.path_of(uri).resolve().as_uri().rstrip("/") + "/"
    objects = [o for o in store.list(uri) if o.uri.startswith(listed) and not o.uri.endswith(".cache")]
    log.warning("dataset %s has no %s: taking every file under the prefix", uri, MANIFEST)
    return [{"path": o.uri[len(listed) :], "sha256": None, "size": o.size} for o in objects]


def _already_there(local: Path, entry: dict[str, Any]) -> bool:
    """Whether the file is in place already: by its sha256, or by its size where none is known."""
    if entry["sha256"]:
        return _local_matches(local, entry)
    return local.is_file() and local.stat().st_size == entry["size"]


def fetch_dataset(
    store: ArtifactStore,
    uri: str,
    data_yaml: str,
    target: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Copy the dataset into `target` (a private folder) and return it.

    A published version (one with `manifest.json`) gives exactly the manifest's files, each checked
    against its sha256; nothing else under the prefix (leftovers of a crashed upload) is read. A
    dataset put into the store by hand (no manifest) gives every file under the prefix except
    ultralytics' `*.cache`. Files are always copied, even from `file://` stores, so training (which
    writes `labels/*.cache` next to the labels) never changes the stored version. Files already in
    `target` with the right content are kept, so a restarted pod resumes an interrupted download;
    anything else in `target` is removed.
    """
    prefix = uri.rstrip("/") + "/"
    wanted = _dataset_files(store, uri)
    if not any(entry["path"] == data_yaml for entry in wanted):
        raise DatasetError(f"dataset not found: {prefix + data_yaml} does not exist")
    target.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[str, Path, str | None]] = []
    keep: set[Path] = set()
    for entry in wanted:
        local = contained(target, entry["path"], f"{uri} file")
        keep.add(local)
        if not _already_there(local, entry):
            todo.append((join_uri(uri, entry["path"]), local, entry["sha256"]))
    base = target.resolve()
    for stray in sorted(base.rglob("*"), reverse=True):
        if stray.is_file() and stray not in keep:
            stray.unlink()
    log.info("dataset %s: %d files, %d to download", uri, len(wanted), len(todo))
    done = 0

    def download(item: tuple[str, Path, str | None]) -> None:
        store.get_file(item[0], item[1], sha256=item[2])

    with ThreadPoolExecutor(PARALLEL_DOWNLOADS) as pool:
        for _ in pool.map(download, todo):
            done += 1
            if progress:
                progress(done, len(todo))
    return target


def _class_name(value: Any, index: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DatasetError(f"data.yaml: class {index} must be a name (text), not {type(value).__name__}")
    name = str(value).strip()
    if not name or len(name) > MAX_CLASS_NAME:
        raise DatasetError(f"data.yaml: class {index} name must be 1 to {MAX_CLASS_NAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise DatasetError(
            f"data.yaml: class {index} name {name[:40]!r} has control characters; use printable text"
        )
    return name


def _class_names(data: dict[str, Any]) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict | list) and len(names) > MAX_CLASSES:
        raise DatasetError(f"data.yaml: {len(names)} classes; at most {MAX_CLASSES}")
    if isinstance(names, dict) and names:
        try:
            ordered = [names[i] for i in range(len(names))]
        except KeyError:
            raise DatasetError("data.yaml: names must map the ids 0..nc-1 to class names") from None
    elif isinstance(names, list) and names:
        ordered = names
    else:
        raise DatasetError("data.yaml: `names` is missing: list the class names (or map ids to names)")
    result = [_class_name(value, index) for index, value in enumerate(ordered)]
    if "nc" in data and data["nc"] != len(result):
        raise DatasetError(f"data.yaml: nc is {str(data['nc'])[:20]} but {len(result)} names are listed")
    return result


def _split_images(root: Path, entry: Any, split: str) -> list[Path]:
    if not isinstance(entry, str):
        raise DatasetError(f"data.yaml: `{split}` must be a folder or a .txt list of images")
    location = contained(root, entry, f"data.yaml `{split}`")
    if location.is_dir():
        return sorted(
            p
            for p in location.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and contained(root, p.relative_to(root.resolve()), split)
        )
    if location.suffix == ".txt" and location.is_file():
        text = read_text_file(location, f"data.yaml `{split}` list {entry}", MAX_LIST_BYTES)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # ultralytics reads `./x` relative to the list's folder; here everything is relative to the root
        return [
            contained(root, line.removeprefix("./"), f"{entry} line {n}") for n, line in enumerate(lines, 1)
        ]
    raise DatasetError(f"data.yaml: {split} images not found at {entry}")


def label_of(image: Path) -> Path:
    parts = list(image.parts)
    if "images" not in parts:
        raise DatasetError(f"{image.name}: images must be under an `images` folder (labels under `labels`)")
    index = len(parts) - 1 - parts[::-1].index("images")  # the last `images` folder of the path
    parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _label_problems(path: Path, nc: int) -> str | None:
    try:
        text = read_text_file(path, "label")
    except DatasetError as error:
        return str(error).removeprefix("label: ")
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            return f"line {number}: expected `class cx cy w h`, got {len(fields)} values"
        try:
            class_id, *box = int(fields[0]), *map(float, fields[1:])
        except ValueError:
            return f"line {number}: not numbers: {line.strip()[:80]!r}"
        if not 0 <= class_id < nc:
            return f"line {number}: class id {class_id} out of range 0..{nc - 1}"
        if not all(0.0 <= v <= 1.0 for v in box) or box[2] <= 0 or box[3] <= 0:
            return f"line {number}: box {box} not normalised to 0..1"
    return None


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path.relative_to(root))


def validate_dataset(
    root: Path, data_yaml: str, resolved_yaml: Path, splits: tuple[str, ...] = ("train", "val")
) -> list[str]:
    """Check pairs, class ids and boxes; write `resolved_yaml` with an absolute path for ultralytics.

    The resolved file keeps only the splits and the names of the user's data.yaml (with `path` set to
    the resolved root), so keys such as `download:` never reach ultralytics. Returns the class names.
    `splits`: those the dataset must have (a quality gate's fixed data is only evaluated: `val`).
    """
    data = load_data_yaml(contained(root, data_yaml, "data.yaml"))
    names = _class_names(data)
    problems: list[str] = []
    expected_labels: set[Path] = set()
    for split in splits:
        if split not in data:
            raise DatasetError(f"data.yaml: `{split}` is missing")
        images = _split_images(root, data[split], split)
        if not images:
            raise DatasetError(f"data.yaml: no {split} images under {str(data[split])[:200]}")
        for image in images:
            label = label_of(image)
            expected_labels.add(label)
            if not image.is_file():
                problems.append(f"{_shown(image, root)}: listed but missing")
            elif label.is_file() and (problem := _label_problems(label, len(names))):
                problems.append(f"{_shown(label, root)}: {problem}")
    labels_dir = root.resolve() / "labels"
    every_split = set(splits) == {"train", "val"}  # else labels of the other split are not orphans
    for label in sorted(labels_dir.rglob("*.txt")) if labels_dir.is_dir() and every_split else []:
        if label not in expected_labels:
            problems.append(f"{_shown(label, root)}: label without an image")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise DatasetError(f"dataset has {len(problems)} bad file(s): {shown}{more}")
    resolved = {
        "path": str(root.resolve()),
        **{split: data[split] for split in splits},
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    resolved_yaml.parent.mkdir(parents=True, exist_ok=True)
    resolved_yaml.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    log.info("dataset ok: %d images, %d classes", len(expected_labels), len(names))
    return names


def split_images(root: Path, split: str, data_yaml: str = "data.yaml") -> list[Path]:
    """Image paths (resolved, inside `root`) of one split (`train`, `val`) of a local dataset."""
    data = load_data_yaml(contained(root, data_yaml, "data.yaml"))
    if split not in data:
        raise DatasetError(f"{data_yaml}: no `{split}` split")
    return _split_images(root, data[split], split)
