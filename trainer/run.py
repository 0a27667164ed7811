"""One attempt of a TrainingJob: data in, checkpoints while training, weights and ONNX out.

Output layout under `config.output_uri` (`<output.uri>/<namespace>/<name>`):
    checkpoints/last.pt, checkpoints/checkpoint.json   newest checkpoint; the JSON is written last
    checkpoints/best.pt                                 best weights so far (YOLOX), or when finished
    weights/best.pt, weights/model.onnx                 final weights
    manifest.json                                       every detail; written last, it marks success
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from visioninapp.backends.storage import (
    ArtifactStore,
    ChecksumMismatch,
    ObjectNotFound,
    StoredObject,
    join_uri,
)
from visioninapp.cel import evaluate_rule
from visioninapp.datasets import fetch_dataset, validate_dataset
from visioninapp.events import TrainerResult, TrainingEvent
from visioninapp.families import Family, family_of
from visioninapp.resources.modelartifact import ArtifactFormat
from visioninapp.resources.trainingjob import Hyperparameters, TrainingMetrics
from visioninapp.trainer.config import TrainerConfig
from visioninapp.trainer.gate import prepare_gate, run_gate
from visioninapp.trainer.offline import prepare_offline_ultralytics
from visioninapp.trainer.publisher import EventPublisher

if TYPE_CHECKING:  # torch and yolox load only when a YOLOX run needs them
    from visioninapp.trainer.yolox_train import EpochResult

__all__ = ["Checkpoint", "TrainerError", "run_training", "ultralytics_train_args"]

log = logging.getLogger("visioninapp.trainer")

METRIC_KEYS = {
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
}


class TrainerError(RuntimeError):
    """A failure with a message that says what went wrong and what to do."""


class Checkpoint:
    """The newest checkpoint of a job in the store: `last.pt` plus a JSON marker written after it.

    When training ends, `best.pt` and a `finished` marker (with the final metrics) replace it, so
    an attempt that fails later (export, upload) is retried without training again. While YOLOX
    trains, `best.pt` holds its best checkpoint so far (EMA weights), named in the marker
    (`bestSha256`, `bestEpoch`, `bestMetrics`): a resumed attempt keeps the best of the ones before.
    """

    def __init__(self, store: ArtifactStore, output_uri: str) -> None:
        self.store = store
        self.weights_uri = join_uri(output_uri, "checkpoints", "last.pt")
        self.best_uri = join_uri(output_uri, "checkpoints", "best.pt")
        self.marker_uri = join_uri(output_uri, "checkpoints", "checkpoint.json")

    def latest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get_bytes(self.marker_uri))  # type: ignore[no-any-return]
        except ObjectNotFound:
            return None

    def download(self, marker: dict[str, Any], path: Path) -> Path:
        return self.store.get_file(self.weights_uri, path, sha256=marker["sha256"])

    def upload(self, path: Path, epoch: int, attempt: int, extra: dict[str, Any] | None = None) -> None:
        stored = self.store.put_file(path, self.weights_uri)
        marker = {
            **(extra or {}),
            "epoch": epoch,
            "attempt": attempt,
            "sha256": stored.sha256,
            "size": stored.size,
            "time": datetime.now(UTC).isoformat(),
        }
        self.store.put_bytes(json.dumps(marker).encode(), self.marker_uri)

    def upload_best(self, path: Path) -> str:
        """The best weights so far (before the marker that names them); returns their sha256."""
        return self.store.put_file(path, self.best_uri).sha256

    def download_best(self, marker: dict[str, Any], path: Path) -> tuple[Path, TrainingMetrics] | None:
        """The best weights a (not finished) marker names, with their metrics; None if it names none,
        or if they are not the ones it names (an attempt ended between the two uploads)."""
        if "bestSha256" not in marker:
            return None
        try:
            weights = self.store.get_file(self.best_uri, path, sha256=marker["bestSha256"])
        except (ObjectNotFound, ChecksumMismatch) as error:
            log.warning(
                "the best weights of epoch %s are lost (%s): keeping this attempt's",
                marker.get("bestEpoch"),
                error,
            )
            return None
        return weights, TrainingMetrics.model_validate(marker["bestMetrics"])

    def finish(self, best: Path, epochs_run: int, imgsz: int, metrics: TrainingMetrics, attempt: int) -> None:
        stored = self.store.put_file(best, self.best_uri)
        marker = {
            "finished": True,
            "epoch": epochs_run,
            "imgsz": imgsz,
            "attempt": attempt,
            "bestSha256": stored.sha256,
            "metrics": metrics.wire(),
            "time": datetime.now(UTC).isoformat(),
        }
        self.store.put_bytes(json.dumps(marker).encode(), self.marker_uri)


def _metrics_from(values: dict[str, Any], losses: dict[str, float]) -> TrainingMetrics:
    fields = {name: float(values[key]) for name, key in METRIC_KEYS.items() if key in values}
    return TrainingMetrics(**fields, losses=losses)


def _losses(trainer: Any) -> dict[str, float]:
    """Mean training losses of the epoch by short name (`box`, `cls`, `dfl`)."""
    tloss = trainer.tloss
    if tloss is None:
        return {}
    if isinstance(tloss, dict):  # ultralytics >= 8.4
        pairs = list(tloss.items())
    else:
        values = tloss.tolist() if hasattr(tloss, "tolist") else tloss
        pairs = list(zip(trainer.loss_names, values if isinstance(values, list) else [values], strict=False))
    return {name.removesuffix("_loss"): round(float(value), 5) for name, value in pairs}


def epoch_event(
    config: TrainerConfig,
    epoch: int,
    epochs: int,
    metrics: TrainingMetrics,
    lr: float | None,
    images_per_second: float | None,
) -> TrainingEvent:
    """One epoch on the stream, the same fields whichever family trained it."""
    return TrainingEvent(
        type="epoch",
        namespace=config.namespace,
        training_job=config.name,
        attempt=config.attempt,
        epoch=epoch,
        epochs=epochs,
        losses=metrics.losses,
        map50=metrics.map50,
        map50_95=metrics.map50_95,
        precision=metrics.precision,
        recall=metrics.recall,
        lr=lr,
        images_per_second=images_per_second,
        gpu_memory_gb=_gpu_memory_gb(),
    )


class _Callbacks:
    """ultralytics callbacks: epoch events, throughput and periodic checkpoint uploads."""

    def __init__(
        self, config: TrainerConfig, publisher: EventPublisher, checkpoint: Checkpoint, staging: Path
    ) -> None:
        self.config, self.publisher, self.checkpoint, self.staging = config, publisher, checkpoint, staging
        self.uploads = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-upload")
        self.pending: list[Future[None]] = []
        self.epoch_started = time.perf_counter()
        self.images_per_second: float | None = None
        self.published_epoch = 0

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any) -> None:
        seconds = time.perf_counter() - self.epoch_started
        images = len(trainer.train_loader.dataset)
        self.images_per_second = images / seconds if seconds > 0 else None

    def on_model_save(self, trainer: Any) -> None:
        epoch = trainer.epoch + 1
        final = epoch >= trainer.epochs
        if epoch % self.config.spec.checkpoint_every and not final:
            return
        # ultralytics overwrites last.pt next epoch: upload a copy, in the background.
        copy = self.staging / f"last-{epoch}.pt"
        shutil.copyfile(trainer.last, copy)
        self.pending.append(self.uploads.submit(self._upload, copy, epoch))

    def _upload(self, copy: Path, epoch: int) -> None:
        self.checkpoint.upload(copy, epoch, self.config.attempt)
        copy.unlink(missing_ok=True)
        log.info("checkpoint of epoch %d uploaded", epoch)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        epoch = trainer.epoch + 1
        if epoch > trainer.epochs or epoch <= self.published_epoch:
            return  # ultralytics calls this once more after its final validation
        self.published_epoch = epoch
        losses = _losses(trainer)
        metrics = _metrics_from(trainer.metrics or {}, losses)
        lr = float(next(iter(trainer.lr.values()))) if trainer.lr else None
        self.publisher.epoch(
            epoch_event(self.config, epoch, trainer.epochs, metrics, lr, self.images_per_second)
        )

    def register(self, model: Any) -> None:
        for name in ("on_train_epoch_start", "on_train_epoch_end", "on_model_save", "on_fit_epoch_end"):
            model.add_callback(name, getattr(self, name))

    def wait_for_uploads(self) -> None:
        for future in self.pending:
            future.result()  # an upload failure fails the run: a checkpoint must not be lost silently
        self.uploads.shutdown()


def _carry_spec_changes(weights: Path, epochs: int, patience: int) -> None:
    """Apply spec changes made since the checkpoint (e.g. more epochs) to the resumed run.

    ultralytics resumes with the arguments stored in the checkpoint and ignores new ones; a
    TrainingJob's editable fields must take effect on its next attempt, so they are written into
    the checkpoint before resuming.
    """
    import torch

    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    args = checkpoint.get("train_args", {})
    if args.get("epochs") == epochs and args.get("patience") == patience:
        return
    log.info(
        "resuming with epochs=%d, patience=%d (checkpoint had %s, %s)",
        epochs,
        patience,
        args.get("epochs"),
        args.get("patience"),
    )
    checkpoint["train_args"] = {**args, "epochs": epochs, "patience": patience}
    torch.save(checkpoint, weights)


def _device(config: TrainerConfig) -> str:
    import torch

    gpus = config.spec.resources.gpu.count
    if gpus > 0 and torch.cuda.is_available():
        return ",".join(str(i) for i in range(min(gpus, torch.cuda.device_count())))
    if gpus > 0:
        log.warning("%d GPU(s) requested but CUDA is not available: training on the CPU", gpus)
    return "cpu"


def ultralytics_train_args(hp: Hyperparameters, data: Path, device: str, runs: Path) -> dict[str, Any]:
    """What ultralytics' `train()` is given for a TrainingJob's hyperparameters (a fresh run)."""
    return {
        "data": str(data),
        "epochs": hp.epochs,
        "imgsz": hp.imgsz,
        "batch": hp.batch,
        "nbs": hp.nominal_batch,
        "lr0": hp.lr0,
        "lrf": hp.lrf,
        "momentum": hp.momentum,
        "weight_decay": hp.weight_decay,
        "warmup_epochs": hp.warmup_epochs,
        "optimizer": hp.optimizer,
        "cos_lr": hp.cos_lr,
        "close_mosaic": hp.close_mosaic,
        "patience": hp.patience,
        "seed": hp.seed,
        "deterministic": hp.deterministic,
        "workers": hp.workers,
        "amp": hp.amp,
        "device": device,
        "project": str(runs),
        "name": "train",
        "exist_ok": True,
        "plots": False,
        "verbose": False,
    }


class _TrainArgs(Protocol):
    imgsz: int


class _FinishedTrainer(Protocol):
    """What `_train` reads from ultralytics' trainer after `model.train()` (typed `None` there)."""

    best: Path
    last: Path
    metrics: dict[str, Any] | None
    epoch: int
    args: _TrainArgs


