"""the deployment ledger: which model each node served, from when to when

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 18:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from visioninapp.api.db import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_name", sa.String(length=63), nullable=False),
        sa.Column("deployment", sa.String(length=253), nullable=False),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("model_version", sa.String(length=253), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("started", UtcDateTime(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("node_ledger", schema=None) as batch_op:
        batch_op.create_index("ix_node_ledger_node", ["project_name", "deployment", "node"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_node_ledger_node")
    op.drop_table("node_ledger")
