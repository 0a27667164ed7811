"""The edge model lifecycle (edge/models.py) in detail: the self-test's verdicts and the reason each
one gives, the last-good model on restart (served, rejected, or unusable), the reuse of a model
already loaded, transient failures against rejections, and the log lines an operator of the fleet
reads to know which model a node serves and why.

The tiny ONNX models come from test_edge_units.py (`_model`, `_spec`); `_probing` rewires one so
that it reads its input and scores every anchor 0.5 (a real model does both; `_model`'s is a
constant that ignores the image and scores nothing).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import visioninapp.edge.inference as inference
import visioninapp.edge.models as models
from tests.helpers import wait_for
from tests.unit.test_edge_units import _model, _spec
from visioninapp.backends.storage import LocalArtifactStore
from visioninapp.edge.inference import Detector, ModelError
from visioninapp.edge.models import ModelManager, ModelSpec

LOGGER = "visioninapp.edge.models"
NAN_REJECTED = "model nan rejected: self-test failed: the model produced NaN or infinite values"


def _probing(path: Path, score: float = 0.5) -> Path:
    """`_model`'s graph, with every output value `score` plus 0 x mean(image): it needs its input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(_model(path))
    constant = model.graph.node[0]
    values = numpy_helper.to_array(constant.attribute[0].t).copy()
    values[:] = score
    constant.attribute[0].t.CopyFrom(numpy_helper.from_array(values, "v"))
    constant.output[0] = "constant"
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    model.graph.node.extend(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
            helper.make_node("Constant", [], ["zero"], value=zero),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["constant", "nothing"], ["output0"]),
        ]
    )
    onnx.save(model, path)
    return path


def _manager(cache: Path, store_for: Any = None) -> ModelManager:
    return ModelManager(cache, store_for or (lambda uri: LocalArtifactStore()))


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# --- the self-test ------------------------------------------------------------------------------


def test_a_model_producing_nan_is_rejected_with_the_self_tests_reason(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "cache")
    nan = _spec(_model(tmp_path / "nan.onnx", nan=True), "nan")
    assert not manager.set_desired(nan)
    assert manager.not_ready_reason == NAN_REJECTED


def test_an_output_that_is_not_a_detection_head_is_rejected_with_its_shape(tmp_path: Path) -> None:
    # 3 rows: fewer than the 4 box coordinates of a YOLOv8 head, so there are no class scores at all
    headless = _spec(_model(tmp_path / "headless.onnx", classes=-1), "headless")
    manager = _manager(tmp_path / "cache")
    assert not manager.set_desired(headless) and not manager.retryable
    assert manager.not_ready_reason == (
        "model headless rejected: self-test failed: output [1, 3, 21] is not a YOLO detection head "
        "(attempt to get argmax of an empty sequence)"
    )


def test_the_self_test_feeds_the_model_an_image_and_decodes_every_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that reads its input passes; the self-test runs the whole decode, NMS over every
    anchor that scores above nothing, so its time limit covers the worst case of a real image."""
    seen: list[int] = []
    real_nms = inference.nms

    def counting_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
        seen.append(len(scores))
        return real_nms(boxes, scores, threshold)

    monkeypatch.setattr(inference, "nms", counting_nms)
    probing = _spec(_probing(tmp_path / "probing.onnx"), "probing")
    manager = _manager(tmp_path / "cache")
    assert manager.set_desired(probing), manager.not_ready_reason
    assert manager.ready and manager.rejection is None and manager.rejections == 0
    assert seen == [21]  # the 8x8 + 4x4 + 2x2 + 1 anchors of a 32-pixel model, all scored 0.5


@pytest.mark.parametrize(("elapsed", "passes"), [(30.0, True), (30.001, False)])
def test_the_self_test_allows_30_seconds_and_not_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, elapsed: float, passes: bool
) -> None:
    detector = Detector(_model(tmp_path / "good.onnx"))
    ticks = iter([1000.0, 1000.0 + elapsed])
    monkeypatch.setattr(models, "time", SimpleNamespace(perf_counter=lambda: next(ticks), time=time.time))
    if passes:
        models._self_test(detector)
    else:
        with pytest.raises(ModelError) as raised:
            models._self_test(detector)
        assert str(raised.value) == "self-test failed: one inference took more than 30 s"


# --- the last-good model on restart ---------------------------------------------------------------


def test_without_a_last_good_marker_nothing_serves(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "cache")
    assert manager.load_last_good() is False
    assert manager.current is None and manager.not_ready_reason == "no model loaded yet"


def test_the_last_good_model_serves_at_once_after_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    good = _spec(_model(tmp_path / "good.onnx"), "good")
    assert _manager(cache).set_desired(good)
    restarted = _manager(cache)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert restarted.load_last_good() is True
    assert restarted.current is not None and restarted.current.spec == good
    assert isinstance(restarted.current.detector, Detector)
    assert restarted.ready  # nothing else is desired yet
    assert _messages(caplog, logging.INFO) == ["serving last-good model good from the cache"]


def test_a_last_good_file_replaced_by_another_model_is_rejected_by_its_checksum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file still loads and self-tests (it is another valid model): only its hash tells."""
    cache = tmp_path / "cache"
    good = _spec(_model(tmp_path / "good.onnx"), "good")
    assert _manager(cache).set_desired(good)
    cached = cache / "models" / f"{good.sha256}.onnx"
    cached.write_bytes(_model(tmp_path / "other.onnx", classes=3).read_bytes())
    restarted = _manager(cache)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert restarted.load_last_good() is False
    assert restarted.current is None
    assert not cached.exists() and not (cache / "last-good.json").exists()
    assert _messages(caplog, logging.ERROR) == [
        "last-good model rejected, waiting for the desired one: cached file does not match its checksum"
    ]
    assert _messages(caplog, logging.INFO) == []


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ("{not json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (
            json.dumps({"uri": "file:///m.onnx", "sha256": "a" * 64, "colour": "red"}),
            "ModelSpec.__init__() got an unexpected keyword argument 'colour'",
        ),
    ],
)
def test_an_unreadable_last_good_marker_is_unusable_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, marker: str, error: str
) -> None:
    cache = tmp_path / "cache"
    manager = _manager(cache)
    (cache / "last-good.json").write_text(marker)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert manager.load_last_good() is False
    assert manager.current is None
    assert _messages(caplog, logging.ERROR) == [
        f"last-good model unusable, waiting for the desired one: {error}"
    ]


