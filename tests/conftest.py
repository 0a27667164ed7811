"""Shared fixtures for every test folder (unit, k8s, integration, e2e)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from visioninapp.local.cluster.build import ETCD_VERSION, KUBERNETES_VERSION, binaries_dir

if TYPE_CHECKING:
    from visioninapp.local.cluster.controlplane import ControlPlane

from tests.services import (
    delete_test_streams,
    elasticsearch_server,
    ensure_mariadb,
    ensure_rabbitmq_streams,
    ensure_redis,
    firebase_auth_emulator,
    s3_server,
)

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test another checkout's code (the shared venv's editable install points at one)."""
    import importlib

    for name in ("visioninapp", "visioninapp.trainer", "visioninapp.edge"):
        location = Path(importlib.import_module(name).__file__ or "").resolve()
        if REPO not in location.parents:
            raise pytest.UsageError(
                f"{name} is imported from {location}, not from this checkout ({REPO}): "
                "run `make install` here"
            )


def pytest_report_header() -> str:
    return (
        f"kubernetes: v{KUBERNETES_VERSION} (kube-apiserver, kube-controller-manager, kube-scheduler) "
        f"and etcd v{ETCD_VERSION}, built from source into {binaries_dir()}"
    )


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the session (etcd, kube-apiserver, controller-manager, scheduler),
    with audit logging on (the RBAC tests read who called what) and nodes declared unreachable
    10 s after their last heartbeat. Tests share it through namespaces of their own
    (tests/k8s/conftest.py `cluster`); what needs a control plane to itself starts one."""
    from visioninapp.local.cluster.controlplane import ControlPlane

    with ControlPlane(
        tmp_path_factory.mktemp("control-plane"), audit=True, node_monitor_grace_seconds=10
    ) as plane:
        assert plane.version() == f"v{KUBERNETES_VERSION}"
        yield plane


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every embedded backend at a fresh directory for one test."""
    monkeypatch.setenv("VISIONINAPP_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto server) over HTTP; boto3 talks to it as to AWS."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def rabbitmq_stream_port() -> Iterator[int]:
    """The broker's stream port; the uniquely named streams that crashed or older runs left behind
    are deleted when no other test session uses the broker (each holds a shared lock while it runs,
    and a sweep needs the exclusive one: a session never deletes another's streams)."""
    import fcntl

    port = ensure_rabbitmq_streams()
    lock_path = Path.home() / ".cache" / "visioninapp" / "test-streams.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:

        def sweep_if_alone() -> None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another session runs: its streams stay
            delete_test_streams()

        sweep_if_alone()
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield port
        finally:
            sweep_if_alone()
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def mariadb_server() -> str:
    ensure_mariadb()
    return "mysql+pymysql://root@127.0.0.1:3306"


@pytest.fixture(scope="session")
def redis_url() -> str:
    ensure_redis()
    return "redis://127.0.0.1:6379/14"


@pytest.fixture(scope="session")
def elasticsearch_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with elasticsearch_server(tmp_path_factory.mktemp("noida")) as url:
        yield url


@dataclass(frozen=True)
class ExportedModel:
    """yolo11n exported by ultralytics to ONNX twice (two sizes: two distinct, valid model files)."""

    dataset: Path
    weights: Path
    onnx: Path
    onnx_small: Path
    imgsz: int


def _zeroed_yolo11n(root: Path, class_names: list[str]) -> Path:
    """An untrained yolo11n (seeded: the same weights in every session) whose class biases are zeroed."""
    from visioninapp.trainer.offline import prepare_offline_ultralytics

    prepare_offline_ultralytics(root / "ultralytics")
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    model.model = DetectionModel("yolo11n.yaml", nc=len(class_names), verbose=False)
    head = model.model.model[-1]
    with torch.no_grad():
        for branch in head.cv3:
            branch[-1].bias.zero_()
    model.model.names = dict(enumerate(class_names))
    weights = root / "zeroed.pt"
    model.save(str(weights))
    return weights


def _export(weights: Path, size: int, to: Path) -> Path:
    from ultralytics import YOLO

    path = YOLO(str(weights)).export(format="onnx", imgsz=size, opset=17, simplify=True, verbose=False)
    return Path(path).rename(to)  # each export writes <weights>.onnx: move it


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """An untrained yolo11n whose class biases are zeroed, so every image yields many boxes.

    Scores then spread around 0.5 instead of ~0.003: the inference tests exercise decoding, NMS and
    rescaling on hundreds of boxes per image, in seconds, without a training run.
    """
    from visioninapp.local.synth import CLASS_NAMES, generate_dataset

    root = tmp_path_factory.mktemp("exported")
    generate_dataset(root / "ds", train=4, val=8, imgsz=96, seed=5)
    weights = _zeroed_yolo11n(root, list(CLASS_NAMES))
    onnx, small = _export(weights, 96, root / "model.onnx"), _export(weights, 64, root / "small.onnx")
    return ExportedModel(root / "ds", weights, onnx, small, 96)


@pytest.fixture(scope="session")
def one_class_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of model with one class (96 px ONNX): where a test is about a frame budget, class
    balance (which splits it between the classes an untrained model happens to see) plays no part."""
    root = tmp_path_factory.mktemp("one-class")
    return _export(_zeroed_yolo11n(root, ["object"]), 96, root / "model.onnx")


FIREBASE_PROJECT = "demo-visioninapp"


@pytest.fixture(scope="session")
def auth_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Firebase Auth emulator (npm firebase-tools); yields host:port."""
    with firebase_auth_emulator(tmp_path_factory.mktemp("firebase"), FIREBASE_PROJECT) as host:
        yield host


def sign_up(host: str, email: str, password: str = "secret-password", verified: bool = False) -> str:
    """Create a user through the emulator's REST API (as the Firebase JS SDK calls it); its ID token
    (with `verified`, after the email was verified: roles come from verified emails only)."""
    import httpx

    response = httpx.post(
        f"http://{host}/identitytoolkit.googleapis.com/v1/accounts:signUp?key=any-key",
        json={"email": email, "password": password, "returnSecureToken": True},
        timeout=30,
    )
    response.raise_for_status()
    token = str(response.json()["idToken"])
    return verify_email(host, token, password) if verified else token


def verify_email(host: str, id_token: str, password: str = "secret-password") -> str:
    """Mark the user's email verified (what the emulator's verification link does); a fresh token.

    The new state is in tokens issued afterwards only, as with Firebase: sign in again.
    """
    import httpx

    base = f"http://{host}/identitytoolkit.googleapis.com/v1"
    looked = httpx.post(f"{base}/accounts:lookup?key=any-key", json={"idToken": id_token}, timeout=30)
    looked.raise_for_status()
    user = looked.json()["users"][0]
    updated = httpx.post(
        f"{base}/projects/{FIREBASE_PROJECT}/accounts:update",
        json={"localId": user["localId"], "emailVerified": True},
        headers={"Authorization": "Bearer owner"},  # the emulator's admin credential
        timeout=30,
    )
    updated.raise_for_status()
    signed_in = httpx.post(
        f"{base}/accounts:signInWithPassword?key=any-key",
        json={"email": user["email"], "password": password, "returnSecureToken": True},
        timeout=30,
    )
    signed_in.raise_for_status()
    return str(signed_in.json()["idToken"])
