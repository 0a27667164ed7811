"""Engines per device (edge/engines.py, edge/models.py): the key, its canonical form and digest, the
rule that an engine built for another key (or whose bytes changed) is never loaded, and a real build
of the CPU stand-in (an onnxruntime optimized-model file) in the background of the model manager."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import onnx
import pytest

from tests.helpers import wait_for
from tests.unit.test_edge_units import _model, _spec
from visioninapp.backends.storage import LocalArtifactStore, sha256_file
from visioninapp.edge.engines import (
    DeviceFacts,
    EngineCache,
    EngineError,
    EngineKey,
    engine_key,
    read_device,
    resolve_precision,
)
from visioninapp.edge.models import ModelManager, ModelSpec

SHA = "a" * 64
KEY = EngineKey(
    SHA, "NVIDIA Jetson Orin Nano", "# R36 (release), REVISION: 4.0", "tensorrt 10.3.0", "tensorrt", "fp16"
)
OTHER_VALUES = {
    "model_sha256": "b" * 64,
    "device": "NVIDIA Jetson AGX Orin",
    "l4t": "# R35 (release), REVISION: 5.0",
    "runtime": "tensorrt 8.6.2",
    "engine": "ort-optimized",
    "precision": "int8",
}


def test_the_canonical_key_is_sorted_compact_json_and_its_digest_is_its_sha256() -> None:
    text = KEY.canonical()
    assert json.loads(text) == KEY.as_dict() and list(json.loads(text)) == sorted(KEY.as_dict())
    assert text.startswith('{"device":"NVIDIA Jetson Orin Nano","engine":"tensorrt","l4t":"# R36')
    assert text.endswith('"precision":"fp16","runtime":"tensorrt 10.3.0"}')
    import hashlib

    assert KEY.digest == hashlib.sha256(text.encode()).hexdigest()
    assert EngineKey.from_dict(json.loads(text)) == KEY


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_every_field_changes_the_digest_and_is_named_as_a_difference(field: str) -> None:
    other = dataclasses.replace(KEY, **{field: OTHER_VALUES[field]})
    assert other.digest != KEY.digest
    (difference,) = KEY.differences(other)
    assert difference.startswith(f"{field}: {OTHER_VALUES[field]!r}")


@pytest.mark.parametrize(
    "raw",
    [
        {**KEY.as_dict(), "extra": "x"},
        {k: v for k, v in KEY.as_dict().items() if k != "l4t"},
        {**KEY.as_dict(), "precision": 16},
        {**KEY.as_dict(), "model_sha256": "A" * 64},
        {**KEY.as_dict(), "engine": "openvino"},
        {**KEY.as_dict(), "device": ""},
        ["not", "a", "key"],
    ],
)
def test_anything_but_exactly_a_key_is_refused(raw: object) -> None:
    with pytest.raises(EngineError):
        EngineKey.from_dict(raw)


def test_a_jetson_is_read_from_its_device_tree_and_l4t_release(tmp_path: Path) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    release = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64"
    (tmp_path / "etc/nv_tegra_release").write_text(release + "\nINSTALL_TYPE=\n")
    facts = read_device(tmp_path)
    assert facts == DeviceFacts("NVIDIA Jetson Orin Nano Developer Kit", release, jetson=True)
    key = engine_key(SHA, "tensorrt", "auto", facts, runtime="tensorrt 10.3.0")
    assert (key.device, key.l4t, key.precision) == (facts.device, release, "fp16")


def test_off_a_jetson_the_cpu_names_the_device(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n")
    facts = read_device(tmp_path)
    assert facts.device.endswith(" AMD EPYC 7B13") and facts.l4t == "none" and not facts.jetson


@pytest.mark.parametrize(
    ("requested", "engine", "jetson", "expected"),
    [
        ("auto", "tensorrt", True, "fp16"),
        ("auto", "tensorrt", False, "fp32"),
        ("fp32", "tensorrt", True, "fp32"),
        ("int8", "tensorrt", True, "int8"),
        ("fp16", "ort-optimized", False, "fp32"),
        ("auto", "ort-optimized", True, "fp32"),
        ("int8", "ort-optimized", False, "int8"),
    ],
)
def test_precision(requested: str, engine: str, jetson: bool, expected: str) -> None:
    assert resolve_precision(requested, engine, jetson) == expected  # type: ignore[arg-type]


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(EngineError, match="precision 'bf16'"):
        resolve_precision("bf16", "tensorrt", True)


# --- the never-load-a-mismatch rule --------------------------------------------------------------


def _stored(cache: EngineCache, key: EngineKey, tmp_path: Path, content: bytes = b"engine") -> Path:
    built = tmp_path / "built.onnx"
    built.write_bytes(content)
    return cache.store(key, built)[0]


def test_a_stored_engine_loads_for_exactly_its_key(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    path = _stored(cache, KEY, tmp_path)
    assert cache.load(KEY) == (path, sha256_file(path))
    assert path.parent == tmp_path / "engines" / SHA / KEY.digest


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_an_engine_recorded_for_another_key_is_never_loaded_and_is_deleted(
    tmp_path: Path, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Copied under this device's key (another Jetson's cache, a restored backup): the record says."""
    cache = EngineCache(tmp_path / "engines")
    foreign = dataclasses.replace(KEY, **{field: OTHER_VALUES[field]})
    source = _stored(cache, foreign, tmp_path).parent
    target = cache.directory(KEY)
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    with caplog.at_level(logging.ERROR, "visioninapp.edge.engines"):
        assert cache.load(KEY) is None
    assert not target.exists()
    assert f"built for another key: {field}:" in caplog.text


