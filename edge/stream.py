"""The continuous pipeline: camera readers → shared inference → post-processing → live detections.

Readers (`visioninapp.edge.cameras`) keep each camera's newest frame. One inference thread takes
the waiting frames of every camera (one batch when the model's batch axis is dynamic, else one by
one, oldest first) and hands the raw outputs to a post-processing thread, so NMS, JSON and the
hard-frame picker never delay the next inference nor any reader. Each result is published to the
camera's live subscribers (the runtime's SSE route) and counted: frames read, processed and
dropped, latency from the frame's read to its publication, reconnects, per window (EdgeEvents) and
in total (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from visioninapp.edge.cameras import CameraReader, Frame, FrameSlot, FrameSource, open_source
from visioninapp.edge.inference import Detection, DetectionResult
from visioninapp.edge.models import LoadedModel
from visioninapp.events import CameraState, CameraWindow
from visioninapp.resources.edgedeployment import CameraSpec

__all__ = ["MAX_BATCH", "Broadcaster", "StreamPipeline", "detection_json"]

log = logging.getLogger(__name__)
MAX_BATCH = 8
SUBSCRIBER_BUFFER = 32  # results a slow live consumer may lag behind before the oldest are dropped
LATENCY_SAMPLES = 10_000  # per camera and window; at 120 FPS a 15 s window holds 1,800
CAMERA_STATES: tuple[CameraState, ...] = ("connecting", "streaming", "reconnecting", "failed", "stopped")
STREAM_LATENCY_BUCKETS_MS = (5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000)


def detection_json(detections: Iterable[Detection]) -> list[dict[str, Any]]:
    """Detections as the HTTP API and the live stream both answer them."""
    return [
        {
            "box": [round(v, 2) for v in d.box],
            "score": round(d.score, 5),
            "classId": d.class_id,
            "className": d.class_name,
        }
        for d in detections
    ]


class Broadcaster:
    """Hands each camera's results from the pipeline's thread to asyncio subscribers, never blocking:
    a subscriber that falls behind loses its oldest results, not the pipeline's time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]]] = {}

    def subscribe(self, camera: str) -> asyncio.Queue[Any]:
        subscriber: asyncio.Queue[Any] = asyncio.Queue(SUBSCRIBER_BUFFER)
        with self._lock:
            self._subscribers.setdefault(camera, []).append((asyncio.get_running_loop(), subscriber))
        return subscriber

    def unsubscribe(self, camera: str, subscriber: asyncio.Queue[Any]) -> None:
        with self._lock:
            entries = self._subscribers.get(camera, [])
            self._subscribers[camera] = [e for e in entries if e[1] is not subscriber]

    def subscribers(self, camera: str) -> int:
        with self._lock:
            return len(self._subscribers.get(camera, []))

    def close(self, camera: str) -> None:
        """End every live stream of a camera that is gone (its subscribers get None)."""
        self.publish(camera, None)
        with self._lock:
            self._subscribers.pop(camera, None)

    def publish(self, camera: str, message: Any) -> None:
        with self._lock:
            entries = list(self._subscribers.get(camera, []))
        for loop, subscriber in entries:
            try:
                loop.call_soon_threadsafe(_put_newest, subscriber, message)
            except RuntimeError:  # its event loop has closed: the client is gone
                self.unsubscribe(camera, subscriber)


def _put_newest(subscriber: asyncio.Queue[Any], message: Any) -> None:
    if subscriber.full():
        subscriber.get_nowait()
    subscriber.put_nowait(message)


@dataclass
class _CameraStats:
    """One camera's numbers: totals from its reader, latencies and processed frames per window."""

    spec: CameraSpec
    reader: CameraReader
    processed: int = 0  # this window
    processed_total: int = 0
    discarded: int = 0  # taken but never published (no model yet, inference failed): drops too
    latencies_ms: list[float] = field(default_factory=list)
    window_start: float = field(default_factory=time.monotonic)
    last: dict[str, int] = field(default_factory=dict)  # totals at the previous window's end


