"""YOLOX training through Megvii's own code (PyPI `pixeltable-yolox`), on a GPU or on the CPU.

YOLOX's `Trainer` keeps the model, loss, augmentation (mosaic, mixup, HSV, flips), LR schedule, EMA
and COCO evaluator; `PlatformTrainer` subclasses it for what the platform adds (epoch events,
checkpoints in the store, resume) and for what assumes CUDA in it (`cuda:N`, `torch.cuda.set_device`,
the CUDA-stream prefetcher, `torch.cuda.FloatTensor` in the evaluator). The YOLO-format dataset is
converted to the COCO JSON that YOLOX reads; the images are not copied.

Weights (`best.pt`) are `{"model": state_dict, "architecture", "classNames", "imgsz"}`, a file that
YOLOX's `load_checkpoint` reads as well. YOLOX checkpoints (and so `best.pt`) hold the EMA weights
(`ema: True` in its configs), the model it evaluates. The ONNX export carries the metadata the edge runtime
decodes it by (`family: yolox`, `decoded`, `strides`, `names`, `imgsz`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import sys
import time
from argparse import Namespace
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from visioninapp.datasets import label_of, split_images
from visioninapp.families import family_of, yolox_onnx_metadata
from visioninapp.resources.trainingjob import ExportOptions, Hyperparameters, TrainingMetrics

__all__ = [
    "EpochResult",
    "PlatformTrainer",
    "apply_hyperparameters",
    "coco_annotations",
    "export_yolox_onnx",
    "optimizer_state_digest",
    "yolox_architecture_of",
    "yolox_config",
]

log = logging.getLogger("visioninapp.trainer")

EXIF_ORIENTATION = 0x0112
EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height
LOSS_NAMES = ("iou_loss", "l1_loss", "conf_loss", "cls_loss")


def coco_annotations(root: Path, data_yaml: str, class_names: list[str], split: str, out: Path) -> Path:
    """Write one split of a (validated) YOLO dataset as COCO JSON; file names are absolute paths."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(split_images(root, split, data_yaml), 1):
        with Image.open(image) as opened:
            width, height = opened.size
            # YOLOX reads with cv2.imread, which applies the EXIF orientation (as the edge does).
            if opened.getexif().get(EXIF_ORIENTATION) in EXIF_TRANSPOSED:
                width, height = height, width
        images.append({"id": image_id, "file_name": str(image), "width": width, "height": height})
        label = label_of(image)
        lines = label.read_text().splitlines() if label.is_file() else []
        for fields in (line.split() for line in lines):
            if not fields:
                continue
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:])
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out


