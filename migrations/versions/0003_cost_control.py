"""Cost control: idle-GPU signals with the time each was first seen, keeps and snoozes, the one
report message per channel, and GPU node time per node per day for the digest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gpu_signals",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("workspace", sa.String(), nullable=True),
        sa.Column("nodegroup", sa.String(), nullable=True),
        sa.Column("signal", sa.String(), nullable=False),
        sa.Column("first_seen", _utc(), nullable=False),
        sa.Column("last_seen", _utc(), nullable=False),
        sa.Column("reported_at", _utc(), nullable=True),
        sa.Column("warned_at", _utc(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_gpu_signals"),
    )
    op.create_table(
        "gpu_holds",
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("until", _utc(), nullable=False),
        sa.Column("held_by", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("target", name="pk_gpu_holds"),
    )
    op.create_table(
        "cost_reports",
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("ts", sa.String(), nullable=True),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("channel", name="pk_cost_reports"),
    )
    op.create_table(
        "gpu_usage",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("nodegroup", sa.String(), nullable=False),
        sa.Column("workspace", sa.String(), nullable=True),
        sa.Column("instance_type", sa.String(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("idle_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("idle_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("last_scan", _utc(), nullable=False),
        sa.Column("unpriced_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("day", "node", name="pk_gpu_usage"),
    )
    op.create_index("ix_gpu_usage_workspace", "gpu_usage", ["workspace"])
    op.create_table(
        "cost_digests",
        sa.Column("slot", _utc(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("ts", sa.String(), nullable=True),
        sa.Column("claimed_at", _utc(), nullable=False),
        sa.Column("posted_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("slot", name="pk_cost_digests"),
    )


def downgrade() -> None:
    op.drop_index("ix_gpu_usage_workspace", table_name="gpu_usage")
    for table in ("cost_digests", "gpu_usage", "cost_reports", "gpu_holds", "gpu_signals"):
        op.drop_table(table)
