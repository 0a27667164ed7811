"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 15:32:34.183540
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import visioninapp.api.db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consumer_offsets",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "stream"),
    )
    op.create_table(
        "edge_windows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("deployment", sa.String(length=253), nullable=False),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=253), nullable=True),
        sa.Column("window_start", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.Column("window_end", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.Column("detections_per_class", sa.JSON(), nullable=False),
        sa.Column("low_confidence", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("stream_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("stream_offset", name="uq_edge_offset"),
    )
    with op.batch_alter_table("edge_windows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_edge_windows_project_name"), ["project_name"], unique=False)

    op.create_table(
        "epoch_metrics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("training_job", sa.String(length=253), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("time", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.Column("map50", sa.Float(), nullable=True),
        sa.Column("map50_95", sa.Float(), nullable=True),
        sa.Column("precision", sa.Float(), nullable=True),
        sa.Column("recall", sa.Float(), nullable=True),
        sa.Column("losses", sa.JSON(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("images_per_second", sa.Float(), nullable=True),
        sa.Column("stream_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_name", "training_job", "epoch", name="uq_epoch"),
    )
    op.create_table(
        "feedback_frames",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("deployment", sa.String(length=253), nullable=False),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("image_uri", sa.String(length=768), nullable=False),
        sa.Column("model", sa.String(length=253), nullable=True),
        sa.Column("top_score", sa.Float(), nullable=True),
        sa.Column("detections", sa.JSON(), nullable=False),
        sa.Column("captured_at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_uri", name="uq_feedback_uri"),
    )
    with op.batch_alter_table("feedback_frames", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_frames_project_name"), ["project_name"], unique=False)

    op.create_table(
        "log_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("training_job", sa.String(length=253), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("time", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("stream_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("stream_offset", name="uq_log_offset"),
    )
    with op.batch_alter_table("log_lines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_log_lines_project_name"), ["project_name"], unique=False)

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=253), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.String(length=400), nullable=False),
        sa.Column("created_at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key", name="uq_notification"),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_project_name"), ["project_name"], unique=False)

    op.create_table(
        "projects",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "run_summaries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("training_job", sa.String(length=253), nullable=False),
        sa.Column("generator", sa.String(length=100), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("proposal", sa.JSON(), nullable=False),
        sa.Column("created_at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("run_summaries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_summaries_project_name"), ["project_name"], unique=False)

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.Column("finished_at", visioninapp.api.db.UtcDateTime(), nullable=True),
        sa.Column("artifact", sa.String(length=253), nullable=True),
        sa.Column("best_map50", sa.Float(), nullable=True),
        sa.Column("epochs_seen", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_name", "name", name="uq_training_run"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["project_name"], ["projects.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_name", "name", name="uq_dataset"),
    )
    op.create_table(
        "memberships",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("principal", sa.String(length=254), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["project_name"], ["projects.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_name", "principal", name="uq_membership"),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(length=1024), nullable=False),
        sa.Column("data_yaml", sa.String(length=200), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("class_counts", sa.JSON(), nullable=False),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("preprocessing", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id", "version", name="uq_dataset_version"),
    )


def downgrade() -> None:
    op.drop_table("dataset_versions")
    op.drop_table("memberships")
    op.drop_table("datasets")
    op.drop_table("training_runs")
    with op.batch_alter_table("run_summaries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_summaries_project_name"))

    op.drop_table("run_summaries")
    op.drop_table("projects")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_project_name"))

    op.drop_table("notifications")
    with op.batch_alter_table("log_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_log_lines_project_name"))

    op.drop_table("log_lines")
    with op.batch_alter_table("feedback_frames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_frames_project_name"))

    op.drop_table("feedback_frames")
    op.drop_table("epoch_metrics")
    with op.batch_alter_table("edge_windows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_edge_windows_project_name"))

    op.drop_table("edge_windows")
    op.drop_table("consumer_offsets")
