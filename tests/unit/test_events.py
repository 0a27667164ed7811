"""Event schemas and the trainer result contract."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from visioninapp.events import TERMINATION_MESSAGE_LIMIT, EdgeEvent, TrainerResult, TrainingEvent
from visioninapp.resources.modelartifact import ArtifactFormat


def test_training_event_round_trips_with_wire_names() -> None:
    event = TrainingEvent(
        type="epoch",
        namespace="ns",
        training_job="tj",
        attempt=2,
        epoch=3,
        epochs=10,
        losses={"box": 1.2},
        mAP50=0.5,
        mAP50_95=0.3,
    )
    data = event.to_bytes()
    assert b'"trainingJob":"tj"' in data and b'"mAP50_95":0.3' in data
    again = TrainingEvent.from_bytes(data)
    assert again == event
    assert again.key == "ns/tj/epoch/3"  # the same epoch from another attempt has the same key
    assert again.metrics().map50_95 == 0.3


def test_edge_event_error_rate() -> None:
    now = datetime.now(UTC)
    event = EdgeEvent(
        namespace="ns",
        deployment="d",
        node="n",
        revision="r",
        window_start=now,
        window_end=now,
        requests=200,
        errors=3,
    )
    assert event.error_rate == pytest.approx(0.015)


def _result(classes: int) -> TrainerResult:
    fmt = ArtifactFormat(format="onnx", uri="s3://models/ns/tj/model.onnx", sha256="a" * 64, size=10)
    return TrainerResult(
        formats=[fmt],
        manifest_uri="s3://models/ns/tj/manifest.json",
        imgsz=640,
        class_names=[f"class-{i}" for i in range(classes)],
        epochs_run=3,
        attempt=1,
    )


def test_termination_message_fits_the_kubernetes_limit() -> None:
    small = _result(4).to_termination_message()
    assert TrainerResult.from_termination_message(small).class_names == [f"class-{i}" for i in range(4)]
    big = _result(900).to_termination_message()
    assert len(big.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = TrainerResult.from_termination_message(big)
    assert parsed.class_names is None and parsed.manifest_uri.endswith("manifest.json")


def test_an_edge_event_without_a_time_zone_is_refused() -> None:
    """The API stores windows in UTC columns: a naive time would fail the whole batch there, so the
    event is refused at decoding (and the consumer skips it, logged with its offset)."""
    naive = {"namespace": "ns", "deployment": "d", "node": "n", "revision": "r"}
    naive |= {"windowStart": "2026-11-30T10:00:00", "windowEnd": "2026-11-30T10:00:15"}
    with pytest.raises(ValidationError, match="timezone"):
        EdgeEvent.model_validate(naive)
    aware = {**naive, "windowStart": "2026-11-30T10:00:00Z", "windowEnd": "2026-11-30T10:00:15+00:00"}
    assert EdgeEvent.model_validate(aware).window_end.tzinfo is not None