class _Metrics(Collector):
    """Per-camera totals read from the readers at each scrape; latencies as a histogram."""

    def __init__(self, registry: CollectorRegistry, cameras: Callable[[], dict[str, _CameraStats]]) -> None:
        self._cameras = cameras
        registry.register(self)
        self.latency = Histogram(
            "visioninapp_edge_camera_latency_ms",
            "Frame read to detections published (ms)",
            ["camera"],
            buckets=STREAM_LATENCY_BUCKETS_MS,
            registry=registry,
        )
        self.inference = Histogram(
            "visioninapp_edge_stream_inference_ms",
            "One inference run (a batch) of the camera pipeline (ms)",
            buckets=STREAM_LATENCY_BUCKETS_MS,
            registry=registry,
        )
        self.batch = Histogram(
            "visioninapp_edge_stream_batch_size",
            "Frames per inference run",
            buckets=(1, 2, 4, 8),
            registry=registry,
        )

    def collect(self) -> Iterable[Metric]:
        families = {
            "read": CounterMetricFamily(
                "visioninapp_edge_camera_frames_read", "Frames read", labels=["camera"]
            ),
            "processed": CounterMetricFamily(
                "visioninapp_edge_camera_frames_processed",
                "Frames whose detections were published",
                labels=["camera"],
            ),
            "dropped": CounterMetricFamily(
                "visioninapp_edge_camera_frames_dropped",
                "Frames replaced before inference took them",
                labels=["camera"],
            ),
            "reconnects": CounterMetricFamily(
                "visioninapp_edge_camera_reconnects", "Reconnections to the source", labels=["camera"]
            ),
        }
        state = GaugeMetricFamily(
            "visioninapp_edge_camera_state", "1 for the camera's current state", labels=["camera", "state"]
        )
        for name, stats in sorted(self._cameras().items()):
            counters = stats.reader.counters
            families["read"].add_metric([name], counters.frames_read)
            families["processed"].add_metric([name], stats.processed_total)
            families["dropped"].add_metric([name], counters.frames_dropped + stats.discarded)
            families["reconnects"].add_metric([name], counters.reconnects)
            for each in CAMERA_STATES:
                state.add_metric([name, each], 1 if each == stats.reader.state else 0)
        yield from families.values()
        yield state


@dataclass(frozen=True)
class _Job:
    frames: list[Frame]
    model: LoadedModel
    output: np.ndarray
    letterboxes: list[tuple[tuple[float, float], tuple[int, int]]]


FrameHook = Callable[[Frame, LoadedModel, DetectionResult], None]


def _source(spec: CameraSpec) -> dict[str, Any]:
    """What a reader reads: which nodes read it is not its business (a new node list restarts none)."""
    return spec.model_dump(exclude={"nodes", "node_selector"})


