"""Stream consumers → SQL + search index + S3 archive; live updates over SSE; notifications."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.api.conftest import ApiEnv
from tests.api.test_api import artifact, member_spec
from tests.helpers import wait_for
from visioninapp.api.consumers import wait_drained
from visioninapp.api.db import EpochMetric, FrameAnnouncement, LogLine, Notification
from visioninapp.api.sync import ClusterSync
from visioninapp.events import CameraWindow, EdgeEvent, TrainingEvent
from visioninapp.feedback import feedback_prefix

pytestmark = pytest.mark.services


def epoch_event(project: str, job: str, epoch: int, attempt: int = 1, map50: float = 0.5) -> TrainingEvent:
    return TrainingEvent(
        type="epoch",
        namespace=project,
        training_job=job,
        attempt=attempt,
        epoch=epoch,
        epochs=10,
        losses={"box": 1.0 / epoch},
        mAP50=map50,
        mAP50_95=map50 / 2,
    )


def publish(api: ApiEnv, stream: str, events: list[Any], producer: str = "test") -> None:
    start = api.container.bus.last_publishing_id(stream, producer)
    api.container.bus.publish(stream, producer, [(start + i + 1, e.to_bytes()) for i, e in enumerate(events)])


def test_training_events_land_once_in_sql_search_and_s3(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    api.client.post(
        f"/api/v1/projects/{project}/training-jobs",
        json={"name": "run-1", "spec": member_spec(project)},
        headers=api.as_user("alice"),
    )
    stream = api.settings.training_stream
    events: list[Any] = [epoch_event(project, "run-1", e) for e in (1, 2, 3)]
    events.append(
        TrainingEvent(
            type="log",
            namespace=project,
            training_job="run-1",
            attempt=1,
            message="CUDA out of memory, lowering batch",
            level="WARNING",
        )
    )
    events.append(epoch_event(project, "run-1", 3, attempt=2, map50=0.6))  # resumed attempt repeats epoch 3
    publish(api, stream, events)
    training, _ = api.container.consumers()
    wait_drained(training)
    wait_drained(training)  # nothing more, nothing twice
    with api.container.db.session() as session:
        epochs = session.scalars(select(EpochMetric).where(EpochMetric.project_name == project)).all()
        assert sorted(e.epoch for e in epochs) == [1, 2, 3]
        assert next(e for e in epochs if e.epoch == 3).map50 == pytest.approx(0.6)
        assert (
            session.scalar(select(func.count()).select_from(LogLine).where(LogLine.project_name == project))
            == 1
        )
    detail = api.client.get(f"/api/v1/projects/{project}/training-jobs/run-1", headers=api.as_user("alice"))
    assert [h["epoch"] for h in detail.json()["history"]] == [1, 2, 3]
    logs = api.client.get(
        f"/api/v1/projects/{project}/training-jobs/run-1/logs?q=memory", headers=api.as_user("alice")
    ).json()
    assert logs["total"] == 1 and logs["items"][0]["level"] == "WARNING"
    hits = api.client.get(f"/api/v1/search?q=memory&project={project}", headers=api.as_user("alice")).json()
    assert [h["collection"] for h in hits] == ["logs"]
    archived = api.container.store_for(api.settings.resolved_artifacts_uri).list(
        api.settings.resolved_artifacts_uri.rstrip("/") + "/logs/"
    )
    assert archived and b"out of memory" in api.container.store_for(archived[0].uri).get_bytes(
        archived[0].uri
    )


def test_malformed_events_are_skipped_not_fatal(api: ApiEnv) -> None:
    project = api.new_project()
    stream = api.settings.training_stream
    api.container.bus.publish(stream, "broken", [(1, b"{not json"), (2, b'{"type": "epoch"}')])
    publish(api, stream, [epoch_event(project, "run-x", 1)])
    training, _ = api.container.consumers()
    wait_drained(training)
    with api.container.db.session() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(EpochMetric).where(EpochMetric.project_name == project)
            )
            == 1
        )


def test_edge_events_feed_the_fleet_view(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    api.cluster.create("visioninapp.io", "modelartifacts", project, artifact("m1", project, map5095=0.4))
    api.client.post(
        f"/api/v1/projects/{project}/deployments",
        headers=api.as_user("alice"),
        json={"name": "fleet", "spec": {"modelRef": "m1"}},
    )
    # The operator's status names a second node that has not reported yet.
    api.cluster.patch(
        "visioninapp.io",
        "edgedeployments",
        project,
        "fleet",
        {"status": {"nodes": [{"name": "jetson-0"}, {"name": "jetson-1"}]}},
        subresource="status",
    )
    now = datetime.now(UTC)

    def window(end: datetime, cameras: list[CameraWindow]) -> EdgeEvent:
        return EdgeEvent(
            namespace=project,
            deployment="fleet",
            node="jetson-0",
            revision="r1",
            model_version="m1",
            window_start=end - timedelta(seconds=15),
            window_end=end,
            requests=120,
            errors=1,
            p95_ms=21.5,
            detections_per_class={"helmet": 40},
            cameras=cameras,
        )

    dock = CameraWindow(
        name="dock",
        state="streaming",
        target_fps=15,
        fps=14.9,
        frames_read=226,
        frames_processed=224,
        frames_dropped=2,
        p50_ms=31.0,
        p99_ms=58.5,
    )
    gate = CameraWindow(
        name="gate", state="reconnecting", target_fps=5, reconnects=3, error="connection refused"
    )
    older = dock.model_copy(update={"fps": 1.0, "state": "connecting"})
    publish(
        api,
        api.settings.edge_stream,
        [window(now - timedelta(seconds=15), [older]), window(now, [dock, gate])],
    )
    _, edge = api.container.consumers()
    wait_drained(edge)
    nodes = api.client.get(
        f"/api/v1/projects/{project}/deployments/fleet/nodes", headers=api.as_user("alice")
    ).json()
    assert [n["node"] for n in nodes] == ["jetson-0", "jetson-1"]
    assert nodes[0]["requests"] == 120 and nodes[0]["p95Ms"] == 21.5
    # The newest window's cameras, field by field, as the runtime reported them.
    assert nodes[0]["cameras"] == [
        {
            "name": "dock",
            "state": "streaming",
            "targetFps": 15.0,
            "fps": 14.9,
            "framesRead": 226,
            "framesProcessed": 224,
            "framesDropped": 2,
            "p50Ms": 31.0,
            "p99Ms": 58.5,
            "reconnects": 0,
            "error": None,
        },
        {
            "name": "gate",
            "state": "reconnecting",
            "targetFps": 5.0,
            "fps": 0.0,
            "framesRead": 0,
            "framesProcessed": 0,
            "framesDropped": 0,
            "p50Ms": None,
            "p99Ms": None,
            "reconnects": 3,
            "error": "connection refused",
        },
    ]
    assert nodes[1]["cameras"] == []  # no window yet


def test_run_outcomes_become_notifications_once_and_reach_the_webhook(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    received: list[dict[str, Any]] = []
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api.container.notifier.webhook_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        api.client.post(
            f"/api/v1/projects/{project}/training-jobs",
            headers=api.as_user("alice"),
            json={"name": "run-1", "spec": member_spec(project)},
        )
        api.cluster.patch(
            "visioninapp.io",
            "trainingjobs",
            project,
            "run-1",
            {"status": {"phase": "Succeeded", "metrics": {"mAP50": 0.71}, "artifact": "run-1-v1"}},
            subresource="status",
        )
        sync = ClusterSync(api.container)
        assert sync.sync_once() == 1
        assert sync.sync_once() == 0  # the same outcome is announced once
        notes = api.client.get(
            f"/api/v1/projects/{project}/notifications", headers=api.as_user("alice")
        ).json()
        assert [n["kind"] for n in notes["items"]] == ["run-succeeded"]
        assert "0.710" in notes["items"][0]["message"]
        assert [r["kind"] for r in received] == ["run-succeeded"]
        runs = api.client.get(
            f"/api/v1/projects/{project}/training-jobs", headers=api.as_user("alice")
        ).json()
        assert runs["items"][0]["phase"] in ("Succeeded", "Pending")  # cached list: at most the TTL old
        with api.container.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Notification)) >= 1
    finally:
        server.shutdown()


def test_live_events_over_sse_resume_from_the_last_event_id(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    publish(api, api.settings.training_stream, [epoch_event(project, "run-1", e) for e in (1, 2)])
    training, _ = api.container.consumers()
    wait_drained(training)
    import uvicorn

    from tests.services import free_port
    from visioninapp.api.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(api.container), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    wait_for(lambda: uv.started, 20, "the API server to start")
    try:
        url = f"http://127.0.0.1:{port}/api/v1/projects/{project}/events?trainingJob=run-1"
        seen = read_sse(url, api.as_user("alice"), count=2)
        assert [json.loads(e["data"])["epoch"] for e in seen] == [1, 2]
        publish(api, api.settings.training_stream, [epoch_event(project, "run-1", 3)])
        wait_drained(training)
        resumed = read_sse(url, {**api.as_user("alice"), "Last-Event-ID": seen[-1]["id"]}, count=1)
        assert [json.loads(e["data"])["epoch"] for e in resumed] == [3]
    finally:
        uv.should_exit = True
        thread.join(10)


def read_sse(url: str, headers: dict[str, str], count: int, timeout: float = 15.0) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                    if len(events) >= count:
                        break
                current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = value
    return events


def test_the_ledger_keeps_which_model_each_node_served_after_the_deployment_is_gone(api: ApiEnv) -> None:
    project = api.new_project({"alice": "member"})
    now = datetime.now(UTC)

    def window(node: str, end_ago: float, model: str | None, revision: str) -> EdgeEvent:
        end = now - timedelta(minutes=end_ago)
        sha = None if model is None else f"{model:0<64}"[:64]
        return EdgeEvent(
            namespace=project,
            deployment="fleet",
            node=node,
            revision=revision,
            model_version=model,
            model_sha256=sha,
            window_start=end - timedelta(minutes=1),
            window_end=end,
        )

    events = [
        window("jetson-0", 40, None, "r1"),  # nothing loaded yet: no entry
        window("jetson-0", 39, "m1", "r1"),
        window("jetson-0", 38, "m1", "r1"),
        window("jetson-1", 38, "m1", "r1"),
        window("jetson-0", 37, "m2", "r2"),  # the rollout reached it
        window("jetson-0", 36, "m2", "r2"),
        window("jetson-0", 6, "m2", "r2"),  # back after half an hour off: a new stretch
        window("jetson-0", 3, "m2", "r2"),  # two minutes without a window (a restart): the same one
    ]
    publish(api, api.settings.edge_stream, events)
    _, edge = api.container.consumers()
    wait_drained(edge)
    url = f"/api/v1/projects/{project}/deployments/fleet/ledger"
    entries = api.client.get(url, headers=api.as_user("alice")).json()
    assert entries["total"] == 4
    rows = [(e["node"], e["model"], e["revision"], e["current"]) for e in entries["items"]]
    assert rows == [
        ("jetson-0", "m2", "r2", True),
        ("jetson-0", "m2", "r2", False),
        ("jetson-1", "m1", "r1", False),  # silent for 38 minutes: not current
        ("jetson-0", "m1", "r1", False),
    ]
    first_m1 = entries["items"][3]
    assert datetime.fromisoformat(first_m1["since"]) == now - timedelta(minutes=40)
    assert datetime.fromisoformat(first_m1["until"]) == now - timedelta(minutes=38)
    assert entries["items"][0]["until"] is None and entries["items"][0]["sha256"] == f"{'m2':0<64}"
    one = api.client.get(url, params={"node": "jetson-1"}, headers=api.as_user("alice")).json()
    assert [e["model"] for e in one["items"]] == ["m1"]
    # No EdgeDeployment named fleet exists (it was never created, or it was deleted): the ledger stays.
    assert api.cluster.get("visioninapp.io", "edgedeployments", project, "fleet") is None
    outsider = api.new_project({"bob": "member"})
    assert api.client.get(url, headers=api.as_user("bob")).status_code in (403, 404), outsider


def test_frames_announced_in_edge_events_are_imported_without_a_sync_and_only_from_their_own_prefix(
    api: ApiEnv,
) -> None:
    project = api.new_project({"alice": "member"})
    other = api.new_project({"bob": "member"})
    feedback = api.settings.resolved_feedback_uri
    store = api.container.store_for(feedback)
    record = {
        "time": "2026-11-30T10:00:00+00:00",
        "model": "m1",
        "sha256": "a" * 64,
        "revision": "r1",
        "camera": "dock",
        "detections": [{"box": [1, 2, 30, 40], "score": 0.31, "classId": 0, "className": "helmet"}],
    }

    def put(namespace: str, node: str, stem: str) -> str:
        prefix = feedback_prefix(feedback, namespace, "fleet", node)
        store.put_bytes(b"\xff\xd8jpeg", f"{prefix}{stem}.jpg")
        return store.put_bytes(json.dumps(record).encode(), f"{prefix}{stem}.json").uri

    own = put(project, "jetson-0", "abc123-000000000001")
    neighbour = put(project, "jetson-1", "abc123-000000000002")  # announced by jetson-0: refused
    foreign = put(other, "jetson-0", "abc123-000000000003")  # another project's frame: refused
    event = EdgeEvent(
        namespace=project,
        deployment="fleet",
        node="jetson-0",
        revision="r1",
        model_version="m1",
        window_start=datetime.now(UTC) - timedelta(seconds=15),
        window_end=datetime.now(UTC),
        frames=[own, neighbour, foreign, own],  # a resend too
    )
    publish(api, api.settings.edge_stream, [event])
    _, edge = api.container.consumers()
    wait_drained(edge)
    ClusterSync(api.container).sync_once()
    frames = api.client.get(f"/api/v1/projects/{project}/feedback", headers=api.as_user("alice")).json()
    assert [(f["node"], f["imageUri"]) for f in frames["items"]] == [
        ("jetson-0", own[: -len(".json")] + ".jpg")
    ]
    bob = api.client.get(f"/api/v1/projects/{other}/feedback", headers=api.as_user("bob")).json()
    assert bob["items"] == []
    with api.container.db.session() as session:
        assert session.scalar(select(func.count()).select_from(FrameAnnouncement)) == 0  # all handled
