"""Engines built on the device for the device: their key, the node's cache, the fleet's shared cache.

An engine (a TensorRT engine, or its CPU stand-in: an onnxruntime optimized-model file) only runs on
the hardware and software it was built for. Its `EngineKey` names all of that: the model's sha256,
the device model (`/proc/device-tree/model` on a Jetson, the CPU elsewhere), the L4T release
(`/etc/nv_tegra_release`), the engine runtime's version (TensorRT's, or onnxruntime's and its
provider), the engine kind and the precision. The rule: an engine whose recorded key differs from
the device's key in any field is never loaded, and one whose bytes do not hash to its recorded
sha256 neither (both are deleted from the node's cache).

- The node's cache: `<cache>/engines/<model sha256>/<key digest>/engine.onnx` with `engine.json`
  (the canonical key and the file's sha256), written atomically after a build or a download.
- The shared cache in the artifact store: `<engine cache uri>/<key digest>/engine.onnx` (and the
  builder's claim `engine.json`), written only by the node the operator designated as that key's
  builder (its IAM policy allows that prefix alone), and `manifest.json`, written only by the
  operator once it has checked the uploaded file's sha256 against the builder's report. Other nodes
  with the same key read the manifest, download the engine, check its sha256 against the manifest
  and load it instead of building.
- Both engine kinds are one ONNX file: TensorRT's is an EP-context model with the serialized engine
  embedded (onnxruntime's `trt_dump_ep_context_model`), the stand-in is onnxruntime's optimized graph
  (`SessionOptions.optimized_model_filepath`, every graph optimisation, CPU-specific layouts).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from visioninapp.backends.storage import (
    ArtifactStore,
    ChecksumMismatch,
    ObjectNotFound,
    join_uri,
    sha256_file,
)

__all__ = [
    "ENGINE_FILE",
    "MANIFEST_FILE",
    "DeviceFacts",
    "EngineCache",
    "EngineError",
    "EngineKey",
    "EngineKind",
    "Precision",
    "SharedEngines",
    "build_engine",
    "engine_key",
    "engine_providers",
    "read_device",
    "resolve_precision",
    "tensorrt_version",
]

log = logging.getLogger(__name__)

EngineKind = Literal["tensorrt", "ort-optimized"]
Precision = Literal["fp32", "fp16", "int8"]
ENGINE_FILE = "engine.onnx"
RECORD_FILE = "engine.json"
MANIFEST_FILE = "manifest.json"
QDQ_MARKER = ("quantization", "int8-static-qdq")  # written by edge/quantize.py into the INT8 model
_SHA256 = frozenset("0123456789abcdef")


class EngineError(RuntimeError):
    """An engine cannot be keyed, built, stored or loaded on this device."""


@dataclass(frozen=True)
class DeviceFacts:
    device: str  # "NVIDIA Jetson AGX Orin Developer Kit", or "x86_64 <cpu model>"
    l4t: str  # first line of /etc/nv_tegra_release, "none" off a Jetson
    jetson: bool


def _first_line(path: Path) -> str | None:
    try:
        text = path.read_bytes().replace(b"\x00", b"").decode(errors="replace").strip()
    except OSError:
        return None
    return text.splitlines()[0].strip() if text else None


def read_device(root: Path = Path("/")) -> DeviceFacts:
    """What this device is (`root` is / except in tests)."""
    model = _first_line(root / "proc/device-tree/model")
    l4t = _first_line(root / "etc/nv_tegra_release")
    if model:
        return DeviceFacts(model, l4t or "none", jetson=l4t is not None or "jetson" in model.lower())
    cpu = "unknown cpu"
    try:
        for line in (root / "proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return DeviceFacts(f"{platform.machine()} {cpu}", l4t or "none", jetson=False)


def tensorrt_version() -> str:
    """TensorRT's version as the library reports it (the Python module is not needed)."""
    try:
        import tensorrt  # type: ignore[import-not-found]

        return str(tensorrt.__version__)
    except ImportError:
        pass
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        number = int(library.getInferLibVersion())
        if number >= 10000:  # TensorRT 10: major * 10000 + minor * 100 + patch
            return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
        return f"{number // 1000}.{number // 100 % 10}.{number % 100}"  # TensorRT 8
    raise EngineError("TensorRT not found on this device (no tensorrt module, no libnvinfer.so)")


