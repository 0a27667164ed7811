"""per-camera numbers of edge windows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: existing windows keep NULL (no camera numbers were reported), no table rewrite.
    with op.batch_alter_table("edge_windows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cameras", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("edge_windows", schema=None) as batch_op:
        batch_op.drop_column("cameras")
