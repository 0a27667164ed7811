"""`visioninapp-trainer`: the entry point of the trainer pod.

Exit 0 with the result JSON in the termination log; on failure a one-line reason on stderr and in
the termination log, and exit 1. Logs go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from visioninapp.backends.storage import ObjectNotFound
from visioninapp.datasets import DatasetError
from visioninapp.events import EXIT_CONFIGURATION
from visioninapp.factory import ConfigurationError, artifact_store_for, build_event_bus
from visioninapp.settings import Settings
from visioninapp.trainer.config import ConfigError, TrainerConfig, load_config
from visioninapp.trainer.gate import GateError
from visioninapp.trainer.publisher import EventPublisher
from visioninapp.trainer.run import TrainerError, run_training

log = logging.getLogger("visioninapp.trainer")
S3_CREDENTIAL_ERRORS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "403",
}


class _EventLogHandler(logging.Handler):
    """Forward log records to the stream as `log` events."""

    def __init__(self, publisher: EventPublisher) -> None:
        super().__init__(logging.INFO)
        self.publisher = publisher

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("visioninapp.trainer.publisher"):
            return  # never publish the publisher's own complaints about publishing
        try:
            self.publisher.log_line(record.getMessage().strip(), record.levelname)
        except Exception:  # logging must never break training
            self.handleError(record)


# Failures that a retry cannot fix (the configuration, the dataset, the gate's data): the trainer
# exits with EXIT_CONFIGURATION, on which the operator's Job fails at once instead of using up its retries.
PERMANENT = (ConfigError, DatasetError, ConfigurationError, GateError)


def describe_failure(error: BaseException, config: TrainerConfig | None) -> str:
    """One line a user can act on."""
    if isinstance(error, (*PERMANENT, TrainerError)):
        return str(error)
    if isinstance(error, ObjectNotFound):
        return f"object not found: {error}"
    where = config.spec.dataset.uri if config else "S3"
    if isinstance(error, NoCredentialsError):
        return f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a role"
    if isinstance(error, EndpointConnectionError):
        return f"S3 endpoint unreachable: {error}"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in S3_CREDENTIAL_ERRORS:
            return f"S3 refused the credentials ({code}) for {where}: check the access key and secret"
        if code in ("NoSuchBucket", "404", "NoSuchKey"):
            return f"S3 object or bucket not found ({code}) under {where}"
        return f"S3 error {code}: {error}"
    return f"{type(error).__name__}: {error}"


def _write_termination(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text[:4096])
    except OSError as error:
        log.error("cannot write the termination log %s: %s", path, error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="visioninapp-trainer",
        description="Run one attempt of a TrainingJob: fetch the dataset, train with ultralytics "
        "(resuming from the newest checkpoint), export ONNX, upload with sha256.",
    )
    parser.add_argument(
        "--config", type=Path, help="config file (JSON/YAML); default: $VISIONINAPP_TRAINER_CONFIG"
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=os.environ.get("VISIONINAPP_TERMINATION_LOG") or None,
        help="override the result path from the config (default: $VISIONINAPP_TERMINATION_LOG, else the "
        "config's terminationLog, /dev/termination-log: the pod's terminationMessagePath)",
    )
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config: TrainerConfig | None = None
    termination = args.termination_log or Path("/dev/termination-log")
    publisher: EventPublisher | None = None
    bus = None
    try:
        config = load_config(args.config)
        termination = args.termination_log or config.termination_log
        store = artifact_store_for(config.output_uri, settings)
        if store.scheme != artifact_store_for(config.spec.dataset.uri, settings).scheme:
            raise TrainerError("dataset and output must be in the same kind of store (both s3:// or file://)")
        bus = build_event_bus(settings)
        publisher = EventPublisher(
            bus, settings.training_stream, config.namespace, config.name, config.attempt
        )
        handler = _EventLogHandler(publisher)
        for name in ("visioninapp", "ultralytics"):
            logging.getLogger(name).addHandler(handler)
        result = run_training(config, store, publisher)
        _write_termination(termination, result.to_termination_message())
        return 0
    except Exception as error:
        reason = describe_failure(error, config)
        log.debug("failure", exc_info=True)  # the traceback, with VISIONINAPP_LOG_LEVEL=DEBUG
        print(f"error: {reason}", file=sys.stderr)
        _write_termination(termination, f"error: {reason}")
        if publisher is not None:
            publisher.log_line(f"failed: {reason}", "ERROR")
        return EXIT_CONFIGURATION if isinstance(error, PERMANENT) else 1
    finally:
        if publisher is not None and not publisher.flush():
            log.warning("%d event(s) could not be published before exit", publisher.buffered)
        if bus is not None:
            bus.close()


if __name__ == "__main__":
    sys.exit(main())