def _train(
    config: TrainerConfig,
    base: Path | None,
    publisher: EventPublisher,
    checkpoint: Checkpoint,
    marker: dict[str, Any] | None,
    work: Path,
) -> tuple[Path, TrainingMetrics, int, int]:
    """Train with ultralytics (resuming from `marker` if given); returns best weights, final
    metrics, epochs, imgsz."""
    from ultralytics import YOLO

    spec = config.spec
    hp = spec.hyperparameters
    train_args = ultralytics_train_args(hp, work / "data.resolved.yaml", _device(config), work / "runs")
    if marker is not None:
        log.info("resuming from the checkpoint of epoch %d (attempt %d)", marker["epoch"], marker["attempt"])
        publisher.log_line(f"resuming from the checkpoint of epoch {marker['epoch']}")
        publisher.start_from_epoch(marker["epoch"])
        weights = checkpoint.download(marker, work / "resume" / "last.pt")
        _carry_spec_changes(weights, hp.epochs, hp.patience)
        model = YOLO(str(weights))
        train_args = {
            "resume": str(weights),
            "data": train_args["data"],
            "device": train_args["device"],
            "workers": hp.workers,
            "save_dir": str(work / "runs" / "train"),
        }
    elif base is not None:
        model = YOLO(str(base))
    else:
        model = YOLO(f"{spec.model.architecture}.yaml")

    callbacks = _Callbacks(config, publisher, checkpoint, work / "staging")
    (work / "staging").mkdir(exist_ok=True)
    callbacks.register(model)
    model.train(**train_args)
    callbacks.wait_for_uploads()
    trainer = cast(_FinishedTrainer, model.trainer)
    best = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
    final_metrics = _metrics_from(trainer.metrics or {}, {})
    epochs_run = int(trainer.epoch) + 1
    imgsz = int(trainer.args.imgsz)
    checkpoint.finish(best, epochs_run, imgsz, final_metrics, config.attempt)
    return best, final_metrics, epochs_run, imgsz


