"""The notification outbox (table ``notification_outbox``): notices the step engine owes Slack.

Why: Slack posts about one message per second per channel, and every request's thread goes to the
one admin channel, so an engine that announced each step before taking the next applied at
Slack's pace (a burst of 20 dry-run requests: 74 s p50 from approval to success). The engine now
*appends* what to announce in the transaction that records the change (``SqlOutbox.append``), and
a publisher (``provisioning.publisher``) delivers it afterwards and deletes the row
(``Outbox``). A crash between the two leaves the row: any replica's publisher delivers it. A
notice is delivered at least once; one that was out when its publisher died is sent again.

Order: a request's notices never overtake each other. Only the *head* of a request (its oldest
row) is claimable, and only while nobody holds a live lease on it (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so two publishers never take the same row; SQLite serialises writers anyway). The
next row of that request becomes claimable when the head is deleted, i.e. delivered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from handlers.model import Event, EventType, Request, RequestState
from handlers.plan import JSON, Plan, as_object
from provisioning.store.audit_chain import iso
from provisioning.store.repositories import Tx
from provisioning.store.schema import notification_outbox, requests, thread_messages

if TYPE_CHECKING:
    from provisioning.store.database import Database

_SNAPSHOT_TIMES = ("created_at", "decided_at", "updated_at")


def _snapshot(request: Request) -> dict[str, JSON]:
    """The request as it was at the change: what its notices are rendered from (a later state
    must not show on an earlier notice, e.g. a step line rendered after the request succeeded)."""
    out: dict[str, JSON] = {
        "id": request.id,
        "kind": request.kind,
        "args": dict(request.args),
        "requester_id": request.requester_id,
        "requester_email": request.requester_email,
        "plan": request.plan.to_json(),
        "state": request.state.value,
        "version": request.version,
        "plan_digest": request.plan_digest,
        "decided_by": request.decided_by,
        "reason": request.reason,
        "error": request.error,
        "correlation_id": request.correlation_id,
        "subject": request.subject,
    }
    for name in _SNAPSHOT_TIMES:
        at: datetime | None = getattr(request, name)
        out[name] = None if at is None else iso(at)
    return out


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _request(data: Mapping[str, Any]) -> Request:
    created = _time(data["created_at"])
    if created is None:  # pragma: no cover - _snapshot always writes it
        raise ValueError("outbox snapshot without created_at")
    return Request(
        id=data["id"],
        kind=data["kind"],
        args=as_object(data["args"]),
        requester_id=data["requester_id"],
        requester_email=data["requester_email"],
        plan=Plan.from_json(as_object(data["plan"])),
        created_at=created,
        state=RequestState(data["state"]),
        version=int(data["version"]),
        plan_digest=data["plan_digest"],
        decided_by=data["decided_by"],
        decided_at=_time(data["decided_at"]),
        reason=data["reason"],
        error=data["error"],
        correlation_id=data["correlation_id"],
        updated_at=_time(data["updated_at"]),
        subject=data["subject"],
    )


def _event(data: Mapping[str, Any], request_id: str) -> Event:
    at = _time(data["at"])
    if at is None:  # pragma: no cover - append always writes it
        raise ValueError("outbox event without a time")
    return Event(EventType(data["type"]), request_id, at, data["actor"], as_object(data["data"]))


@dataclass(frozen=True)
class Notice:
    """One outbox row: ``events`` of ``request`` (as it was then), to announce."""

    id: int
    request: Request
    events: list[Event]
    attempts: int
    card: tuple[str, str] | None
    """Where the request's card is, read in the claiming transaction (``announce`` needs no other)."""
    threads: dict[str, str] = field(default_factory=dict)
    """The request's thread messages (key -> ts), read in the same transaction."""


class SqlOutbox:
    """Appends to the outbox in the caller's unit of work (``ProvisioningUnitOfWork.outbox``)."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    def append(self, request: Request, events: Sequence[Event], now: datetime) -> None:
        if not events:
            return
        rows: list[JSON] = [
            {"type": e.type.value, "at": iso(e.at), "actor": e.actor, "data": dict(e.data)} for e in events
        ]
        self._tx.conn.execute(
            sa.insert(notification_outbox).values(
                request_id=request.id, request=_snapshot(request), events=rows, created_at=now
            )
        )


class Outbox:
    """The publisher's side. Each method is one short transaction of its own, never around a
    Slack call."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, owner: str, now: datetime, lease_until: datetime) -> Notice | None:
        """The oldest row that heads its request and that nobody holds a live lease on, now
        claimed by ``owner`` until ``lease_until``; None when there is none."""
        o = notification_outbox
        older = o.alias("older")
        with self._db.engine.begin() as conn:
            row = conn.execute(
                sa.select(o)
                .where(
                    sa.or_(o.c.lease_until.is_(None), o.c.lease_until < now),
                    ~sa.exists().where(older.c.request_id == o.c.request_id, older.c.id < o.c.id),
                )
                .order_by(o.c.id)
                .limit(1)
                .with_for_update(skip_locked=True, of=o)
            ).first()
            if row is None:
                return None
            conn.execute(
                sa.update(o)
                .where(o.c.id == row.id)
                .values(claimed_by=owner, lease_until=lease_until, attempts=o.c.attempts + 1)
            )
            # Read now, not when the row was appended: a card posted or moved since is where
            # the thread is. The request's earlier notices are all delivered by now (head only).
            card = conn.execute(
                sa.select(requests.c.card_channel, requests.c.card_ts).where(requests.c.id == row.request_id)
            ).first()
            threads = {
                t.key: t.ts
                for t in conn.execute(
                    sa.select(thread_messages.c.key, thread_messages.c.ts).where(
                        thread_messages.c.request_id == row.request_id
                    )
                )
            }
        return Notice(
            row.id,
            _request(row.request),
            [_event(e, row.request_id) for e in row.events],
            row.attempts + 1,
            None if card is None or card.card_channel is None or card.card_ts is None
            else (card.card_channel, card.card_ts),
            threads,
        )

    def renew(self, notice_id: int, owner: str, lease_until: datetime) -> bool:
        """Extend our lease while a delivery waits on Slack's pace; False when it is not ours any
        more (it expired and another publisher took the row)."""
        o = notification_outbox
        with self._db.engine.begin() as conn:
            done = conn.execute(
                sa.update(o)
                .where(o.c.id == notice_id, o.c.claimed_by == owner)
                .values(lease_until=lease_until)
            )
        return done.rowcount == 1

    def finish(self, notice_id: int, owner: str) -> None:
        """Delivered: the row goes, and the request's next notice becomes claimable."""
        o = notification_outbox
        with self._db.engine.begin() as conn:
            conn.execute(sa.delete(o).where(o.c.id == notice_id, o.c.claimed_by == owner))

    def pending(self) -> int:
        """Rows not delivered yet (a gauge; tests)."""
        with self._db.reader() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(notification_outbox)).scalar_one())
