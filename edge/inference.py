"""YOLO inference with onnxruntime and NumPy: letterbox, run, decode, class-aware NMS, rescale.

No torch. Pre-processing mirrors ultralytics' LetterBox (OpenCV INTER_LINEAR, grey 114 padding,
centred) so boxes match `YOLO(model.onnx).predict` on the same image. Four output heads are
decoded, chosen from the model's metadata and output shape:
- `v8`: ultralytics YOLOv8/11/12 (`[1, 4 + nc, anchors]`, class scores, no objectness);
- `v5`: classic YOLOv5 exports (`[1, anchors, 5 + nc]`, objectness times class score);
- `end2end`: NMS-free heads (YOLOv10/26, `[1, max_det, 6]` of x1 y1 x2 y2 score class);
- `yolox`: YOLOX (metadata `family: yolox`, written by the trainer): `[1, anchors, 5 + nc]` like `v5`,
  with the grid/stride box decoding done here when the graph does not (`decoded: false`), and
  YOLOX's own pre-processing (`yolox_resize`: BGR, 0..255, top-left, grey 114).
"""

from __future__ import annotations

import ast
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = [
    "Detection",
    "DetectionResult",
    "Detector",
    "ModelError",
    "choose_providers",
    "letterbox",
    "nms",
    "yolox_resize",
]

log = logging.getLogger(__name__)

Head = Literal["v8", "v5", "end2end", "yolox"]
MAX_WH = 7680  # class offset for batched NMS, as ultralytics uses
MAX_NMS_CANDIDATES = 30000
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ModelError(RuntimeError):
    """The model cannot be loaded or does not behave like a YOLO detector."""


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels
    score: float
    class_id: int
    class_name: str


@dataclass
class DetectionResult:
    detections: list[Detection]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def top_score(self) -> float:
        return max((d.score for d in self.detections), default=0.0)


def letterbox(
    image: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to `size` (h, w), as ultralytics' LetterBox does.

    Returns the padded image, the (gain_x, gain_y) per axis and the (left, top) padding.
    """
    h0, w0 = image.shape[:2]
    r = min(size[0] / h0, size[1] / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = (size[1] - new_w) / 2, (size[0] - new_h) / 2
    if (w0, h0) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return padded, (new_w / w0, new_h / h0), (left, top)


def yolox_resize(
    image: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """YOLOX's `preproc`: resize by one ratio (sizes truncated) into the top-left corner of a grey
    (114) canvas. Boxes map back by that ratio alone, as YOLOX's own postprocessing does."""
    h0, w0 = image.shape[:2]
    r = min(size[0] / h0, size[1] / w0)
    new_w, new_h = int(w0 * r), int(h0 * r)
    padded = np.full((size[0], size[1], 3), 114, dtype=np.uint8)
    padded[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return padded, (r, r), (0, 0)


def decode_yolox(prediction: np.ndarray, imgsz: tuple[int, int], strides: list[int]) -> np.ndarray:
    """YOLOX's `decode_outputs`: raw `[anchors, 5 + nc]` → centre x/y and w/h in input pixels."""
    grids, scales = [], []
    for stride in strides:
        h, w = imgsz[0] // stride, imgsz[1] // stride
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        scales.append(np.full((h * w, 1), stride))
    grid = np.concatenate(grids).astype(np.float32)
    stride_column = np.concatenate(scales).astype(np.float32)
    if len(grid) != len(prediction):
        raise ModelError(f"YOLOX head has {len(prediction)} anchors, strides {strides} give {len(grid)}")
    decoded = prediction.copy()
    decoded[:, :2] = (prediction[:, :2] + grid) * stride_column
    decoded[:, 2:4] = np.exp(prediction[:, 2:4]) * stride_column
    return decoded


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression over xyxy boxes; indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        if not rest.size:
            break
        w = (np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])).clip(0)
        h = (np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])).clip(0)
        inter = w * h
        iou = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def choose_providers(available: list[str], precision: str, engine_cache: Path | None) -> list[Any]:
    """TensorRT, then CUDA, then CPU, among what this onnxruntime build offers."""
    chosen: list[Any] = []
    for name in PROVIDER_ORDER:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            options: dict[str, Any] = {"trt_fp16_enable": precision == "fp16"}
            if engine_cache is not None:
                engine_cache.mkdir(parents=True, exist_ok=True)
                options.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(engine_cache),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(engine_cache),
                )
            chosen.append((name, options))
        else:
            chosen.append(name)
    if not chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def _parse_names(raw: str | None, classes: int) -> list[str]:
    if raw:
        try:
            parsed = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, dict):
            return [str(parsed.get(i, i)) for i in range(max(classes, len(parsed)))]
        if isinstance(parsed, list):
            return [str(n) for n in parsed]
    return [str(i) for i in range(classes)]


