"""`visioninapp models quantize`: INT8 model, accuracy gate, new ModelArtifact with lineage."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from tests.conftest import ExportedModel
from visioninapp.edge.evaluate import Evaluation, average_precision, match_predictions
from visioninapp.edge.inference import Detector
from visioninapp.edge.quantize import QuantizationReport
from visioninapp.validation import validate

CLI = [sys.executable, "-m", "visioninapp.cli"]


@pytest.mark.slow
def test_quantize_an_artifact_into_a_new_int8_version(exported_model: ExportedModel, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    fp32 = store / "model.onnx"
    fp32.write_bytes(exported_model.onnx.read_bytes())
    artifact = {
        "apiVersion": "visioninapp.io/v1alpha1",
        "kind": "ModelArtifact",
        "metadata": {"name": "shapes-v1", "namespace": "ci"},
        "spec": {
            "model": "shapes",
            "version": "v1",
            "classNames": ["circle", "square", "triangle", "cross"],
            "imgsz": 96,
            "formats": [
                {
                    "format": "onnx",
                    "uri": fp32.as_uri(),
                    "sha256": hashlib.sha256(fp32.read_bytes()).hexdigest(),
                    "size": fp32.stat().st_size,
                }
            ],
        },
    }
    (tmp_path / "ma.yaml").write_text(yaml.safe_dump(artifact))
    result = subprocess.run(
        [
            *CLI,
            "models",
            "quantize",
            "--artifact",
            str(tmp_path / "ma.yaml"),
            "--data",
            str(exported_model.dataset),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mAP50-95: FP32" in result.stdout and "latency:" in result.stdout
    new = yaml.safe_load((tmp_path / "out" / "shapes-v1-int8.yaml").read_text())
    assert validate(new) == []
    (fmt,) = new["spec"]["formats"]
    assert fmt["format"] == "onnx-int8" and new["spec"]["source"]["quantizedFrom"] == "shapes-v1"
    int8 = Path(fmt["uri"].removeprefix("file://"))
    assert hashlib.sha256(int8.read_bytes()).hexdigest() == fmt["sha256"]
    quantized = onnx.load(str(int8))
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    detector = Detector(int8)  # the runtime serves it, class names from the copied metadata
    assert detector.class_names == ["circle", "square", "triangle", "cross"]


def test_wrong_arguments_fail_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "models", "quantize", "--data", str(tmp_path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "exactly one of --model" in result.stderr


def test_gate_passes_only_within_the_allowed_drop() -> None:
    def report(fp32: float, int8: float) -> QuantizationReport:
        return QuantizationReport(
            Evaluation(0.5, fp32, 1, 1), Evaluation(0.5, int8, 1, 1), 10, 5, 1.0, Path("x")
        )

    assert report(0.400, 0.391).passed and not report(0.400, 0.389).passed
    assert report(0.4, 0.39).speedup == 2.0


def test_map_of_perfect_and_of_missed_predictions() -> None:
    # Perfect predictions score 0.995, not 1: the 101-point trapezoid ends on precision 0 at recall 1,
    # exactly as in ultralytics' and COCO's evaluation, so figures compare one to one.
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(0.995)
    # Two labels of class 0; predictions best score first: one exact hit, one miss (wrong class).
    iou = np.array([[1.0, 0.0], [0.0, 0.97]])
    correct = match_predictions(np.array([0, 1]), np.array([0, 0]), iou)
    assert correct[0].all() and not correct[1].any()
    # One label, two overlapping predictions: only the best-scored one counts.
    correct = match_predictions(np.array([0, 0]), np.array([0]), np.array([[0.8, 0.95]]))
    assert correct[:, 0].tolist() == [True, False]