def resolve_precision(requested: str, engine: EngineKind, jetson: bool) -> Precision:
    """`auto`: FP16 for TensorRT on a Jetson, FP32 elsewhere; the CPU stand-in is FP32 unless INT8
    (its source is then the artifact's quantized model)."""
    if requested not in (*get_args(Precision), "auto"):
        raise EngineError(f"precision {requested!r}: use auto, fp32, fp16 or int8")
    if engine == "ort-optimized":
        return "int8" if requested == "int8" else "fp32"
    if requested == "auto":
        return "fp16" if jetson else "fp32"
    return requested  # type: ignore[return-value]


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two engines are interchangeable only if their keys are equal."""

    model_sha256: str
    device: str
    l4t: str
    runtime: str  # "tensorrt 10.3.0", or "onnxruntime 1.20.1 CPUExecutionProvider"
    engine: EngineKind
    precision: Precision

    def __post_init__(self) -> None:
        if len(self.model_sha256) != 64 or not set(self.model_sha256) <= _SHA256:
            raise EngineError(f"engine key: model_sha256 {self.model_sha256!r} is not a lowercase sha256")
        for name in ("device", "l4t", "runtime"):
            if not getattr(self, name):
                raise EngineError(f"engine key: {name} is empty")
        if self.engine not in get_args(EngineKind):
            raise EngineError(f"engine key: unknown engine {self.engine!r}")
        if self.precision not in get_args(Precision):
            raise EngineError(f"engine key: unknown precision {self.precision!r}")

    def canonical(self) -> str:
        """One JSON text per key: sorted fields, no spaces."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> EngineKey:
        """A key read back (a record, a manifest): exactly the key's fields, all strings."""
        names = {f.name for f in fields(cls)}
        if (
            not isinstance(raw, dict)
            or set(raw) != names
            or not all(isinstance(v, str) for v in raw.values())
        ):
            raise EngineError(f"not an engine key (need exactly the string fields {sorted(names)}): {raw!r}")
        return cls(**raw)

    def differences(self, other: EngineKey) -> list[str]:
        """The fields in which `other` differs from this key, with both values."""
        return [
            f"{f.name}: {getattr(other, f.name)!r} (this device: {getattr(self, f.name)!r})"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def engine_key(
    model_sha256: str,
    engine: EngineKind,
    requested_precision: str,
    facts: DeviceFacts | None = None,
    runtime: str | None = None,
) -> EngineKey:
    """This device's key for an engine of `model_sha256` (`facts`, `runtime`: read here if None)."""
    facts = facts or read_device()
    if runtime is None:
        if engine == "tensorrt":
            runtime = f"tensorrt {tensorrt_version()}"
        else:
            import onnxruntime as ort

            runtime = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    precision = resolve_precision(requested_precision, engine, facts.jetson)
    return EngineKey(model_sha256, facts.device, facts.l4t, runtime, engine, precision)


# --- building ----------------------------------------------------------------------------------


def _verify_onnx(source: Path, key: EngineKey) -> None:
    """The ONNX file is a valid model, and an INT8 engine has the artifact's calibration (QDQ)."""
    import onnx

    try:
        model = onnx.load(str(source), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises its own types, and protobuf's
        raise EngineError(f"the ONNX model does not verify: {str(error).splitlines()[0]}") from None
    metadata = {p.key: p.value for p in model.metadata_props}
    if key.precision == "int8" and metadata.get(QDQ_MARKER[0]) != QDQ_MARKER[1]:
        raise EngineError(
            "an INT8 engine needs the artifact's calibration: deploy its `onnx-int8` model (QDQ scales "
            "from `visioninapp quantize`); this model has none"
        )


def engine_providers(key: EngineKey, context_file: Path | None = None) -> list[Any]:
    """onnxruntime providers that build (`context_file`: where the EP-context model goes) or load
    an engine of `key`."""
    if key.engine == "ort-optimized":
        return ["CPUExecutionProvider"]
    options: dict[str, Any] = {
        "trt_fp16_enable": key.precision == "fp16",
        "trt_int8_enable": key.precision == "int8",  # explicit quantization: the model's QDQ scales
    }
    if context_file is not None:
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(context_file.parent),
            trt_dump_ep_context_model=True,
            trt_ep_context_file_path=str(context_file),
            trt_ep_context_embed_mode=1,  # the serialized engine inside the ONNX file: one file
        )
    return [("TensorrtExecutionProvider", options), "CPUExecutionProvider"]


def build_engine(source: Path, key: EngineKey, out: Path, progress: Callable[[str], None]) -> Path:
    """Build the engine of `key` from the ONNX `source` into `out` (blocking: minutes for TensorRT)."""
    import onnxruntime as ort

    started = time.monotonic()
    progress(f"verifying the ONNX model for engine {key.digest[:12]}")
    _verify_onnx(source, key)
    work = out.parent / f".build-{key.digest[:12]}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    target = work / ENGINE_FILE
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if key.engine == "ort-optimized":
        options.optimized_model_filepath = str(target)
    available = ort.get_available_providers()
    if key.engine == "tensorrt" and "TensorrtExecutionProvider" not in available:
        raise EngineError(
            f"this onnxruntime has no TensorrtExecutionProvider (it has {', '.join(available)})"
        )
    progress(f"building the {key.engine} engine ({key.precision}, {key.runtime}) on {key.device}")
    try:
        ort.InferenceSession(str(source), options, providers=engine_providers(key, target))
    except Exception as error:  # onnxruntime raises its own types
        shutil.rmtree(work, ignore_errors=True)
        raise EngineError(f"engine build failed: {str(error).splitlines()[0]}") from None
    if not target.exists():
        shutil.rmtree(work, ignore_errors=True)
        raise EngineError(f"engine build wrote no engine file ({key.engine})")
    os.replace(target, out)
    shutil.rmtree(work, ignore_errors=True)
    progress(f"engine built in {time.monotonic() - started:.1f} s ({out.stat().st_size} bytes)")
    return out


# --- the node's cache --------------------------------------------------------------------------


class EngineCache:
    """Engines on the node's disk, each with the key it was built for and its sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, key: EngineKey) -> Path:
        return self.root / key.model_sha256 / key.digest

    def load(self, key: EngineKey) -> tuple[Path, str] | None:
        """The cached engine of `key` (path, sha256), if there is one that is exactly it. An entry
        whose record names another key, or whose file does not hash to its record, is deleted."""
        directory = self.directory(key)
        record = directory / RECORD_FILE
        if not record.exists():
            return None
        try:
            raw = json.loads(record.read_text())
            recorded = EngineKey.from_dict(raw.get("key"))
            sha256 = str(raw["sha256"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EngineError) as error:
            return self._refuse(directory, f"unreadable record ({error})")
        if recorded != key:
            return self._refuse(directory, "built for another key: " + "; ".join(key.differences(recorded)))
        engine = directory / ENGINE_FILE
        try:
            actual = sha256_file(engine)
        except OSError as error:
            return self._refuse(directory, f"engine file unreadable ({error})")
        if actual != sha256:
            return self._refuse(
                directory, f"engine file hashes to {actual[:12]}, its record says {sha256[:12]}"
            )
        return engine, sha256

    @staticmethod
    def _refuse(directory: Path, why: str) -> None:
        log.error("cached engine %s refused and deleted: %s", directory.name[:12], why)
        shutil.rmtree(directory, ignore_errors=True)
        return None

    def store(self, key: EngineKey, built: Path, sha256: str | None = None) -> tuple[Path, str]:
        """Move `built` into the cache under `key` (checked against `sha256` when given)."""
        directory = self.directory(key)
        directory.mkdir(parents=True, exist_ok=True)
        actual = sha256_file(built)
        if sha256 is not None and actual != sha256:
            built.unlink(missing_ok=True)
            raise EngineError(f"engine hashes to {actual[:12]}, expected {sha256[:12]}")
        engine = directory / ENGINE_FILE
        os.replace(built, engine)
        partial = directory / f"{RECORD_FILE}.partial"
        partial.write_text(json.dumps({"key": key.as_dict(), "sha256": actual}, sort_keys=True))
        os.replace(partial, directory / RECORD_FILE)  # the record last: an entry without one is ignored
        return engine, actual

    def staging(self, key: EngineKey) -> Path:
        directory = self.directory(key)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{ENGINE_FILE}.partial"

    def discard(self, model_sha256: str) -> None:
        shutil.rmtree(self.root / model_sha256, ignore_errors=True)


# --- the fleet's cache in the artifact store ---------------------------------------------------


class SharedEngines:
    """`<prefix>/<key digest>/`: the designated builder's engine and claim, the operator's manifest."""

    def __init__(self, store_for: Callable[[str], ArtifactStore], prefix: str) -> None:
        self.store_for, self.prefix = store_for, prefix.rstrip("/")

    def uri(self, key: EngineKey, name: str) -> str:
        return join_uri(self.prefix, key.digest, name)

    def fetch(self, key: EngineKey, target: Path) -> tuple[Path, str] | None:
        """Download the engine of `key` if the operator's manifest records one for exactly this key;
        the file must hash to the manifest's sha256 (else ChecksumMismatch, nothing kept)."""
        store = self.store_for(self.prefix)
        try:
            raw = json.loads(store.get_bytes(self.uri(key, MANIFEST_FILE)))
        except ObjectNotFound:
            return None
        try:
            recorded, sha256 = EngineKey.from_dict(raw.get("key")), str(raw["sha256"])
        except (EngineError, KeyError, TypeError, AttributeError) as error:
            raise EngineError(f"engine manifest {key.digest[:12]} unreadable: {error}") from None
        if recorded != key:
            raise EngineError(
                f"engine manifest {key.digest[:12]} is for another key: "
                + "; ".join(key.differences(recorded))
            )
        try:
            store.get_file(self.uri(key, ENGINE_FILE), target, sha256=sha256)
        except ChecksumMismatch:
            target.unlink(missing_ok=True)
            raise
        return target, sha256

    def upload(self, key: EngineKey, engine: Path, sha256: str, node: str) -> None:
        """The builder's upload: the engine, then its claim (key, sha256, node) for the operator."""
        store = self.store_for(self.prefix)
        store.put_file(engine, self.uri(key, ENGINE_FILE))
        claim = {"key": key.as_dict(), "sha256": sha256, "builder": node}
        store.put_bytes(json.dumps(claim, sort_keys=True).encode(), self.uri(key, RECORD_FILE))
