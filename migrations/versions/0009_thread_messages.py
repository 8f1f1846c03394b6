"""Thread messages: the Slack ts of each step's one message in a card's thread, so a step's
progress edits that message (``chat.update``) instead of posting another, across restarts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "thread_messages",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("ts", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "key", name="pk_thread_messages"),
    )


def downgrade() -> None:
    op.drop_table("thread_messages")
