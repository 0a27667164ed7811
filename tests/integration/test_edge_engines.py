"""Engines built per device, with the real CPU stand-in (an onnxruntime optimized-model file, keyed
and cached as a TensorRT engine is), real S3 (moto servers; one enforcing IAM) and the real edge
runtime over HTTP: build in the background while the old model answers, switch only after the
self-test, the designated builder alone uploads, the operator checks and records the engine, other
nodes download and verify it instead of building, and a poisoned or mismatched engine is never
loaded. Ordering comes from held builds and waited-for conditions, never from sleeps."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
import requests
from botocore.exceptions import ClientError

import visioninapp.edge.models as models
from tests.conftest import ExportedModel
from tests.helpers import wait_for
from tests.integration.test_edge import _Server, _settings, _sha
from tests.integration.test_edge_identity import IamS3, iam_moto
from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.s3 import S3ArtifactStore
from visioninapp.edge.engines import EngineKey, SharedEngines, engine_key
from visioninapp.edge.identity import EdgeCredentials
from visioninapp.edge.models import ModelManager, ModelSpec
from visioninapp.edge.runtime import EdgeRuntime, node_s3_store
from visioninapp.events import EdgeEvent
from visioninapp.operator.edge_identity import edge_policy, identity_name, identity_path
from visioninapp.operator.engines import engine_prefix, engine_writes, plan_engines, publish_engine
from visioninapp.operator.identity_issuers import IamIssuer
from visioninapp.operator.rollout_step import EdgeHealthTracker
from visioninapp.settings import Settings

pytestmark = [pytest.mark.slow]

BUCKET = "engines-ci"
ARTIFACTS = f"s3://{BUCKET}/artifacts"


class Builds:
    """The real `build_engine`, counted, each call held until the test releases it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        real = models.build_engine

        def build(*args: Any, **kwargs: Any) -> Path:
            self.calls += 1
            self.started.set()
            assert self.release.wait(120), "the test never released the build"
            return real(*args, **kwargs)

        monkeypatch.setattr(models, "build_engine", build)


def _image(exported_model: ExportedModel) -> bytes:
    path = sorted((exported_model.dataset / "images" / "val").iterdir())[0]
    return bytes(cv2.imencode(".jpg", cv2.imread(str(path)))[1].tobytes())


