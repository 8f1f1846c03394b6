"""Slack inbox: the Slack requests a replica acked and has not finished, so another replica (or the
restarted one) finishes them (see provisioning/store/inbox.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "slack_inbox",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("lease_until", _utc(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_slack_inbox"),
    )
    op.create_index("ix_slack_inbox_lease_until", "slack_inbox", ["lease_until"])


def downgrade() -> None:
    op.drop_index("ix_slack_inbox_lease_until", table_name="slack_inbox")
    op.drop_table("slack_inbox")
