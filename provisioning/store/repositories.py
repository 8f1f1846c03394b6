"""Repositories over one unit of work's connection: requests and their keys, timers, the step
engine's leases and outcomes, and the registry of what the bot made.

Leases for work: a worker claims a request or a timer by setting ``claimed_by`` and
``lease_until`` in a short transaction; on PostgreSQL the candidate row is picked with ``SELECT …
FOR UPDATE SKIP LOCKED`` so two workers never wait on, or both take, the same row. Every write a
worker makes afterwards (``save_claimed``, ``record_step``) first re-reads the claim under a row
lock in the same transaction, so a worker whose lease expired (and was taken over) writes nothing
and gets ``LeaseLost``.

Optimistic versions for decisions: ``save`` is ``UPDATE … WHERE id = :id AND version =
:expected``; a zero rowcount means another writer won (``StaleVersion``). On PostgreSQL the second
UPDATE waits for the first one's row lock and then re-checks the version, so of two admins
approving at once exactly one succeeds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from handlers import errors
from handlers.model import OPEN_STATES, SYSTEM, WORK_STATES, Request, RequestState
from handlers.offboard import Person
from handlers.plan import JSON, Plan, StepOutcome, StepStatus
from provisioning.records import GrantRecord, TokenRecord, WorkspaceRecord
from provisioning.store.schema import (
    decision_keys,
    gpu_holds,
    grants,
    idempotency_keys,
    requests,
    step_outcomes,
    thread_messages,
    timers,
    tokens,
    workspaces,
)


def lock_key(prefix: str, key: str) -> sa.ColumnElement[Any]:
    # Advisory locks are per database, not per schema: the schema in the key keeps two
    # deployments (or two test runs) that share a database out of each other's way.
    text = sa.literal(f"kfbot:{prefix}:") + sa.func.current_schema() + sa.literal(f":{key}")
    return sa.func.hashtextextended(text, 0)


class LeaseLost(errors.StaleVersion):
    """The worker's claim on a request expired or was taken over; it must stop and write nothing."""


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


def _slots(request: Request) -> dict[str, bool]:
    """The subject slots a new request takes (``schema.uq_requests_subject_*``): a person's open
    request the open slot, any request inserted in a work state the work slot."""
    subject = request.subject is not None
    return {
        "holds_open": subject and request.requester_id != SYSTEM.user_id and request.state in OPEN_STATES,
        "holds_work": subject and request.state in WORK_STATES,
    }


def _request_values(request: Request) -> dict[str, Any]:
    return {
        "kind": request.kind,
        "args": dict(request.args),
        "subject": request.subject,
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
        subject=row.subject,
    )


_CLAIM_TRIES = 3
"""Candidates one claim looks at before giving up until the next wake-up or poll (a candidate is
passed over only when another worker claimed a request of its subject in the meantime)."""
_STARTED = (RequestState.APPLYING.value, RequestState.COMPENSATING.value)


