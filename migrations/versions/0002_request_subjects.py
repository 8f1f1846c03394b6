"""Request subjects, indexed: the open-request rule per subject as two partial unique indexes.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01

``requests.subject`` was never filled before this revision; it is filled here for every stored
request, so the submission check and the quota facts look rows up by an index instead of scanning
the newest few hundred. ``holds_open``/``holds_work`` say which subject slot a request holds
(see ``provisioning/store/schema.py``): the oldest open request of a person per subject gets the
open slot, the oldest request in a work state per subject the work slot. A database written
before this revision may hold two open requests about one subject (the old check raced); they
stay as they are, and only one of them holds the slot.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = ("pending", "approved", "applying", "compensating")
WORK = ("approved", "applying", "compensating")
SYSTEM_USER = "kfbot"


def subject(kind: str, args: Mapping[str, Any]) -> str | None:
    """``RequestKind.subject()`` of the kinds that exist at this revision, from the stored args.

    Written out rather than imported: the kinds' validators have tightened over time (email
    grammar), so rebuilding an old request through ``handlers.kinds`` could refuse it, and a
    migration must mean the same thing whatever the code around it becomes."""
    if kind in ("workspace.create", "workspace.delete", "workspace.pin"):
        return f"workspace:{args['name']}"
    if kind in ("share", "unshare"):
        return f"grant:{args['workspace']}:{args['user']}"
    if kind == "quota":
        return f"quota:{args['workspace']}"
    if kind == "token.revoke":
        return f"token:{args['token_id']}"
    return None  # token (each is its own account) and kinds this revision does not know


def upgrade() -> None:
    op.add_column("requests", sa.Column("holds_open", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("requests", sa.Column("holds_work", sa.Boolean(), nullable=False, server_default=sa.false()))
    requests = sa.table(
        "requests",
        sa.column("id", sa.String()),
        sa.column("kind", sa.String()),
        sa.column("args", sa.JSON()),
        sa.column("subject", sa.String()),
        sa.column("requester_id", sa.String()),
        sa.column("state", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("holds_open", sa.Boolean()),
        sa.column("holds_work", sa.Boolean()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(requests.c.id, requests.c.kind, requests.c.args, requests.c.requester_id, requests.c.state)
        .order_by(requests.c.created_at, requests.c.id)
    ).all()
    open_taken: set[str] = set()
    work_taken: set[str] = set()
    for row in rows:
        about = subject(row.kind, row.args)
        holds_open = (about is not None and row.state in OPEN and row.requester_id != SYSTEM_USER
                      and about not in open_taken)
        holds_work = about is not None and row.state in WORK and about not in work_taken
        if holds_open:
            open_taken.add(str(about))
        if holds_work:
            work_taken.add(str(about))
        conn.execute(
            sa.update(requests).where(requests.c.id == row.id)
            .values(subject=about, holds_open=holds_open, holds_work=holds_work)
        )
    op.create_index("ix_requests_subject", "requests", ["subject"])
    for slot in ("open", "work"):
        op.create_index(
            f"uq_requests_subject_{slot}", "requests", ["subject"], unique=True,
            sqlite_where=sa.text(f"holds_{slot}"), postgresql_where=sa.text(f"holds_{slot}"),
        )


def downgrade() -> None:
    op.drop_index("uq_requests_subject_work", table_name="requests")
    op.drop_index("uq_requests_subject_open", table_name="requests")
    op.drop_index("ix_requests_subject", table_name="requests")
    op.drop_column("requests", "holds_work")
    op.drop_column("requests", "holds_open")
    # subject keeps its values: revision 0001 has the column and reads nothing from it.
