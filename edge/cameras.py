"""Camera sources and their readers: one thread per camera that never waits for inference.

A reader opens its source (RTSP and files through OpenCV's FFmpeg backend, V4L2 devices through
OpenCV's V4L2 backend, GStreamer pipelines through OpenCV when it was built with GStreamer, as
JetPack's OpenCV is, else through PyGObject's appsink), reads every frame the source gives (an RTSP
buffer must be drained), forwards frames at the camera's target FPS into a one-frame slot (a newer
frame replaces one that inference has not taken yet: a counted drop), and reconnects with
exponential backoff when the source fails. Files are replayed at their own frame rate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import cv2
import numpy as np

from visioninapp.events import CameraState
from visioninapp.resources.edgedeployment import CameraSpec, camera_credential_env

__all__ = [
    "Backoff",
    "CameraReader",
    "Frame",
    "FrameSlot",
    "FrameSource",
    "Pacer",
    "SourceError",
    "credential_env",
    "open_source",
    "source_url",
]

log = logging.getLogger(__name__)
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
MAX_ERROR = 1000  # characters of an error kept in a camera's state (EdgeEvents hold 1024)
# RTSP over TCP: no lost packets (smeared frames) on a busy site network. Set once, here: setting it
# from a reader thread could race FFmpeg threads reading the environment.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class SourceError(RuntimeError):
    """A camera source could not be opened; the message says which and why. `retry` is False for a
    configuration error that only a new configuration fixes (the camera then reports `failed`)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class FrameSource(Protocol):
    def read(self) -> np.ndarray | None:
        """The next frame (BGR), or None when the source ended or failed."""

    def fps(self) -> float | None:
        """The source's own frame rate, when it declares one."""

    def position(self) -> int | None:
        """Index in the file of the frame read last (files only: replays and ground-truth checks)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Frame:
    camera: str
    seq: int
    image: np.ndarray
    read_at: float  # time.perf_counter() when the frame was read: latency starts here
    wall_time: float  # time.time() of the read, for consumers
    position: int | None = None  # index in the file, for file sources


class FrameSlot:
    """The newest frame of one camera; `put` never blocks, `take` empties the slot."""

    def __init__(self, ready: threading.Condition) -> None:
        self._ready = ready
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> bool:
        """Store `frame`; True when it replaced one that was never taken (a drop)."""
        with self._ready:
            dropped = self._frame is not None
            self._frame = frame
            self._ready.notify()
        return dropped

    def take(self) -> Frame | None:
        """The waiting frame, if any (call with the condition held)."""
        frame, self._frame = self._frame, None
        return frame


def credential_env(camera: str) -> tuple[str, str]:
    """The environment variables the operator fills from the camera's credentials Secret."""
    return camera_credential_env(camera, "username"), camera_credential_env(camera, "password")


