"""The camera pipeline's decisions without a camera: the hard-frame picker, frame slots, backoff,
credentials in source URLs, and the readers' states over real video files."""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import wait_for
from visioninapp.edge.cameras import (
    Backoff,
    CameraReader,
    Frame,
    FrameSlot,
    Pacer,
    SourceError,
    credential_env,
    open_source,
    source_url,
)
from visioninapp.edge.inference import Detection
from visioninapp.edge.picker import HardFramePicker, difference_hash, hamming
from visioninapp.local.synth import generate_image, moving_shapes
from visioninapp.resources.edgedeployment import CameraSpec


def _scene(seed: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(generate_image(np.random.default_rng(seed), 96)[0])[:, :, ::-1])


def _det(name: str, score: float, box: tuple[float, float, float, float] = (10, 10, 40, 40)) -> Detection:
    return Detection(box, score, 0, name)


def _picker(budget: int = 4, sample: float = 1.0, **extra: object) -> HardFramePicker:
    return HardFramePicker(True, 0.3, 0.6, sample, budget, rng=random.Random(1), **extra)  # type: ignore[arg-type]


def test_only_frames_with_an_uncertain_detection_are_candidates() -> None:
    picker = _picker()
    assert picker.pick(_scene(1), [_det("car", 0.9), _det("car", 0.1)]) == "certain"
    assert picker.pick(_scene(1), []) == "certain"
    assert picker.pick(_scene(1), [_det("car", 0.9), _det("bike", 0.45)]) == "kept"
    assert HardFramePicker(False, 0.3, 0.6, 1.0, 4).pick(_scene(2), [_det("car", 0.4)]) == "disabled"


def test_the_hourly_budget_holds_and_renews() -> None:
    now = [0.0]
    picker = _picker(budget=3, clock=lambda: now[0])
    outcomes = [picker.pick(_scene(seed), [_det("car", 0.4)]) for seed in range(5)]
    assert outcomes == ["kept", "kept", "kept", "budget", "budget"]
    now[0] = 3600.0
    assert picker.pick(_scene(9), [_det("car", 0.4)]) == "kept"


def test_a_busy_class_cannot_crowd_out_one_that_shows_up_later() -> None:
    picker = _picker(budget=4)
    assert [picker.pick(_scene(s), [_det("car", 0.4)]) for s in range(2)] == ["kept", "kept"]
    # A second class is seen: each gets half the budget, so cars are at their share already.
    assert picker.pick(_scene(2), [_det("bike", 0.4)]) == "kept"
    assert picker.pick(_scene(3), [_det("car", 0.4)]) == "class_quota"
    # A frame with both counts for its rarest class (bike), not against the cars' share.
    assert picker.pick(_scene(4), [_det("car", 0.4), _det("bike", 0.5, (50, 50, 90, 90))]) == "kept"
    assert picker.pick(_scene(5), [_det("bike", 0.4)]) == "budget"


def test_the_same_scene_with_the_same_objects_is_a_duplicate_but_moved_objects_are_not() -> None:
    picker = _picker(budget=10)
    image = _scene(7)
    noisy = np.clip(image.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, image.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    assert hamming(difference_hash(image), difference_hash(noisy)) <= 6
    assert picker.pick(image, [_det("car", 0.4)]) == "kept"
    assert picker.pick(noisy, [_det("car", 0.45, (11, 10, 41, 40))]) == "duplicate"  # parked car
    assert picker.pick(noisy, [_det("car", 0.4, (50, 10, 80, 40))]) == "kept"  # it drove on
    assert picker.pick(noisy, [_det("car", 0.4), _det("bike", 0.4, (60, 60, 90, 90))]) == "kept"
    assert picker.pick(_scene(8), [_det("car", 0.4)]) == "kept"  # another scene


def test_sampling_passes_frames_over_at_its_rate() -> None:
    picker = _picker(budget=100_000, sample=0.25, duplicate_bits=-1)
    image = _scene(3)
    kept = sum(picker.pick(image, [_det("car", 0.4)]) == "kept" for _ in range(2000))
    assert 400 < kept < 600


def test_a_slot_keeps_the_newest_frame_and_counts_a_replaced_one_as_dropped() -> None:
    slot = FrameSlot(threading.Condition())
    frames = [Frame("cam", n, np.zeros((2, 2, 3), np.uint8), float(n), float(n)) for n in range(3)]
    assert slot.put(frames[0]) is False
    assert slot.put(frames[1]) is True  # frame 0 never reached inference
    assert slot.take() is frames[1] and slot.take() is None
    assert slot.put(frames[2]) is False


def test_backoff_doubles_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_credentials_come_from_the_environment_quoted_and_never_appear_in_errors() -> None:
    spec = CameraSpec.model_validate(
        {"name": "front-gate", "url": "rtsp://10.0.0.5:554/s1", "credentialsSecret": "cams"}
    )
    user, password = credential_env("front-gate")
    assert (user, password) == (
        "VISIONINAPP_CAMERA_FRONT_GATE_USERNAME",
        "VISIONINAPP_CAMERA_FRONT_GATE_PASSWORD",
    )
    url = source_url(spec, {user: "ops@site", password: "p:w/d"})
    assert url == "rtsp://ops%40site:p%3Aw%2Fd@10.0.0.5:554/s1"
    with pytest.raises(SourceError, match="VISIONINAPP_CAMERA_FRONT_GATE_USERNAME") as raised:
        source_url(spec, {})
    assert raised.value.retry is False
    plain = CameraSpec.model_validate({"name": "yard", "url": "rtsp://10.0.0.6/s"})
    assert source_url(plain, {}) == "rtsp://10.0.0.6/s"


def _video(path: Path, frames: int, fps: int = 15) -> Path:
    images, _ = moving_shapes(4, 64, frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 64))
    for image in images:
        writer.write(image)
    writer.release()
    return path


