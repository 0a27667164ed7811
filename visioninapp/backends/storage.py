"""Artifact store: put, get and check files by URI (`s3://` in a cluster, `file://` locally).

Every get verifies a sha256 when one is given, and writes through a temporary file renamed into
place, so a half-downloaded or corrupt file never sits where a good one is expected.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = [
    "ArtifactStore",
    "ChecksumMismatch",
    "LocalArtifactStore",
    "ObjectNotFound",
    "StoredObject",
    "join_uri",
    "sha256_file",
]

CHUNK = 1024 * 1024


class ObjectNotFound(FileNotFoundError):
    """The URI names no object."""


class ChecksumMismatch(ValueError):
    """The object's sha256 is not the expected one."""


@dataclass(frozen=True)
class StoredObject:
    uri: str
    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


class ArtifactStore(ABC):
    """Files addressed by URI. One implementation per scheme."""

    scheme: str

    @abstractmethod
    def put_file(self, path: Path, uri: str) -> StoredObject:
        """Upload a local file; returns its URI, sha256 and size."""

    @abstractmethod
    def put_bytes(self, data: bytes, uri: str) -> StoredObject:
        """Store bytes under a URI."""

    @abstractmethod
    def get_file(self, uri: str, path: Path, sha256: str | None = None) -> Path:
        """Download to `path` (atomically); raises ChecksumMismatch and keeps nothing if it differs."""

    @abstractmethod
    def get_bytes(self, uri: str) -> bytes:
        """Read a (small) object."""

    @abstractmethod
    def size(self, uri: str) -> int | None:
        """Size in bytes, or None when there is no such object."""

    @abstractmethod
    def checksum(self, uri: str) -> str:
        """sha256 of the stored object, streamed; raises ObjectNotFound."""

    @abstractmethod
    def list(self, prefix_uri: str) -> list[StoredObject]:
        """Objects under a prefix (recursively) with their sizes; sha256 left empty."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove an object; no error if it is absent."""

    def exists(self, uri: str) -> bool:
        return self.size(uri) is not None


def replace_verified(source: Path, target: Path, sha256: str | None) -> None:
    if sha256 is not None:
        actual = sha256_file(source)
        if actual != sha256:
            source.unlink(missing_ok=True)
            raise ChecksumMismatch(f"sha256 mismatch for {target.name}: expected {sha256}, got {actual}")
    os.replace(source, target)


class LocalArtifactStore(ArtifactStore):
    """`file://` URIs: a local directory with the same layout as the bucket (local mode)."""

    scheme = "file"

    @staticmethod
    def path_of(uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ValueError(f"not a file:// URI: {uri}")
        return Path(unquote(parsed.path))

    def put_file(self, path: Path, uri: str) -> StoredObject:
        target = self.path_of(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(path, partial)
        os.replace(partial, target)
        return StoredObject(uri, sha256_file(target), target.stat().st_size)

    def put_bytes(self, data: bytes, uri: str) -> StoredObject:
        target = self.path_of(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, target)
        return StoredObject(uri, hashlib.sha256(data).hexdigest(), len(data))

    def get_file(self, uri: str, path: Path, sha256: str | None = None) -> Path:
        source = self.path_of(uri)
        if not source.is_file():
            raise ObjectNotFound(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        shutil.copyfile(source, partial)
        replace_verified(partial, path, sha256)
        return path

    def get_bytes(self, uri: str) -> bytes:
        source = self.path_of(uri)
        if not source.is_file():
            raise ObjectNotFound(uri)
        return source.read_bytes()

    def size(self, uri: str) -> int | None:
        path = self.path_of(uri)
        return path.stat().st_size if path.is_file() else None

    def checksum(self, uri: str) -> str:
        path = self.path_of(uri)
        if not path.is_file():
            raise ObjectNotFound(uri)
        return sha256_file(path)

    def list(self, prefix_uri: str) -> list[StoredObject]:
        root = self.path_of(prefix_uri)
        if not root.is_dir():
            return []
        return [
            StoredObject(p.resolve().as_uri(), "", p.stat().st_size)
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".partial")
        ]

    def delete(self, uri: str) -> None:
        self.path_of(uri).unlink(missing_ok=True)
