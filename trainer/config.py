"""The trainer's configuration, written by the operator into the Job (mounted file or env)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from visioninapp.resources.base import DnsSubdomain, Sha256, StorageUri
from visioninapp.resources.trainingjob import TrainingJobSpec
from visioninapp.validation import format_path

__all__ = ["CONFIG_ENV", "CONFIG_FILE_ENV", "BaseWeights", "ConfigError", "TrainerConfig", "load_config"]

CONFIG_FILE_ENV = "VISIONINAPP_TRAINER_CONFIG"  # path of a JSON/YAML file
CONFIG_ENV = "VISIONINAPP_TRAINER_CONFIG_JSON"  # the config itself, inline


class ConfigError(ValueError):
    """The trainer's configuration is missing or invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class BaseWeights(_Model):
    """The base ModelArtifact's `pt` file, resolved by the operator."""

    uri: StorageUri
    sha256: Sha256


class TrainerConfig(_Model):
    """Everything one attempt of a TrainingJob needs."""

    name: DnsSubdomain = Field(description="TrainingJob name.")
    namespace: DnsSubdomain = Field(description="TrainingJob namespace.")
    attempt: int = Field(ge=1, description="Attempt number (the Job's).")
    spec: TrainingJobSpec = Field(description="The TrainingJob spec.")
    output_uri: StorageUri = Field(
        description="Base URI of this job's outputs, `<output.uri>/<namespace>/<name>` "
        "(resolved by the operator)."
    )
    base_weights: BaseWeights | None = Field(
        None, description="Weights to fine-tune from (`model.baseModel`)."
    )
    baseline_weights: BaseWeights | None = Field(
        None, description="The baseline's `onnx` file to compare with (`evaluation.baseline`)."
    )
    termination_log: Path = Field(Path("/dev/termination-log"), description="Where the result JSON goes.")
    work_dir: Path = Field(Path("/tmp/visioninapp-trainer"), description="Local scratch directory.")

    def model_post_init(self, _context: object) -> None:
        if self.spec.model.base_model and self.base_weights is None:
            raise ValueError("spec.model.baseModel is set but baseWeights (its resolved pt URI) is missing")
        evaluation = self.spec.evaluation
        if evaluation is not None and evaluation.baseline and self.baseline_weights is None:
            raise ValueError(
                "spec.evaluation.baseline is set but baselineWeights (its resolved onnx URI) is missing"
            )


def load_config(path: Path | None = None) -> TrainerConfig:
    """Read the config from `path`, `$VISIONINAPP_TRAINER_CONFIG` (a file) or `..._JSON` (inline)."""
    if path is None and os.environ.get(CONFIG_FILE_ENV):
        path = Path(os.environ[CONFIG_FILE_ENV])
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from None
    elif os.environ.get(CONFIG_ENV):
        try:
            raw = json.loads(os.environ[CONFIG_ENV])
        except json.JSONDecodeError as error:
            raise ConfigError(f"${CONFIG_ENV} is not valid JSON: {error}") from None
    else:
        raise ConfigError(f"no config: pass --config FILE or set ${CONFIG_FILE_ENV} or ${CONFIG_ENV}")
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = format_path([p for p in first["loc"] if isinstance(p, (str, int))])
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        got = f" (got {first['input']!r})" if not isinstance(first.get("input"), (dict, list)) else ""
        raise ConfigError(f"invalid config: {where}: {first['msg']}{got}{more}") from None