class StreamPipeline:
    """Cameras in, detections out. `configure` (re)starts readers; `start`/`stop` the workers."""

    def __init__(
        self,
        current_model: Callable[[], LoadedModel | None],
        confidence: float,
        iou: float,
        registry: CollectorRegistry,
        on_frame: FrameHook | None = None,
        opener: Callable[[CameraSpec], FrameSource] = open_source,
    ) -> None:
        self.current_model, self.confidence, self.iou = current_model, confidence, iou
        self.on_frame, self.opener = on_frame, opener
        self._cameras: dict[str, _CameraStats] = {}
        self.metrics = _Metrics(registry, lambda: dict(self._cameras))
        self.broadcaster = Broadcaster()
        self._ready = threading.Condition()
        self._slots: dict[str, FrameSlot] = {}
        self._lock = threading.Lock()  # guards _cameras' stats against the window's close
        self._post: queue.Queue[_Job | None] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- cameras ------------------------------------------------------------------------------

    def configure(self, specs: list[CameraSpec]) -> None:
        """Run exactly these cameras: new ones start, removed ones stop, changed ones restart."""
        wanted = {spec.name: spec for spec in specs}
        for name, stats in list(self._cameras.items()):
            if name not in wanted or _source(wanted[name]) != _source(stats.spec):
                stats.reader.stop()
                with self._lock, self._ready:
                    del self._cameras[name], self._slots[name]
                self.broadcaster.close(name)
                with contextlib.suppress(KeyError):  # no frame was ever published
                    self.metrics.latency.remove(name)
        for name, spec in wanted.items():
            if name in self._cameras:
                continue
            slot = FrameSlot(self._ready)
            reader = CameraReader(spec, slot, self.opener)
            with self._lock, self._ready:
                self._cameras[name] = _CameraStats(spec, reader)
                self._slots[name] = slot
            reader.start()

    @property
    def cameras(self) -> list[str]:
        return sorted(self._cameras)

    # --- workers ------------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._infer_loop, "stream-infer"), (self._post_loop, "stream-post")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for stats in list(self._cameras.values()):
            stats.reader.stop()
        with self._ready:
            self._ready.notify_all()
        inference, post = self._threads or (None, None)
        if inference is not None:
            inference.join(10)  # its last jobs are queued before the end marker
        self._post.put(None)
        if post is not None:
            post.join(10)

    def _waiting_frames(self) -> list[Frame]:
        with self._ready:
            while not self._stop.is_set():
                frames = [f for slot in self._slots.values() if (f := slot.take()) is not None]
                if frames:
                    return sorted(frames, key=lambda f: f.read_at)
                self._ready.wait(0.5)
        return []

    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            frames = self._waiting_frames()
            model = self.current_model()
            if not frames:
                continue
            if model is None:  # no model yet
                self._discard(frames)
                continue
            queued = 0
            try:
                for job in self._infer(model, frames):
                    self._post.put(job)
                    queued += len(job.frames)
            except Exception:  # one bad frame or model must not end the stream
                log.exception("stream inference failed")
                self._discard(frames[queued:])

    def _discard(self, frames: list[Frame]) -> None:
        with self._lock:
            for frame in frames:
                if (stats := self._cameras.get(frame.camera)) is not None:
                    stats.discarded += 1

    def _infer(self, model: LoadedModel, frames: list[Frame]) -> Iterable[_Job]:
        detector = model.detector
        size = MAX_BATCH if detector.batchable else 1
        for start in range(0, len(frames), size):
            chunk = frames[start : start + size]
            prepared = [detector.preprocess(f.image) for f in chunk]
            tensor = prepared[0][0] if len(prepared) == 1 else np.concatenate([p[0] for p in prepared])
            self.metrics.batch.observe(len(chunk))
            started = time.perf_counter()
            output = detector.run(tensor)
            self.metrics.inference.observe((time.perf_counter() - started) * 1e3)
            yield _Job(chunk, model, output, [(p[1], p[2]) for p in prepared])

    def _post_loop(self) -> None:
        while (job := self._post.get()) is not None:
            for index, frame in enumerate(job.frames):
                try:
                    self._publish(job, index, frame)
                except Exception:
                    log.exception("stream post-processing failed for camera %s", frame.camera)

    def _publish(self, job: _Job, index: int, frame: Frame) -> None:
        detector, (gain, pad) = job.model.detector, job.letterboxes[index]
        height, width = frame.image.shape[:2]
        detections = detector.postprocess(
            job.output[index : index + 1], gain, pad, (height, width), self.confidence, self.iou
        )
        latency_ms = (time.perf_counter() - frame.read_at) * 1e3
        self.broadcaster.publish(
            frame.camera,
            {
                "camera": frame.camera,
                "seq": frame.seq,
                "time": frame.wall_time,
                "latencyMs": round(latency_ms, 3),
                "model": {"version": job.model.spec.label, "sha256": job.model.spec.sha256},
                "image": {"width": width, "height": height},
                **({"position": frame.position} if frame.position is not None else {}),
                "detections": detection_json(detections),
            },
        )
        with self._lock:
            stats = self._cameras.get(frame.camera)
            if stats is not None:
                stats.processed += 1
                stats.processed_total += 1
                if len(stats.latencies_ms) < LATENCY_SAMPLES:
                    stats.latencies_ms.append(latency_ms)
        self.metrics.latency.labels(frame.camera).observe(latency_ms)
        if self.on_frame is not None:
            self.on_frame(frame, job.model, DetectionResult(detections, width, height, {}))

    # --- numbers ------------------------------------------------------------------------------

    def close_window(self) -> list[CameraWindow]:
        """Each camera's numbers since the previous call."""
        windows = []
        now = time.monotonic()
        with self._lock:
            for name, stats in sorted(self._cameras.items()):
                counters = stats.reader.counters
                totals = {
                    "read": counters.frames_read,
                    "dropped": counters.frames_dropped + stats.discarded,
                    "reconnects": counters.reconnects,
                }
                delta = {k: v - stats.last.get(k, 0) for k, v in totals.items()}
                latencies = np.array(stats.latencies_ms)
                elapsed = max(now - stats.window_start, 1e-9)
                windows.append(
                    CameraWindow(
                        name=name,
                        state=stats.reader.state,
                        target_fps=stats.spec.target_fps,
                        fps=round(stats.processed / elapsed, 2),
                        frames_read=delta["read"],
                        frames_processed=stats.processed,
                        frames_dropped=delta["dropped"],
                        p50_ms=round(float(np.percentile(latencies, 50)), 3) if latencies.size else None,
                        p99_ms=round(float(np.percentile(latencies, 99)), 3) if latencies.size else None,
                        reconnects=delta["reconnects"],
                        error=stats.reader.error,
                    )
                )
                stats.last, stats.processed, stats.latencies_ms, stats.window_start = totals, 0, [], now
        return windows

    def states(self) -> list[dict[str, Any]]:
        """Each camera's state and totals now, for `GET /v1/cameras`."""
        with self._lock:
            return [
                {
                    "name": name,
                    "state": stats.reader.state,
                    "error": stats.reader.error,
                    "targetFps": stats.spec.target_fps,
                    "framesRead": stats.reader.counters.frames_read,
                    "framesProcessed": stats.processed_total,
                    "framesDropped": stats.reader.counters.frames_dropped + stats.discarded,
                    "reconnects": stats.reader.counters.reconnects,
                    "subscribers": self.broadcaster.subscribers(name),
                }
                for name, stats in sorted(self._cameras.items())
            ]
