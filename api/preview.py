"""Detection preview: a ModelArtifact's ONNX run in process with the edge package's inference.

Sessions are cached per sha256 (a few, least recently used first out), and every file is
verified against its checksum before it is loaded — the same rule as on a device. Images are
decoded with `visioninapp.images`, as on a device: the pixel count is read from the header first,
so a decompression bomb is refused (413) before a pixel is decoded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from visioninapp.backends.storage import ArtifactStore, ChecksumMismatch, ObjectNotFound
from visioninapp.images import ImageError, decode_image
from visioninapp.k8s import Obj
from visioninapp.web.errors import ApiError

if TYPE_CHECKING:  # imported when first used: onnxruntime loads only for a preview
    from visioninapp.edge.inference import Detector

__all__ = ["PREVIEW_MAX_BYTES", "PreviewModels", "preview_image"]

PREVIEW_MAX_BYTES = 32 * 1024 * 1024  # as on a device (the edge's /v1/detect)


def preview_image(data: bytes) -> np.ndarray:
    """An uploaded image to BGR pixels; ApiError 413 (too large), 415 (not an image we read) or 400."""
    try:
        return decode_image(data)
    except ImageError as error:
        raise ApiError(error.status, str(error)) from None


class PreviewModels:
    def __init__(self, cache_dir: Path, capacity: int = 4) -> None:
        self.cache_dir = cache_dir
        self.capacity = capacity
        self._sessions: OrderedDict[str, Detector] = OrderedDict()
        self._lock = threading.Lock()

    def detector(self, artifact: Obj, store_for: Callable[[str], ArtifactStore]) -> Detector:
        from visioninapp.edge.inference import Detector, ModelError

        spec = artifact.get("spec") or {}
        onnx = next((f for f in spec.get("formats", []) if f.get("format") == "onnx"), None)
        name = artifact["metadata"]["name"]
        if onnx is None:
            raise ApiError(409, f"ModelArtifact {name} has no onnx format to run; export one first")
        sha = onnx["sha256"]
        with self._lock:
            if sha in self._sessions:
                self._sessions.move_to_end(sha)
                return self._sessions[sha]
        path = self.cache_dir / f"{sha}.onnx"
        if not path.exists():
            store = store_for(onnx["uri"])
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                store.get_file(onnx["uri"], path, sha256=sha)
            except ChecksumMismatch:
                raise ApiError(
                    409, f"{onnx['uri']} does not match its sha256; the artifact is corrupt"
                ) from None
            except ObjectNotFound:
                raise ApiError(409, f"{onnx['uri']} is missing from the artifact store") from None
        try:
            detector = Detector(path, class_names=spec.get("classNames") or None, spinning=False)
        except ModelError as error:
            raise ApiError(409, f"cannot load {name}: {error}") from None
        with self._lock:
            self._sessions[sha] = detector
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)
        return detector
