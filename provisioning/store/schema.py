"""The schema: every table the bot keeps, the audit chain's included.

SQLAlchemy 2 *Core* only: these tables are the single description of the schema that the
queries use (the Alembic migrations create the same tables, and tests/test_migrations.py compares
the two), and the domain classes never learn about SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

GENESIS_MAC = "0" * 64
"""``prev_mac`` of the first audit row and the head of an empty log (the migration writes it)."""

# -- types ----------------------------------------------------------------------------------------


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both backends.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the UTC wall time is stored
    (SQLAlchemy's fixed-width text format), which keeps text comparison equal to time comparison
    in ``WHERE lease_until < :now``. Naive datetimes are refused: they are always a bug here,
    since the injected clock returns aware UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(nullable: bool = False) -> sa.JSON:
    # none_as_null: a Python None in a nullable column is SQL NULL, not the JSON text 'null'.
    return sa.JSON(none_as_null=nullable)


# -- tables ---------------------------------------------------------------------------------------
# Names follow one convention so a later migration (batch mode on SQLite) can address them.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("args", _json(), nullable=False),
    sa.Column("subject", sa.String(), nullable=True),
    sa.Column("requester_id", sa.String(), nullable=False),
    sa.Column("requester_email", sa.String(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("plan", _json(), nullable=False),
    sa.Column("plan_digest", sa.String(), nullable=False),
    sa.Column("decided_by", sa.String(), nullable=True),
    sa.Column("decided_at", UtcDateTime(), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("correlation_id", sa.String(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=True),
    sa.Column("card_channel", sa.String(), nullable=True),
    sa.Column("card_ts", sa.String(), nullable=True),
    sa.Column("claimed_by", sa.String(), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0, server_default="0"),
    # Which of the two subject slots below the request holds (see uq_requests_subject_*).
    sa.Column("holds_open", sa.Boolean(), nullable=False, default=False, server_default=sa.false()),
    sa.Column("holds_work", sa.Boolean(), nullable=False, default=False, server_default=sa.false()),
    sa.Index("ix_requests_state", "state"),
    sa.Index("ix_requests_requester_id", "requester_id"),
    sa.Index("ix_requests_subject", "subject"),
)
# The submission rule of handlers.services._record, race-free: a person's request is refused while
# any request about its subject is open, the bot's own (an expiry) only while one is being worked
# on, so a pending request cannot hold off an expiry. A slot is taken when the request is inserted
# and given up when it leaves the states that hold it (``holds_open``: open states, a person's
# request; ``holds_work``: work states, a request inserted approved); it is never taken again by a
# later transition (an approval, a retry), which the rule does not check either. Two concurrent
# submissions that would both take a slot cannot both commit: the second one's INSERT fails.
uq_requests_subject_open = sa.Index(
    "uq_requests_subject_open",
    requests.c.subject,
    unique=True,
    sqlite_where=requests.c.holds_open,
    postgresql_where=requests.c.holds_open,
)
uq_requests_subject_work = sa.Index(
    "uq_requests_subject_work",
    requests.c.subject,
    unique=True,
    sqlite_where=requests.c.holds_work,
    postgresql_where=requests.c.holds_work,
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("request_id", sa.String(), sa.ForeignKey("requests.id"), nullable=False),
)

decision_keys = sa.Table(
    "decision_keys",
    metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

step_outcomes = sa.Table(
    "step_outcomes",
    metadata,
    sa.Column("request_id", sa.String(), sa.ForeignKey("requests.id"), primary_key=True),
    sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(), nullable=False),
    sa.Column("action", sa.String(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("outcome", _json(nullable=True), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0, server_default="0"),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("first_failure_at", UtcDateTime(), nullable=True),
)

timers = sa.Table(
    "timers",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("ref", sa.String(), nullable=False),
    sa.Column("due_at", UtcDateTime(), nullable=False),
    sa.Column("payload", _json(), nullable=False),
    sa.Column("claimed_by", sa.String(), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("done_at", UtcDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0, server_default="0"),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Index("ix_timers_due_at", "due_at"),
)
# One *pending* timer per (kind, ref); finished rows stay as history outside the index.
uq_timers_pending = sa.Index(
    "uq_timers_pending",
    timers.c.kind,
    timers.c.ref,
    unique=True,
    sqlite_where=timers.c.done_at.is_(None),
    postgresql_where=timers.c.done_at.is_(None),
)

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("name", sa.String(), primary_key=True),
    sa.Column("namespace", sa.String(), nullable=False),
    sa.Column("owner", sa.String(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=True),
    sa.Column("created", _json(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("deleted_at", UtcDateTime(), nullable=True),
    # The owner's Slack user id when it was known as the access was granted (migration 0007).
    sa.Column("owner_slack_id", sa.String(), nullable=True),
    sa.Index("ix_workspaces_owner", "owner"),
)

grants = sa.Table(
    "grants",
    metadata,
    sa.Column("workspace", sa.String(), primary_key=True),
    sa.Column("user", sa.String(), primary_key=True),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=True),
    sa.Column("expires_at", UtcDateTime(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("slack_id", sa.String(), nullable=True),
    sa.Index("ix_grants_user", "user"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_id", sa.String(), primary_key=True),
    sa.Column("requester_id", sa.String(), nullable=False),
    sa.Column("workspace", sa.String(), nullable=False),
    sa.Column("namespace", sa.String(), nullable=False),
    sa.Column("account", sa.String(), nullable=False),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("audiences", _json(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Index("ix_tokens_requester_id", "requester_id"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=True),
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("actor", sa.String(), nullable=True),
    sa.Column("data", _json(), nullable=False),
    sa.Column("prev_mac", sa.String(), nullable=False),
    sa.Column("mac", sa.String(), nullable=False),
    sa.Index("ix_audit_events_request_id", "request_id"),
    sa.Index("ix_audit_events_at", "at"),
)

# The chain head: one row (id = 1) that every append locks, so appends are serialised and the
# chain cannot fork; it also remembers the last seq and mac so a deleted tail shows.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("mac", sa.String(), nullable=False),
    sa.CheckConstraint("id = 1", name="single_row"),
)


# -- cost control ---------------------------------------------------------------------------------

# One row per idle candidate the scans see (an empty GPU node, a notebook or pod holding GPUs it
# does not use), keyed by what it is (``node:<nodegroup>/<node>``, ``notebook:<ns>/<name>``,
# ``pod:<ns>/<name>``). ``first_seen`` is when the signal started: it survives restarts, so the
# idle clock does not reset; the row is deleted when the item is busy again or gone.
gpu_signals = sa.Table(
    "gpu_signals",
    metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("workspace", sa.String(), nullable=True),
    sa.Column("nodegroup", sa.String(), nullable=True),
    sa.Column("signal", sa.String(), nullable=False),  # empty-node | idle-notebook | unused-gpu
    sa.Column("first_seen", UtcDateTime(), nullable=False),
    sa.Column("last_seen", UtcDateTime(), nullable=False),
    sa.Column("reported_at", UtcDateTime(), nullable=True),
    sa.Column("warned_at", UtcDateTime(), nullable=True),
    sa.Column("detail", _json(), nullable=False),
)

# Keep / snooze: until ``until`` the item (``target`` is a ``gpu_signals`` key prefix such as
# ``nodegroup:<name>`` or ``notebook:<ns>/<name>``) is neither reported nor auto-stopped.
gpu_holds = sa.Table(
    "gpu_holds",
    metadata,
    sa.Column("target", sa.String(), primary_key=True),
    sa.Column("until", UtcDateTime(), nullable=False),
    sa.Column("held_by", sa.String(), nullable=False),
    sa.Column("request_id", sa.String(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

# The one idle report message per channel: the next scan edits it instead of posting again.
cost_reports = sa.Table(
    "cost_reports",
    metadata,
    sa.Column("channel", sa.String(), primary_key=True),
    sa.Column("ts", sa.String(), nullable=True),
    sa.Column("digest", sa.String(), nullable=False),  # hash of the text: unchanged -> not edited
    sa.Column("items", _json(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# Where each channel's drift report is (bot/drift.py): the next report edits it, never reposts.
drift_reports = sa.Table(
    "drift_reports",
    metadata,
    sa.Column("channel", sa.String(), primary_key=True),
    sa.Column("ts", sa.String(), nullable=True),
    sa.Column("digest", sa.String(), nullable=False),
    sa.Column("items", _json(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# GPU node time as the scans observed it, one row per node per UTC day: the digest's node-hours,
# idle share and dollars (price at the time of the scan, list on-demand unless overridden).
gpu_usage = sa.Table(
    "gpu_usage",
    metadata,
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("node", sa.String(), primary_key=True),
    sa.Column("nodegroup", sa.String(), nullable=False),
    sa.Column("workspace", sa.String(), nullable=True),
    sa.Column("instance_type", sa.String(), nullable=False),
    sa.Column("seconds", sa.Float(), nullable=False, default=0.0, server_default="0"),
    sa.Column("idle_seconds", sa.Float(), nullable=False, default=0.0, server_default="0"),
    sa.Column("usd", sa.Float(), nullable=False, default=0.0, server_default="0"),
    sa.Column("idle_usd", sa.Float(), nullable=False, default=0.0, server_default="0"),
    sa.Column("last_scan", UtcDateTime(), nullable=False),
    # Node time of an instance type with no known price: counted in hours, never as $0 spent.
    sa.Column("unpriced_seconds", sa.Float(), nullable=False, default=0.0, server_default="0"),
    sa.Index("ix_gpu_usage_workspace", "workspace"),
)

# One row per cost digest slot (a fire time of KFBOT_COST_DIGEST), written before the digest is
# posted: two replicas, a retried timer or a forged timer row never post one slot twice, and a
# slot older than the newest posted one is never posted at all.
cost_digests = sa.Table(
    "cost_digests",
    metadata,
    sa.Column("slot", UtcDateTime(), primary_key=True),
    sa.Column("channel", sa.String(), nullable=False),
    sa.Column("ts", sa.String(), nullable=True),
    sa.Column("claimed_at", UtcDateTime(), nullable=False),
    sa.Column("posted_at", UtcDateTime(), nullable=True),
)

# Slack requests acked but not yet handled (migration 0004): a listener records the verified
# payload before it acks, and deletes the row once the work is done. A row whose lease ran out (its
# replica was stopped or crashed, or its work pool was full) is claimed by any replica's inbox
# sweep, so nothing acked is lost. ``payload`` holds the request as Slack sent it, minus its
# legacy ``token``; it is deleted with the row (``response_url`` lives 30 minutes: ``expires_at``).
slack_inbox = sa.Table(
    "slack_inbox",
    metadata,
    sa.Column("key", sa.String(), primary_key=True),  # kind + trigger_id: a redelivery is one row
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("payload", _json(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("claimed_by", sa.String(), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0, server_default="0"),
    # HMAC over key, kind and payload with a subkey of the audit key (migration 0011): a row
    # written by anyone but the edge (database write access, no audit key) is dropped unrun.
    sa.Column("mac", sa.String(), nullable=True),
    sa.Index("ix_slack_inbox_lease_until", "lease_until"),
)

# Signatures of Slack requests the edge accepted (migration 0010), until Slack's 5-minute window
# (plus clock skew between replicas) has passed: the same signature again is a replay, dropped
# whichever replica it reaches (store/replay.py). Only the signature, never the request.
slack_signatures = sa.Table(
    "slack_signatures",
    metadata,
    sa.Column("signature", sa.String(), primary_key=True),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Index("ix_slack_signatures_expires_at", "expires_at"),
)

# Notices the step engine owes Slack (migration 0005): appended in the transaction that made the
# change, delivered by a publisher thread after it, deleted once announced (store/outbox.py). So
# applying never waits on Slack's per-channel pace and a crash loses no notice. ``request`` is the
# request as it was at that change (the notice is rendered from it), ``events`` the change's
# events as the audit log holds them (secret-free: the same transaction appended them there).
notification_outbox = sa.Table(
    "notification_outbox",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),  # delivery order
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("request", _json(), nullable=False),
    sa.Column("events", _json(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("claimed_by", sa.String(), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0, server_default="0"),
    sa.Index("ix_notification_outbox_request_id", "request_id", "id"),
)

# The one message per plan step in a card's thread (migration 0009): the publisher posts it when
# the step starts and edits it (``chat.update`` on ``ts``) as the step succeeds, fails or is
# undone. ``key`` is ``step:<idx>``; a retry of the request posts (and records) new ones.
thread_messages = sa.Table(
    "thread_messages",
    metadata,
    sa.Column("request_id", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("ts", sa.String(), nullable=False),
)