def test_a_tampered_engine_file_is_never_loaded_and_is_deleted(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    path = _stored(cache, KEY, tmp_path)
    path.write_bytes(b"engine, changed")
    assert cache.load(KEY) is None
    assert not path.parent.exists()


def test_an_engine_whose_record_was_edited_to_this_key_still_fails_its_checksum(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    path = _stored(cache, KEY, tmp_path)
    record = path.parent / "engine.json"
    raw = json.loads(record.read_text())
    record.write_text(json.dumps({**raw, "sha256": "0" * 64}))
    assert cache.load(KEY) is None and not path.parent.exists()


def test_an_unreadable_record_is_refused(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    path = _stored(cache, KEY, tmp_path)
    (path.parent / "engine.json").write_text("{not json")
    assert cache.load(KEY) is None and not path.parent.exists()


def test_a_download_that_does_not_hash_to_the_expected_sha256_is_not_stored(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    built = tmp_path / "download.onnx"
    built.write_bytes(b"poisoned")
    with pytest.raises(EngineError, match="expected 000000000000"):
        cache.store(KEY, built, "0" * 64)
    assert cache.load(KEY) is None and not built.exists()


# --- the CPU stand-in, built for real in the manager's background --------------------------------


def _engine_spec(path: Path, version: str) -> ModelSpec:
    return dataclasses.replace(_spec(path, version), format="tensorrt")


def _manager(cache: Path, **options: object) -> ModelManager:
    return ModelManager(
        cache,
        lambda uri: LocalArtifactStore(),
        "auto",
        engine="ort-optimized",
        **options,  # type: ignore[arg-type]
    )


def _held_builds(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Builds (the real ones) wait for the returned event: the test decides when a build ends."""
    import visioninapp.edge.models as models

    release, real = threading.Event(), models.build_engine

    def held(*args: object, **kwargs: object) -> Path:
        release.wait(60)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "build_engine", held)
    return release


def test_the_stand_in_is_built_in_the_background_keyed_cached_and_served_after_its_self_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _held_builds(monkeypatch)
    manager = _manager(tmp_path / "cache")
    assert manager.set_desired(_spec(_model(tmp_path / "old.onnx"), "old"))
    new = _engine_spec(_model(tmp_path / "new.onnx", classes=3), "new")
    assert not manager.set_desired(new)  # building: the old model keeps serving meanwhile
    assert manager.building is not None and not manager.ready and manager.rejection is None
    assert manager.current is not None and manager.current.spec.label == "old"
    reason = manager.not_ready_reason or ""
    assert reason.startswith("engine building: ort-optimized fp32 engine of new"), reason
    report = manager.engine_report()
    assert report is not None and report.state == "building" and report.sha256 is None
    release.set()
    wait_for(lambda: manager.ready, 60, "the engine built and serving")
    assert manager.current is not None and manager.current.engine is not None
    key = manager.current.engine
    assert key.model_sha256 == new.sha256 and key.engine == "ort-optimized" and key.precision == "fp32"
    cached = EngineCache(tmp_path / "cache" / "engines").load(key)
    assert cached is not None
    optimized = onnx.load(str(cached[0]))  # onnxruntime's optimized graph: its constant folded
    assert not optimized.graph.node and [i.name for i in optimized.graph.initializer] == ["output0"]
    assert cached[0].read_bytes() != (tmp_path / "new.onnx").read_bytes()
    report = manager.engine_report()
    assert report is not None and report.state == "ready" and report.source == "built"
    assert report.sha256 == cached[1] and report.key_hash == key.digest
    # a restart loads the cached engine (same key) without building
    again = _manager(tmp_path / "cache")
    assert again.load_last_good() and again.ready
    assert again.engine is not None and again.engine.source == "cache"


def test_an_int8_engine_without_the_artifacts_calibration_fails_with_the_reason(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "cache")
    manager.precision = "int8"
    spec = _engine_spec(_model(tmp_path / "fp32.onnx"), "fp32-model")
    assert not manager.set_desired(spec)
    wait_for(lambda: manager.rejection is not None, 60, "the build refused")
    assert "an INT8 engine needs the artifact's calibration" in (manager.rejection or "")
    report = manager.engine_report()
    assert report is not None and report.state == "failed" and "calibration" in (report.message or "")
    assert manager.building is None and "engine building" not in (manager.not_ready_reason or "")


def test_a_build_past_its_timeout_fails_and_its_late_engine_is_never_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import visioninapp.edge.models as models

    release = threading.Event()
    real = models.build_engine

    def slow_build(*args: object, **kwargs: object) -> Path:
        release.wait(30)  # held until the supervisor has given up on it
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "build_engine", slow_build)
    manager = _manager(tmp_path / "cache", build_timeout=0.2)
    assert manager.set_desired(_spec(_model(tmp_path / "old.onnx"), "old"))
    spec = _engine_spec(_model(tmp_path / "new.onnx", classes=3), "new")
    assert not manager.set_desired(spec)
    wait_for(lambda: manager.rejection is not None, 30, "the build timed out")
    assert "engine build timed out after 0 s" in (manager.rejection or "")
    release.set()
    assert manager.current is not None and manager.current.spec.label == "old"
    assert not manager.ready


def test_a_cached_engine_of_another_device_is_not_loaded_the_engine_is_built_instead(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = _engine_spec(_model(tmp_path / "new.onnx"), "new")
    manager = _manager(cache)
    key = engine_key(spec.sha256, "ort-optimized", "auto")
    foreign = dataclasses.replace(key, device="NVIDIA Jetson AGX Orin")
    store = EngineCache(cache / "engines")
    planted = store.directory(key)
    _stored(store, foreign, tmp_path, b"an engine for another device").parent.rename(planted)
    assert not manager.set_desired(spec)  # refused: built here
    wait_for(lambda: manager.ready, 60, "built here")
    assert manager.engine is not None and manager.engine.source == "built"
    import hashlib

    assert manager.engine.sha256 != hashlib.sha256(b"an engine for another device").hexdigest()
    assert manager.engine.sha256 == sha256_file(planted / "engine.onnx")


def test_an_engine_that_fails_the_self_test_never_serves_and_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = _manager(tmp_path / "cache")
    assert manager.set_desired(_spec(_model(tmp_path / "old.onnx"), "old"))
    nan = _engine_spec(_model(tmp_path / "nan.onnx", nan=True), "nan")
    assert not manager.set_desired(nan)
    wait_for(lambda: manager.rejection is not None, 60, "the built engine rejected")
    nan_values = "self-test failed: the model produced NaN or infinite values"
    assert manager.rejection == f"model nan rejected: built engine rejected: {nan_values}"
    assert (
        manager.current is not None and manager.current.spec.label == "old" and manager.current.engine is None
    )
    report = manager.engine_report()
    assert report is not None and report.state == "failed"
    assert not (tmp_path / "cache" / "engines" / nan.sha256).exists(), "nothing rejected stays on disk"
