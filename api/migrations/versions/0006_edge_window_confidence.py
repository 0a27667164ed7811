"""mean detection confidence of edge windows (a RetrainPolicy's confidence trigger)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 21:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: windows stored before it keep NULL (no mean was reported), no table rewrite.
    with op.batch_alter_table("edge_windows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mean_confidence", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("edge_windows", schema=None) as batch_op:
        batch_op.drop_column("mean_confidence")