def test_a_last_good_model_missing_from_the_cache_is_unusable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    good = _spec(_model(tmp_path / "good.onnx"), "good")
    assert _manager(cache).set_desired(good)
    cached = cache / "models" / f"{good.sha256}.onnx"
    cached.unlink()
    restarted = _manager(cache)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert restarted.load_last_good() is False
    assert restarted.current is None
    (message,) = _messages(caplog, logging.ERROR)
    assert message.startswith("last-good model unusable, waiting for the desired one: [Errno 2] ")
    assert str(cached) in message


# --- set_desired ----------------------------------------------------------------------------------


def test_a_model_with_the_same_hash_is_not_loaded_again(tmp_path: Path) -> None:
    """A new version name for the same file: the loaded detector serves on, under the new name."""
    cache = tmp_path / "cache"
    path = _model(tmp_path / "good.onnx")
    first, renamed = _spec(path, "v1"), _spec(path, "v1-renamed")
    manager = _manager(cache)
    assert manager.set_desired(first)
    loaded = manager.current
    assert loaded is not None
    assert not manager.set_desired(_spec(_model(tmp_path / "nan.onnx", nan=True), "nan"))
    assert manager.rejection is not None and not manager.ready
    assert manager.set_desired(renamed) is True
    current = manager.current
    assert current is not None and current.spec == renamed
    assert current.detector is loaded.detector and current.loaded_at == loaded.loaded_at
    assert manager.ready and manager.not_ready_reason is None
    assert json.loads((cache / "last-good.json").read_text())["version"] == "v1-renamed"


def test_a_desired_model_overtaken_by_a_newer_one_is_not_loaded(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "cache")
    older = _spec(_model(tmp_path / "older.onnx"), "older")
    newer = _spec(_model(tmp_path / "newer.onnx", classes=3), "newer")
    results: dict[str, bool] = {}

    def desire(spec: ModelSpec) -> None:
        results[spec.version or ""] = manager.set_desired(spec)

    with manager._swap_lock:  # a swap in progress: both calls queue behind it
        first = threading.Thread(target=desire, args=(older,))
        first.start()
        wait_for(lambda: manager.desired == older, 30, "the older model to be desired", interval=0.001)
        second = threading.Thread(target=desire, args=(newer,))
        second.start()
        wait_for(lambda: manager.desired == newer, 30, "the newer model to be desired", interval=0.001)
    first.join(30)
    second.join(30)
    assert results == {"older": False, "newer": True}
    assert manager.current is not None and manager.current.spec == newer
    assert not (manager.cache_dir / "models" / f"{older.sha256}.onnx").exists()


class Unreachable(Exception):
    pass


def test_an_unreachable_store_is_retryable_and_rejections_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _spec(_model(tmp_path / "good.onnx"), "good")
    remote = ModelSpec("s3://models/remote.onnx", "c" * 64, version="remote")
    nan = _spec(_model(tmp_path / "nan.onnx", nan=True), "nan")

    def store_for(uri: str) -> Any:
        if uri.startswith("s3://"):
            raise Unreachable("connection refused")
        return LocalArtifactStore()

    manager = _manager(tmp_path / "cache", store_for)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert manager.set_desired(good)
        assert _messages(caplog, logging.INFO) == ["now serving good (CPUExecutionProvider)"]
        caplog.clear()

        assert manager.set_desired(remote) is False  # transient: the store, not the model
        assert manager.retryable is True and manager.rejections == 0
        assert manager.rejection == "model remote not available: Unreachable: connection refused"
        assert _messages(caplog, logging.ERROR) == [manager.rejection]
        assert manager.current is not None and manager.current.spec == good
        caplog.clear()

        assert manager.set_desired(nan) is False  # the model's own fault: not retryable
        assert manager.retryable is False and manager.rejections == 1
        assert _messages(caplog, logging.ERROR) == [f"{NAN_REJECTED}; still serving good"]
        assert not manager.set_desired(_spec(tmp_path / "good.onnx", "wrong-sum", "0" * 64))
        assert manager.rejections == 2 and manager.retryable is False


def test_a_rejection_with_nothing_serving_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = _manager(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert not manager.set_desired(_spec(_model(tmp_path / "nan.onnx", nan=True), "nan"))
    assert manager.rejections == 1
    assert _messages(caplog, logging.ERROR) == [f"{NAN_REJECTED}; still serving nothing"]
