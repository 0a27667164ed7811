"""TrainingJob (`tj`): one YOLO training run on a GPU node pool."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from visioninapp.families import FAMILIES, all_architectures, family_schema
from visioninapp.resources.base import (
    CelRule,
    Condition,
    DatasetUri,
    DnsLabel,
    DnsSubdomain,
    KubeModel,
    NodeSelector,
    Quantity,
    StorageUri,
    Toleration,
)

__all__ = [
    "ARCHITECTURES",
    "DatasetRef",
    "EvaluationSpec",
    "ExportOptions",
    "GpuResources",
    "Hyperparameters",
    "ModelSource",
    "OutputSpec",
    "Placement",
    "TrainingJobPhase",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "TrainingMetrics",
    "TrainingResources",
]

# Every family's architectures (visioninapp/families.py): ultralytics YOLO and YOLOX.
ARCHITECTURES = all_architectures()
Architecture = Literal[ARCHITECTURES]  # type: ignore[valid-type]


def _family_rules() -> tuple[CelRule, ...]:
    """Each family's limits as CEL rules on the spec, applied when the architecture is of that family
    (a `baseModel`'s family is known only to the trainer, which checks the same limits)."""
    rules: list[CelRule] = []
    for family in FAMILIES:
        names = ", ".join(f"'{a}'" for a in family.architectures)
        rules.extend(
            CelRule(
                rule=f"!has(self.model.architecture) || !(self.model.architecture in [{names}]) "
                f"|| ({limit.condition})",
                message=limit.message,
                reason="FieldValueInvalid",
            )
            for limit in family.limits
        )
    return tuple(rules)


class ModelSource(KubeModel):
    """What to train: a fresh architecture, or fine-tuning from a registered model."""

    cel_rules = (
        CelRule(
            rule="has(self.architecture) != has(self.baseModel)",
            message="set exactly one of model.architecture (train from scratch) or model.baseModel "
            "(fine-tune a ModelArtifact)",
            reason="FieldValueInvalid",
        ),
    )

    architecture: Architecture | None = Field(
        None,
        description="Detection architecture to train from scratch: an ultralytics YOLO (`yolo11n`, "
        "`yolov8s`, `yolo12n`, `yolov5nu`, ...) or a YOLOX size (`yolox-nano|tiny|s|m|l|x`, trained by "
        "Megvii's YOLOX code from PyPI `pixeltable-yolox`).",
        json_schema_extra={"x-families": family_schema()},  # type: ignore[dict-item]
    )
    base_model: DnsSubdomain | None = Field(
        None,
        description="Name of a ModelArtifact in the same namespace to fine-tune from (its `pt` format).",
    )


class DatasetRef(KubeModel):
    """A YOLO-format dataset: `images/` and `labels/` folders plus a `data.yaml`."""

    uri: DatasetUri = Field(
        description="Folder holding the dataset, e.g. `s3://datasets/helmets/v3`, or a key relative to "
        "the platform's artifact store, e.g. `datasets/shapes/v1` (the same manifest in local mode and "
        "on a cluster)."
    )
    data_yaml: str = Field(
        "data.yaml", max_length=253, description="Path of the dataset YAML inside the folder."
    )


class Hyperparameters(KubeModel):
    """Training settings passed to ultralytics (`model.train(...)`)."""

    epochs: int = Field(100, ge=1, le=10000, description="Number of training epochs.")
    imgsz: int = Field(640, ge=32, le=4096, multiple_of=32, description="Square input size in pixels.")
    batch: int = Field(16, ge=-1, le=1024, description="Batch size; -1 lets ultralytics pick for the GPU.")
    nominal_batch: int = Field(
        64,
        ge=1,
        le=1024,
        description="Nominal batch size (ultralytics `nbs`): gradients are accumulated up to it, and "
        "weight decay is scaled by it. Lower it for tiny datasets, where 64 means one step per epoch.",
    )
    lr0: float = Field(0.01, gt=0, le=1, description="Initial learning rate.")
    lrf: float = Field(0.01, gt=0, le=1, description="Final learning rate as a fraction of `lr0`.")
    momentum: float = Field(0.937, ge=0, lt=1, description="SGD momentum / Adam beta1.")
    weight_decay: float = Field(0.0005, ge=0, le=0.1, description="Optimizer weight decay.")
    warmup_epochs: float = Field(3.0, ge=0, le=100, description="Warm-up epochs.")
    optimizer: Literal["auto", "SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp"] = Field(
        "auto", description="Optimizer; `auto` chooses from the run length."
    )
    cos_lr: bool = Field(False, description="Use a cosine learning-rate schedule.")
    close_mosaic: int = Field(10, ge=0, le=10000, description="Disable mosaic for the last N epochs.")
    patience: int = Field(50, ge=0, le=10000, description="Early stop after N epochs without improvement.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Random seed; runs with the same seed repeat.")
    deterministic: bool = Field(True, description="Use deterministic algorithms where possible.")
    workers: int = Field(8, ge=0, le=64, description="Data loader worker processes.")
    amp: bool = Field(True, description="Mixed precision on GPU.")


class GpuResources(KubeModel):
    """GPUs for the trainer pod."""

    count: int = Field(1, ge=0, le=16, description="`nvidia.com/gpu` limit; 0 trains on the CPU.")
    type: str | None = Field(
        None,
        max_length=63,
        description="GPU model, matched against the node label `nvidia.com/gpu.product` "
        "(e.g. `NVIDIA-A100-SXM4-80GB`); empty accepts any GPU.",
    )


class TrainingResources(KubeModel):
    """Compute requested by the trainer pod."""

    gpu: GpuResources = Field(default_factory=GpuResources, description="GPU count and type.")
    cpu: Quantity = Field("4", description="CPU request, e.g. `4` or `3500m`.")
    memory: Quantity = Field("16Gi", description="Memory request and limit, e.g. `16Gi`.")
    shared_memory: Quantity = Field("2Gi", description="Size of /dev/shm for the data loader workers.")


class Placement(KubeModel):
    """Where the trainer pod may run (AKS GPU node pools, spot nodes, Kueue queues)."""

    node_selector: NodeSelector = Field(
        default_factory=dict, description="Node labels the pod requires, e.g. `agentpool: gpu`."
    )
    tolerations: Annotated[list[Toleration], Field(max_length=16)] = Field(
        default_factory=list,
        description="Taints the pod tolerates, e.g. `sku=gpu:NoSchedule` or the spot taint.",
    )
    priority_class_name: DnsSubdomain | None = Field(None, description="PriorityClass of the pod.")
    queue_name: DnsSubdomain | None = Field(
        None,
        description="Kueue LocalQueue; the Job is then created suspended and Kueue admits it.",
    )


class ExportOptions(KubeModel):
    """ONNX export options (`pt` and `onnx` are always produced)."""

    opset: int = Field(17, ge=11, le=22, description="ONNX opset version.")
    simplify: bool = Field(True, description="Simplify the graph with onnxslim.")
    dynamic: bool = Field(False, description="Dynamic batch and image size axes.")
    half: bool = Field(False, description="Export FP16 weights (GPU export only).")
    decode_in_graph: bool = Field(
        True,
        description="Box decoding (grid and stride) inside the ONNX graph. YOLOX only may turn it off: "
        "the graph then ends at the raw head and the edge runtime decodes it.",
    )


class OutputSpec(KubeModel):
    """Where results go and how the resulting ModelArtifact is named."""

    uri: StorageUri | None = Field(
        None,
        description="Base URI for checkpoints and weights; the operator's default artifact URI when "
        "empty. Objects go to `<uri>/<namespace>/<trainingjob>/`.",
    )
    model: DnsLabel | None = Field(
        None, description="Model line of the ModelArtifact, e.g. `helmet-detector`; default: the job name."
    )
    artifact_name: DnsSubdomain | None = Field(
        None, description="Name of the ModelArtifact to create; default: the TrainingJob name."
    )


class EvaluationSpec(KubeModel):
    """The quality gate: after export the trainer compares the candidate with a baseline on fixed data
    and stores the per-class evaluation record next to the weights (docs/quality-gate.md)."""

    held_out: DatasetRef = Field(
        description="The model line's held-out set, never trained on (its `val` split is evaluated); the "
        "trainer refuses a held-out set that is the training dataset or shares an image with its train split."
    )
    new_frames: DatasetRef | None = Field(
        None, description="The new frames (their `val` split): evaluated and reported, never gating."
    )
    baseline: DnsSubdomain | None = Field(
        None,
        description="ModelArtifact to compare with (its `onnx` format), normally the line's production; "
        "without one the candidate is only evaluated and the gate passes.",
    )
    max_drop: float = Field(
        0.01, ge=0, le=1, description="Allowed drop of held-out mAP50-95 below the baseline's."
    )
    max_class_drop: float | None = Field(
        None, ge=0, le=1, description="Allowed drop of each held-out class's AP50-95; unset: not checked."
    )


class TrainingJobSpec(KubeModel):
    """Desired state of a TrainingJob."""

    cel_rules = (
        *_family_rules(),
        CelRule(
            rule="self.model == oldSelf.model",
            message="spec.model is immutable: create a new TrainingJob to train another model",
            field_path=".model",
            reason="FieldValueForbidden",
        ),
        CelRule(
            rule="self.dataset == oldSelf.dataset",
            message="spec.dataset is immutable: create a new TrainingJob for another dataset",
            field_path=".dataset",
            reason="FieldValueForbidden",
        ),
        CelRule(
            rule="has(self.evaluation) == has(oldSelf.evaluation) && "
            "(!has(self.evaluation) || self.evaluation == oldSelf.evaluation)",
            message="spec.evaluation is immutable: the gate a run was asked for is part of its result",
            reason="FieldValueForbidden",
        ),
        CelRule(
            rule="!has(self.evaluation) || self.evaluation.heldOut.uri != self.dataset.uri",
            message="spec.evaluation.heldOut must not be the training dataset: a held-out set is never "
            "trained on",
            field_path=".evaluation.heldOut.uri",
            reason="FieldValueInvalid",
        ),
        CelRule(
            rule="self.output == oldSelf.output",
            message="spec.output is immutable: results of earlier attempts live there",
            field_path=".output",
            reason="FieldValueForbidden",
        ),
    )

    model: ModelSource = Field(description="Architecture to train, or a ModelArtifact to fine-tune.")
    dataset: DatasetRef = Field(description="The YOLO-format dataset to train on.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Training settings."
    )
    resources: TrainingResources = Field(
        default_factory=TrainingResources, description="GPU, CPU and memory of the trainer pod."
    )
    placement: Placement = Field(default_factory=Placement, description="Node pool and queue placement.")
    checkpoint_every: int = Field(
        1, ge=1, le=1000, description="Upload `last.pt` every N epochs, so a preempted run resumes."
    )
    export: ExportOptions = Field(default_factory=ExportOptions, description="ONNX export options.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Output location and naming.")
    evaluation: EvaluationSpec | None = Field(
        None, description="Quality gate: compare the candidate with a baseline on a held-out set."
    )
    suspend: bool = Field(
        False, description="Stop the running attempt and keep its checkpoint; false resumes it."
    )
    backoff_limit: int = Field(2, ge=0, le=20, description="Retries of the trainer pod per attempt.")
    active_deadline_seconds: int | None = Field(
        None, ge=60, le=30 * 86400, description="Fail an attempt that runs longer than this."
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=365 * 86400,
        description="Delete the finished Job and its pods after this many seconds (never the "
        "TrainingJob itself, so GitOps does not re-apply and retrain).",
    )


TrainingJobPhase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"]


class TrainingMetrics(KubeModel):
    """Validation metrics of the latest (or best) epoch."""

    map50: float | None = Field(None, alias="mAP50", ge=0, le=1, description="mAP at IoU 0.5.")
    map50_95: float | None = Field(
        None, alias="mAP50_95", ge=0, le=1, description="mAP averaged over IoU 0.5 to 0.95."
    )
    precision: float | None = Field(None, ge=0, le=1, description="Precision.")
    recall: float | None = Field(None, ge=0, le=1, description="Recall.")
    losses: Annotated[dict[Annotated[str, Field(max_length=32)], float], Field(max_length=8)] = Field(
        default_factory=dict, description="Training losses by name (`box`, `cls`, `dfl`)."
    )


class TrainingJobStatus(KubeModel):
    """Observed state of a TrainingJob, written only by the operator."""

    observed_generation: int | None = Field(None, ge=0, description="Generation last reconciled.")
    phase: TrainingJobPhase = Field("Pending", description="Where the run is in its life.")
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list, description="Scheduled, Running, Unschedulable, Succeeded, Failed, ..."
    )
    job_name: DnsSubdomain | None = Field(None, description="The batch/v1 Job of the current attempt.")
    attempts: int = Field(0, ge=0, description="Attempts started (a suspend/resume starts a new one).")
    epoch: int | None = Field(None, ge=0, description="Last completed epoch.")
    epochs: int | None = Field(None, ge=0, description="Epochs planned.")
    metrics: TrainingMetrics | None = Field(None, description="Metrics of the last completed epoch.")
    start_time: datetime | None = Field(None, description="When the first attempt started.")
    completion_time: datetime | None = Field(None, description="When the run finished.")
    artifact: DnsSubdomain | None = Field(None, description="The ModelArtifact this run produced.")
    message: str | None = Field(None, max_length=4096, description="Last notable event or failure.")