def _write_config(path: Path, uri: str, sha256: str, version: str, fmt: str) -> None:
    path.write_text(json.dumps({"uri": uri, "sha256": sha256, "version": version, "format": fmt}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # seen as changed


def _events(bus: LocalEventLog) -> list[EdgeEvent]:
    return [EdgeEvent.model_validate_json(m.body) for m in bus.read("edge-events", 0)]


def _window(runtime: EdgeRuntime, bus: LocalEventLog) -> EdgeEvent:
    runtime.close_window()
    runtime.sync_once()
    return _events(bus)[-1]


@pytest.fixture
def store(s3_endpoint: str) -> Iterator[tuple[str, Any]]:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    with contextlib.suppress(ClientError):  # the moto server is the session's
        s3.create_bucket(Bucket=BUCKET)
    yield s3_endpoint, s3


def test_build_in_the_background_switch_after_self_test_then_share_with_the_fleet(
    exported_model: ExportedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: tuple[str, Any]
) -> None:
    endpoint, s3 = store
    s3.upload_file(str(exported_model.onnx_small), BUCKET, "artifacts/ci/shapes/v1/model.onnx")
    s3.upload_file(str(exported_model.onnx), BUCKET, "artifacts/ci/shapes/v2/model.onnx")
    old_sha, new_sha = _sha(exported_model.onnx_small), _sha(exported_model.onnx)
    config = tmp_path / "model.json"
    _write_config(config, f"{ARTIFACTS}/ci/shapes/v1/model.onnx", old_sha, "v1", "onnx")
    common: dict[str, Any] = {
        "s3_endpoint_url": endpoint,
        "artifacts_uri": ARTIFACTS,
        "edge_engine": "ort-optimized",
        "edge_model_config": config,
    }
    builds = Builds(monkeypatch)
    bus = LocalEventLog(tmp_path / "events")
    runtime = EdgeRuntime(_settings(tmp_path / "a", **common), bus=bus)
    image = _image(exported_model)
    # the server's lifespan starts the runtime and stops it at the end of the block
    with _Server(runtime) as base:
        wait_for(lambda: runtime.models.ready, 60, "v1 serving")

        def detect() -> dict[str, Any]:
            answer = requests.post(f"{base}/v1/detect", files={"file": ("f.jpg", image)}, timeout=30)
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        assert detect()["model"]["version"] == "v1"
        _write_config(config, f"{ARTIFACTS}/ci/shapes/v2/model.onnx", new_sha, "v2", "tensorrt")
        assert builds.started.wait(60), "the engine build started"
        # building: v1 answers every request, /readyz says `engine building`, not failed
        for _ in range(3):
            assert detect()["model"]["version"] == "v1"
        ready = requests.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["model"] == "v1"
        assert ready.json()["reason"].startswith("engine building: ort-optimized fp32 engine of v2")
        event = _window(runtime, bus)
        assert not event.ready and event.reason and event.reason.startswith("engine building")
        assert event.engine is not None and event.engine.state == "building"
        assert event.model_version == "v1" and runtime.models.rejection is None
        builds.release.set()
        wait_for(lambda: runtime.models.ready, 120, "v2 serving from its engine")
        answer = detect()
        assert answer["model"]["version"] == "v2" and answer["model"]["format"] == "tensorrt"
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        wait_for(lambda: bool(runtime.models.engine and runtime.models.engine.uploaded), 60, "uploaded")
        event = _window(runtime, bus)
        assert event.ready and event.engine is not None and event.engine.state == "ready"
        assert event.engine.source == "built" and event.engine.uploaded and event.engine.sha256
    assert builds.calls == 1
    key = EngineKey.from_dict(event.engine.key)
    assert (
        key.model_sha256 == new_sha and key.engine == "ort-optimized" and key.digest == event.engine.key_hash
    )

    # the operator: jetson-1 reported the key first, so it is its builder; its claim is checked
    tracker = EdgeHealthTracker()
    for heard in _events(bus):
        tracker.add(heard)
    records, claims = plan_engines([], tracker.for_deployment("ci", "gate"), {"jetson-1"})
    assert [(r["builder"], r["phase"]) for r in records] == [("jetson-1", "Building")]
    assert [c.sha256 for c in claims] == [event.engine.sha256]
    admin = S3ArtifactStore(client=s3)
    prefix = engine_prefix(ARTIFACTS, "ci")
    (recorded,) = [publish_engine(admin, prefix, records[0], claims[0])]
    assert recorded["phase"] == "Available" and recorded["sha256"] == event.engine.sha256

    # jetson-2, same key: downloads, verifies against the manifest, loads; builds nothing
    second = EdgeRuntime(
        _settings(tmp_path / "b", **common).model_copy(update={"node_name": "jetson-2"}), bus=bus
    )
    spec = ModelSpec(f"{ARTIFACTS}/ci/shapes/v2/model.onnx", new_sha, "tensorrt", "v2")
    assert second.models.set_desired(spec), "served at once from the shared cache"
    assert builds.calls == 1
    engine = second.models.engine
    assert engine is not None and engine.source == "shared" and engine.sha256 == recorded["sha256"]
    assert second.detect(image)["model"]["version"] == "v2"

    # a compromised node overwrites the shared engine: the manifest's sha256 refuses it
    key_prefix = f"artifacts/ci/.engines/{key.digest}"
    s3.put_object(Bucket=BUCKET, Key=f"{key_prefix}/engine.onnx", Body=b"poisoned engine")
    builds.release.set()
    third = EdgeRuntime(
        _settings(tmp_path / "c", **common).model_copy(update={"node_name": "jetson-3"}), bus=bus
    )
    assert not third.models.set_desired(spec)  # refused: built here instead
    wait_for(lambda: third.models.ready, 120, "jetson-3 built its own engine")
    assert builds.calls == 2 and third.models.engine is not None and third.models.engine.source == "built"
    # (builds are not byte-reproducible: a node cannot check another's engine by rebuilding it)
    assert third.models.engine.sha256 != hashlib.sha256(b"poisoned engine").hexdigest()

    # a manifest for another key under this key's prefix (a mismatch): never loaded
    other = dataclasses.replace(key, device="NVIDIA Jetson AGX Orin")
    manifest = {"key": other.as_dict(), "sha256": recorded["sha256"], "builder": "jetson-1"}
    s3.put_object(Bucket=BUCKET, Key=f"{key_prefix}/manifest.json", Body=json.dumps(manifest).encode())
    fourth = EdgeRuntime(
        _settings(tmp_path / "d", **common).model_copy(update={"node_name": "jetson-4"}), bus=bus
    )
    assert not fourth.models.set_desired(spec)
    wait_for(lambda: fourth.models.ready, 120, "jetson-4 built its own engine")
    assert builds.calls == 3 and fourth.models.engine is not None and fourth.models.engine.source == "built"


# --- only the designated builder's credentials write its key's prefix (moto enforcing IAM) --------


@pytest.fixture(scope="module")
def iam_s3() -> Iterator[IamS3]:
    with iam_moto(BUCKET) as world:
        yield world


def _issue(world: IamS3, node: str, status: dict[str, Any]) -> EdgeCredentials:
    """What the exchange does (EdgeIdentities.policy_for): the node's policy from the deployments'
    `status.engines`, then its IAM user and key."""
    feedback = f"{ARTIFACTS}/feedback"
    builds = [f"{engine_prefix(ARTIFACTS, 'ci')}/{h}" for h in engine_writes([{"status": status}], node)]
    policy = edge_policy("ci", node, [("gate", feedback)], ARTIFACTS, feedback, (), builds)
    issuer = IamIssuer(world.client("iam"))
    name = identity_name("ci", node)
    issuer.ensure(name, identity_path(node), policy, {"namespace": "ci"})
    return EdgeCredentials(*issuer.new_key(name))


def _manager(tmp_path: Path, world: IamS3, node: str, keys: EdgeCredentials) -> ModelManager:
    store = node_s3_store(Settings(s3_endpoint_url=world.endpoint), keys)
    shared = SharedEngines(lambda uri: store, engine_prefix(ARTIFACTS, "ci"))
    return ModelManager(
        tmp_path / node, lambda uri: store, "auto", engine="ort-optimized", shared=shared, node=node
    )


def _refused(action: Callable[[], object]) -> None:
    with pytest.raises(ClientError) as caught:
        action()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_only_the_designated_builder_uploads_and_only_the_operator_records(
    exported_model: ExportedModel, tmp_path: Path, iam_s3: IamS3
) -> None:
    admin = iam_s3.client("s3")
    admin.upload_file(str(exported_model.onnx), BUCKET, "artifacts/ci/shapes/v2/model.onnx")
    spec = ModelSpec(f"{ARTIFACTS}/ci/shapes/v2/model.onnx", _sha(exported_model.onnx), "tensorrt", "v2")
    key = engine_key(spec.sha256, "ort-optimized", "auto")
    # both nodes reported the key while building: the operator designates jetson-a (first by name)
    from visioninapp.events import EngineReport
    from visioninapp.operator.rollout_step import NodeHealth

    building = EngineReport(
        key_hash=key.digest, key=key.as_dict(), state="building", since="2026-11-30T18:00:00Z"
    )
    heard = {
        n: NodeHealth("r1", building.since, 0, 0, None, False, "engine building", building)
        for n in ("jetson-b", "jetson-a")
    }
    records, claims = plan_engines([], heard, {"jetson-a", "jetson-b"})
    assert [(r["builder"], r["phase"]) for r in records] == [("jetson-a", "Building")] and not claims
    status = {"engines": records}

    # jetson-b (not designated) builds for itself; its upload is refused by its own credentials
    keys_b = _issue(iam_s3, "jetson-b", status)
    b = _manager(tmp_path, iam_s3, "jetson-b", keys_b)
    assert not b.set_desired(spec)
    wait_for(lambda: b.ready, 120, "jetson-b serving its own engine")
    assert b.engine is not None and not b.engine.uploaded and b.engine.sha256
    prefix = f"artifacts/ci/.engines/{key.digest}"
    store_b = node_s3_store(Settings(s3_endpoint_url=iam_s3.endpoint), keys_b)
    assert isinstance(store_b, S3ArtifactStore)
    _refused(lambda: store_b.client.put_object(Bucket=BUCKET, Key=f"{prefix}/engine.onnx", Body=b"x"))
    assert "Contents" not in admin.list_objects_v2(Bucket=BUCKET, Prefix=prefix)

    # jetson-a (designated) uploads its engine and claim; it still cannot write the manifest
    keys_a = _issue(iam_s3, "jetson-a", status)
    a = _manager(tmp_path, iam_s3, "jetson-a", keys_a)
    assert not a.set_desired(spec)
    wait_for(lambda: bool(a.ready and a.engine and a.engine.uploaded), 120, "jetson-a uploaded")
    assert a.engine is not None and a.engine.sha256
    store_a = node_s3_store(Settings(s3_endpoint_url=iam_s3.endpoint), keys_a)
    assert isinstance(store_a, S3ArtifactStore)
    _refused(lambda: store_a.client.put_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json", Body=b"{}"))
    other_key = "e" * 64
    _refused(
        lambda: store_a.client.put_object(
            Bucket=BUCKET, Key=f"artifacts/ci/.engines/{other_key}/engine.onnx", Body=b"x"
        )
    )

    # the operator records only the builder's claim, after hashing the upload itself
    ready = a.engine.report()
    heard = {
        "jetson-a": dataclasses.replace(heard["jetson-a"], engine=ready, ready=True),
        # jetson-b claims an upload too: not the builder, its report changes nothing
        "jetson-b": dataclasses.replace(
            heard["jetson-b"], engine=b.engine.report().model_copy(update={"uploaded": True}), ready=True
        ),
    }
    records, claims = plan_engines(records, heard, {"jetson-a", "jetson-b"})
    assert [c.builder for c in claims] == ["jetson-a"]
    recorded = publish_engine(
        S3ArtifactStore(client=admin), engine_prefix(ARTIFACTS, "ci"), records[0], claims[0]
    )
    assert recorded["phase"] == "Available" and recorded["sha256"] == a.engine.sha256
    # once recorded, not even the builder writes the prefix again
    status = {"engines": [recorded]}
    assert engine_writes([{"status": status}], "jetson-a") == []
    keys_a = _issue(iam_s3, "jetson-a", status)
    store_a = node_s3_store(Settings(s3_endpoint_url=iam_s3.endpoint), keys_a)
    assert isinstance(store_a, S3ArtifactStore)
    _refused(lambda: store_a.client.put_object(Bucket=BUCKET, Key=f"{prefix}/engine.onnx", Body=b"x"))

    # jetson-c reads the manifest and the engine with its own (read-only) keys and builds nothing
    c = _manager(tmp_path, iam_s3, "jetson-c", _issue(iam_s3, "jetson-c", status))
    assert c.set_desired(spec)
    assert c.engine is not None and c.engine.source == "shared" and c.engine.sha256 == recorded["sha256"]
    assert np.isfinite(
        c.current.detector.run(c.current.detector.preprocess(np.zeros((64, 64, 3), np.uint8))[0])
    ).all()  # type: ignore[union-attr]


def test_a_claim_that_does_not_match_the_upload_is_not_recorded(
    tmp_path: Path, store: tuple[str, Any]
) -> None:
    _, s3 = store
    key = EngineKey(
        "d" * 64, "x86_64 cpu", "none", "onnxruntime 1 CPUExecutionProvider", "ort-optimized", "fp32"
    )
    prefix = engine_prefix(ARTIFACTS, "claims")
    s3.put_object(Bucket=BUCKET, Key=f"artifacts/claims/.engines/{key.digest}/engine.onnx", Body=b"engine")
    from visioninapp.operator.engines import Claim

    record = {"keyHash": key.digest, "builder": "jetson-a", "phase": "Building"}
    admin = S3ArtifactStore(client=s3)
    failed = publish_engine(admin, prefix, record, Claim(key.digest, "jetson-a", "0" * 64, key.as_dict()))
    assert failed["phase"] == "Failed" and "its builder jetson-a reported 0000" in failed["message"]
    forged = publish_engine(
        admin, prefix, record, Claim(key.digest, "jetson-a", "0" * 64, {**key.as_dict(), "device": "x"})
    )
    assert forged["phase"] == "Failed" and "not " + key.digest in forged["message"]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key=f"artifacts/claims/.engines/{key.digest}/manifest.json")
