"""SQL storage: requests, step outcomes, timers, idempotency keys, the registry of what the bot made.

SQLAlchemy 2 *Core* only: the tables below are the single description of the schema that the
queries use (the Alembic migration creates the same tables, and a test compares the two), and the
domain classes never learn about SQL.

Concurrency model
-----------------
* **One unit of work = one transaction on one connection.** ``Database.uow()`` hands out a
  ``SqlUnitOfWork``; leaving it without ``commit()`` rolls back. The core writes a request, its
  audit events and its timers in one such transaction, so they commit together or not at all.
* **Optimistic versions for decisions.** ``save`` is ``UPDATE … WHERE id = :id AND version =
  :expected``; a zero rowcount means another writer won (``StaleVersion``). On PostgreSQL the
  second UPDATE waits for the first one's row lock and then re-checks the version, so of two
  admins approving at once exactly one succeeds.
* **Leases for work.** A worker claims a request or a timer by setting ``claimed_by`` and
  ``lease_until`` in a short transaction; on PostgreSQL the candidate row is picked with ``SELECT …
  FOR UPDATE SKIP LOCKED`` so two workers never wait on, or both take, the same row. Every write a
  worker makes afterwards (``save_claimed``, ``record_step``) first re-reads the claim under a row
  lock in the same transaction, so a worker whose lease expired (and was taken over) writes nothing
  and gets ``LeaseLost``.
* **SQLite** is for a single process (the shell, a small deployment). It allows one writer at a
  time, so every read-write unit of work starts with ``BEGIN IMMEDIATE``: writers queue on the
  database lock (busy timeout) instead of failing later when a read transaction tries to become a
  write transaction, which would turn a lost race into "database is locked" rather than
  ``StaleVersion``. WAL mode lets read-only work (``uow(read_only=True)``, ``reader()``) run
  beside a writer. A unit of work opened in a thread that already holds one is made such a
  reader automatically (it would otherwise wait for its own thread): nested reads work, nested
  writes on SQLite do not (they time out) and are a bug anyway.
* ``DbLock`` and ``LeaderElection`` use PostgreSQL session advisory locks on dedicated
  connections, so separate processes coordinate; on SQLite they are process-local, which is all a
  single-process deployment needs.

Nothing here does I/O at import time: engines are created lazily by ``Database`` when the
composition root first uses one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from handlers import errors
from handlers.model import WORK_STATES, Request, RequestState
from handlers.plan import JSON, Plan, StepOutcome, StepStatus
from handlers.ports import AuditLog, DecisionKeys, RequestRepository, Timers
from provisioning.records import GrantRecord, TokenRecord, WorkspaceRecord

if TYPE_CHECKING:
    from handlers.ports import UnitOfWork

__all__ = [
    "GENESIS_MAC",
    "Database",
    "DbLock",
    "LeaderElection",
    "LeaseLost",
    "SqlRegistry",
    "SqlUnitOfWork",
    "SqlWork",
    "StepRecord",
    "TimerRow",
    "UtcDateTime",
    "metadata",
]

GENESIS_MAC = "0" * 64
"""``prev_mac`` of the first audit row and the head of an empty log (the migration writes it)."""


class LeaseLost(errors.StaleVersion):
    """The worker's claim on a request expired or was taken over; it must stop and write nothing."""


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
    sa.Index("ix_requests_state", "state"),
    sa.Index("ix_requests_requester_id", "requester_id"),
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


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """The persisted progress of one plan step (``idx`` is its position in the plan)."""

    idx: int
    key: str
    action: str
    status: StepStatus
    outcome: StepOutcome | None
    error: str | None
    attempts: int
    started_at: datetime
    first_failure_at: datetime | None


@dataclass(frozen=True)
class TimerRow:
    id: int
    kind: str
    ref: str
    due_at: datetime
    payload: dict[str, JSON]
    attempts: int
    last_error: str | None


# -- helpers --------------------------------------------------------------------------------------


def _upsert(
    conn: Connection,
    table: sa.Table,
    values: Mapping[str, Any],
    conflict: Sequence[str],
    update: Mapping[str, Any],
    where: sa.ColumnElement[bool] | None = None,
) -> None:
    """INSERT … ON CONFLICT (conflict) [WHERE where] DO UPDATE SET update: one atomic statement on
    both backends, so two writers of the same key cannot both insert."""
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(table).values(dict(values))
        conn.execute(pg.on_conflict_do_update(index_elements=list(conflict), index_where=where,
                                              set_=dict(update)))
    elif conn.dialect.name == "sqlite":
        lite = sqlite.insert(table).values(dict(values))
        conn.execute(lite.on_conflict_do_update(index_elements=list(conflict), index_where=where,
                                                set_=dict(update)))
    else:  # pragma: no cover - the URL check in Database refuses other backends
        raise NotImplementedError(conn.dialect.name)


