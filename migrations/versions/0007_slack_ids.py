"""Offboarding: the Slack user id of each owner and grantee, recorded when the access is granted
(a token's holder is its ``requester_id`` already), so the daily check asks Slack about the person
by id (``users.info``) and an id that was once known and is gone counts as "left".

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("owner_slack_id", sa.String(), nullable=True))
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("slack_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("slack_id")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("owner_slack_id")
