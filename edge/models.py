"""The model lifecycle of an edge runtime: last-good first, then a verified hot-swap.

- The cache is content-addressed (`models/<sha256>.onnx`) and shared by successive pods on a node;
  `last-good.json` names the last model that passed every check.
- On start the last-good model serves at once. The desired model is then fetched (resumable),
  verified (sha256), loaded and self-tested, and only then swapped in, atomically: a request uses
  the model it started with.
- A model that fails any step is rejected: the last-good one keeps serving and `ready` is False
  with the reason, so a rollout's health gate fails while the node keeps detecting. Its file (and
  its TensorRT engines) are deleted from the cache: nothing rejected stays on the device's disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from visioninapp.backends.storage import ArtifactStore, ChecksumMismatch, ObjectNotFound, sha256_file
from visioninapp.edge.inference import Detector, ModelError

__all__ = ["LoadedModel", "ModelManager", "ModelSpec"]

log = logging.getLogger(__name__)
SELF_TEST_SECONDS = 30.0


@dataclass(frozen=True)
class ModelSpec:
    """Which model should serve: where it is, what it must hash to, and its name."""

    uri: str
    sha256: str
    format: str = "onnx"
    version: str | None = None

    @property
    def label(self) -> str:
        return self.version or self.sha256[:12]


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    detector: Detector
    loaded_at: float


def _self_test(detector: Detector) -> None:
    """Run the model on a drawn image: outputs must be finite and decodable, within a time limit."""
    image = np.full((detector.imgsz[0], detector.imgsz[1], 3), 114, dtype=np.uint8)
    image[10:60, 10:60] = (40, 160, 220)
    started = time.perf_counter()
    tensor, gain, pad = detector.preprocess(image)
    output = detector.run(tensor)
    if not np.isfinite(output).all():
        raise ModelError("self-test failed: the model produced NaN or infinite values")
    try:
        detector.postprocess(output, gain, pad, image.shape[:2], conf=0.001, iou=0.7)
    except (IndexError, ValueError) as error:
        raise ModelError(
            f"self-test failed: output {list(output.shape)} is not a YOLO detection head ({error})"
        ) from None
    if time.perf_counter() - started > SELF_TEST_SECONDS:
        raise ModelError(f"self-test failed: one inference took more than {SELF_TEST_SECONDS:.0f} s")


class ModelManager:
    def __init__(
        self,
        cache_dir: Path,
        store_for: Callable[[str], ArtifactStore],
        precision: str = "fp32",
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        (cache_dir / "models").mkdir(parents=True, exist_ok=True)
        self.store_for = store_for
        self.precision = precision
        self.on_change = on_change
        self.current: LoadedModel | None = None
        self.desired: ModelSpec | None = None
        self.rejection: str | None = None
        self.rejections = 0
        self.retryable = False  # the last failure was transient (store unreachable), not the model's
        self._swap_lock = threading.Lock()

    # --- state ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True only while the desired model is the one serving."""
        current = self.current
        if current is None:
            return False
        return self.desired is None or current.spec.sha256 == self.desired.sha256

    @property
    def not_ready_reason(self) -> str | None:
        if self.ready:
            return None
        if self.rejection:
            return self.rejection
        if self.current is None:
            return "no model loaded yet"
        return f"loading {self.desired.label if self.desired else 'the desired model'}"

    # --- cache ------------------------------------------------------------------------------

    def _cached_path(self, sha256: str) -> Path:
        return self.cache_dir / "models" / f"{sha256}.onnx"

    def _discard(self, sha256: str) -> None:
        """Delete a rejected model's file and engines from the cache (never the one serving)."""
        current = self.current
        if current is not None and current.spec.sha256 == sha256:
            return
        self._cached_path(sha256).unlink(missing_ok=True)
        shutil.rmtree(self.cache_dir / "engines" / sha256, ignore_errors=True)

    def _write_last_good(self, spec: ModelSpec) -> None:
        marker = self.cache_dir / "last-good.json"
        partial = marker.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(spec)))
        os.replace(partial, marker)

    def load_last_good(self) -> bool:
        """Serve the cached last-good model, if there is one and it still hashes right."""
        marker = self.cache_dir / "last-good.json"
        if not marker.exists():
            return False
        try:
            spec = ModelSpec(**json.loads(marker.read_text()))
            path = self._cached_path(spec.sha256)
            if sha256_file(path) != spec.sha256:
                raise ModelError("cached file does not match its checksum")
            self._activate(spec, self._load(spec, path))
        except ModelError as error:  # corrupt on disk, or no longer loads: never try it again
            log.error("last-good model rejected, waiting for the desired one: %s", error)
            self._discard(spec.sha256)
            marker.unlink(missing_ok=True)
            return False
        except (OSError, ValueError, TypeError) as error:
            log.error("last-good model unusable, waiting for the desired one: %s", error)
            return False
        log.info("serving last-good model %s from the cache", spec.label)
        return True

    # --- swap -------------------------------------------------------------------------------

    def _load(self, spec: ModelSpec, path: Path) -> Detector:
        engine_cache = self.cache_dir / "engines" / spec.sha256 if spec.format == "tensorrt" else None
        detector = Detector(path, precision=self.precision, engine_cache=engine_cache)
        _self_test(detector)
        return detector

    def _activate(self, spec: ModelSpec, detector: Detector) -> None:
        self.current = LoadedModel(spec, detector, time.time())  # one reference swap: atomic
        if self.on_change:
            self.on_change()

    def set_desired(self, spec: ModelSpec) -> bool:
        """Make `spec` the desired model and try to serve it; returns whether it now serves."""
        self.desired = spec
        with self._swap_lock:
            if self.desired != spec:
                return False  # a newer desired model arrived meanwhile
            current = self.current
            if current is not None and current.spec.sha256 == spec.sha256:
                self.current = LoadedModel(spec, current.detector, current.loaded_at)
                self.rejection = None
                self._write_last_good(spec)
                return True
            try:
                path = self._fetch(spec)
                detector = self._load(spec, path)
            except (ModelError, ChecksumMismatch, ObjectNotFound, OSError, ValueError) as error:
                self.retryable = False
                self.rejection = f"model {spec.label} rejected: {error}"
                self.rejections += 1
                self._discard(spec.sha256)
                log.error(
                    "%s; still serving %s",
                    self.rejection,
                    self.current.spec.label if self.current else "nothing",
                )
                if self.on_change:
                    self.on_change()
                return False
            except Exception as error:  # e.g. S3 unreachable: keep serving, try again later
                self.retryable = True
                self.rejection = f"model {spec.label} not available: {type(error).__name__}: {error}"
                log.error("%s", self.rejection)
                return False
            self.rejection = None
            self._activate(spec, detector)
            self._write_last_good(spec)
            log.info("now serving %s (%s)", spec.label, detector.provider)
            return True

    def _fetch(self, spec: ModelSpec) -> Path:
        target = self._cached_path(spec.sha256)
        if target.exists() and sha256_file(target) == spec.sha256:
            return target
        store = self.store_for(spec.uri)
        return store.get_file(spec.uri, target, sha256=spec.sha256)
