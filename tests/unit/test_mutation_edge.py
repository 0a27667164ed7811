"""edge/inference.py's pure helpers, pinned to exact numbers (mutation testing: docs/mutation.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visioninapp.edge.inference import _parse_names, choose_providers, letterbox, nms


def test_nms_keeps_a_box_whose_overlap_equals_the_threshold() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4999).tolist() == [0]


def test_nms_orders_by_score_and_suppresses_against_the_best_only() -> None:
    # 1 overlaps 0 (IoU 0.81) and 2 (IoU 0.81); 0 and 2 overlap little (IoU 0.64 < 0.7).
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.6, 0.1], np.float32)
    kept = nms(boxes, scores, 0.7)
    assert kept.tolist() == [1, 3] and kept.dtype == np.int64
    assert nms(boxes, scores, 0.85).tolist() == [1, 2, 0, 3]


def test_nms_of_one_box_and_of_none() -> None:
    assert nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.3], np.float32), 0.5).tolist() == [0]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []


def test_nms_gives_inverted_boxes_no_area() -> None:
    boxes = np.array([[0, 0, 10, 10], [10, 10, 0, 0]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.0).tolist() == [0, 1]


def test_nms_equal_scores_keep_input_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [100, 0, 110, 10], [0, 100, 10, 110]], np.float32)
    assert nms(boxes, np.array([0.5, 0.5, 0.5], np.float32), 0.5).tolist() == [0, 1, 2]


def test_letterbox_of_a_tall_image_pads_left_and_right() -> None:
    image = np.full((200, 100, 3), 7, np.uint8)
    padded, gain, pad = letterbox(image, (64, 64))
    assert padded.shape == (64, 64, 3) and gain == (32 / 100, 64 / 200) and pad == (16, 0)
    assert (padded[:, :16] == 114).all() and (padded[:, 48:] == 114).all() and (padded[:, 16:48] == 7).all()


def test_letterbox_of_an_odd_padding_puts_the_extra_pixel_after() -> None:
    image = np.zeros((10, 20, 3), np.uint8)
    padded, gain, pad = letterbox(image, (15, 20))  # 5 rows of padding: 2 above, 3 below
    assert padded.shape == (15, 20, 3) and gain == (1.0, 1.0) and pad == (0, 2)
    assert (padded[:2] == 114).all() and (padded[2:12] == 0).all() and (padded[12:] == 114).all()


def test_letterbox_of_the_right_size_is_unchanged_and_a_sliver_keeps_one_pixel() -> None:
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    padded, gain, pad = letterbox(image, (4, 6))
    assert (padded == image).all() and gain == (1.0, 1.0) and pad == (0, 0)
    sliver = np.zeros((1, 400, 3), np.uint8)
    padded, gain, pad = letterbox(sliver, (64, 64))
    assert padded.shape == (64, 64, 3) and gain == (64 / 400, 1.0)


def test_letterbox_upscales_a_small_image() -> None:
    image = np.full((8, 16, 3), 200, np.uint8)
    padded, gain, pad = letterbox(image, (64, 64))
    assert gain == (4.0, 4.0) and pad == (0, 16) and (padded[16:48] == 200).all()


def test_providers_fall_back_to_cpu_and_skip_unknown_ones(tmp_path: Path) -> None:
    assert choose_providers([], "fp32", None) == ["CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider"], "fp32", None) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "fp16", tmp_path) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_tensorrt_options_in_full(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "b"
    chosen = choose_providers(["CPUExecutionProvider", "TensorrtExecutionProvider"], "fp16", cache)
    assert chosen == [
        (
            "TensorrtExecutionProvider",
            {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
            },
        ),
        "CPUExecutionProvider",
    ]
    assert cache.is_dir()
    assert choose_providers(["TensorrtExecutionProvider"], "int8", None) == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": False})
    ]


@pytest.mark.parametrize(
    ("raw", "classes", "names"),
    [
        ("{0: 'helmet', 1: 'head'}", 2, ["helmet", "head"]),
        ("{0: 'helmet', 2: 'vest'}", 3, ["helmet", "1", "vest"]),  # a gap keeps its index
        ("{0: 'helmet'}", 3, ["helmet", "1", "2"]),
        ("['a', 'b', 'c']", 2, ["a", "b", "c"]),
        ("not python", 2, ["0", "1"]),
        ("f(", 2, ["0", "1"]),
        ("42", 2, ["0", "1"]),
        ("", 3, ["0", "1", "2"]),
        (None, 1, ["0"]),
    ],
)
def test_class_names_from_the_models_metadata(raw: str | None, classes: int, names: list[str]) -> None:
    assert _parse_names(raw, classes) == names


def test_nms_ties_keep_input_order_beyond_a_small_sort() -> None:
    scores = np.random.RandomState(0).choice([0.5, 0.6], 200).astype(np.float32)
    boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(200)], np.float32)  # none overlap
    assert nms(boxes, scores, 0.5).tolist() == np.argsort(-scores, kind="stable").tolist()


def test_nms_in_float64_keeps_an_overlap_exactly_at_the_threshold() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float64)
    assert nms(boxes, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]


def test_nms_of_sub_pixel_boxes_uses_their_real_areas() -> None:
    thin = np.array([[0, 0, 0.5, 10], [0, 0, 0.5, 10]], np.float32)
    flat = np.array([[0, 0, 10, 0.5], [0, 0, 10, 0.5]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(thin, scores, 0.5).tolist() == [0]
    assert nms(flat, scores, 0.5).tolist() == [0]


def test_nms_boxes_apart_by_a_sub_pixel_gap_do_not_overlap() -> None:
    scores = np.array([0.9, 0.8], np.float32)
    beside = np.array([[0, 0, 10, 10], [10.5, 0, 20.5, 10]], np.float32)
    below = np.array([[0, 0, 10, 10], [0, 10.5, 10, 20.5]], np.float32)
    assert nms(beside, scores, 0.0).tolist() == [0, 1]
    assert nms(below, scores, 0.0).tolist() == [0, 1]


def test_letterbox_to_a_wide_target_is_bounded_by_its_height() -> None:
    padded, gain, pad = letterbox(np.zeros((10, 10, 3), np.uint8), (5, 20))
    assert padded.shape == (5, 20, 3) and gain == (0.5, 0.5) and pad == (7, 0)


def test_letterbox_splits_an_odd_horizontal_padding() -> None:
    padded, _gain, pad = letterbox(np.zeros((10, 10, 3), np.uint8), (10, 15))
    assert padded.shape == (10, 15, 3) and pad == (2, 0)
    assert (padded[:, :2] == 114).all() and (padded[:, 2:12] == 0).all() and (padded[:, 12:] == 114).all()


def test_letterbox_of_a_tall_sliver_keeps_one_column() -> None:
    padded, gain, _pad = letterbox(np.zeros((400, 1, 3), np.uint8), (64, 64))
    assert padded.shape == (64, 64, 3) and gain == (1.0, 64 / 400)
    assert int((padded[0] == 0).all(axis=1).sum()) == 1


def test_the_tensorrt_engine_cache_may_exist_already(tmp_path: Path) -> None:
    for _ in range(2):
        choose_providers(["TensorrtExecutionProvider"], "fp16", tmp_path / "engines")
    (tmp_path / "engines").mkdir(exist_ok=True)
    assert (tmp_path / "engines").is_dir()
