"""slack_inbox.mac: each inbox row's HMAC (a subkey of the audit key) over its key, kind and
payload, so a row written straight into the table by someone without the audit key is never run.

Rows already in the inbox at upgrade have no MAC: the sweep drops them unrun (and untold). They are
requests acked at most a few minutes before the upgrade whose work was not finished; their users
can ask again, which is safer than running rows nobody can vouch for.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("slack_inbox") as batch:
        batch.add_column(sa.Column("mac", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_inbox") as batch:
        batch.drop_column("mac")