def source_url(spec: CameraSpec, environ: Mapping[str, str]) -> str:
    """The RTSP URL with the credentials from the environment (quoted), when the camera has any."""
    assert spec.url is not None
    if spec.credentials_secret is None:
        return spec.url
    user_var, password_var = credential_env(spec.name)
    user, password = environ.get(user_var), environ.get(password_var)
    if not user or password is None:
        raise SourceError(
            f"camera {spec.name}: credentials Secret {spec.credentials_secret} is not in the "
            f"environment ({user_var}, {password_var}); give the Secret keys `username` and `password`",
            retry=False,
        )
    parts = urlsplit(spec.url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact(url: str) -> str:
    """A URL fit for logs and states: no credentials."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


class _OpenCvSource:
    def __init__(self, capture: Any, description: str, is_file: bool = False) -> None:
        self.capture, self.description, self.is_file = capture, description, is_file

    def read(self) -> np.ndarray | None:
        ok, image = self.capture.read()
        return image if ok and image is not None else None

    def fps(self) -> float | None:
        value = float(self.capture.get(cv2.CAP_PROP_FPS) or 0)
        return value if 0 < value <= 240 else None

    def position(self) -> int | None:
        return int(self.capture.get(cv2.CAP_PROP_POS_FRAMES)) - 1 if self.is_file else None

    def close(self) -> None:
        self.capture.release()


class _GstAppSinkSource:
    """A GStreamer pipeline ending in appsink, through PyGObject (for an OpenCV without GStreamer)."""

    def __init__(self, pipeline: str) -> None:
        try:
            import gi

            gi.require_version("Gst", "1.0")
            from gi.repository import Gst
        except (ImportError, ValueError) as error:
            raise SourceError(
                "this OpenCV has no GStreamer and PyGObject (gi, Gst 1.0) is not installed: use "
                f"JetPack's OpenCV or install python3-gi with GStreamer ({error})",
                retry=False,
            ) from None
        Gst.init(None)
        self._gst = Gst
        try:
            self.pipeline = Gst.parse_launch(pipeline)
        except Exception as error:  # GLib.Error
            raise SourceError(f"GStreamer pipeline does not parse: {error}", retry=False) from None
        self.sink = self._appsink()
        self.sink.set_property("max-buffers", 1)
        self.sink.set_property("drop", True)
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            message = self._bus_error() or "the pipeline did not start"
            self.pipeline.set_state(Gst.State.NULL)
            raise SourceError(f"GStreamer pipeline: {message}")

    def _appsink(self) -> Any:
        # Gst.Iterator is only a Python iterator with gst-python's overrides, which PyPI lacks.
        sinks = self.pipeline.iterate_sinks()
        while True:
            result, element = sinks.next()
            if result != self._gst.IteratorResult.OK:
                raise SourceError("the GStreamer pipeline must end in appsink", retry=False)
            if element.get_factory().get_name() == "appsink":
                return element

    def _bus_error(self) -> str | None:
        message = self.pipeline.get_bus().pop_filtered(self._gst.MessageType.ERROR)
        return None if message is None else str(message.parse_error()[0].message)

    def read(self) -> np.ndarray | None:
        sample = self.sink.emit("try-pull-sample", READ_TIMEOUT_MS * 1_000_000)
        if sample is None:
            if (error := self._bus_error()) is not None:
                log.warning("GStreamer pipeline: %s", error)
            return None
        caps = sample.get_caps().get_structure(0)
        if caps.get_value("format") != "BGR":
            raise SourceError("the appsink caps must be video/x-raw,format=BGR (add videoconvert)")
        width, height = caps.get_value("width"), caps.get_value("height")
        buffer = sample.get_buffer()
        ok, info = buffer.map(self._gst.MapFlags.READ)
        if not ok:
            return None
        try:
            stride = len(info.data) // height
            rows = np.frombuffer(info.data, np.uint8).reshape(height, stride)
            return rows[:, : width * 3].reshape(height, width, 3).copy()
        finally:
            buffer.unmap(info)

    def fps(self) -> float | None:
        return None

    def position(self) -> int | None:
        return None

    def close(self) -> None:
        self.pipeline.set_state(self._gst.State.NULL)


def _opencv_has_gstreamer() -> bool:
    return any(
        line.strip().startswith("GStreamer:") and "YES" in line
        for line in cv2.getBuildInformation().splitlines()
    )


def open_source(spec: CameraSpec, environ: Mapping[str, str] = os.environ) -> FrameSource:
    """Open the camera's source, or raise SourceError saying why not."""
    if spec.pipeline is not None:
        if _opencv_has_gstreamer():
            return _checked(cv2.VideoCapture(spec.pipeline, cv2.CAP_GSTREAMER), spec, "pipeline")
        return _GstAppSinkSource(spec.pipeline)
    if spec.device is not None:
        return _checked(cv2.VideoCapture(spec.device, cv2.CAP_V4L2), spec, spec.device)
    target = source_url(spec, environ) if spec.url is not None else spec.file
    assert target is not None
    if spec.file is not None and not os.path.exists(target):
        raise SourceError(f"camera {spec.name}: no file {target} on this node")
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        OPEN_TIMEOUT_MS,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        READ_TIMEOUT_MS,
    ]
    capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    return _checked(capture, spec, redact(target), is_file=spec.file is not None)


def _checked(capture: Any, spec: CameraSpec, description: str, is_file: bool = False) -> FrameSource:
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"camera {spec.name}: cannot open {description}")
    return _OpenCvSource(capture, description, is_file)


@dataclass
class Backoff:
    """Seconds between reconnection attempts: doubling from `initial` up to `maximum`."""

    initial: float = 0.5
    maximum: float = 10.0
    _current: float = field(init=False, default=0.0)

    def next(self) -> float:
        self._current = min(self.maximum, self._current * 2) if self._current else self.initial
        return self._current

    def reset(self) -> None:
        self._current = 0.0


