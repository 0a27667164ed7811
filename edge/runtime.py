"""The edge runtime: model lifecycle, detection, metrics, health events and feedback, wired once."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import cv2
import numpy as np
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import TypeAdapter, ValidationError

from visioninapp.backends.events import EventBus
from visioninapp.backends.storage import ArtifactStore
from visioninapp.edge.cameras import Frame
from visioninapp.edge.engines import SharedEngines
from visioninapp.edge.identity import EdgeCredentials, NodeIdentity
from visioninapp.edge.inference import DetectionResult
from visioninapp.edge.models import LoadedModel, ModelManager, ModelSpec
from visioninapp.edge.picker import HardFramePicker
from visioninapp.edge.stream import StreamPipeline, detection_json
from visioninapp.edge.telemetry import FeedbackSpool, Spool, WindowStats, publish_spool
from visioninapp.events import MAX_ANNOUNCED
from visioninapp.factory import artifact_store_for, build_event_bus
from visioninapp.images import decode_image
from visioninapp.resources.edgedeployment import CameraSpec
from visioninapp.settings import Settings

__all__ = ["EdgeRuntime", "ModelGovernedError", "NoModelError"]

log = logging.getLogger(__name__)
RETRY_SECONDS = 30.0
LATENCY_BUCKETS_MS = (2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500)
CAMERA_LIST = TypeAdapter(list[CameraSpec])


class NoModelError(RuntimeError):
    """No model is loaded yet."""


class ModelGovernedError(RuntimeError):
    """A deployment sets this node's model; an admin swap would be undone, so it is refused."""


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "visioninapp_edge_detect_latency_ms",
            "End-to-end /v1/detect latency (ms)",
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.requests = Counter("visioninapp_edge_requests", "Detect requests", registry=r)
        self.errors = Counter("visioninapp_edge_errors", "Failed detect requests", ["reason"], registry=r)
        self.low_confidence = Counter(
            "visioninapp_edge_low_confidence", "Requests with a low top score", registry=r
        )
        self.hard_frames = Counter(
            "visioninapp_edge_hard_frames",
            "Hard-frame picker decisions on uncertain frames",
            ["outcome"],
            registry=r,
        )
        self.ready = Gauge("visioninapp_edge_ready", "1 while the desired model serves", registry=r)
        self.model = Gauge(
            "visioninapp_edge_model_info", "The model serving", ["sha256", "version", "provider"], registry=r
        )
        self.rejections = Counter("visioninapp_edge_model_rejections", "Desired models rejected", registry=r)
        self.spooled_events = Gauge("visioninapp_edge_spooled_events", "Health events waiting", registry=r)
        self.spooled_frames = Gauge("visioninapp_edge_spooled_frames", "Feedback frames waiting", registry=r)


def node_s3_store(settings: Settings, credentials: EdgeCredentials) -> ArtifactStore:
    """An S3 store signing with this node's own keys (not the ambient AWS_* of the pod)."""
    import boto3
    from botocore.config import Config

    from visioninapp.backends.s3 import S3ArtifactStore

    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )
    return S3ArtifactStore(client=client)