def _request_values(request: Request) -> dict[str, Any]:
    subject = request.args.get("subject")
    return {
        "kind": request.kind,
        "args": dict(request.args),
        # No domain logic here: the column is kept for later and filled only if the args carry it.
        "subject": subject if isinstance(subject, str) else None,
        "requester_id": request.requester_id,
        "requester_email": request.requester_email,
        "state": request.state.value,
        "version": request.version,
        "plan": request.plan.to_json(),
        "plan_digest": request.plan_digest,
        "decided_by": request.decided_by,
        "decided_at": request.decided_at,
        "reason": request.reason,
        "error": request.error,
        "correlation_id": request.correlation_id,
        "created_at": request.created_at,
        "updated_at": request.updated_at,
    }


def _to_request(row: sa.Row[Any]) -> Request:
    return Request(
        id=row.id,
        kind=row.kind,
        args=row.args,
        requester_id=row.requester_id,
        requester_email=row.requester_email,
        plan=Plan.from_json(row.plan),
        created_at=row.created_at,
        state=RequestState(row.state),
        version=row.version,
        plan_digest=row.plan_digest,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        reason=row.reason,
        error=row.error,
        correlation_id=row.correlation_id,
        updated_at=row.updated_at,
    )


class _Tx:
    """The connection of the enclosing unit of work, shared by its repositories."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn


# -- repositories ---------------------------------------------------------------------------------


class SqlRequestRepository:
    """``handlers.ports.RequestRepository`` over the ``requests`` and ``idempotency_keys`` tables."""

    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    def add(self, request: Request, idempotency_key: str | None = None) -> Request:
        conn = self._tx.conn
        try:
            # A SAVEPOINT, so a duplicate key undoes only this insert and the caller's transaction
            # (with whatever it wrote before) stays usable.
            with conn.begin_nested():
                conn.execute(sa.insert(requests).values(id=request.id, **_request_values(request)))
                if idempotency_key is not None:
                    conn.execute(
                        sa.insert(idempotency_keys).values(key=idempotency_key, request_id=request.id)
                    )
        except IntegrityError:
            if idempotency_key is not None:
                # On PostgreSQL a concurrent insert of the same key waits for the other transaction
                # and then fails; the stored request is visible to this next statement.
                stored = self.find_by_key(idempotency_key)
                if stored is not None:
                    return stored
            raise
        return request

    def find_by_key(self, idempotency_key: str) -> Request | None:
        row = self._tx.conn.execute(
            sa.select(requests)
            .join(idempotency_keys, idempotency_keys.c.request_id == requests.c.id)
            .where(idempotency_keys.c.key == idempotency_key)
        ).first()
        return None if row is None else _to_request(row)

    def get(self, request_id: str) -> Request:
        row = self._tx.conn.execute(sa.select(requests).where(requests.c.id == request_id)).first()
        if row is None:
            raise errors.NotFound(f"There is no request {request_id}.")
        return _to_request(row)

    def save(self, request: Request, expected_version: int) -> None:
        values = _request_values(request)
        del values["created_at"]  # immutable once written
        result = self._tx.conn.execute(
            sa.update(requests)
            .where(requests.c.id == request.id, requests.c.version == expected_version)
            .values(**values)
        )
        if result.rowcount == 0:
            self.get(request.id)  # NotFound when it does not exist at all
            raise errors.StaleVersion(f"{request.id} was changed by someone else; reload it.")

    def set_card(self, request_id: str, channel: str, ts: str) -> None:
        result = self._tx.conn.execute(
            sa.update(requests).where(requests.c.id == request_id).values(card_channel=channel, card_ts=ts)
        )
        if result.rowcount == 0:
            raise errors.NotFound(f"There is no request {request_id}.")

    def card(self, request_id: str) -> tuple[str, str] | None:
        row = self._tx.conn.execute(
            sa.select(requests.c.card_channel, requests.c.card_ts).where(requests.c.id == request_id)
        ).first()
        if row is None or row.card_channel is None or row.card_ts is None:
            return None
        return (row.card_channel, row.card_ts)

    # Last, so that ``list`` below does not shadow the builtin in the annotations above.
    def list(
        self,
        *,
        requester_id: str | None = None,
        states: Sequence[RequestState] | None = None,
        kind: str | None = None,
        limit: int = 50,
    ) -> list[Request]:
        query = sa.select(requests)
        if requester_id is not None:
            query = query.where(requests.c.requester_id == requester_id)
        if states is not None:
            query = query.where(requests.c.state.in_([RequestState(s).value for s in states]))
        if kind is not None:
            query = query.where(requests.c.kind == kind)
        query = query.order_by(requests.c.created_at.desc(), requests.c.id.desc()).limit(limit)
        return [_to_request(row) for row in self._tx.conn.execute(query)]


class SqlDecisionKeys:
    """``handlers.ports.DecisionKeys``: the primary key is the guard against a second decision."""

    def __init__(self, tx: _Tx, now: Callable[[], datetime]) -> None:
        self._tx = tx
        self._now = now

    def claim(self, key: str, request_id: str) -> bool:
        conn = self._tx.conn
        try:
            with conn.begin_nested():  # SAVEPOINT: a duplicate must not poison the caller's transaction
                conn.execute(
                    sa.insert(decision_keys).values(key=key, request_id=request_id, created_at=self._now())
                )
        except IntegrityError:
            return False
        return True


class SqlTimers:
    """``handlers.ports.Timers``: one pending row per (kind, ref), enforced by a partial unique index."""

    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    def schedule(self, kind: str, ref: str, due_at: datetime, payload: dict[str, JSON] | None = None) -> None:
        body = dict(payload or {})
        # Moving a pending timer also releases any claim on it: a handler that reschedules the
        # timer it is running (a nudge) keeps the moved row, because finish_timer then no longer
        # finds its claim and leaves the row pending.
        _upsert(
            self._tx.conn,
            timers,
            {"kind": kind, "ref": ref, "due_at": due_at, "payload": body, "attempts": 0},
            conflict=["kind", "ref"],
            update={"due_at": due_at, "payload": body, "claimed_by": None, "lease_until": None,
                    "attempts": 0, "last_error": None},
            where=timers.c.done_at.is_(None),
        )

    def pending_payload(self, kind: str, ref: str) -> dict[str, JSON] | None:
        """The payload of the pending timer (kind, ref), or None when there is none."""
        row = self._tx.conn.execute(
            sa.select(timers.c.payload).where(timers.c.kind == kind, timers.c.ref == ref,
                                              timers.c.done_at.is_(None))
        ).first()
        return None if row is None else dict(row.payload)

    def cancel(self, kind: str, ref: str) -> None:
        # Delete rather than mark done: a cancelled timer never fired, and the audit log (not this
        # table) is the history.
        self._tx.conn.execute(
            sa.delete(timers).where(timers.c.kind == kind, timers.c.ref == ref, timers.c.done_at.is_(None))
        )


class SqlWork:
    """What the step engine and the timer sweeper need: leases, step outcomes, due timers."""

    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    # -- requests -----------------------------------------------------------------------------
    def claim_request(
        self,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        states: Collection[RequestState] = WORK_STATES,
    ) -> Request | None:
        """Claim the oldest request in ``states`` whose lease is free, expired or already ours.

        An unclaimed row with a ``lease_until`` is a *deferred* request (``defer``): it waits for
        that time (its ``retry_at``) before anyone may take it."""
        conn = self._tx.conn
        row = conn.execute(
            sa.select(requests)
            .where(
                requests.c.state.in_([RequestState(s).value for s in states]),
                sa.or_(
                    requests.c.lease_until.is_(None),
                    sa.and_(requests.c.claimed_by.is_(None), requests.c.lease_until <= now),
                    requests.c.lease_until < now,
                    requests.c.claimed_by == worker_id,
                ),
            )
            .order_by(requests.c.created_at, requests.c.id)
            .limit(1)
            # SKIP LOCKED: a row another worker is claiming right now is simply not a candidate
            # (rendered only on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises claims).
            .with_for_update(skip_locked=True)
        ).first()
        if row is None:
            return None
        # attempts counts take-ups by a worker, not a worker's renewals of its own claim.
        attempts = row.attempts if row.claimed_by == worker_id else row.attempts + 1
        conn.execute(
            sa.update(requests)
            .where(requests.c.id == row.id)
            .values(claimed_by=worker_id, lease_until=lease_until, attempts=attempts)
        )
        return _to_request(row)

    def renew(self, request_id: str, worker_id: str, now: datetime, lease_until: datetime) -> bool:
        """Extend the lease; False when it is no longer ours or already expired."""
        result = self._tx.conn.execute(
            sa.update(requests)
            .where(requests.c.id == request_id, requests.c.claimed_by == worker_id,
                   requests.c.lease_until >= now)
            .values(lease_until=lease_until)
        )
        return result.rowcount == 1

    def release(self, request_id: str, worker_id: str) -> None:
        self._tx.conn.execute(
            sa.update(requests)
            .where(requests.c.id == request_id, requests.c.claimed_by == worker_id)
            .values(claimed_by=None, lease_until=None)
        )

    def defer(self, request_id: str, worker_id: str, now: datetime, retry_at: datetime) -> None:
        """Give up our claim but keep the request unclaimable until ``retry_at`` (a step waits:
        throttling, a rollout, a namespace not there yet), so the worker takes other work
        meanwhile. ``LeaseLost`` (and nothing written) if the claim is no longer ours."""
        self._check_claim(request_id, worker_id, now)
        self._tx.conn.execute(
            sa.update(requests)
            .where(requests.c.id == request_id, requests.c.claimed_by == worker_id)
            .values(claimed_by=None, lease_until=retry_at)
        )

    def claim_of(self, request_id: str) -> tuple[str | None, datetime | None]:
        """``(claimed_by, lease_until)`` of a request: who holds it until when, or, unclaimed with
        a time, when a deferred request may be taken again."""
        row = self._tx.conn.execute(
            sa.select(requests.c.claimed_by, requests.c.lease_until).where(requests.c.id == request_id)
        ).first()
        if row is None:
            raise errors.NotFound(f"There is no request {request_id}.")
        return row.claimed_by, row.lease_until

    def _check_claim(self, request_id: str, worker_id: str, now: datetime) -> None:
        # FOR UPDATE: while this transaction runs, no other worker can claim the row (its SKIP
        # LOCKED select passes it by), so the check stays true until our write commits.
        row = self._tx.conn.execute(
            sa.select(requests.c.claimed_by, requests.c.lease_until)
            .where(requests.c.id == request_id)
            .with_for_update()
        ).first()
        if row is None:
            raise errors.NotFound(f"There is no request {request_id}.")
        if row.claimed_by != worker_id or row.lease_until is None or row.lease_until < now:
            raise LeaseLost(f"{request_id} is no longer claimed by {worker_id}; another worker owns it now.")

    def save_claimed(self, request: Request, expected_version: int, worker_id: str, now: datetime) -> None:
        """``save`` that also requires our live claim; ``LeaseLost`` (and nothing written) if not."""
        self._check_claim(request.id, worker_id, now)
        SqlRequestRepository(self._tx).save(request, expected_version)

    # -- steps --------------------------------------------------------------------------------
    def steps(self, request_id: str) -> list[StepRecord]:
        rows = self._tx.conn.execute(
            sa.select(step_outcomes)
            .where(step_outcomes.c.request_id == request_id)
            .order_by(step_outcomes.c.idx)
        )
        return [
            StepRecord(
                idx=row.idx,
                key=row.key,
                action=row.action,
                status=StepStatus(row.status),
                outcome=None if row.outcome is None else StepOutcome.from_json(row.outcome),
                error=row.error,
                attempts=row.attempts,
                started_at=row.started_at,
                first_failure_at=row.first_failure_at,
            )
            for row in rows
        ]

    def record_step(
        self,
        request_id: str,
        worker_id: str,
        now: datetime,
        idx: int,
        key: str,
        action: str,
        status: StepStatus,
        outcome: StepOutcome | None = None,
        error: str | None = None,
        attempts: int = 1,
        first_failure_at: datetime | None = None,
    ) -> None:
        """Insert or overwrite step ``idx`` (``started_at`` keeps its first value), only while the
        claim is ours: a stale worker gets ``LeaseLost`` and records nothing."""
        self._check_claim(request_id, worker_id, now)
        values = {
            "key": key,
            "action": action,
            "status": StepStatus(status).value,
            "outcome": None if outcome is None else outcome.to_json(),
            "error": error,
            "attempts": attempts,
            "updated_at": now,
            "first_failure_at": first_failure_at,
        }
        _upsert(
            self._tx.conn,
            step_outcomes,
            {"request_id": request_id, "idx": idx, "started_at": now, **values},
            conflict=["request_id", "idx"],
            update=values,
        )

    # -- timers -------------------------------------------------------------------------------
    def claim_timers(self, worker_id: str, now: datetime, lease_until: datetime,
                     limit: int = 50) -> list[TimerRow]:
        """Claim up to ``limit`` due, unfinished timers whose lease is free (oldest due first)."""
        conn = self._tx.conn
        ids = list(
            conn.execute(
                sa.select(timers.c.id)
                .where(
                    timers.c.due_at <= now,
                    timers.c.done_at.is_(None),
                    sa.or_(timers.c.claimed_by.is_(None), timers.c.lease_until.is_(None),
                           timers.c.lease_until < now),
                )
                .order_by(timers.c.due_at, timers.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if not ids:
            return []
        conn.execute(
            sa.update(timers)
            .where(timers.c.id.in_(ids))
            .values(claimed_by=worker_id, lease_until=lease_until, attempts=timers.c.attempts + 1)
        )
        rows = conn.execute(
            sa.select(timers).where(timers.c.id.in_(ids)).order_by(timers.c.due_at, timers.c.id)
        )
        return [
            TimerRow(id=r.id, kind=r.kind, ref=r.ref, due_at=r.due_at, payload=dict(r.payload),
                     attempts=r.attempts, last_error=r.last_error)
            for r in rows
        ]

    def finish_timer(self, timer_id: int, worker_id: str, now: datetime) -> bool:
        """Mark the timer done if we still hold it; False when it was moved, cancelled or taken over."""
        result = self._tx.conn.execute(
            sa.update(timers)
            .where(timers.c.id == timer_id, timers.c.claimed_by == worker_id, timers.c.done_at.is_(None))
            .values(done_at=now, lease_until=None)
        )
        return result.rowcount == 1

    def fail_timer(self, timer_id: int, worker_id: str, error: str, retry_at: datetime) -> bool:
        """Release the timer with its error, due again at ``retry_at``."""
        result = self._tx.conn.execute(
            sa.update(timers)
            .where(timers.c.id == timer_id, timers.c.claimed_by == worker_id, timers.c.done_at.is_(None))
            .values(last_error=error, due_at=retry_at, claimed_by=None, lease_until=None)
        )
        return result.rowcount == 1


class SqlRegistry:
    """What the bot has made: workspaces (with the objects it created), grants and tokens.

    These rows back ``handlers.ports.Facts`` and tell delete and expiry what the bot may remove.
    Rows come back as frozen records (``provisioning.records``): ``WorkspaceRecord`` (whose
    ``created`` maps step key -> ``{"action", "params"}`` of each object the bot created),
    ``GrantRecord`` and ``TokenRecord``.

    Deleted workspaces and revoked tokens are kept (history) but left out of lookups unless asked.
    """

    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    # -- workspaces ---------------------------------------------------------------------------
    def put_workspace(
        self, name: str, namespace: str, owner: str, request_id: str | None, created: Mapping[str, JSON],
        at: datetime,
    ) -> None:
        values = {"namespace": namespace, "owner": owner, "request_id": request_id, "created": dict(created),
                  "created_at": at, "deleted_at": None}
        _upsert(self._tx.conn, workspaces, {"name": name, **values}, conflict=["name"], update=values)

    def get_workspace(self, name: str, *, include_deleted: bool = False) -> WorkspaceRecord | None:
        query = sa.select(workspaces).where(workspaces.c.name == name)
        if not include_deleted:
            query = query.where(workspaces.c.deleted_at.is_(None))
        row = self._tx.conn.execute(query).first()
        return None if row is None else _workspace(row)

    def list_workspaces(self, owner: str | None = None) -> list[WorkspaceRecord]:
        query = sa.select(workspaces).where(workspaces.c.deleted_at.is_(None)).order_by(workspaces.c.name)
        if owner is not None:
            query = query.where(workspaces.c.owner == owner)
        return [_workspace(row) for row in self._tx.conn.execute(query)]

    def mark_workspace_deleted(self, name: str, at: datetime) -> bool:
        result = self._tx.conn.execute(
            sa.update(workspaces)
            .where(workspaces.c.name == name, workspaces.c.deleted_at.is_(None))
            .values(deleted_at=at)
        )
        return result.rowcount == 1

    # -- grants -------------------------------------------------------------------------------
    def put_grant(
        self, workspace: str, user: str, role: str, request_id: str | None, expires_at: datetime | None,
        at: datetime,
    ) -> None:
        values = {"role": role, "request_id": request_id, "expires_at": expires_at, "created_at": at}
        _upsert(self._tx.conn, grants, {"workspace": workspace, "user": user, **values},
                conflict=["workspace", "user"], update=values)

    def delete_grant(self, workspace: str, user: str) -> bool:
        result = self._tx.conn.execute(
            sa.delete(grants).where(grants.c.workspace == workspace, grants.c.user == user)
        )
        return result.rowcount == 1

    def grants(self, workspace: str) -> list[GrantRecord]:
        rows = self._tx.conn.execute(
            sa.select(grants).where(grants.c.workspace == workspace).order_by(grants.c.user)
        )
        return [_grant(row) for row in rows]

    def grants_of(self, user: str) -> list[GrantRecord]:
        rows = self._tx.conn.execute(
            sa.select(grants).where(grants.c.user == user).order_by(grants.c.workspace)
        )
        return [_grant(row) for row in rows]

    # -- tokens -------------------------------------------------------------------------------
    def put_token(
        self, token_id: str, requester_id: str, workspace: str, namespace: str, account: str, role: str,
        audiences: Sequence[str], expires_at: datetime, at: datetime,
    ) -> None:
        values = {"requester_id": requester_id, "workspace": workspace, "namespace": namespace,
                  "account": account, "role": role, "audiences": list(audiences), "expires_at": expires_at,
                  "created_at": at, "revoked_at": None}
        # An upsert, so recording the same issued token again (a resumed request) is harmless.
        _upsert(self._tx.conn, tokens, {"token_id": token_id, **values}, conflict=["token_id"], update=values)

    def revoke_token(self, token_id: str, at: datetime) -> bool:
        result = self._tx.conn.execute(
            sa.update(tokens)
            .where(tokens.c.token_id == token_id, tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return result.rowcount == 1

    def revoke_tokens_in(self, workspace: str, at: datetime) -> int:
        result = self._tx.conn.execute(
            sa.update(tokens)
            .where(tokens.c.workspace == workspace, tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return int(result.rowcount)

    def tokens_in(self, workspace: str) -> list[TokenRecord]:
        """Active tokens of a workspace with their holder's email (from the request that made them)."""
        query = (
            sa.select(tokens, requests.c.requester_email)
            .join(requests, requests.c.id == tokens.c.token_id)
            .where(tokens.c.workspace == workspace, tokens.c.revoked_at.is_(None))
            .order_by(tokens.c.created_at, tokens.c.token_id)
        )
        return [_token(row, holder=row.requester_email) for row in self._tx.conn.execute(query)]

    def token(self, token_id: str) -> TokenRecord | None:
        row = self._tx.conn.execute(sa.select(tokens).where(tokens.c.token_id == token_id)).first()
        return None if row is None else _token(row)

    def tokens_of(self, requester_id: str, *, include_revoked: bool = False) -> list[TokenRecord]:
        query = sa.select(tokens).where(tokens.c.requester_id == requester_id)
        if not include_revoked:
            query = query.where(tokens.c.revoked_at.is_(None))
        rows = self._tx.conn.execute(query.order_by(tokens.c.created_at, tokens.c.token_id))
        return [_token(row) for row in rows]


