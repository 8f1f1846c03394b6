"""Slack signatures: each accepted request's signature until its replay window has passed, so a
replayed signed request is dropped on every replica.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "slack_signatures",
        sa.Column("signature", sa.String(), nullable=False),
        sa.Column("expires_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("signature", name="pk_slack_signatures"),
    )
    op.create_index("ix_slack_signatures_expires_at", "slack_signatures", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_slack_signatures_expires_at", table_name="slack_signatures")
    op.drop_table("slack_signatures")
