"""The embedded backends behind the shared interfaces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from visioninapp.backends.auth import AuthError, LocalAdminAuthenticator
from visioninapp.backends.cache import MemoryCache
from visioninapp.backends.events import LocalEventLog
from visioninapp.backends.search import SqliteSearchIndex
from visioninapp.backends.storage import ChecksumMismatch, LocalArtifactStore, ObjectNotFound
from visioninapp.factory import ConfigurationError, artifact_store_for, build_event_bus
from visioninapp.settings import Settings


def test_local_store_round_trip_and_checksum(tmp_path: Path) -> None:
    store = LocalArtifactStore()
    source = tmp_path / "model.onnx"
    source.write_bytes(b"weights" * 1000)
    uri = (tmp_path / "bucket" / "ns" / "job" / "model.onnx").as_uri()
    stored = store.put_file(source, uri)
    assert stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert store.size(uri) == 7000 and store.checksum(uri) == stored.sha256
    target = tmp_path / "cache" / "model.onnx"
    store.get_file(uri, target, sha256=stored.sha256)
    assert target.read_bytes() == source.read_bytes()
    assert [o.size for o in store.list((tmp_path / "bucket").as_uri())] == [7000]


def test_local_store_never_replaces_a_good_file_with_a_bad_one(tmp_path: Path) -> None:
    store = LocalArtifactStore()
    uri = store.put_bytes(b"new", (tmp_path / "b" / "m.onnx").as_uri()).uri
    target = tmp_path / "cache" / "m.onnx"
    target.parent.mkdir()
    target.write_bytes(b"good")
    with pytest.raises(ChecksumMismatch):
        store.get_file(uri, target, sha256="0" * 64)
    assert target.read_bytes() == b"good"
    assert list(target.parent.iterdir()) == [target]
    with pytest.raises(ObjectNotFound):
        store.get_file((tmp_path / "missing").as_uri(), target)


def test_event_log_deduplicates_by_producer_and_publishing_id(tmp_path: Path) -> None:
    bus = LocalEventLog(tmp_path)
    assert bus.publish("training-events", "trainer-a", [(1, b"e1"), (2, b"e2")]) == 2
    # A retry after a crash resends 2 and adds 3: only 3 is new.
    assert bus.publish("training-events", "trainer-a", [(2, b"e2"), (3, b"e3")]) == 1
    assert bus.publish("training-events", "trainer-b", [(1, b"b1")]) == 1
    assert [m.body for m in bus.read("training-events", 0)] == [b"e1", b"e2", b"e3", b"b1"]
    assert bus.last_publishing_id("training-events", "trainer-a") == 3
    bus.store_offset("training-events", "api", 2)
    reopened = LocalEventLog(tmp_path)
    offset = reopened.query_offset("training-events", "api")
    assert [m.body for m in reopened.read("training-events", offset)] == [b"e3", b"b1"]


def test_sqlite_search_ranks_filters_and_survives_odd_queries(tmp_path: Path) -> None:
    index = SqliteSearchIndex(tmp_path / "search.db")
    index.index("runs", "a", {"project": "p1", "name": "helmet run", "log": "loss diverged at epoch 3"})
    index.index("runs", "b", {"project": "p2", "name": "helmet other", "log": "all good"})
    index.index("models", "m", {"project": "p1", "name": "helmet-detector v3"})
    assert {h.id for h in index.search("helmet")} == {"a", "b", "m"}
    assert [h.id for h in index.search("helmet", project="p1", collections=["runs"])] == ["a"]
    (hit,) = index.search("diverg")
    assert "<em>" in hit.highlight
    assert index.search('"unbalanced AND (') == []
    index.delete("runs", "a")
    assert index.search("diverged") == []


def test_memory_cache_expires_and_invalidates() -> None:
    now = [0.0]
    cache = MemoryCache(clock=lambda: now[0])
    cache.set("models:p1", b"x", ttl_seconds=10)
    assert cache.get("models:p1") == b"x"
    cache.delete_prefix("models:")
    assert cache.get("models:p1") is None
    cache.set("k", b"v", 5)
    now[0] = 6
    assert cache.get("k") is None
    assert [cache.incr("rate", 60) for _ in range(3)] == [1, 2, 3]
    now[0] = 100
    assert cache.incr("rate", 60) == 1


def test_local_admin_only_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    auth = LocalAdminAuthenticator()
    assert "AUTH DISABLED" in caplog.text
    assert auth.authenticate(None, "127.0.0.1").is_platform_admin
    assert auth.authenticate(None, "::1").uid == "local-admin"
    with pytest.raises(AuthError, match="loopback"):
        auth.authenticate("anything", "192.168.1.20")


def test_factory_picks_backends_by_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert isinstance(artifact_store_for("file:///x/y", settings), LocalArtifactStore)
    assert isinstance(build_event_bus(settings), LocalEventLog)
    assert settings.resolved_artifacts_uri == (tmp_path / "artifacts").as_uri()
    with pytest.raises(ConfigurationError, match="unsupported storage URI"):
        artifact_store_for("gs://bucket/x", settings)