def _in_progress(t: sa.FromClause, now: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """A request of ``t`` has started work: applying or compensating (also while deferred), or
    held by a live claim (a worker is about to begin it)."""
    return sa.or_(
        t.c.state.in_(_STARTED),
        sa.and_(t.c.claimed_by.is_not(None), t.c.lease_until >= now),
    )


def _queued_behind(r: sa.Table, now: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """Whether request ``r`` waits behind another request of its subject in a work state.

    Requests about one subject (a workspace, a grant) never run at once: the submission rules keep
    most pairs apart, but not all (an expiry filed while a person's request waits for an admin, a
    ``/kf retry`` of an old request), and a deferred step hands its worker other work. So each
    subject has a queue: requests that started (``_in_progress``) go first, then the oldest. Only
    its head may be claimed; ``claim_request`` re-checks this under a per-subject lock."""
    other = r.alias("queued_ahead")
    mine, theirs = _in_progress(r, now), _in_progress(other, now)
    older = sa.or_(
        other.c.created_at < r.c.created_at,
        sa.and_(other.c.created_at == r.c.created_at, other.c.id < r.c.id),
    )
    return sa.exists().where(
        other.c.subject == r.c.subject,
        other.c.id != r.c.id,
        other.c.state.in_([s.value for s in WORK_STATES]),
        sa.or_(sa.and_(theirs, sa.not_(mine)), sa.and_(theirs == mine, older)),
    )


@functools.cache
def _claim_statements(states: frozenset[str]) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """``claim_request``'s two queries, built once (bound parameters ``now``, ``worker_id``,
    ``passed_over``, ``id``): building them per claim cost more CPU than running them (profiled
    with bench.run --profile), and every idle worker's wake-up is a claim."""
    r = requests
    now = sa.bindparam("now", type_=r.c.lease_until.type)
    worker_id = sa.bindparam("worker_id", type_=sa.String())
    find = (
        sa.select(r)
        .where(
            r.c.state.in_(sorted(states)),
            sa.or_(
                r.c.lease_until.is_(None),
                sa.and_(r.c.claimed_by.is_(None), r.c.lease_until <= now),
                r.c.lease_until < now,
                r.c.claimed_by == worker_id,
            ),
            sa.not_(_queued_behind(r, now)),
            r.c.id.not_in(sa.bindparam("passed_over", expanding=True)),
        )
        .order_by(r.c.created_at, r.c.id)
        .limit(1)
        # SKIP LOCKED: a row another worker is claiming right now is simply not a candidate
        # (rendered only on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises claims).
        # OF requests: the subquery's rows are read, not locked.
        .with_for_update(skip_locked=True, of=r)
    )
    recheck = sa.select(r.c.id).where(r.c.id == sa.bindparam("id"), _queued_behind(r, now))
    return find, recheck


class Tx:
    """The connection of the enclosing unit of work, shared by its repositories.

    ``wake`` is set by a write that makes work claimable (a request approved, auto-approved or
    retried; a finished request another one of its subject may queue behind): the unit of work
    then wakes the step engine when it commits (``provisioning.store.wakeup``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.wake = False


# -- repositories ---------------------------------------------------------------------------------


class SqlRequestRepository:
    """``handlers.ports.RequestRepository`` over the ``requests`` and ``idempotency_keys`` tables."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    def add(self, request: Request, idempotency_key: str | None = None) -> Request:
        conn = self._tx.conn
        try:
            # A SAVEPOINT, so a duplicate key undoes only this insert and the caller's transaction
            # (with whatever it wrote before) stays usable.
            with conn.begin_nested():
                conn.execute(
                    sa.insert(requests).values(id=request.id, **_request_values(request), **_slots(request))
                )
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
            holder = self._slot_holder(request)
            if holder is not None:
                # A concurrent submission about the same subject committed first (the unique index
                # made this INSERT wait for it); READ COMMITTED shows it to this next statement.
                raise errors.SubjectBusy(holder.id, holder.state.value, holder.requester_id) from None
            raise
        if request.state is RequestState.APPROVED:  # auto-approved: the engine may take it now
            self._tx.wake = True
        return request

    def _slot_holder(self, request: Request) -> Request | None:
        slots = [requests.c[name] for name, taken in _slots(request).items() if taken]
        if not slots:
            return None
        row = self._tx.conn.execute(
            sa.select(requests).where(requests.c.subject == request.subject, sa.or_(*slots))
        ).first()
        return None if row is None else _to_request(row)

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
        # Leaving the states that hold a subject slot gives it up; nothing takes one after the insert.
        if request.state not in OPEN_STATES:
            values["holds_open"] = False
        if request.state not in WORK_STATES:
            values["holds_work"] = False
        result = self._tx.conn.execute(
            sa.update(requests)
            .where(requests.c.id == request.id, requests.c.version == expected_version)
            .values(**values)
        )
        if result.rowcount == 0:
            self.get(request.id)  # NotFound when it does not exist at all
            raise errors.StaleVersion(f"{request.id} was changed by someone else; reload it.")
        # Only a decision (approve) or a retry writes APPROVED; the engine moves it on from there.
        if request.state is RequestState.APPROVED:
            self._tx.wake = True

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

    def thread_messages(self, request_id: str) -> dict[str, str]:
        rows = self._tx.conn.execute(
            sa.select(thread_messages.c.key, thread_messages.c.ts).where(
                thread_messages.c.request_id == request_id
            )
        )
        return {row.key: row.ts for row in rows}

    def set_thread_message(self, request_id: str, key: str, ts: str) -> None:
        # An upsert: a retry's new message for a step replaces the old one's ts.
        _upsert(
            self._tx.conn,
            thread_messages,
            {"request_id": request_id, "key": key, "ts": ts},
            conflict=["request_id", "key"],
            update={"ts": ts},
        )

    # Last, so that ``list`` below does not shadow the builtin in the annotations above.
    def list(
        self,
        *,
        requester_id: str | None = None,
        states: Sequence[RequestState] | None = None,
        kind: str | None = None,
        subject: str | None = None,
        limit: int | None = 50,
    ) -> list[Request]:
        query = sa.select(requests)
        if requester_id is not None:
            query = query.where(requests.c.requester_id == requester_id)
        if states is not None:
            query = query.where(requests.c.state.in_([RequestState(s).value for s in states]))
        if kind is not None:
            query = query.where(requests.c.kind == kind)
        if subject is not None:
            query = query.where(requests.c.subject == subject)
        query = query.order_by(requests.c.created_at.desc(), requests.c.id.desc()).limit(limit)
        return [_to_request(row) for row in self._tx.conn.execute(query)]


class SqlDecisionKeys:
    """``handlers.ports.DecisionKeys``: the primary key is the guard against a second decision."""

    def __init__(self, tx: Tx, now: Callable[[], datetime]) -> None:
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

    def __init__(self, tx: Tx) -> None:
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

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    # -- requests -----------------------------------------------------------------------------
    def claim_request(
        self,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        states: Collection[RequestState] = WORK_STATES,
    ) -> Request | None:
        """Claim the oldest request in ``states`` whose lease is free, expired or already ours, and
        which is first in its subject's queue (``_queued_behind``).

        An unclaimed row with a ``lease_until`` is a *deferred* request (``defer``): it waits for
        that time (its ``retry_at``) before anyone may take it."""
        conn = self._tx.conn
        r = requests
        find, recheck = _claim_statements(frozenset(RequestState(s).value for s in states))
        passed_over: list[str] = []
        for _ in range(_CLAIM_TRIES):
            row = conn.execute(find, {"now": now, "worker_id": worker_id, "passed_over": passed_over}).first()
            if row is None:
                return None
            if row.subject is not None and conn.dialect.name == "postgresql":
                # The subject rule above read a snapshot: another worker may have claimed a request
                # of this subject since, uncommitted then. Claims of one subject take this lock
                # for the rest of their transaction, and the rule is checked again once it is ours
                # (READ COMMITTED: this next statement sees what the lock's last holder committed).
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key("subject", row.subject))))
                if conn.execute(recheck, {"now": now, "id": row.id}).first() is not None:
                    passed_over.append(row.id)
                    continue
            break
        else:
            return None
        # attempts counts take-ups by a worker, not a worker's renewals of its own claim.
        attempts = row.attempts if row.claimed_by == worker_id else row.attempts + 1
        conn.execute(
            sa.update(r)
            .where(r.c.id == row.id)
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

    def release(self, request_id: str, worker_id: str, *, wake: bool = False) -> None:
        """Give the claim back; ``wake``: the request is done with its subject, so a request
        queued behind it (``claim_request``) can be taken at once, here or by another replica."""
        self._tx.conn.execute(
            sa.update(requests)
            .where(requests.c.id == request_id, requests.c.claimed_by == worker_id)
            .values(claimed_by=None, lease_until=None)
        )
        if wake:
            self._tx.wake = True

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

    def pending_due(self, kind: str, ref: str) -> datetime | None:
        """When the pending timer (kind, ref) is due; None when there is none."""
        due: datetime | None = self._tx.conn.execute(
            sa.select(timers.c.due_at)
            .where(timers.c.kind == kind, timers.c.ref == ref, timers.c.done_at.is_(None))
        ).scalar()
        return due

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

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    # -- workspaces ---------------------------------------------------------------------------
    def put_workspace(
        self, name: str, namespace: str, owner: str, request_id: str | None,
        created: Mapping[str, Mapping[str, JSON]], at: datetime, *, owner_slack_id: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"namespace": namespace, "owner": owner, "request_id": request_id,
                                  "created": dict(created), "created_at": at, "deleted_at": None}
        if owner_slack_id is not None:  # None: keep an id recorded before (an update of the objects)
            values["owner_slack_id"] = owner_slack_id
        _upsert(self._tx.conn, workspaces, {"name": name, **values}, conflict=["name"], update=values)

    def set_owner(self, name: str, owner: str, slack_id: str | None) -> None:
        self._tx.conn.execute(
            sa.update(workspaces)
            .where(workspaces.c.name == name, workspaces.c.deleted_at.is_(None))
            .values(owner=owner, owner_slack_id=slack_id)
        )

    def record_slack_id(self, user: str, slack_id: str) -> None:
        """``user``'s Slack id, found by email, where the grant or ownership recorded none: from
        now on the person is asked about by id, and an id Slack no longer knows means they left."""
        self._tx.conn.execute(
            sa.update(workspaces)
            .where(workspaces.c.owner == user, workspaces.c.owner_slack_id.is_(None))
            .values(owner_slack_id=slack_id)
        )
        self._tx.conn.execute(
            sa.update(grants)
            .where(grants.c.user == user, grants.c.slack_id.is_(None))
            .values(slack_id=slack_id)
        )

    def people(self) -> list[Person]:
        """Everyone who holds access the bot granted: owners of live workspaces, grantees and
        holders of active tokens (by the email their token request came from), with the Slack ids
        recorded for them."""
        found: dict[str, dict[str, Any]] = {}

        def person(user: str) -> dict[str, Any]:
            return found.setdefault(user, {"ids": {}, "owns": [], "grants": [], "tokens": []})

        live = sa.select(workspaces).where(workspaces.c.deleted_at.is_(None)).order_by(workspaces.c.name)
        names = set()
        for row in self._tx.conn.execute(live):
            names.add(row.name)
            entry = person(row.owner)
            entry["owns"].append(row.name)
            if row.owner_slack_id:
                entry["ids"][row.owner_slack_id] = None
        for row in self._tx.conn.execute(sa.select(grants).order_by(grants.c.workspace)):
            if row.workspace not in names:
                continue
            entry = person(row.user)
            entry["grants"].append(row.workspace)
            if row.slack_id:
                entry["ids"][row.slack_id] = None
        query = (
            sa.select(tokens.c.token_id, tokens.c.workspace, tokens.c.requester_id,
                      requests.c.requester_email)
            .join(requests, requests.c.id == tokens.c.token_id)
            .where(tokens.c.revoked_at.is_(None))
            .order_by(tokens.c.token_id)
        )
        for row in self._tx.conn.execute(query):
            if row.workspace not in names:
                continue
            entry = person(row.requester_email)
            entry["tokens"].append((row.token_id, row.workspace))
            entry["ids"][row.requester_id] = None
        return [
            Person(user, tuple(e["ids"]), tuple(e["owns"]), tuple(e["grants"]), tuple(e["tokens"]))
            for user, e in sorted(found.items())
        ]

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

    def deleted_workspaces(self) -> list[WorkspaceRecord]:
        """Workspaces marked deleted (what they made: the drift report's orphan Dex logins)."""
        query = sa.select(workspaces).where(workspaces.c.deleted_at.is_not(None)).order_by(workspaces.c.name)
        return [_workspace(row) for row in self._tx.conn.execute(query)]

    def mark_workspace_deleted(self, name: str, at: datetime) -> bool:
        result = self._tx.conn.execute(
            sa.update(workspaces)
            .where(workspaces.c.name == name, workspaces.c.deleted_at.is_(None))
            .values(deleted_at=at)
        )
        return result.rowcount == 1

    # -- GPU holds (keep / snooze) ------------------------------------------------------------
    def put_hold(
        self, target: str, until: datetime, held_by: str, request_id: str | None, at: datetime
    ) -> None:
        values = {"until": until, "held_by": held_by, "request_id": request_id, "created_at": at}
        _upsert(self._tx.conn, gpu_holds, {"target": target, **values}, conflict=["target"], update=values)

    def holds(self, now: datetime) -> dict[str, datetime]:
        """Target -> end of every hold still in force at ``now``."""
        query = sa.select(gpu_holds.c.target, gpu_holds.c.until).where(gpu_holds.c.until > now)
        rows = self._tx.conn.execute(query)
        return {row.target: row.until for row in rows}

    # -- grants -------------------------------------------------------------------------------
    def put_grant(
        self, workspace: str, user: str, role: str, request_id: str | None, expires_at: datetime | None,
        at: datetime, *, slack_id: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"role": role, "request_id": request_id, "expires_at": expires_at,
                                  "created_at": at}
        if slack_id is not None:
            values["slack_id"] = slack_id
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

    def forget_workspace(self, name: str, at: datetime) -> None:
        """A deleted workspace leaves nothing a later workspace of the same name could inherit: its
        row is marked deleted, its tokens revoked, its grants dropped, and its pending timers
        (grant expiries and quota reverts, whose refs start with ``NAME:``) cancelled."""
        self.mark_workspace_deleted(name, at)
        self.revoke_tokens_in(name, at)
        self._tx.conn.execute(sa.delete(grants).where(grants.c.workspace == name))
        prefix = f"{name}:"
        self._tx.conn.execute(
            sa.delete(timers).where(
                sa.func.substr(timers.c.ref, 1, len(prefix)) == prefix, timers.c.done_at.is_(None)
            )
        )

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