def _log_download(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        log.info("dataset download: %d of %d files", done, total)


class _YoloxRun:
    """A YOLOX training (trainer/yolox_train.py) with the same events and checkpoints as above."""

    def __init__(
        self, config: TrainerConfig, publisher: EventPublisher, checkpoint: Checkpoint, work: Path
    ) -> None:
        self.config, self.publisher, self.checkpoint, self.work = config, publisher, checkpoint, work
        self.best: dict[str, Any] = {}  # the marker's bestSha256, bestEpoch, bestMetrics
        self.new_best: EpochResult | None = None  # a better epoch than the stored best, not uploaded yet

    def on_resume(self, start_epoch: int, optimizer_digest: str) -> None:
        # Logged (and so published on the stream): the state itself, fingerprinted once YOLOX loaded it.
        log.info(
            "resumed at epoch %d with the optimizer state restored (%s)", start_epoch + 1, optimizer_digest
        )

    def on_epoch(self, result: EpochResult, latest: Path) -> None:
        from visioninapp.trainer.yolox_train import copy_for_upload

        epochs = self.config.spec.hyperparameters.epochs
        if result.best is not None:
            self.new_best = result
        if result.epoch % self.config.spec.checkpoint_every == 0 or result.epoch >= epochs:
            if self.new_best is not None and self.new_best.best is not None:
                # best_ckpt.pth is the newest best: YOLOX rewrote it at that epoch, not since.
                self.best = {
                    "bestSha256": self.checkpoint.upload_best(self.new_best.best),
                    "bestEpoch": self.new_best.epoch,
                    "bestMetrics": self.new_best.metrics.model_copy(update={"losses": {}}).wire(),
                }
                self.new_best = None
            copy = copy_for_upload(latest, self.work / "staging", result.epoch)
            extra = {**self.best, "metrics": result.metrics.model_copy(update={"losses": {}}).wire()}
            self.checkpoint.upload(copy, result.epoch, self.config.attempt, extra)
            copy.unlink(missing_ok=True)
            log.info("checkpoint of epoch %d uploaded", result.epoch)
        self.publisher.epoch(
            epoch_event(
                self.config, result.epoch, epochs, result.metrics, result.lr, result.images_per_second
            )
        )

    def train(
        self,
        architecture: str,
        class_names: list[str],
        dataset_root: Path,
        marker: dict[str, Any] | None,
        base: Path | None,
    ) -> tuple[Path, TrainingMetrics, int, int]:
        from visioninapp.trainer.yolox_train import train_yolox

        spec = self.config.spec
        resume, resumed_metrics, carried_best = None, None, None
        if marker is not None:
            log.info(
                "resuming from the checkpoint of epoch %d (attempt %d)", marker["epoch"], marker["attempt"]
            )
            self.publisher.log_line(f"resuming from the checkpoint of epoch {marker['epoch']}")
            self.publisher.start_from_epoch(marker["epoch"])
            resume = self.checkpoint.download(marker, self.work / "resume" / "latest_ckpt.pth")
            if "metrics" in marker:
                resumed_metrics = TrainingMetrics.model_validate(marker["metrics"])
            carried_best = self.checkpoint.download_best(marker, self.work / "resume" / "best_ckpt.pth")
            if carried_best is not None:
                self.best = {k: marker[k] for k in ("bestSha256", "bestEpoch", "bestMetrics")}
        device = _device(self.config)  # one GPU at most: a family limit of YOLOX
        best, metrics, epochs_run = train_yolox(
            architecture=architecture,
            class_names=class_names,
            dataset_root=dataset_root,
            data_yaml=spec.dataset.data_yaml,
            hp=spec.hyperparameters,
            device="cpu" if device == "cpu" else "cuda:0",
            work=self.work / "yolox",
            resume=resume,
            base=base,
            on_epoch=self.on_epoch,
            on_resume=self.on_resume,
            resumed_metrics=resumed_metrics,
            carried_best=carried_best,
        )
        imgsz = spec.hyperparameters.imgsz
        self.checkpoint.finish(best, epochs_run, imgsz, metrics, self.config.attempt)
        return best, metrics, epochs_run, imgsz


def _gpu_memory_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_reserved() / 1e9, 3) if torch.cuda.is_available() else None


