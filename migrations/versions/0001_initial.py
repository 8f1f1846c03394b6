"""Initial schema: requests, idempotency and decision keys, step outcomes, timers, the registry of
workspaces, grants and tokens, and the audit chain.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Tables are written out in full (not imported from provisioning.store): a migration is the schema
as it was at its revision. tests/test_migrations.py checks that store.metadata still matches.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# prev_mac of the first audit row; the head of an empty chain (store.GENESIS_MAC).
GENESIS_MAC = "0" * 64


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(), nullable=True),
        sa.Column("requester_id", sa.String(), nullable=False),
        sa.Column("requester_email", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("plan_digest", sa.String(), nullable=False),
        sa.Column("decided_by", sa.String(), nullable=True),
        _ts("decided_at", nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.String(), nullable=False),
        _ts("created_at"),
        _ts("updated_at", nullable=True),
        sa.Column("card_channel", sa.String(), nullable=True),
        sa.Column("card_ts", sa.String(), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=True),
        _ts("lease_until", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
    )
    op.create_index("ix_requests_state", "requests", ["state"])
    op.create_index("ix_requests_requester_id", "requests", ["requester_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"],
                                name="fk_idempotency_keys_request_id_requests"),
    )

    op.create_table(
        "decision_keys",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("key", name="pk_decision_keys"),
    )

    op.create_table(
        "step_outcomes",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _ts("started_at"),
        _ts("updated_at"),
        _ts("first_failure_at", nullable=True),
        sa.PrimaryKeyConstraint("request_id", "idx", name="pk_step_outcomes"),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"], name="fk_step_outcomes_request_id_requests"),
    )

    op.create_table(
        "timers",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        _ts("due_at"),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        _ts("lease_until", nullable=True),
        _ts("done_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_timers"),
    )
    op.create_index("ix_timers_due_at", "timers", ["due_at"])
    # One pending timer per (kind, ref); both SQLite and PostgreSQL support partial indexes.
    op.create_index(
        "uq_timers_pending", "timers", ["kind", "ref"], unique=True,
        sqlite_where=sa.text("done_at IS NULL"), postgresql_where=sa.text("done_at IS NULL"),
    )

    op.create_table(
        "workspaces",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("namespace", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("created", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_workspaces"),
    )
    op.create_index("ix_workspaces_owner", "workspaces", ["owner"])

    op.create_table(
        "grants",
        sa.Column("workspace", sa.String(), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=True),
        _ts("expires_at", nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("workspace", "user", name="pk_grants"),
    )
    op.create_index("ix_grants_user", "grants", ["user"])

    op.create_table(
        "tokens",
        sa.Column("token_id", sa.String(), nullable=False),
        sa.Column("requester_id", sa.String(), nullable=False),
        sa.Column("workspace", sa.String(), nullable=False),
        sa.Column("namespace", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("audiences", sa.JSON(), nullable=False),
        _ts("expires_at"),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("token_id", name="pk_tokens"),
    )
    op.create_index("ix_tokens_requester_id", "tokens", ["requester_id"])

    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), nullable=False, autoincrement=False),
        _ts("at"),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("prev_mac", sa.String(), nullable=False),
        sa.Column("mac", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_request_id", "audit_events", ["request_id"])
    op.create_index("ix_audit_events_at", "audit_events", ["at"])

    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("mac", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
    )
    # The head row exists from the start, so every append locks the same row (no insert race).
    op.bulk_insert(audit_head, [{"id": 1, "seq": 0, "mac": GENESIS_MAC}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_index("ix_audit_events_request_id", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_tokens_requester_id", table_name="tokens")
    op.drop_table("tokens")
    op.drop_index("ix_grants_user", table_name="grants")
    op.drop_table("grants")
    op.drop_index("ix_workspaces_owner", table_name="workspaces")
    op.drop_table("workspaces")
    op.drop_index("uq_timers_pending", table_name="timers")
    op.drop_index("ix_timers_due_at", table_name="timers")
    op.drop_table("timers")
    op.drop_table("step_outcomes")
    op.drop_table("decision_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_requests_requester_id", table_name="requests")
    op.drop_index("ix_requests_state", table_name="requests")
    op.drop_table("requests")