def yolox_config(architecture: str, num_classes: int, imgsz: int) -> Any:
    """YOLOX's named config for `yolox-<size>` with the platform's fixed settings applied."""
    from yolox.config import YoloxConfig

    config = YoloxConfig.get_named_config(architecture)
    if config is None:  # the enum only admits known sizes; a broken package would end here
        raise ValueError(f"pixeltable-yolox has no config named {architecture}")
    config.num_classes = num_classes
    config.input_size = config.test_size = (imgsz, imgsz)
    # Multi-scale training around imgsz, never below 2 strides of the largest level.
    config.random_size = None
    config.multiscale_range = max(0, min(5, imgsz // 32 - 2))
    for key, value in family_of(architecture).defaults:
        setattr(config, key, value)
    return config


def apply_hyperparameters(config: Any, hp: Hyperparameters, on_gpu: bool) -> None:
    """A TrainingJob's hyperparameters in YOLOX's terms."""
    config.max_epoch = hp.epochs
    config.basic_lr_per_img = hp.lr0 / hp.nominal_batch  # YOLOX scales the LR by the batch size
    config.min_lr_ratio = hp.lrf
    config.momentum = hp.momentum
    config.weight_decay = hp.weight_decay
    config.warmup_epochs = round(hp.warmup_epochs)
    config.no_aug_epochs = min(hp.close_mosaic, hp.epochs)
    config.seed = hp.seed
    config.data_num_workers = hp.workers
    # YOLOX's `deterministic` turns its multi-scale resizing off (the size is drawn on the GPU): on
    # the CPU the size stays imgsz, on a GPU multi-scale training runs as in YOLOX's own configs.
    config.deterministic = not on_gpu
    if on_gpu:  # what YOLOX's train.py does with a seed, when the TrainingJob asks for determinism
        torch.backends.cudnn.deterministic = hp.deterministic
        torch.backends.cudnn.benchmark = not hp.deterministic


def optimizer_state_digest(state: dict[str, Any]) -> str:
    """A fingerprint of an optimizer's per-parameter state (SGD's momentum buffers), in order."""
    digest = hashlib.sha256()
    for index in sorted(state["state"]):
        for key, value in sorted(state["state"][index].items()):
            digest.update(f"{index}:{key}".encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"{len(state['state'])}:{digest.hexdigest()[:16]}"


@dataclass
class EpochResult:
    epoch: int
    metrics: TrainingMetrics
    lr: float | None
    images_per_second: float | None
    best: Path | None = None  # YOLOX's best_ckpt.pth, when this epoch's mAP50-95 beat the best so far


def _evaluator_class() -> type:
    from yolox.evaluators import CocoEvaluator
    from yolox.utils import postprocess

    class PlatformEvaluator(CocoEvaluator):  # type: ignore[misc]
        """YOLOX's COCO evaluator; on the CPU its loop runs without `torch.cuda.FloatTensor`.

        Records the last (mAP50-95, mAP50) for the epoch event.
        """

        device = "cpu"
        last: tuple[float, float] = (0.0, 0.0)

        def evaluate(self, model: Any, distributed: bool = False, half: bool = False, **kwargs: Any) -> Any:
            if self.device.startswith("cuda"):
                results = super().evaluate(model, distributed, half, **kwargs)
            else:
                model = model.eval()
                data: list[Any] = []
                outputs_by_image: dict[int, Any] = {}
                with torch.no_grad():
                    for images, _, info, ids in self.dataloader:
                        outputs = postprocess(
                            model(images.float()), self.num_classes, self.confthre, self.nmsthre
                        )
                        rows, by_image = self.convert_to_coco_format(outputs, info, ids, return_outputs=True)
                        data.extend(rows)
                        outputs_by_image.update(by_image)
                timing = torch.zeros(3)  # YOLOX reports forward/NMS times from it; not measured here
                timing[2] = max(len(self.dataloader) - 1, 1)
                stats = self.evaluate_prediction(data, timing)
                results = (stats, outputs_by_image) if kwargs.get("return_outputs") else stats
            stats = results[0] if kwargs.get("return_outputs") else results
            self.last = (float(stats[0]), float(stats[1]))
            return results

    return PlatformEvaluator


class _CpuBatches:
    """What YOLOX's `DataPrefetcher` gives the training loop, without CUDA streams."""

    def __init__(self, loader: Any) -> None:
        self.batches: Iterator[Any] = iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets, _, _ = next(self.batches)
        return images, targets


@contextmanager
def _own_streams() -> Iterator[None]:
    """sys.stdout/stderr as they were, whatever YOLOX did to them (a failure is one line on stderr)."""
    stdout, stderr = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _loguru_to_stdout() -> None:
    """YOLOX's own log lines to stdout, with the platform's logs (its setup_logger sends them to stderr)."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stdout, level="INFO", format="{time:YYYY-MM-DD HH:mm:ss} {level} yolox: {message}")


def _trainer_base() -> type:
    from yolox.core import Trainer

    return Trainer  # type: ignore[no-any-return]


class PlatformTrainer(_trainer_base()):  # type: ignore[misc]
    """YOLOX's Trainer with the platform's hooks; runs on `device` (`cpu` or `cuda:N`)."""

    def __init__(
        self,
        config: Any,
        args: Namespace,
        device: str,
        on_epoch: Callable[[EpochResult, Path], None],
        on_resume: Callable[[int, str], None],
    ) -> None:
        with _own_streams():  # YOLOX's setup_logger points sys.stdout/stderr at loguru
            super().__init__(config, args)
        _loguru_to_stdout()
        self.device = device
        self.on_epoch, self.on_resume = on_epoch, on_resume
        self.results: list[EpochResult] = []

    def before_train(self) -> None:
        # YOLOX's before_train, with the device chosen here and no logger (events replace it).
        from yolox.data import DataPrefetcher
        from yolox.utils import ModelEMA

        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.local_rank)
        model = self.exp.get_model().to(self.device)
        self.optimizer = self.exp.get_optimizer(self.args.batch_size)
        model = self.resume_train(model)
        if self.args.resume:
            self.on_resume(self.start_epoch, optimizer_state_digest(self.optimizer.state_dict()))
        elif self.args.ckpt is not None:
            self._log_fine_tuning(model)
        self.no_aug = self.start_epoch >= self.max_epoch - self.exp.no_aug_epochs
        self.train_loader = self.exp.get_data_loader(
            batch_size=self.args.batch_size, is_distributed=False, no_aug=self.no_aug, cache_img=None
        )
        on_gpu = self.device.startswith("cuda")
        self.prefetcher = DataPrefetcher(self.train_loader) if on_gpu else _CpuBatches(self.train_loader)
        self.max_iter = len(self.train_loader)
        self.lr_scheduler = self.exp.get_lr_scheduler(
            self.exp.basic_lr_per_img * self.args.batch_size, self.max_iter
        )
        if self.use_model_ema:
            self.ema_model = ModelEMA(model, 0.9998)
            self.ema_model.updates = self.max_iter * self.start_epoch
        self.model = model
        evaluator_class = _evaluator_class()
        self.evaluator = evaluator_class(
            dataloader=self.exp.get_eval_loader(self.args.batch_size, False),
            img_size=self.exp.test_size,
            confthre=self.exp.test_conf,
            nmsthre=self.exp.nmsthre,
            num_classes=self.exp.num_classes,
            per_class_AP=False,
            per_class_AR=False,
        )
        self.evaluator.device = self.device

    def _log_fine_tuning(self, model: Any) -> None:
        """How much of the base weights YOLOX's `load_ckpt` took (tensors of another shape, such as
        the class predictions of COCO's 80 classes, stay freshly initialised)."""
        from yolox.utils import load_checkpoint

        base = load_checkpoint(self.args.ckpt)["model"]
        state = model.state_dict()
        loaded = sum(1 for k, v in state.items() if k in base and torch.equal(v.cpu(), base[k].cpu()))
        log.info("fine-tuning from the base weights: %d of %d tensors loaded", loaded, len(state))

    def before_epoch(self) -> None:
        super().before_epoch()
        self.epoch_started = time.perf_counter()
        self.loss_sums = dict.fromkeys(LOSS_NAMES, 0.0)
        self.lr: float | None = None

    def after_iter(self) -> None:
        # The meter is cleared every print_interval iterations: sum the epoch's losses first.
        for name in LOSS_NAMES:
            value = self.meter[name].latest
            self.loss_sums[name] += float(value.item() if isinstance(value, torch.Tensor) else value)
        self.lr = float(self.meter["lr"].latest)
        super().after_iter()

    def after_epoch(self) -> None:
        seconds = time.perf_counter() - self.epoch_started
        best_before = self.best_ap
        super().after_epoch()  # saves latest_ckpt.pth, evaluates, saves best_ckpt.pth if it improved
        map50_95, map50 = self.evaluator.last
        losses = {
            name.removesuffix("_loss"): round(self.loss_sums[name] / self.max_iter, 5) for name in LOSS_NAMES
        }
        result = EpochResult(
            epoch=self.epoch + 1,
            metrics=TrainingMetrics(map50=map50, map50_95=map50_95, losses=losses),
            lr=self.lr,
            images_per_second=len(self.train_loader.dataset) / seconds if seconds > 0 else None,
            best=Path(self.file_name) / "best_ckpt.pth" if self.best_ap > best_before else None,
        )
        self.results.append(result)
        self.on_epoch(result, Path(self.file_name) / "latest_ckpt.pth")

    def best_result(self) -> EpochResult | None:
        scored = [r for r in self.results if r.metrics.map50_95 is not None]
        return max(scored, key=lambda r: r.metrics.map50_95 or 0.0) if scored else None


def train_yolox(
    *,
    architecture: str,
    class_names: list[str],
    dataset_root: Path,
    data_yaml: str,
    hp: Hyperparameters,
    device: str,
    work: Path,
    resume: Path | None,
    base: Path | None,
    on_epoch: Callable[[EpochResult, Path], None],
    on_resume: Callable[[int, str], None],
    resumed_metrics: TrainingMetrics | None = None,
    carried_best: tuple[Path, TrainingMetrics] | None = None,
) -> tuple[Path, TrainingMetrics, int]:
    """Train; returns the platform's `best.pt`, the best epoch's metrics and the epochs run.

    `resumed_metrics` are those of the resume checkpoint's epoch, `carried_best` the best weights
    (YOLOX's best_ckpt.pth) of the attempts before and their metrics: what the result is when no
    epoch is left to train, or none of this attempt's beats them.
    """
    from yolox.utils import load_checkpoint

    on_gpu = device.startswith("cuda")
    run_dir = work / "runs" / "train"
    if resume is not None:
        start_epoch = int(load_checkpoint(resume, map_location="cpu")["start_epoch"])
        if start_epoch >= hp.epochs:
            # The final epoch's checkpoint was stored and the attempt ended before the result was
            # (or hyperparameters.epochs was lowered since): nothing is left to train.
            if start_epoch > hp.epochs:
                log.warning(
                    "the checkpoint is of epoch %d, past hyperparameters.epochs %d: training ends there",
                    start_epoch,
                    hp.epochs,
                )
            else:
                log.info("the checkpoint is of the final epoch %d: no epoch left to train", start_epoch)
            source, metrics = carried_best or (resume, resumed_metrics or TrainingMetrics())
            return _platform_weights(source, architecture, class_names, hp, run_dir), metrics, start_epoch
    config = yolox_config(architecture, len(class_names), hp.imgsz)
    apply_hyperparameters(config, hp, on_gpu)
    annotations = work / "coco" / "annotations"
    config.data_dir = str(work / "coco")
    config.train_ann = str(
        coco_annotations(dataset_root, data_yaml, class_names, "train", annotations / "train.json")
    )
    config.val_ann = str(
        coco_annotations(dataset_root, data_yaml, class_names, "val", annotations / "val.json")
    )
    config.train_img_dir = config.val_img_dir = "."  # file names are absolute
    config.output_dir = str(work / "runs")
    # Files of an earlier attempt in this scratch directory (a restarted container keeps it) must not
    # pass for this one's: YOLOX keeps best_ckpt.pth unless mAP improves. Resuming reads the store.
    shutil.rmtree(work / "runs", ignore_errors=True)
    # What YOLOX's train() seeds, plus NumPy: its HSV augmentation draws from np.random.
    random.seed(hp.seed)
    np.random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    args = Namespace(
        name="train",
        batch_size=hp.batch,
        fp16=hp.amp and on_gpu,
        resume=resume is not None,
        ckpt=str(resume or base) if (resume or base) else None,
        start_epoch=None,
        cache=None,
        occupy=False,
        logger="none",  # epoch events replace YOLOX's tensorboard/wandb/mlflow loggers
    )
    with _own_streams():
        trainer = PlatformTrainer(config, args, device, on_epoch, on_resume)
        trainer.train()
    assert Path(trainer.file_name) == run_dir
    best_result = trainer.best_result()
    if (run_dir / "best_ckpt.pth").exists() and best_result is not None:
        source, metrics = run_dir / "best_ckpt.pth", best_result.metrics
    elif carried_best is not None:  # no epoch of this attempt beat the best of the attempts before
        source, metrics = carried_best
    elif trainer.results:  # no epoch's mAP50-95 was above 0
        source, metrics = run_dir / "latest_ckpt.pth", trainer.results[-1].metrics
    else:
        raise RuntimeError(f"YOLOX trained no epoch (from epoch {trainer.start_epoch} to {hp.epochs})")
    metrics = metrics.model_copy(update={"losses": {}})
    return _platform_weights(source, architecture, class_names, hp, run_dir), metrics, hp.epochs


def _platform_weights(
    source: Path, architecture: str, class_names: list[str], hp: Hyperparameters, out_dir: Path
) -> Path:
    """The platform's `best.pt` from a YOLOX checkpoint (its EMA weights)."""
    from yolox.utils import load_checkpoint

    out_dir.mkdir(parents=True, exist_ok=True)
    best = out_dir / "best.pt"
    weights = {
        "model": load_checkpoint(source, map_location="cpu")["model"],
        "architecture": architecture,
        "classNames": class_names,
        "imgsz": hp.imgsz,
    }
    torch.save(weights, best)
    return best


def _state_shapes(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    # The class-prediction convolutions depend on the number of classes, not on the size.
    return {k: tuple(v.shape) for k, v in state.items() if ".cls_preds." not in k}


def yolox_architecture_of(path: Path) -> str | None:
    """The YOLOX size of a weights file (ours, or YOLOX's own COCO `.pth`), None if not YOLOX.

    Our files name it; YOLOX's own are matched tensor by tensor against each size's model (built on
    the meta device, so nothing is allocated).
    """
    from yolox.utils import load_checkpoint

    try:
        checkpoint = load_checkpoint(path)
    except Exception:  # an ultralytics file pickles modules: not loadable as plain weights
        return None
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    named = checkpoint.get("architecture")
    if isinstance(named, str):
        return named
    shapes = _state_shapes(state)
    for architecture in family_of("yolox-s").architectures:
        with torch.device("meta"):
            model = yolox_config(architecture, 80, 640).get_model()
        if _state_shapes(model.state_dict()) == shapes:
            return architecture
    return None


def export_yolox_onnx(best: Path, options: ExportOptions, out: Path) -> Path:
    """ONNX of a platform `best.pt`, as YOLOX's own `export_onnx` does it, plus the edge metadata."""
    import onnx
    from torch import nn
    from yolox.models.network_blocks import SiLU
    from yolox.utils import load_checkpoint, replace_module

    checkpoint = load_checkpoint(best)
    architecture, names, imgsz = (
        checkpoint["architecture"],
        checkpoint["classNames"],
        int(checkpoint["imgsz"]),
    )
    model = yolox_config(architecture, len(names), imgsz).get_model()
    model.load_state_dict(checkpoint["model"])
    model.eval()
    model = replace_module(model, nn.SiLU, SiLU)  # as YOLOX exports: SiLU as x * sigmoid(x)
    model.head.decode_in_inference = options.decode_in_graph
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=["images"],
        output_names=["output"],
        dynamic_axes=axes if options.dynamic else None,
        opset_version=options.opset,
        dynamo=False,  # the exporter YOLOX's export_onnx was written for
    )
    graph = onnx.load(str(out))
    if options.simplify:
        from onnxsim import simplify

        simplified, ok = simplify(graph)
        if ok:
            graph = simplified
        else:
            log.warning("onnxsim could not validate the simplified graph: keeping the exported one")
    metadata = yolox_onnx_metadata(names, imgsz, options.decode_in_graph, architecture)
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(out))
    return out


def copy_for_upload(source: Path, staging: Path, epoch: int) -> Path:
    """YOLOX overwrites latest_ckpt.pth every epoch: upload a copy."""
    staging.mkdir(parents=True, exist_ok=True)
    copy = staging / f"latest-{epoch}.pth"
    shutil.copyfile(source, copy)
    return copy
