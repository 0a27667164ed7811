"""hard frames announced by the edge, waiting to be imported

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 18:25:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "frame_announcements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("deployment", sa.String(length=253), nullable=False),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("uri", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("frame_announcements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_frame_announcements_project_name"), ["project_name"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("frame_announcements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_frame_announcements_project_name"))
    op.drop_table("frame_announcements")