def _require_yolox() -> None:
    try:
        import yolox  # noqa: F401
    except ImportError:
        raise TrainerError(
            "YOLOX needs PyPI pixeltable-yolox in the trainer image: install visioninapp[trainer] "
            "(it is in that extra) or `pip install pixeltable-yolox`"
        ) from None


def _family(config: TrainerConfig, base: Path | None) -> tuple[Family, str | None]:
    """The family and (YOLOX) architecture of this run: from the spec, or from the base weights."""
    if config.spec.model.architecture is not None:
        family = family_of(config.spec.model.architecture)
        if family.name == "yolox":
            _require_yolox()
        return family, config.spec.model.architecture
    assert base is not None  # the config requires baseWeights with a baseModel
    _require_yolox()  # it tells YOLOX weights from ultralytics ones
    from visioninapp.trainer.yolox_train import yolox_architecture_of

    architecture = yolox_architecture_of(base)
    if architecture is None:
        return family_of("yolo11n"), None
    log.info("base model %s holds %s weights", config.spec.model.base_model, architecture)
    return family_of(architecture), architecture


def _check_limits(family: Family, config: TrainerConfig) -> None:
    """The family's limits (the CRD checks them for an architecture; a base model's only here)."""
    wire = config.spec.wire()
    for limit in family.limits:
        if not evaluate_rule(limit.condition, wire):
            raise TrainerError(
                f"spec.{limit.message} (model.baseModel {config.spec.model.base_model} is {family.title})"
            )


