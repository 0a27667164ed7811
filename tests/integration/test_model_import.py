"""`visioninapp models import`: a model a user brought becomes a ModelArtifact that validates, whose
files are in S3 with their sha256, that the edge runtime loads and the trainer fine-tunes from.

The `.pt` is made here (ultralytics' COCO weights would need a download): yolo11n trained for one
epoch on the synthetic shapes, so it carries class names and an input size as a downloaded one does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from tests.integration.test_trainer import _config, _env, _new_output, _run_trainer, dataset_uri, s3, stream
from visioninapp.edge.inference import Detector
from visioninapp.local.synth import CLASS_NAMES, generate_dataset
from visioninapp.validation import validate

pytestmark = [pytest.mark.services, pytest.mark.slow]
__all__ = ["dataset_uri", "s3", "stream"]  # fixtures this module uses from the trainer's tests


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visioninapp.trainer.offline import prepare_offline_ultralytics

    root = tmp_path_factory.mktemp("brought")
    data = generate_dataset(root / "data", train=8, val=4, imgsz=64, seed=3)
    prepare_offline_ultralytics(root / "ultralytics")
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")
    model.train(
        data=str(data),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        project=str(root),
        name="run",
        plots=False,
        verbose=False,
    )
    return Path(model.trainer.best)


def _import(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visioninapp.cli", "models", "import", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _sha(s3: Any, uri: str) -> str:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def test_imported_weights_validate_deploy_and_fine_tune(
    weights: Path, s3: Any, s3_endpoint: str, dataset_uri: str, stream: str, tmp_path: Path
) -> None:
    bucket, _ = _new_output(s3)
    env = _env(s3_endpoint, stream, tmp_path)
    env.pop("PYTHONPATH")  # the network guard is for the trainer
    result = _import(
        str(weights), "--line", "shapes", "--version", "brought-1", "--namespace", "ci",
        "--to", f"s3://{bucket}/imports/shapes/brought-1", "--out", str(tmp_path), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ultralytics model, 4 classes (circle, square, triangle, cross), 64 px" in result.stdout
    manifest = yaml.safe_load((tmp_path / "shapes-brought-1.yaml").read_text())
    assert validate(manifest) == []
    spec = manifest["spec"]
    assert manifest["metadata"]["labels"]["visioninapp.io/imported"] == "true"
    assert (spec["model"], spec["version"], spec["classNames"], spec["imgsz"]) == (
        "shapes", "brought-1", list(CLASS_NAMES), 64,
    )  # fmt: skip
    files = {f["format"]: f for f in spec["formats"]}
    assert set(files) == {"pt", "onnx"}
    for entry in files.values():
        assert _sha(s3, entry["uri"]) == entry["sha256"]
    assert files["pt"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    onnx_file = tmp_path / "imported.onnx"
    bucket_name, key = files["onnx"]["uri"].removeprefix("s3://").split("/", 1)
    s3.download_file(bucket_name, key, str(onnx_file))
    assert Detector(onnx_file).class_names == list(CLASS_NAMES)  # what an EdgeDeployment would load

    # A TrainingJob fine-tunes from it: the trainer gets its pt file as the base weights.
    config = _config(tmp_path, dataset_uri, f"s3://{bucket}/ci/tuned", 1, epochs=1)
    raw = yaml.safe_load(config.read_text())
    raw["spec"]["model"] = {"baseModel": "shapes-brought-1"}
    raw["baseWeights"] = {"uri": files["pt"]["uri"], "sha256": files["pt"]["sha256"]}
    config.write_text(yaml.safe_dump(raw))
    run = _run_trainer(config, _env(s3_endpoint, stream, tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    tuned = json.loads(s3.get_object(Bucket=bucket, Key="ci/tuned/manifest.json")["Body"].read())
    assert tuned["baseModel"] == "shapes-brought-1" and tuned["classNames"] == list(CLASS_NAMES)


def test_onnx_imports_read_their_metadata_or_say_what_to_give(weights: Path, s3: Any, tmp_path: Path) -> None:
    from ultralytics import YOLO

    exported = Path(YOLO(str(weights)).export(format="onnx", imgsz=64, opset=17, verbose=False))
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(exported))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    env = {**os.environ, "VISIONINAPP_DATA_DIR": str(tmp_path / "data")}
    ok = _import(str(exported), "--line", "shapes", "--out", str(tmp_path), env=env)
    assert ok.returncode == 0, ok.stderr
    written = yaml.safe_load(next(tmp_path.glob("shapes-*.yaml")).read_text())
    assert [f["format"] for f in written["spec"]["formats"]] == ["onnx"]
    refused = _import(str(bare), "--line", "shapes", "--out", str(tmp_path / "r"), env=env)
    assert refused.returncode == 1 and "--class-names and --imgsz" in refused.stderr
    given = _import(
        str(bare), "--line", "shapes", "--version", "bare", "--class-names", "a, b,c,d", "--imgsz", "64",
        "--out", str(tmp_path / "g"), env=env,
    )  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert yaml.safe_load((tmp_path / "g" / "shapes-bare.yaml").read_text())["spec"]["classNames"] == [
        "a", "b", "c", "d",
    ]  # fmt: skip
    marked = _import(
        str(bare), "--line", "shapes", "--version", "megvii", "--yolox", "--raw-head",
        "--class-names", "a,b,c,d", "--imgsz", "64", "--out", str(tmp_path / "y"), env=env,
    )  # fmt: skip
    assert marked.returncode == 0, marked.stderr
    uploaded = yaml.safe_load((tmp_path / "y" / "shapes-megvii.yaml").read_text())["spec"]["formats"][0][
        "uri"
    ]
    meta = {p.key: p.value for p in onnx.load(uploaded.removeprefix("file://")).metadata_props}
    assert (meta["family"], meta["decoded"]) == ("yolox", "false")  # the edge decodes it as YOLOX

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    bad = _import(str(junk), "--line", "shapes", "--out", str(tmp_path / "b"), env=env)
    assert bad.returncode == 1 and "not ultralytics or YOLOX detection weights" in bad.stderr
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())
    state = tmp_path / "state.pth"
    import torch

    torch.save({"model": {"w": torch.zeros(2)}}, state)
    refused = _import(str(state), "--line", "shapes", "--out", str(tmp_path / "b"), env=env)
    assert refused.returncode == 1 and "must hold YOLOX weights" in refused.stderr
    store = tmp_path / "store"
    for args, message in (
        (("--line", "My_Line"), "no valid ModelArtifact from --line 'My_Line'"),
        (("--line", "shapes", "--to", "relative/dir"), "unsupported storage URI"),
    ):
        wrong = _import(
            str(exported),
            *args,
            "--out",
            str(tmp_path / "w"),
            env={**env, "VISIONINAPP_ARTIFACTS_URI": store.as_uri()},
        )
        assert wrong.returncode == 1 and message in wrong.stderr, wrong.stderr
        assert "Traceback" not in wrong.stderr
    assert not store.exists(), "nothing is uploaded for a refused import"
