"""INT8 static quantization of a YOLO ONNX model, accepted only through an accuracy gate.

onnxruntime static QDQ quantization (per-channel s8 weights, u8 activations, reduce_range for
AVX2/VNNI-less CPUs), calibrated on the training images with the runtime's own letterbox. The
head's box decoding (softmax, sigmoid, concatenations, coordinate arithmetic) stays FP32:
quantizing it costs all of the accuracy for little speed. The gate measures mAP50-95 of both
models on the validation images with the same evaluator; the INT8 model is kept only if the drop
is small.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from visioninapp.edge.evaluate import Evaluation, evaluate
from visioninapp.edge.inference import Detector
from visioninapp.images import read_image

__all__ = ["QuantizationReport", "quantize_model", "quantize_with_gate"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
_LAYER = re.compile(r"^/model\.(\d+)/")


@dataclass(frozen=True)
class QuantizationReport:
    fp32: Evaluation
    int8: Evaluation
    fp32_ms: float
    int8_ms: float
    max_drop: float
    int8_path: Path

    @property
    def drop(self) -> float:
        """Loss of mAP50-95 in points (0-100 scale)."""
        return (self.fp32.map50_95 - self.int8.map50_95) * 100

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


def head_decode_nodes(model: onnx.ModelProto, family: str | None = None) -> list[str]:
    """Nodes of the Detect head that are not convolutions (activations, DFL, decoding), plus the DFL.

    The decoding mixes pixel coordinates and probabilities in one tensor: in 8 bits the scores
    vanish (seen: mAP 0 with the whole head quantized). Measured on yolo11n (this 2-core CPU, 640 px,
    sessions without spinning threads): keeping all of these FP32 costs 0.55 mAP50-95 points and
    runs about 1.25x faster than FP32; quantizing the head's activations and DFL too runs about
    1.37x, but its drop swung with the calibration set (-0.1 to +1.65 points) and failed the gate.
    A YOLOX export (`family: yolox` in its metadata) keeps all of its head but the convolutions FP32.
    """
    family = family or {prop.key: prop.value for prop in model.metadata_props}.get("family")
    if family == "yolox":  # YOLOX's head (`/head/...`): its activations and decoding
        return [n.name for n in model.graph.node if n.name.startswith("/head/") and n.op_type != "Conv"]
    layers = [int(m.group(1)) for node in model.graph.node if (m := _LAYER.match(node.name))]
    if not layers:
        return []
    prefix = f"/model.{max(layers)}/"
    return [
        node.name
        for node in model.graph.node
        if node.name.startswith(prefix) and (node.op_type != "Conv" or "/dfl/" in node.name)
    ]


class _CalibrationReader:
    """Feeds letterboxed training images to the calibrator, one at a time."""

    def __init__(self, detector: Detector, images: list[Path]) -> None:
        self.detector, self.images, self.index = detector, images, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self.index < len(self.images):
            image = cv2.imread(str(self.images[self.index]))
            self.index += 1
            if image is not None:
                tensor, _, _ = self.detector.preprocess(image)
                return {self.detector.input_name: tensor}
        return None

    def rewind(self) -> None:
        self.index = 0


def quantize_model(
    fp32: Path, out: Path, calibration: list[Path], method: str = "minmax", keep_head_fp32: bool = True
) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}")
    if not calibration:
        raise ValueError("no calibration images: point --data at a dataset with training images")
    out.parent.mkdir(parents=True, exist_ok=True)
    prepared = out.with_name(f".{out.stem}.prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    source = {prop.key: prop.value for prop in onnx.load(str(fp32), load_external_data=False).metadata_props}
    exclude = head_decode_nodes(model, source.get("family")) if keep_head_fp32 else []
    quantize_static(
        str(prepared),
        str(out),
        _CalibrationReader(Detector(fp32), calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[method],
        nodes_to_exclude=exclude,
    )
    prepared.unlink(missing_ok=True)
    _copy_metadata(fp32, out)
    return out


def _copy_metadata(source: Path, target: Path) -> None:
    """Class names, imgsz, stride: the runtime reads them from the model itself."""
    model = onnx.load(str(target))
    del model.metadata_props[:]
    for prop in onnx.load(str(source), load_external_data=False).metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key="quantization", value="int8-static-qdq")
    onnx.save(model, str(target))


def _median_ms(detectors: list[Detector], image: np.ndarray, rounds: int) -> list[float]:
    tensors = [d.preprocess(image)[0] for d in detectors]
    timings: list[list[float]] = [[] for _ in detectors]
    for _ in range(rounds):  # interleaved, so drift hits both
        for i, (detector, tensor) in enumerate(zip(detectors, tensors, strict=True)):
            start = time.perf_counter()
            detector.run(tensor)
            timings[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in timings]


def quantize_with_gate(
    fp32: Path,
    out: Path,
    calibration: list[Path],
    validation: list[Path],
    max_drop: float = 1.0,
    method: str = "minmax",
    rounds: int = 30,
    progress: Any = None,
) -> QuantizationReport:
    """Quantize, then measure both models; `report.passed` says whether the INT8 model may be used."""
    if not validation:
        raise ValueError("no validation images: the accuracy gate needs the dataset's val split")
    if progress:
        progress("calibrating and quantizing")
    quantize_model(fp32, out, calibration, method)
    # Sessions without spinning threads: two sessions taking turns on the same cores would otherwise
    # steal time from each other (timing ratios swung 1.2-1.6x).
    reference, quantized = Detector(fp32, spinning=False), Detector(out, spinning=False)
    if progress:
        progress("evaluating FP32")
    fp32_eval = evaluate(reference, validation)
    if progress:
        progress("evaluating INT8")
    int8_eval = evaluate(quantized, validation)
    image = read_image(validation[0])
    fp32_ms, int8_ms = _median_ms([reference, quantized], image, rounds)
    return QuantizationReport(fp32_eval, int8_eval, fp32_ms, int8_ms, max_drop, out)