def _export_onnx(family: Family, best: Path, config: TrainerConfig, imgsz: int, work: Path) -> Path:
    spec = config.spec
    if family.name == "yolox":
        from visioninapp.trainer.yolox_train import export_yolox_onnx

        return export_yolox_onnx(best, spec.export, work / "export" / "model.onnx")
    from ultralytics import YOLO

    return Path(
        YOLO(str(best)).export(
            format="onnx",
            opset=spec.export.opset,
            simplify=spec.export.simplify,
            dynamic=spec.export.dynamic,
            half=spec.export.half,
            imgsz=imgsz,
            device=_device(config),
            verbose=False,
        )
    )


def run_training(config: TrainerConfig, store: ArtifactStore, publisher: EventPublisher) -> TrainerResult:
    """Train, checkpoint, export and upload; returns the result for the termination message."""
    work = config.work_dir / config.namespace / config.name
    work.mkdir(parents=True, exist_ok=True)
    prepare_offline_ultralytics(config.work_dir / "ultralytics-config")

    spec = config.spec
    base = None
    if config.base_weights is not None:
        base = store.get_file(config.base_weights.uri, work / "base.pt", sha256=config.base_weights.sha256)
    family, architecture = _family(config, base)
    _check_limits(family, config)
    publisher.log_line(f"attempt {config.attempt} of {config.namespace}/{config.name} starting")
    dataset_root = fetch_dataset(
        store, spec.dataset.uri, spec.dataset.data_yaml, work / "dataset", progress=_log_download
    )
    class_names = validate_dataset(dataset_root, spec.dataset.data_yaml, work / "data.resolved.yaml")
    gate = prepare_gate(config, store, work, dataset_root, class_names)

    checkpoint = Checkpoint(store, config.output_uri)
    marker = checkpoint.latest()
    if marker is not None and marker.get("finished"):
        # Training ended in an earlier attempt that failed afterwards: export its best weights.
        log.info("training finished in attempt %d: exporting its best weights", marker["attempt"])
        publisher.log_line(f"training finished in attempt {marker['attempt']}; exporting its best weights")
        best = store.get_file(checkpoint.best_uri, work / "finished" / "best.pt", sha256=marker["bestSha256"])
        final_metrics = TrainingMetrics.model_validate(marker["metrics"])
        epochs_run, imgsz = int(marker["epoch"]), int(marker["imgsz"])
    elif family.name == "yolox" and architecture is not None:
        best, final_metrics, epochs_run, imgsz = _YoloxRun(config, publisher, checkpoint, work).train(
            architecture, class_names, dataset_root, marker, base
        )
    else:
        best, final_metrics, epochs_run, imgsz = _train(config, base, publisher, checkpoint, marker, work)

    publisher.log_line("exporting ONNX")
    onnx_path = _export_onnx(family, best, config, imgsz, work)
    uploads: list[tuple[str, StoredObject]] = [
        ("pt", store.put_file(best, join_uri(config.output_uri, "weights", "best.pt"))),
        ("onnx", store.put_file(onnx_path, join_uri(config.output_uri, "weights", "model.onnx"))),
    ]
    formats = [ArtifactFormat(format=f, uri=o.uri, sha256=o.sha256, size=o.size) for f, o in uploads]
    evaluation = None
    if gate is not None:
        publisher.log_line("quality gate: evaluating the candidate and the baseline on fixed data")
        evaluation = run_gate(config, store, gate, onnx_path, uploads[1][1].uri, class_names)
    manifest_uri = join_uri(config.output_uri, "manifest.json")
    manifest = {
        "namespace": config.namespace,
        "trainingJob": config.name,
        "attempt": config.attempt,
        "architecture": spec.model.architecture or architecture,
        "family": family.name,
        "baseModel": spec.model.base_model,
        "dataset": spec.dataset.uri,
        "classNames": class_names,
        "imgsz": imgsz,
        "epochsRun": epochs_run,
        "export": spec.export.wire(),
        "formats": [f.wire() for f in formats],
        "metrics": final_metrics.wire(),
        **({"evaluation": evaluation.wire()} if evaluation is not None else {}),
        "createdAt": datetime.now(UTC).isoformat(),
    }
    store.put_bytes(json.dumps(manifest, indent=2).encode(), manifest_uri)
    publisher.log_line(f"done: mAP50-95 {final_metrics.map50_95}, {len(formats)} files uploaded")
    return TrainerResult(
        formats=formats,
        manifest_uri=manifest_uri,
        metrics=final_metrics,
        class_names=class_names,
        imgsz=imgsz,
        epochs_run=epochs_run,
        attempt=config.attempt,
        evaluation=evaluation,
    )