def _workspace(row: sa.Row[Any]) -> WorkspaceRecord:
    return WorkspaceRecord(name=row.name, namespace=row.namespace, owner=row.owner, request_id=row.request_id,
                           created=dict(row.created), created_at=row.created_at, deleted_at=row.deleted_at)


def _grant(row: sa.Row[Any]) -> GrantRecord:
    return GrantRecord(workspace=row.workspace, user=row.user, role=row.role, request_id=row.request_id,
                       expires_at=row.expires_at, created_at=row.created_at)


def _token(row: sa.Row[Any], holder: str | None = None) -> TokenRecord:
    return TokenRecord(token_id=row.token_id, requester_id=row.requester_id, workspace=row.workspace,
                       namespace=row.namespace, account=row.account, role=row.role,
                       audiences=tuple(row.audiences), expires_at=row.expires_at, created_at=row.created_at,
                       revoked_at=row.revoked_at, holder=holder)


# -- unit of work ---------------------------------------------------------------------------------


class SqlUnitOfWork:
    """``handlers.ports.UnitOfWork``: one transaction on one connection.

    ``commit()`` may be called more than once (the core commits, then records where the Slack
    card went and commits again): each commit ends the current transaction and the next
    statement begins a new one. Leaving the ``with`` block rolls back whatever was not committed.
    """

    requests: RequestRepository
    decisions: DecisionKeys
    audit: AuditLog
    timers: Timers
    work: SqlWork
    registry: SqlRegistry

    def __init__(self, engine: Engine, audit_key: bytes, now: Callable[[], datetime], *,
                 read_only: bool = False, writers: threading.local | None = None) -> None:
        self._engine = engine
        self._audit_key = audit_key
        self._now = now
        self._read_only = read_only
        self._writers = writers if writers is not None else threading.local()
        self._holds_write_lock = False
        self._conn: Connection | None = None

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the unit of work is not open; use it in a `with` block")
        return self._conn

    def __enter__(self) -> SqlUnitOfWork:
        if self._conn is not None:
            raise RuntimeError("a unit of work cannot be entered twice")
        # audit.py builds on the tables above, so it imports this module; importing it here rather
        # than at the top keeps the module graph acyclic.
        from provisioning.audit import SqlAuditLog  # noqa: PLC0415

        conn = self._engine.connect()
        # On SQLite a unit of work opened while this thread already holds the write lock (facts
        # read inside a decision) would wait for itself until the busy timeout: it becomes a
        # DEFERRED reader instead, which WAL lets read beside the writer.
        nested = getattr(self._writers, "depth", 0) > 0
        if self._read_only or nested:
            conn = conn.execution_options(kfbot_sqlite_begin="DEFERRED")
        elif conn.dialect.name == "sqlite":
            self._writers.depth = getattr(self._writers, "depth", 0) + 1
            self._holds_write_lock = True
        self._conn = conn
        tx = _Tx(conn)
        self.requests = SqlRequestRepository(tx)
        self.decisions = SqlDecisionKeys(tx, self._now)
        self.audit = SqlAuditLog(conn, self._audit_key)
        self.timers = SqlTimers(tx)
        self.work = SqlWork(tx)
        self.registry = SqlRegistry(tx)
        return self

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if self._holds_write_lock:
            self._writers.depth -= 1
            self._holds_write_lock = False
        if conn is not None:
            try:
                conn.rollback()
            finally:
                conn.close()

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        self.connection.rollback()


