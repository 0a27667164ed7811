"""The API's SQL store: typed SQLAlchemy 2 models, the engine, and Alembic migrations.

MariaDB/MySQL through PyMySQL in production, SQLite as the embedded default; the same schema and
the same test suite run on both. The schema is owned by the Alembic migrations in `migrations/`
(a test checks that they match these models).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

__all__ = [
    "AnnotationChange",
    "Base",
    "ConsumerOffset",
    "Database",
    "Dataset",
    "DatasetVersion",
    "EdgeWindow",
    "EpochMetric",
    "FeedbackFrame",
    "FrameAnnouncement",
    "LedgerEntry",
    "LogLine",
    "Membership",
    "Notification",
    "Project",
    "RunSummary",
    "TrainingRun",
    "utcnow",
]

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (MariaDB and SQLite store naive values)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):  # microseconds: events within a second keep their order
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=False))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


NAME = 253  # Kubernetes object names
NAMESPACE = 63
PRINCIPAL = 254  # a Firebase uid (<=128) or an email


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UtcDateTime}


class Project(Base):
    """A project is a Kubernetes namespace, plus who may use it."""

    __tablename__ = "projects"
    name: Mapped[str] = mapped_column(String(NAMESPACE), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(PRINCIPAL))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    members: Mapped[list[Membership]] = relationship(back_populates="project", cascade="all, delete-orphan")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_name", "principal", name="uq_membership"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(
        String(NAMESPACE), ForeignKey("projects.name", ondelete="CASCADE")
    )
    principal: Mapped[str] = mapped_column(String(PRINCIPAL))  # uid or email
    role: Mapped[str] = mapped_column(String(16))  # admin | member | viewer
    project: Mapped[Project] = relationship(back_populates="members")


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_name", "name", name="uq_dataset"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(
        String(NAMESPACE), ForeignKey("projects.name", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(NAMESPACE))
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(PRINCIPAL))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", order_by="DatasetVersion.version"
    )


class DatasetVersion(Base):
    """An immutable, validated dataset in the artifact store; the versions are its annotation history."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version", name="uq_dataset_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(1024))
    data_yaml: Mapped[str] = mapped_column(String(200), default="data.yaml")
    class_names: Mapped[list[Any]] = mapped_column(default=list)
    class_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    images: Mapped[dict[str, Any]] = mapped_column(default=dict)  # split -> image count
    preprocessing: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what the ingest changed
    sha256: Mapped[str] = mapped_column(String(64))  # of the manifest: identical content, same digest
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(PRINCIPAL))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the labels of its feedback frames came from (reviewed / auto-accepted counts); NULL for
    # versions without feedback frames. The per-image record is the version's provenance.json.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class TrainingRun(Base):
    """History of a TrainingJob, kept after the CR is deleted."""

    __tablename__ = "training_runs"
    __table_args__ = (UniqueConstraint("project_name", "name", name="uq_training_run"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE))
    name: Mapped[str] = mapped_column(String(NAME))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    phase: Mapped[str] = mapped_column(String(32), default="Pending")
    created_by: Mapped[str] = mapped_column(String(PRINCIPAL), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    artifact: Mapped[str | None] = mapped_column(String(NAME), nullable=True)
    best_map50: Mapped[float | None] = mapped_column(Float, nullable=True)
    epochs_seen: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")


class EpochMetric(Base):
    """One epoch of a run; a resumed attempt's repeat of an epoch replaces it (one row per epoch)."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("project_name", "training_job", "epoch", name="uq_epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE))
    training_job: Mapped[str] = mapped_column(String(NAME))
    epoch: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column()
    map50: Mapped[float | None] = mapped_column(Float, nullable=True)
    map50_95: Mapped[float | None] = mapped_column(Float, nullable=True)
    precision: Mapped[float | None] = mapped_column(Float, nullable=True)
    recall: Mapped[float | None] = mapped_column(Float, nullable=True)
    losses: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    images_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    stream_offset: Mapped[int] = mapped_column(BigInteger)


class LogLine(Base):
    __tablename__ = "log_lines"
    __table_args__ = (UniqueConstraint("stream_offset", name="uq_log_offset"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE), index=True)
    training_job: Mapped[str] = mapped_column(String(NAME))
    attempt: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column()
    level: Mapped[str] = mapped_column(String(16), default="INFO")
    message: Mapped[str] = mapped_column(Text)
    stream_offset: Mapped[int] = mapped_column(BigInteger)


class EdgeWindow(Base):
    """One EdgeEvent: a runtime's health and detections over a window."""

    __tablename__ = "edge_windows"
    __table_args__ = (UniqueConstraint("stream_offset", name="uq_edge_offset"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE), index=True)
    deployment: Mapped[str] = mapped_column(String(NAME))
    node: Mapped[str] = mapped_column(String(NAME))
    revision: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(NAME), nullable=True)
    window_start: Mapped[datetime] = mapped_column()
    window_end: Mapped[datetime] = mapped_column()
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    detections_per_class: Mapped[dict[str, Any]] = mapped_column(default=dict)
    mean_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)  # NULL before 0006
    low_confidence: Mapped[int] = mapped_column(Integer, default=0)
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ready: Mapped[bool] = mapped_column(Boolean, default=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Each camera's CameraWindow as the event carried it (by alias); NULL in windows stored before
    # cameras were reported, so the migration adds the column without rewriting the table.
    cameras: Mapped[list[Any] | None] = mapped_column(nullable=True, default=list)
    stream_offset: Mapped[int] = mapped_column(BigInteger)


class FrameAnnouncement(Base):
    """A hard frame an edge runtime announced in an EdgeEvent, waiting to be imported (and checked)."""

    __tablename__ = "frame_announcements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE), index=True)
    deployment: Mapped[str] = mapped_column(String(NAME))
    node: Mapped[str] = mapped_column(String(NAME))
    uri: Mapped[str] = mapped_column(String(1024))


class LedgerEntry(Base):
    """A node served one model (artifact, file and pod template revision) from `started` to
    `last_seen`: the deployment ledger, kept when the deployment changes or is deleted."""

    __tablename__ = "node_ledger"
    __table_args__ = (Index("ix_node_ledger_node", "project_name", "deployment", "node"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE))
    deployment: Mapped[str] = mapped_column(String(NAME))
    node: Mapped[str] = mapped_column(String(NAME))
    model_version: Mapped[str] = mapped_column(String(NAME))
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    revision: Mapped[str] = mapped_column(String(64))
    started: Mapped[datetime] = mapped_column()
    last_seen: Mapped[datetime] = mapped_column()


class FeedbackFrame(Base):
    """A hard frame an edge runtime sent back: a candidate for the next dataset version."""

    __tablename__ = "feedback_frames"
    __table_args__ = (
        UniqueConstraint("image_uri", name="uq_feedback_uri"),
        Index("ix_feedback_review_queue", "project_name", "review_status", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE), index=True)
    deployment: Mapped[str] = mapped_column(String(NAME))
    node: Mapped[str] = mapped_column(String(NAME))
    image_uri: Mapped[str] = mapped_column(String(768))
    model: Mapped[str | None] = mapped_column(String(NAME), nullable=True)
    top_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    detections: Mapped[list[Any]] = mapped_column(default=list)
    captured_at: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="new")  # new | accepted | dismissed
    dataset_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Review (api/domain/labels.py): the current labels (NULL: still the model's proposals, as
    # imported), a revision that every change raises (optimistic concurrency), the review status
    # pending | reviewed | rejected | auto-accepted, who decided it and when; the image's size and
    # the model's class names, looked up once when the frame is first reviewed.
    labels: Mapped[list[Any] | None] = mapped_column(nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    review_status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    reviewed_by: Mapped[str | None] = mapped_column(String(PRINCIPAL), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    class_names: Mapped[list[Any] | None] = mapped_column(nullable=True)


class AnnotationChange(Base):
    """One change to a frame's labels or review (the annotation history): who, when, what, the label
    (or the frame's review state) before and after, and the frame revision it made."""

    __tablename__ = "annotation_history"
    __table_args__ = (Index("ix_annotation_history_frame", "frame_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE))
    frame_id: Mapped[int] = mapped_column(ForeignKey("feedback_frames.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # add | move | relabel | edit | delete | accept | ...
    label_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    label_before: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    label_after: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    who: Mapped[str] = mapped_column(String(PRINCIPAL))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("dedup_key", name="uq_notification"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # run-succeeded | run-failed | rollback
    subject: Mapped[str] = mapped_column(String(NAME))
    title: Mapped[str] = mapped_column(String(300))
    message: Mapped[str] = mapped_column(Text, default="")
    dedup_key: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)


class RunSummary(Base):
    __tablename__ = "run_summaries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_name: Mapped[str] = mapped_column(String(NAMESPACE), index=True)
    training_job: Mapped[str] = mapped_column(String(NAME))
    generator: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    findings: Mapped[list[Any]] = mapped_column(default=list)
    proposal: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsumerOffset(Base):
    """Next stream offset of a consumer, committed in the same transaction as the rows it wrote."""

    __tablename__ = "consumer_offsets"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger, default=0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the consumer's writes
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(
                url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=3600
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on an exception."""
        with self._sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent). Replicas that start together take
        turns: the first migrates, the others then find nothing to do."""
        from alembic import command

        with self._migration_lock():
            command.upgrade(alembic_config(self.url), "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """A MySQL named lock (held by one connection), or a file lock beside the SQLite file."""
        from sqlalchemy import text

        if self.engine.dialect.name == "mysql":
            with self.engine.connect() as connection:
                taken = connection.execute(text(f"SELECT GET_LOCK('{MIGRATION_LOCK}', 600)")).scalar()
                if taken != 1:
                    raise RuntimeError("another API replica has been migrating the database for 10 minutes")
                try:
                    yield
                finally:
                    connection.execute(text(f"SELECT RELEASE_LOCK('{MIGRATION_LOCK}')"))
            return
        path = self.url.split("///", 1)[-1] if self.url.startswith("sqlite") else ""
        if not path or path == ":memory:":
            yield
            return
        with open(f"{path}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def ping(self) -> bool:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    def dispose(self) -> None:
        self.engine.dispose()


MIGRATION_LOCK = "visioninapp-migrations"


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