class Detector:
    """One loaded model. Thread-safe: onnxruntime sessions may run concurrently."""

    def __init__(
        self,
        path: Path,
        precision: str = "fp32",
        engine_cache: Path | None = None,
        class_names: list[str] | None = None,
        head: Head | None = None,
        providers: list[Any] | None = None,
        spinning: bool = True,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:  # idle threads sleep: fair when several sessions share the cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = providers or choose_providers(ort.get_available_providers(), precision, engine_cache)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {path.name}: {str(error).splitlines()[0]}") from None
        self.provider = self.session.get_providers()[0]
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError("not a YOLO detector: expected one NCHW image input")
        self.input_name = inputs[0].name
        self.batchable = not isinstance(inputs[0].shape[0], int)  # a dynamic batch axis
        meta = _metadata(self.session)
        shape = inputs[0].shape
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            self.imgsz = (shape[2], shape[3])
        else:  # dynamic axes: the exported size from metadata
            size = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
            self.imgsz = (int(size[0]), int(size[1]))
        self.input_dtype: type[np.floating[Any]] = np.float16 if "float16" in inputs[0].type else np.float32
        output_shape = self.session.get_outputs()[0].shape
        self.head: Head = head or self._guess_head(meta, output_shape)
        # YOLOX: whether the graph decodes boxes, and the strides to decode by when it does not.
        self.decoded = meta.get("decoded", "true").lower() == "true"
        self.strides: list[int] = [int(s) for s in ast.literal_eval(meta.get("strides", "[8, 16, 32]"))]
        classes = self._class_count(output_shape)
        self.class_names = class_names or _parse_names(meta.get("names"), classes)
        self.metadata = meta

    def _guess_head(self, meta: dict[str, str], shape: list[Any]) -> Head:
        if meta.get("end2end", "").lower() == "true":
            return "end2end"
        if meta.get("family") == "yolox":
            return "yolox"
        if len(shape) != 3:
            raise ModelError(f"not a YOLO detector: output shape {shape}")
        rows, cols = shape[1], shape[2]
        if isinstance(rows, int) and isinstance(cols, int):
            return "v8" if rows < cols else "v5"
        return "v8" if isinstance(rows, int) else "v5"

    def _class_count(self, shape: list[Any]) -> int:
        if self.head == "v8" and isinstance(shape[1], int):
            return shape[1] - 4
        if self.head in ("v5", "yolox") and isinstance(shape[2], int):
            return shape[2] - 5
        return 0

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
        if self.head == "yolox":  # YOLOX trains on BGR 0..255 (cv2.imread, no normalisation)
            padded, gain, pad = yolox_resize(image, self.imgsz)
            chw = padded.transpose(2, 0, 1)[None]
            return np.ascontiguousarray(chw, dtype=self.input_dtype), gain, pad
        padded, gain, pad = letterbox(image, self.imgsz)
        nchw = padded[:, :, ::-1].transpose(2, 0, 1)[None]  # BGR HWC -> RGB NCHW
        tensor: npt.NDArray[np.floating[Any]] = np.ascontiguousarray(nchw, dtype=self.input_dtype)
        return tensor / self.input_dtype(255.0), gain, pad

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: tensor})[0])

    def postprocess(
        self,
        output: np.ndarray,
        gain: tuple[float, float],
        pad: tuple[int, int],
        shape: tuple[int, int],
        conf: float,
        iou: float,
        max_det: int = 300,
        multi_label: bool = False,
    ) -> list[Detection]:
        prediction = output[0].astype(np.float32)
        if self.head == "end2end":
            boxes, scores, classes = prediction[:, :4], prediction[:, 4], prediction[:, 5].astype(np.int64)
            keep = scores > conf
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        else:
            if self.head == "v8":
                prediction = prediction.T  # anchors x (4 + nc)
                class_scores = prediction[:, 4:]
            else:
                if self.head == "yolox" and not self.decoded:
                    prediction = decode_yolox(prediction, self.imgsz, self.strides)
                class_scores = prediction[:, 5:] * prediction[:, 4:5]
            if multi_label:  # every (anchor, class) above the threshold, as validators count them
                anchors, classes = np.nonzero(class_scores > conf)
                xywh, scores = prediction[anchors, :4], class_scores[anchors, classes]
            else:
                classes = class_scores.argmax(1)
                scores = class_scores[np.arange(len(classes)), classes]
                keep = scores > conf
                xywh, scores, classes = prediction[keep, :4], scores[keep], classes[keep]
            if len(scores) > MAX_NMS_CANDIDATES:
                top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
                xywh, scores, classes = xywh[top], scores[top], classes[top]
            boxes = np.empty_like(xywh)
            boxes[:, :2] = xywh[:, :2] - xywh[:, 2:] / 2
            boxes[:, 2:] = xywh[:, :2] + xywh[:, 2:] / 2
            # Class-aware NMS by shifting each class apart: by ultralytics' fixed 7680, or for YOLOX as
            # torchvision's batched_nms does (by the largest coordinate + 1), so boxes of any size match.
            offset = MAX_WH if self.head != "yolox" or not len(boxes) else float(boxes.max()) + 1.0
            kept = nms(boxes + classes[:, None] * offset, scores, iou)[:max_det]
            boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad[0]) / gain[0]).clip(0, shape[1])
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad[1]) / gain[1]).clip(0, shape[0])
        names = self.class_names
        return [
            Detection(
                (float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                float(score),
                int(cls),
                names[cls] if 0 <= cls < len(names) else str(cls),
            )
            for box, score, cls in zip(boxes, scores, classes, strict=True)
        ]

    def detect(
        self, image: np.ndarray, conf: float = 0.25, iou: float = 0.45, multi_label: bool = False
    ) -> DetectionResult:
        started = time.perf_counter()
        tensor, gain, pad = self.preprocess(image)
        prepared = time.perf_counter()
        output = self.run(tensor)
        inferred = time.perf_counter()
        detections = self.postprocess(output, gain, pad, image.shape[:2], conf, iou, multi_label=multi_label)
        done = time.perf_counter()
        return DetectionResult(
            detections,
            image.shape[1],
            image.shape[0],
            {
                "preprocess": (prepared - started) * 1e3,
                "inference": (inferred - prepared) * 1e3,
                "postprocess": (done - inferred) * 1e3,
            },
        )
