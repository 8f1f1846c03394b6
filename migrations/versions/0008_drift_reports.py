"""Drift reports: where each channel's drift report message is and what it listed, so the next
report edits it instead of posting again (see bot/drift.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drift_reports",
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("ts", sa.String(), nullable=True),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", name="pk_drift_reports"),
    )


def downgrade() -> None:
    op.drop_table("drift_reports")
