"""The model lifecycle of an edge runtime: last-good first, then a verified hot-swap.

- The cache is content-addressed (`models/<sha256>.onnx`) and shared by successive pods on a node;
  `last-good.json` names the last model that passed every check.
- On start the last-good model serves at once. The desired model is then fetched (resumable),
  verified (sha256), loaded and self-tested, and only then swapped in, atomically: a request uses
  the model it started with.
- A model that fails any step is rejected: the last-good one keeps serving and `ready` is False
  with the reason, so a rollout's health gate fails while the node keeps detecting. Its file (and
  its TensorRT engines) are deleted from the cache: nothing rejected stays on the device's disk.
- `format: tensorrt` needs an engine built for this device (edge/engines.py): one from the node's
  cache or the fleet's shared cache whose key is exactly this device's, else one built in a
  background thread while the current model keeps serving (`ready` False, reason `engine building`,
  distinct from a rejection). The switch comes only after the engine is stored and a detector loaded
  from it has passed the self-test; a build error or a build past its timeout rejects the model
  with the reason. The designated builder of a key uploads its engine to the shared cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from visioninapp.backends.storage import ArtifactStore, ChecksumMismatch, ObjectNotFound, sha256_file
from visioninapp.edge.engines import (
    DeviceFacts,
    EngineCache,
    EngineError,
    EngineKey,
    EngineKind,
    SharedEngines,
    build_engine,
    engine_key,
    engine_providers,
)
from visioninapp.edge.inference import Detector, ModelError, choose_providers
from visioninapp.events import EngineReport

__all__ = ["EngineStatus", "LoadedModel", "ModelManager", "ModelSpec"]

log = logging.getLogger(__name__)
SELF_TEST_SECONDS = 30.0
ENGINE_FORMATS = frozenset({"tensorrt"})  # formats served from an engine built on the device
PROGRESS_SECONDS = 30.0  # a build in progress says so in the log this often


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
    engine: EngineKey | None = None  # the engine it serves from (engine formats)


@dataclass(frozen=True)
class EngineStatus:
    """The engine of the desired model: building, ready or failed (an EdgeEvent reports it)."""

    key: EngineKey
    state: Literal["building", "ready", "failed"]
    since: float
    sha256: str | None = None
    source: Literal["built", "cache", "shared"] | None = None
    uploaded: bool = False
    message: str | None = None

    def report(self) -> EngineReport:
        return EngineReport(
            key_hash=self.key.digest,
            key=self.key.as_dict(),
            state=self.state,
            since=datetime.fromtimestamp(self.since, UTC),
            sha256=self.sha256,
            source=self.source,
            uploaded=self.uploaded,
            message=(self.message or "")[:1024] or None,
        )


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
        *,
        engine: EngineKind = "tensorrt",
        shared: SharedEngines | None = None,
        node: str = "localhost",
        build_timeout: float = 3600.0,
        facts: DeviceFacts | None = None,
        refresh_credentials: Callable[[], None] | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        (cache_dir / "models").mkdir(parents=True, exist_ok=True)
        self.store_for = store_for
        self.precision = precision
        self.on_change = on_change
        self.engine_kind, self.shared, self.node = engine, shared, node
        self.build_timeout, self.facts = build_timeout, facts
        self.refresh_credentials = refresh_credentials
        self.engines = EngineCache(cache_dir / "engines")
        self.engine: EngineStatus | None = None
        self._builds: dict[str, threading.Thread] = {}  # key digest → its build's supervisor
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
        current, desired = self.current, self.desired
        if current is None:
            return False
        if desired is None:
            return True
        if current.spec.sha256 != desired.sha256:
            return False
        return desired.format not in ENGINE_FORMATS or current.engine is not None

    @property
    def building(self) -> EngineStatus | None:
        """The engine being built for the desired model, if one is."""
        engine, desired = self.engine, self.desired
        if engine is None or desired is None or engine.state != "building":
            return None
        return engine if engine.key.model_sha256 == desired.sha256 else None

    @property
    def not_ready_reason(self) -> str | None:
        if self.ready:
            return None
        if self.rejection:
            return self.rejection
        building = self.building
        if building is not None:
            label = self.desired.label if self.desired else building.key.model_sha256[:12]
            return (
                f"engine building: {building.key.engine} {building.key.precision} engine of {label} "
                f"(key {building.key.digest[:12]}, {time.time() - building.since:.0f} s)"
            )
        if self.current is None:
            return "no model loaded yet"
        return f"loading {self.desired.label if self.desired else 'the desired model'}"

    def engine_report(self) -> EngineReport | None:
        """The desired model's engine for an EdgeEvent (None: no engine format)."""
        engine, desired = self.engine, self.desired
        if engine is None or desired is None or engine.key.model_sha256 != desired.sha256:
            return None
        return engine.report()

    # --- cache ------------------------------------------------------------------------------

    def _cached_path(self, sha256: str) -> Path:
        return self.cache_dir / "models" / f"{sha256}.onnx"

    def _discard(self, sha256: str) -> None:
        """Delete a rejected model's file and engines from the cache (never the one serving)."""
        current = self.current
        if current is not None and current.spec.sha256 == sha256:
            return
        self._cached_path(sha256).unlink(missing_ok=True)
        self.engines.discard(sha256)

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
            if spec.format in ENGINE_FORMATS:
                self._load_last_good_engine(spec, path)
            else:
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
        detector = Detector(path, precision=self.precision)
        _self_test(detector)
        return detector

    def _load_last_good_engine(self, spec: ModelSpec, path: Path) -> None:
        """On start: the cached engine of this device's key; without one the plain ONNX serves (no
        TensorRT: it would build an engine inside the session, blocking) until the engine is built."""
        try:
            key = self._engine_key(spec)
            cached = self.engines.load(key)
        except EngineError as error:
            key, cached = None, None
            log.error("no engine key on this device: %s", error)
        if key is not None and cached is not None:
            detector = self._engine_detector(key, cached[0])
            self._set_engine(EngineStatus(key, "ready", time.time(), cached[1], "cache"))
            self._activate(spec, detector, key)
            return
        providers = [
            p
            for p in choose_providers(ort.get_available_providers(), self.precision, None)
            if p != "TensorrtExecutionProvider"
            and not (isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider")
        ]
        detector = Detector(path, precision=self.precision, providers=providers)
        _self_test(detector)
        self._activate(spec, detector)

    def _activate(self, spec: ModelSpec, detector: Detector, engine: EngineKey | None = None) -> None:
        self.current = LoadedModel(spec, detector, time.time(), engine)  # one reference swap: atomic
        if self.on_change:
            self.on_change()

    # --- engines ----------------------------------------------------------------------------

    def _engine_key(self, spec: ModelSpec) -> EngineKey:
        return engine_key(spec.sha256, self.engine_kind, self.precision, self.facts)

    def _set_engine(self, status: EngineStatus) -> None:
        self.engine = status
        if self.on_change:
            self.on_change()

    @staticmethod
    def _engine_detector(key: EngineKey, path: Path) -> Detector:
        detector = Detector(path, providers=engine_providers(key))
        _self_test(detector)
        return detector

    def _cached_engine(self, key: EngineKey) -> tuple[Detector, EngineStatus] | None:
        """A detector from this device's cache or the fleet's, for exactly `key`, self-tested."""
        cached = self.engines.load(key)
        if cached is not None:
            try:
                return self._engine_detector(key, cached[0]), EngineStatus(
                    key, "ready", time.time(), cached[1], "cache"
                )
            except ModelError as error:
                log.error("cached engine %s failed its self-test, deleted: %s", key.digest[:12], error)
                shutil.rmtree(self.engines.directory(key), ignore_errors=True)
        if self.shared is None:
            return None
        try:
            fetched = self.shared.fetch(key, self.engines.staging(key))
        except (EngineError, ChecksumMismatch) as error:  # never loaded: built here instead
            log.error("shared engine %s refused, building here: %s", key.digest[:12], error)
            return None
        except Exception as error:  # no manifest readable (403 without list rights), store down
            log.info("no shared engine for key %s (%s): building here", key.digest[:12], error)
            return None
        if fetched is None:
            return None
        path, sha256 = self.engines.store(key, fetched[0], fetched[1])
        log.info(
            "engine %s downloaded from the shared cache, sha256 %s verified", key.digest[:12], sha256[:12]
        )
        try:
            detector = self._engine_detector(key, path)
        except ModelError as error:  # the builder's self-test passed: never trust it here anyway
            log.error("shared engine %s failed its self-test, building here: %s", key.digest[:12], error)
            shutil.rmtree(self.engines.directory(key), ignore_errors=True)
            return None
        return detector, EngineStatus(key, "ready", time.time(), sha256, "shared")

    def _start_build(self, spec: ModelSpec, key: EngineKey, source: Path) -> None:
        """Build the engine in the background; the current model serves until it switches."""
        if key.digest in self._builds and self._builds[key.digest].is_alive():
            return
        self._set_engine(EngineStatus(key, "building", time.time(), message="building"))
        log.info(
            "building the %s engine of %s (key %s: %s %s, %s) in the background; still serving %s",
            key.engine,
            spec.label,
            key.digest[:12],
            key.device,
            key.l4t,
            key.runtime,
            self.current.spec.label if self.current else "nothing",
        )
        thread = threading.Thread(
            target=self._build, args=(spec, key, source), name=f"engine-{key.digest[:8]}", daemon=True
        )
        self._builds[key.digest] = thread
        thread.start()

    def _progress(self, key: EngineKey, message: str) -> None:
        log.info("engine %s: %s", key.digest[:12], message)
        engine = self.engine
        if engine is not None and engine.key == key and engine.state == "building":
            self.engine = replace(engine, message=message)

    def _build(self, spec: ModelSpec, key: EngineKey, source: Path) -> None:
        """The supervisor of one build: the build in a worker thread, bounded by `build_timeout`."""
        started = time.monotonic()
        outcome: list[Path | BaseException] = []
        staging = self.engines.staging(key)

        def work() -> None:
            try:
                outcome.append(build_engine(source, key, staging, lambda m: self._progress(key, m)))
            except BaseException as error:  # handed to the supervisor
                outcome.append(error)

        worker = threading.Thread(target=work, name=f"engine-build-{key.digest[:8]}", daemon=True)
        worker.start()
        while worker.is_alive():
            remaining = self.build_timeout - (time.monotonic() - started)
            if remaining <= 0:
                break
            worker.join(min(PROGRESS_SECONDS, remaining))
            if worker.is_alive():
                self._progress(key, f"still building ({time.monotonic() - started:.0f} s)")
        if not outcome:  # the worker is abandoned: what it writes later is never used
            self._build_failed(spec, key, f"engine build timed out after {self.build_timeout:.0f} s")
            return
        result = outcome[0]
        if isinstance(result, BaseException):
            self._build_failed(spec, key, str(result))
            return
        try:
            path, sha256 = self.engines.store(key, result)
            detector = self._engine_detector(key, path)
        except (EngineError, ModelError, OSError) as error:
            self._build_failed(spec, key, f"built engine rejected: {error}")
            return
        # offered to the fleet before the switch: once this node reports ready, its upload is done
        uploaded = self._upload(key, path, sha256)
        status = EngineStatus(
            key,
            "ready",
            time.time(),
            sha256,
            "built",
            uploaded,
            message=f"built in {time.monotonic() - started:.1f} s",
        )
        with self._swap_lock:
            if self.desired != spec:
                log.info(
                    "engine %s built, but %s is no longer desired: kept in the cache",
                    key.digest[:12],
                    spec.label,
                )
                return
            self.rejection = None
            self._set_engine(status)
            self._activate(spec, detector, key)
            self._write_last_good(spec)
        log.info("now serving %s from engine %s (%s)", spec.label, key.digest[:12], detector.provider)

    def _build_failed(self, spec: ModelSpec, key: EngineKey, why: str) -> None:
        with self._swap_lock:
            self._set_engine(EngineStatus(key, "failed", time.time(), message=why))
            if self.desired != spec:
                return
            self.retryable = False
            self.rejection = f"model {spec.label} rejected: {why}"
            self.rejections += 1
            self._discard(spec.sha256)
            log.error(
                "%s; still serving %s", self.rejection, self.current.spec.label if self.current else "nothing"
            )
            if self.on_change:
                self.on_change()

    def _upload(self, key: EngineKey, path: Path, sha256: str) -> bool:
        """Offer the engine to the fleet: only the operator's designated builder of `key` may write
        its prefix (its credentials' policy), so another node's attempt is refused and logged."""
        if self.shared is None:
            return False
        self._progress(key, "uploading the engine to the shared cache")
        for attempt in (1, 2):
            try:
                self.shared.upload(key, path, sha256, self.node)
            except Exception as error:
                if attempt == 1 and self.refresh_credentials is not None:
                    self.refresh_credentials()  # designated since the keys were issued?
                    continue
                log.info(
                    "engine %s not uploaded to the shared cache (this node is not its designated "
                    "builder, or the store refused): %s",
                    key.digest[:12],
                    error,
                )
                return False
            break
        log.info("engine %s uploaded to the shared cache (sha256 %s)", key.digest[:12], sha256[:12])
        return True

    def set_desired(self, spec: ModelSpec) -> bool:
        """Make `spec` the desired model and try to serve it; returns whether it now serves."""
        self.desired = spec
        with self._swap_lock:
            if self.desired != spec:
                return False  # a newer desired model arrived meanwhile
            current = self.current
            reuse = current is not None and current.spec.sha256 == spec.sha256
            if current is not None and reuse and (spec.format not in ENGINE_FORMATS or current.engine):
                self.current = LoadedModel(spec, current.detector, current.loaded_at, current.engine)
                self.rejection = None
                self._write_last_good(spec)
                return True
            engine: EngineKey | None = None
            try:
                path = self._fetch(spec)
                if spec.format in ENGINE_FORMATS:
                    engine = self._engine_key(spec)
                    found = self._cached_engine(engine)
                    if found is None:
                        self.rejection = None
                        self._start_build(spec, engine, path)
                        return False
                    detector, status = found
                    self._set_engine(status)
                else:
                    detector = self._load(spec, path)
            except (ModelError, ChecksumMismatch, ObjectNotFound, OSError, ValueError, EngineError) as error:
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
            self._activate(spec, detector, engine)
            self._write_last_good(spec)
            log.info("now serving %s (%s)", spec.label, detector.provider)
            return True

    def _fetch(self, spec: ModelSpec) -> Path:
        target = self._cached_path(spec.sha256)
        if target.exists() and sha256_file(target) == spec.sha256:
            return target
        store = self.store_for(spec.uri)
        return store.get_file(spec.uri, target, sha256=spec.sha256)