def test_a_file_camera_without_loop_stops_at_its_end_and_with_loop_replays_without_reconnecting(
    tmp_path: Path,
) -> None:
    video = _video(tmp_path / "v.avi", 6, fps=60)
    once = CameraReader(
        CameraSpec.model_validate({"name": "once", "file": str(video), "targetFps": 120}),
        FrameSlot(threading.Condition()),
    )
    once.start()
    wait_for(lambda: once.state == "stopped", 30, "end of file")
    once.stop()
    assert once.error == "end of file" and once.counters.frames_read == 6
    looping = CameraReader(
        CameraSpec.model_validate({"name": "loop", "file": str(video), "loop": True, "targetFps": 120}),
        FrameSlot(threading.Condition()),
    )
    looping.start()
    wait_for(lambda: looping.counters.frames_read >= 20, 30, "three passes")
    looping.stop()
    assert looping.state == "stopped" and looping.counters.reconnects == 0


def test_a_missing_file_is_retried_and_a_configuration_error_fails_at_once(tmp_path: Path) -> None:
    missing = CameraReader(
        CameraSpec.model_validate({"name": "later", "file": str(tmp_path / "later.avi")}),
        FrameSlot(threading.Condition()),
        backoff=Backoff(0.05, 0.05),
    )
    missing.start()
    wait_for(lambda: missing.error is not None, 30, "open failure")
    assert missing.state == "connecting" and "no file" in (missing.error or "")
    _video(tmp_path / "later.avi", 4)  # the file appears: the reader picks it up on its own
    wait_for(lambda: missing.counters.frames_read > 0, 30, "file read once it exists")
    missing.stop()
    unusable = CameraReader(
        CameraSpec.model_validate({"name": "cam", "url": "rtsp://10.0.0.9/s", "credentialsSecret": "x"}),
        FrameSlot(threading.Condition()),
        opener=lambda spec: open_source(spec, {}),
    )
    unusable.start()
    wait_for(lambda: unusable.state == "failed", 30, "configuration error")
    unusable.stop()
    assert "VISIONINAPP_CAMERA_CAM_USERNAME" in (unusable.error or "")


def _paced(source_fps: float, target_fps: float, seconds: float, jitter: float = 0.0) -> list[float]:
    pacer, rng = Pacer(1 / target_fps), random.Random(0)
    frames = [i / source_fps + rng.uniform(-jitter, jitter) for i in range(int(seconds * source_fps))]
    return [t for t in frames if pacer.forward(t)]


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [(30, 10, 100), (30, 15, 150), (15, 10, 100), (25, 15, 150), (15, 15, 150), (5, 15, 50)],
)
def test_the_pacer_hits_the_target_rate_or_passes_a_slower_source_through(
    source: float, target: float, expected: int
) -> None:
    for jitter in (0.0, 0.008):
        assert abs(len(_paced(source, target, 10, jitter)) - expected) <= 1, (source, target, jitter)


def test_the_pacer_restarts_after_a_stall_without_a_burst() -> None:
    pacer = Pacer(0.1)
    assert [pacer.forward(t) for t in (0.0, 0.05, 0.1)] == [True, False, True]
    # nothing for 2 s, then frames every 33 ms: the next one passes, then one per 100 ms again
    after = [t for t in (2.0 + i / 30 for i in range(12)) if pacer.forward(t)]
    assert [round(t, 3) for t in after] == [2.0, 2.1, 2.2, 2.3]


def test_frames_nobody_took_are_counted_as_drops(tmp_path: Path) -> None:
    video = _video(tmp_path / "v.avi", 10, fps=60)
    reader = CameraReader(
        CameraSpec.model_validate({"name": "cam", "file": str(video), "targetFps": 120}),
        FrameSlot(threading.Condition()),
    )
    reader.start()
    wait_for(lambda: reader.state == "stopped", 30, "end of file")
    reader.stop()
    counters = reader.counters
    assert counters.frames_forwarded == 10 and counters.frames_dropped == 9  # only the newest waits


def test_a_camera_that_connects_but_sends_nothing_backs_off_and_counts_no_reconnection() -> None:
    class Silent:
        def read(self) -> None:
            return None

        def fps(self) -> None:
            return None

        def position(self) -> None:
            return None

        def close(self) -> None:
            pass

    opened: list[float] = []

    def opener(spec: CameraSpec) -> Silent:
        opened.append(time.monotonic())
        return Silent()

    reader = CameraReader(
        CameraSpec.model_validate({"name": "cam", "url": "rtsp://10.0.0.9/s"}),
        FrameSlot(threading.Condition()),
        opener=opener,  # type: ignore[arg-type]
        backoff=Backoff(0.01, 10.0),
    )
    reader.start()
    wait_for(lambda: len(opened) >= 5, 30, "five attempts")
    state, error = reader.state, reader.error
    reader.stop()
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps[:4])), gaps  # it backs off
    assert reader.counters.reconnects == 0 and state == "reconnecting"
    assert error == "the source stopped sending frames"