if TYPE_CHECKING:

    def _conforms(uow: SqlUnitOfWork) -> UnitOfWork:  # mypy proves SqlUnitOfWork satisfies the port
        return uow


# -- database -------------------------------------------------------------------------------------

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (which would not BEGIN before a
    # SELECT or a SAVEPOINT); _sqlite_on_begin emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")  # writers queue, not fail
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite
    finally:
        cursor.close()


def _create_private_file(database: str | None) -> None:
    """Create an absent SQLite file as 0600 before SQLite does (0644 under the usual umask): it holds
    requests, plans and the audit trail. SQLite gives its -wal and -shm files the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except (FileExistsError, FileNotFoundError):  # kept as it is; a missing folder is SQLite's to report
        return


def _sqlite_on_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so read-then-write units of work are serialised
    # (see the module docstring); read-only units of work ask for DEFERRED.
    mode = conn.get_execution_options().get("kfbot_sqlite_begin", "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")


def _lock_key(prefix: str, key: str) -> sa.ColumnElement[Any]:
    # Advisory locks are per database, not per schema: the schema in the key keeps two
    # deployments (or two test runs) that share a database out of each other's way.
    text = sa.literal(f"kfbot:{prefix}:") + sa.func.current_schema() + sa.literal(f":{key}")
    return sa.func.hashtextextended(text, 0)


class Database:
    """One database: its lazily created engine, migrations, and units of work.

    Args:
        url: ``sqlite:///./kfbot.db`` or ``postgresql+psycopg://user@host/db``.
        audit_key: the HMAC key of the audit chain (kept outside the database).
        now: clock for the few timestamps the store makes itself (decision keys).
    """

    def __init__(self, url: str, *, audit_key: bytes, now: Callable[[], datetime] | None = None) -> None:
        self.url = make_url(url)
        backend = self.url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise errors.KfError(f"Unsupported database `{backend}`: use sqlite:/// or postgresql+psycopg://.")
        self.audit_key = audit_key
        self._now = now or (lambda: datetime.now(UTC))
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._local_locks: dict[str, threading.Lock] = {}
        self._local_locks_guard = threading.Lock()
        self._sqlite_writers = threading.local()  # per thread: read-write units of work open now

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def is_postgres(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> Engine:
        if not self.is_postgres:
            _create_private_file(self.url.database)
            # A normal (queue) pool of file connections, shared across threads.
            engine = sa.create_engine(self.url, connect_args={"check_same_thread": False,
                                                              "timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        # pre_ping: a connection the server dropped while pooled is replaced, not handed out.
        return sa.create_engine(self.url, pool_pre_ping=True)

    def dispose(self) -> None:
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def uow(self, *, read_only: bool = False) -> SqlUnitOfWork:
        """A unit of work. ``read_only`` only changes SQLite's BEGIN (DEFERRED: never waits for
        or blocks a writer); use it for reads nested inside another unit of work."""
        return SqlUnitOfWork(self.engine, self.audit_key, self._now, read_only=read_only,
                             writers=self._sqlite_writers)

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """A connection for reads (verify, export) that never takes SQLite's write lock."""
        with self.engine.connect() as conn:
            yield conn.execution_options(kfbot_sqlite_begin="DEFERRED")

    # -- migrations ---------------------------------------------------------------------------
    def _alembic_config(self, connection: Connection | None = None) -> Any:
        from alembic.config import Config  # noqa: PLC0415 - alembic is only needed to migrate

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS_DIR))
        config.set_main_option("path_separator", "os")
        # ConfigParser interpolates '%': an escaped password must survive it.
        config.set_main_option("sqlalchemy.url",
                               self.url.render_as_string(hide_password=False).replace("%", "%%"))
        if connection is not None:
            config.attributes["connection"] = connection
        return config

    def _run_alembic(self, command_name: str, revision: str) -> None:
        from alembic import command  # noqa: PLC0415

        with self.engine.begin() as conn:
            if self.is_postgres:
                # Two replicas starting at once must not both run the same migration.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key("migrate", "schema"))))
            getattr(command, command_name)(self._alembic_config(conn), revision)

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision (``kfbot migrate``)."""
        self._run_alembic("upgrade", "head")

    def downgrade(self, revision: str) -> None:
        self._run_alembic("downgrade", revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        with self.reader() as conn:
            revision: str | None = MigrationContext.configure(conn).get_current_revision()
            return revision

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory  # noqa: PLC0415

        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        if head is None:  # pragma: no cover - the package always ships revisions
            raise RuntimeError("no migrations found")
        return str(head)

    def check_migrated(self) -> None:
        """Raise ``KfError`` unless the schema is at the newest revision (``serve`` refuses to start)."""
        current, head = self.current_revision(), self.head_revision()
        if current == head:
            return
        where = self.url.render_as_string(hide_password=True)
        if current is None:
            raise errors.KfError(f"The database {where} has no kfbot tables yet: run `kfbot migrate`.")
        raise errors.KfError(
            f"The database {where} is at schema revision {current}, this kfbot needs {head}: "
            "run `kfbot migrate` (or, if the database is newer, upgrade kfbot)."
        )

    # -- process-local locks (SQLite) ---------------------------------------------------------
    def _local_lock(self, key: str) -> threading.Lock:
        with self._local_locks_guard:
            return self._local_locks.setdefault(key, threading.Lock())


# -- locks and leadership -------------------------------------------------------------------------

_LOCK_NOT_AVAILABLE = "55P03"


class DbLock:
    """``provisioning.actions.KeyedLock`` backed by the database.

    PostgreSQL: a session advisory lock on a dedicated connection, so workers in different
    processes serialise read-modify-write on one remote object (an IAM policy). SQLite: one
    ``threading.Lock`` per key in this process; a SQLite deployment is a single process, so that
    is the same guarantee. Waiting longer than ``timeout`` raises ``TemporaryError`` (the engine
    retries the step later).
    """

    def __init__(self, database: Database, *, timeout: float = 60.0) -> None:
        self._db = database
        self._timeout = timeout

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        if not self._db.is_postgres:
            lock = self._db._local_lock(key)
            if not lock.acquire(timeout=self._timeout):
                raise errors.TemporaryError(f"Another worker is still changing {key}; trying again.")
            try:
                yield
            finally:
                lock.release()
            return
        with self._db.engine.connect() as conn:
            try:
                # SET LOCAL bounds only this wait; the session lock outlives the commit below, so
                # the connection does not sit idle in a transaction while the caller works.
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(self._timeout * 1000)}")
                conn.execute(sa.select(sa.func.pg_advisory_lock(_lock_key("lock", key))))
                conn.commit()
            except OperationalError as exc:
                conn.rollback()
                if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                    raise errors.TemporaryError(
                        f"Another worker is still changing {key}; trying again.") from exc
                raise
            try:
                yield
            finally:
                try:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(_lock_key("lock", key))))
                    conn.commit()
                except DBAPIError:
                    # The session is broken, which ends it and its locks; make sure the pool does
                    # not hand the connection out again.
                    conn.invalidate()


class LeaderElection:
    """Which process runs the timer sweeper.

    PostgreSQL: ``pg_try_advisory_lock`` taken on a dedicated connection and held for as long as
    leadership lasts; if that connection dies the server drops the lock and another process can
    take over, which ``still_leader()`` notices by pinging the connection. SQLite: the single
    process is always the leader.
    """

    def __init__(self, database: Database, name: str) -> None:
        self._db = database
        self._name = name
        self._conn: Connection | None = None
        self._leader = False
        self._mutex = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leader

    def try_acquire(self) -> bool:
        with self._mutex:
            if not self._db.is_postgres:
                self._leader = True
                return True
            if self._conn is not None and self._ping():
                return True
            conn = self._db.engine.connect()
            try:
                query = sa.select(sa.func.pg_try_advisory_lock(_lock_key("leader", self._name)))
                got = bool(conn.execute(query).scalar_one())
                conn.commit()  # the session lock stays; no transaction stays open
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn, self._leader = conn, True
            return True

    def still_leader(self) -> bool:
        with self._mutex:
            if not self._db.is_postgres:
                return self._leader
            return self._conn is not None and self._ping()

    def _ping(self) -> bool:
        conn = self._conn
        assert conn is not None
        try:
            conn.exec_driver_sql("SELECT 1")
            conn.commit()
        except DBAPIError:
            conn.invalidate()
            conn.close()
            self._conn, self._leader = None, False
            return False
        return True

    def release(self) -> None:
        with self._mutex:
            conn, self._conn, self._leader = self._conn, None, False
            if conn is None:
                return
            try:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(_lock_key("leader", self._name))))
                conn.commit()
            except DBAPIError:
                conn.invalidate()
            finally:
                conn.close()