class Pacer:
    """Which frames of a source to forward to hit a target rate: one per `period`, a quarter period
    early allowed (the source's jitter), the schedule kept over late frames (no drift) and started
    afresh after a stall (no burst of catch-up frames)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.due: float | None = None

    def forward(self, now: float) -> bool:
        if self.due is not None and now < self.due - self.period / 4:
            return False
        if self.due is None or now - self.due > self.period:
            self.due = now
        self.due += self.period
        return True


@dataclass
class ReaderCounters:
    """Totals since the reader started (the pipeline takes window differences)."""

    frames_read: int = 0
    frames_forwarded: int = 0
    frames_dropped: int = 0
    reconnects: int = 0


class CameraReader:
    """Reads one camera in its own thread and forwards frames at its target FPS into `slot`."""

    def __init__(
        self,
        spec: CameraSpec,
        slot: FrameSlot,
        opener: Callable[[CameraSpec], FrameSource] = open_source,
        backoff: Backoff | None = None,
    ) -> None:
        self.spec, self.slot, self.opener = spec, slot, opener
        self.backoff = backoff or Backoff()
        self.state: CameraState = "connecting"
        self.error: str | None = None
        self.counters = ReaderCounters()
        self._recovering = False  # frames stopped: the next frame that flows is a reconnection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{spec.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _set_state(self, state: CameraState, error: str | None = None) -> None:
        """`error` replaces the last one; a camera that delivers frames again has none."""
        error = error[:MAX_ERROR] if error else None
        if state != self.state or error != self.error:
            log.info("camera %s: %s%s", self.spec.name, state, f" ({error})" if error else "")
        self.state = state
        if error is not None or state == "streaming":
            self.error = error

    def _run(self) -> None:
        opened_before = replaying = False  # replaying: a looping file opened again, no reconnection
        while not self._stop.is_set():
            if not replaying:
                self._set_state("reconnecting" if opened_before else "connecting")
            source = self._open(opened_before)
            if source is None:
                if self.state == "failed":
                    return
                replaying = False
                continue
            opened_before = True
            outcome = self._read(source)
            if outcome == "failed" or self._stop.is_set():
                break
            replaying = outcome == "ended" and self.spec.loop
            if outcome == "ended" and not self.spec.loop:
                self._set_state("stopped", "end of file")
                return
            if outcome == "lost":
                self._recovering = True  # counted as a reconnection once frames flow again
                self._set_state("reconnecting", "the source stopped sending frames")
                self._stop.wait(self.backoff.next())
        if self.state != "failed":
            self._set_state("stopped")

    def _open(self, opened_before: bool) -> FrameSource | None:
        """The source, or None after waiting out the backoff (state `failed` when retrying is useless)."""
        try:
            return self.opener(self.spec)
        except SourceError as error:
            if not error.retry:
                self._set_state("failed", str(error))
                return None
            message = str(error)
        except Exception as error:  # a backend's own failure: retried like an unreachable camera
            message = f"cannot open: {type(error).__name__}: {error}"
        self._set_state("reconnecting" if opened_before else "connecting", message)
        self._stop.wait(self.backoff.next())
        return None

    def _read(self, source: FrameSource) -> Literal["ended", "lost", "failed"]:
        try:
            return "ended" if self._pump(source) else "lost"
        except SourceError as error:  # e.g. appsink caps that are not BGR: a configuration error
            self._set_state("failed", str(error))
            return "failed"
        except Exception as error:  # a decoder's own failure: reconnect as after a drop
            log.warning("camera %s: reading failed: %s", self.spec.name, error)
            return "lost"
        finally:
            source.close()

    def _pump(self, source: FrameSource) -> bool:
        """Read until the source fails or ends; True at a file's end, False on a failure."""
        pacer = Pacer(1.0 / self.spec.target_fps)
        replay = 1.0 / fps if self.spec.file is not None and (fps := source.fps()) else None
        started = time.perf_counter()
        read = 0
        while not self._stop.is_set():
            image = source.read()
            if image is None:
                return self.spec.file is not None and read > 0
            if read == 0:  # frames flow: the camera works, whatever failed before
                self.backoff.reset()
                self._set_state("streaming")
                if self._recovering:
                    self.counters.reconnects += 1
                    self._recovering = False
            read += 1
            now = time.perf_counter()
            if replay is not None:  # a file plays at its own pace, as a camera would
                wait = started + read * replay - now
                if wait > 0 and self._stop.wait(wait):
                    return False
                now = time.perf_counter()
            self.counters.frames_read += 1
            if not pacer.forward(now):
                continue  # faster than the target FPS: not wanted, not a drop
            self.counters.frames_forwarded += 1
            frame = Frame(
                self.spec.name, self.counters.frames_forwarded, image, now, time.time(), source.position()
            )
            if self.slot.put(frame):
                self.counters.frames_dropped += 1
        return False