class EdgeRuntime:
    def __init__(self, settings: Settings, bus: EventBus | None = None) -> None:
        self.settings = settings
        self.metrics = _Metrics()
        state = settings.resolved_edge_state_dir
        engines_uri = settings.resolved_engine_cache_uri
        self.models = ModelManager(
            settings.resolved_edge_cache_dir,
            self._store_for,
            settings.edge_precision,
            on_change=self._model_changed,
            engine=settings.edge_engine,
            shared=SharedEngines(self._store_for, engines_uri) if engines_uri else None,
            node=settings.node_name,
            build_timeout=settings.edge_engine_build_timeout_seconds,
            refresh_credentials=self._refresh_credentials,
        )
        self.window = WindowStats()
        self.events = Spool(state / "events", ".json")
        self.feedback = FeedbackSpool(
            state / "feedback",
            settings.resolved_feedback_uri,
            settings.namespace,
            settings.deployment,
            settings.node_name,
        )
        # the node's own S3 keys from the operator's exchange, when it runs one (never the fleet's)
        self.identity = (
            NodeIdentity(
                settings.edge_identity_url, settings.edge_identity_token_file, settings.edge_identity_ca_file
            )
            if settings.edge_identity_url
            else None
        )
        self._s3: tuple[EdgeCredentials, ArtifactStore] | None = None
        self.picker = HardFramePicker(
            settings.feedback_enabled,
            settings.feedback_min_score,
            settings.feedback_max_score,
            settings.feedback_sample_rate,
            settings.feedback_max_frames_per_hour,
        )
        self.streams = StreamPipeline(
            lambda: self.models.current,
            settings.edge_confidence,
            settings.edge_iou,
            self.metrics.registry,
            on_frame=self._stream_frame,
        )
        self._cameras_mtime: float | None = None
        self.bus = bus
        self._bus_user: tuple[str, str] | None = None  # the node's broker user the bus signs in as
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._config_mtime: float | None = None
        self._last_rejections = 0
        self._last_try = 0.0
        self._sync_lock = threading.Lock()

    # --- wiring -------------------------------------------------------------------------------

    def _store_for(self, uri: str) -> ArtifactStore:
        if self.identity is None or not uri.startswith("s3://"):
            return artifact_store_for(uri, self.settings)
        credentials = self.identity.credentials()
        if self._s3 is None or self._s3[0] != credentials:
            self._s3 = (credentials, node_s3_store(self.settings, credentials))
        return self._s3[1]

    def _refresh_credentials(self) -> None:
        """Trade the token again (e.g. designated as an engine's builder since the keys were issued)."""
        if self.identity is not None:
            with contextlib.suppress(Exception):
                self.identity.credentials(refresh=True)

    def _node_bus(self) -> EventBus | None:
        """With an exchange issuing broker users: a bus signing in as this node's own user (rebuilt
        when the exchange hands out another one); the bus given or built otherwise."""
        if self.identity is None or not self.settings.rabbitmq_host or (self._bus_user is None and self.bus):
            return self.bus
        credentials = self.identity.credentials()
        if credentials.broker_user is None or credentials.broker_password is None:
            return self.bus  # the operator issues no broker users: the environment's one
        user = (credentials.broker_user, credentials.broker_password)
        if user != self._bus_user:
            if self.bus is not None:
                self.bus.close()
            update = {"rabbitmq_user": user[0], "rabbitmq_password": user[1]}
            self.bus, self._bus_user = build_event_bus(self.settings.model_copy(update=update)), user
        return self.bus

    def _model_changed(self) -> None:
        self.metrics.model.clear()
        current = self.models.current
        if current is not None:
            self.metrics.model.labels(current.spec.sha256, current.spec.label, current.detector.provider).set(
                1
            )
        self.metrics.ready.set(1 if self.models.ready else 0)
        self.metrics.rejections.inc(self.models.rejections - self._last_rejections)
        self._last_rejections = self.models.rejections

    def desired_from_settings(self) -> ModelSpec | None:
        s = self.settings
        if s.edge_model_uri and s.edge_model_sha256:
            return ModelSpec(s.edge_model_uri, s.edge_model_sha256, s.edge_model_format, s.edge_model_version)
        return None

    def governed_by(self) -> str | None:
        """What sets this node's desired model, if anything but the admin API does (None: nothing)."""
        s = self.settings
        if s.edge_model_config is not None:
            return f"the watched model config file {s.edge_model_config} (VISIONINAPP_EDGE_MODEL_CONFIG)"
        if self.desired_from_settings() is not None:
            return "its deployment (VISIONINAPP_EDGE_MODEL_URI and _SHA256, set from the EdgeDeployment)"
        return None

    def set_model_by_admin(self, spec: ModelSpec) -> bool:
        """The admin API's swap: refused (ModelGovernedError) while a deployment governs the model,
        because the model watcher would put the deployment's model back; else as `set_desired`."""
        governor = self.governed_by()
        if governor is not None:
            raise ModelGovernedError(
                f"this node's model is governed by {governor}: an admin swap to {spec.label} would be "
                "undone; change the EdgeDeployment (or that file) instead"
            )
        return self.models.set_desired(spec)

    def _desired_from_config_file(self) -> ModelSpec | None:
        path = self.settings.edge_model_config
        if path is None or not path.exists():
            return None
        mtime = path.stat().st_mtime
        if mtime == self._config_mtime:
            return None
        self._config_mtime = mtime
        try:
            raw = yaml.safe_load(path.read_text())
            return ModelSpec(
                uri=raw["uri"],
                sha256=raw["sha256"],
                format=raw.get("format", "onnx"),
                version=raw.get("version"),
            )
        except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
            log.error("model config %s unusable (need uri and sha256): %s", path, error)
            return None

    # --- life ---------------------------------------------------------------------------------

    def start(self, sync_interval: float = 1.0) -> None:
        """Serve the last-good model now; fetch the desired one and sync in the background."""
        if self.bus is None:
            try:
                self.bus = self._node_bus() or build_event_bus(self.settings)
            except Exception as error:  # events stay spooled until a bus works
                log.error("event bus unavailable: %s", error)
        self.models.load_last_good()
        self._model_changed()
        self.streams.start()
        self._follow_cameras()
        # Separate loops: a long model download or an upload retrying against an unreachable store
        # must hold up neither the other nor the health windows, which close on time.
        loops = (
            (self._watch_models, "edge-models"),
            (self._watch_cameras, "edge-cameras"),
            (self._close_windows, "edge-windows"),
            (self._sync_loop, "edge-sync"),
        )
        for target, name in loops:
            thread = threading.Thread(target=target, args=(sync_interval,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.streams.stop()
        self.sync_once()  # frames first: the last window announces what this upload sent
        self.close_window()
        self.sync_once()
        if self.bus is not None:
            self.bus.close()

    def _watch_models(self, interval: float) -> None:
        desired = self.desired_from_settings()
        while not self._stop.is_set():
            desired = self._desired_from_config_file() or desired
            if desired is not None and self._should_try(desired):
                self._last_try = time.monotonic()
                self.models.set_desired(desired)
            self._stop.wait(interval)

    def _watch_cameras(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self._follow_cameras()
            except Exception:  # an unreadable directory must not end the following
                log.exception("cameras file unusable")
            self._stop.wait(interval)

    def _close_windows(self, interval: float) -> None:
        while not self._stop.is_set():
            if (time.time() - self.window.started.timestamp()) >= self.settings.edge_summary_interval_seconds:
                try:
                    self.close_window()
                except Exception:  # one bad window must not end the health reports
                    log.exception("health window could not be written")
            self._stop.wait(interval)

    def _sync_loop(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sync_once()
            self._stop.wait(interval)

    def _follow_cameras(self) -> None:
        """Run the cameras of this node's file in the cameras directory; follow its changes (a
        ConfigMap volume is updated in place). A file that does not validate changes nothing."""
        directory = self.settings.edge_cameras_dir
        if directory is None:
            return
        path = directory / self.settings.node_name
        try:
            mtime: float | None = path.stat().st_mtime
        except FileNotFoundError:
            mtime = None  # no camera on this node (any more)
        if mtime == self._cameras_mtime:
            return
        try:
            cameras = CAMERA_LIST.validate_json(path.read_bytes()) if mtime is not None else []
        except (OSError, ValidationError) as error:
            log.error("cameras file %s unusable, cameras unchanged: %s", path, error)
        else:
            log.info("cameras: %s", ", ".join(c.name for c in cameras) or "none")
            self.streams.configure(cameras)
        self._cameras_mtime = mtime

    def _should_try(self, desired: ModelSpec) -> bool:
        """A new desired model now; an unavailable one (network) every 30 s; a rejected one never."""
        if self.models.desired != desired:
            return True
        if self.models.ready or not self.models.retryable:
            return False
        return time.monotonic() - self._last_try >= RETRY_SECONDS

    def close_window(self) -> None:
        current = self.models.current
        event = self.window.close(
            namespace=self.settings.namespace,
            deployment=self.settings.deployment,
            node=self.settings.node_name,
            revision=self.settings.revision,
            model_sha256=current.spec.sha256 if current else None,
            model_version=current.spec.label if current else None,
            provider=current.detector.provider if current else None,
            ready=self.models.ready,
            reason=self.models.not_ready_reason,
            cameras=self.streams.close_window(),
            engine=self.models.engine_report(),
            frames=self.feedback.take_uploaded(MAX_ANNOUNCED),
        )
        self.events.add(event.to_bytes())

    def sync_once(self) -> None:
        """Publish spooled events and upload spooled frames; whatever fails waits for the next pass."""
        with self._sync_lock:  # the background loop and stop() must not send the same file twice
            self._sync()

    def _sync(self) -> None:
        try:
            bus = self._node_bus()
        except Exception as error:  # refused or unreachable exchange: events stay spooled
            log.error("event bus unavailable: %s", error)
            bus = None
        if bus is not None:
            producer = f"edge.{self.settings.namespace}.{self.settings.deployment}.{self.settings.node_name}"
            publish_spool(self.events, bus, self.settings.edge_stream, producer)
            if self._bus_user is not None and self.identity is not None and self.events.items():
                with contextlib.suppress(Exception):  # refused: rotated or revoked? (every 30 s)
                    self.identity.credentials(refresh=True)
        if self.feedback.spool.items():
            try:
                self.feedback.upload(self._store_for(self.feedback.prefix))
                if self.identity is not None and self.feedback.spool.items():
                    self.identity.credentials(refresh=True)  # refused keys: rotated or revoked?
            except Exception as error:  # a misconfigured store must not stop the runtime
                log.error("feedback upload failed: %s", error)
        self.metrics.spooled_events.set(len(self.events.items()))
        self.metrics.spooled_frames.set(len(self.feedback.spool.items()))

    # --- requests -----------------------------------------------------------------------------

    def detect(self, data: bytes, conf: float | None = None, iou: float | None = None) -> dict[str, Any]:
        """Bytes in, response dict out. Raises ImageError (client's fault) or NoModelError."""
        started = time.perf_counter()
        self.metrics.requests.inc()
        loaded = self.models.current  # this request uses this model, whatever swaps meanwhile
        try:
            if loaded is None:
                raise NoModelError("no model loaded yet: the runtime is fetching its model")
            image = decode_image(data)
            result = loaded.detector.detect(
                image,
                self.settings.edge_confidence if conf is None else conf,
                self.settings.edge_iou if iou is None else iou,
            )
        except Exception as error:
            self.metrics.errors.labels(type(error).__name__).inc()
            self.window.record((time.perf_counter() - started) * 1e3, True, False)
            raise
        elapsed_ms = (time.perf_counter() - started) * 1e3
        response = self._response(loaded.spec, loaded.detector.provider, result, elapsed_ms)
        low = bool(self.picker.uncertain(result.detections))
        self.metrics.latency.observe(elapsed_ms)
        if low:
            self.metrics.low_confidence.inc()
        self.window.record(elapsed_ms, False, low, result.detections)
        try:
            self._offer_hard_frame(image, loaded, result, None, data)
        except Exception:  # the answer is ready: a feedback problem must not turn it into an error
            log.exception("hard-frame feedback failed")
        return response

    def _stream_frame(self, frame: Frame, loaded: LoadedModel, result: DetectionResult) -> None:
        self.window.detected(result.detections)
        self._offer_hard_frame(frame.image, loaded, result, frame.camera, None)

    def _offer_hard_frame(
        self,
        image: np.ndarray,
        loaded: LoadedModel,
        result: DetectionResult,
        camera: str | None,
        original: bytes | None,
    ) -> None:
        """Spool the frame when the picker keeps it, with the model and template that saw it."""
        outcome = self.picker.pick(image, result.detections)
        if outcome in ("disabled", "certain"):
            return
        self.metrics.hard_frames.labels(outcome).inc()
        if outcome != "kept":
            return
        provenance: dict[str, object] = {
            "model": loaded.spec.label,
            "sha256": loaded.spec.sha256,
            "revision": self.settings.revision,
            **({"camera": camera} if camera else {}),
        }
        self.feedback.add(self._jpeg(image, original), detection_json(result.detections), provenance)

    @staticmethod
    def _jpeg(image: np.ndarray, original: bytes | None) -> bytes:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if ok:
            return bytes(encoded.tobytes())
        if original is None:
            raise ValueError("a camera frame could not be encoded as JPEG")
        return original

    @staticmethod
    def _response(
        spec: ModelSpec, provider: str, result: DetectionResult, elapsed_ms: float
    ) -> dict[str, Any]:
        return {
            "model": {
                "version": spec.label,
                "sha256": spec.sha256,
                "format": spec.format,
                "provider": provider,
            },
            "image": {"width": result.width, "height": result.height},
            "detections": detection_json(result.detections),
            "timingsMs": {
                **{k: round(v, 3) for k, v in result.timings_ms.items()},
                "total": round(elapsed_ms, 3),
            },
        }

    def model_info(self) -> dict[str, Any]:
        current, desired = self.models.current, self.models.desired
        return {
            "serving": None
            if current is None
            else {
                "version": current.spec.label,
                "sha256": current.spec.sha256,
                "format": current.spec.format,
                "uri": current.spec.uri,
                "provider": current.detector.provider,
                "classNames": current.detector.class_names,
                "imgsz": list(current.detector.imgsz),
                "head": current.detector.head,
            },
            "desired": None
            if desired is None
            else {
                "version": desired.label,
                "sha256": desired.sha256,
                "uri": desired.uri,
                "format": desired.format,
            },
            "ready": self.models.ready,
            "reason": self.models.not_ready_reason,
            "engine": None
            if (engine := self.models.engine_report()) is None
            else engine.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
