"""labels reviewed by people: a frame's labels, revision and review status, the annotation history,
and the label provenance of dataset versions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import visioninapp.api.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Frames imported before review existed are pending (their labels still the model's proposals,
    # NULL); those already in a dataset version (status accepted) stay out of the review queue.
    with op.batch_alter_table("feedback_frames", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("revision", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("review_status", sa.String(length=16), server_default="pending", nullable=False)
        )
        batch_op.add_column(sa.Column("reviewed_by", sa.String(length=254), nullable=True))
        batch_op.add_column(sa.Column("reviewed_at", visioninapp.api.db.UtcDateTime(), nullable=True))
        batch_op.add_column(sa.Column("width", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("height", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("class_names", sa.JSON(), nullable=True))
        batch_op.create_index(
            "ix_feedback_review_queue", ["project_name", "review_status", "status"], unique=False
        )
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
    op.create_table(
        "annotation_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("frame_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("label_id", sa.String(length=16), nullable=True),
        sa.Column("label_before", sa.JSON(), nullable=True),
        sa.Column("label_after", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("who", sa.String(length=254), nullable=False),
        sa.Column("at", visioninapp.api.db.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["frame_id"], ["feedback_frames.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("annotation_history", schema=None) as batch_op:
        batch_op.create_index("ix_annotation_history_frame", ["frame_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("annotation_history", schema=None) as batch_op:
        batch_op.drop_index("ix_annotation_history_frame")
    op.drop_table("annotation_history")
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_column("provenance")
    with op.batch_alter_table("feedback_frames", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_review_queue")
        for column in (
            "class_names",
            "height",
            "width",
            "reviewed_at",
            "reviewed_by",
            "review_status",
            "revision",
            "labels",
        ):
            batch_op.drop_column(column)
