"""The Slack inbox (table ``slack_inbox``): Slack requests a replica acked and has not finished.

Why: Slack never retries a slash command or a click, so once the bot has said 200 the work it
asks for must survive the replica: a SIGTERM, a crash, a full work pool. The edge records the
verified payload *before* it acks (``record``, claimed by the recording replica for ``lease``),
runs it from memory when it can, and deletes the row when done (``finish``). A row whose lease is
free or expired is work nobody is doing: every replica's inbox sweep ``claim``s such rows, oldest
first (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two replicas never take the same one), and
runs them through the same handlers. A worker runs a row only once it has ``take``n its lease
(a job that waited in a pool past the lease may find another replica holding it, or the row done),
and ``renew``s the lease while the work runs (a heartbeat), so work slower than the lease is never
claimed again and run a second time (not every command has an idempotency key of its own:
``/kf cancel``, ``pin --all``).

Each row carries a MAC over its key, kind and payload (HMAC-SHA256 with ``inbox_key``, a subkey of
the audit key, which lives outside the database), written by ``record``: someone with write access
to the database but not the audit key cannot have the sweep run a request (a click as an admin) by
writing a row; ``claim`` marks a row whose MAC does not verify (``InboxItem.authentic``) and the
sweep drops it unrun.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from handlers.plan import JSON
from provisioning.store.database import Database
from provisioning.store.schema import slack_inbox


@dataclass(frozen=True)
class InboxItem:
    key: str
    kind: str
    payload: Mapping[str, JSON]
    received_at: datetime
    expires_at: datetime
    attempts: int
    authentic: bool = True
    """False: the row's MAC is missing or wrong (not written by ``record``): never run it."""


INBOX_KEY_LABEL = b"slack-inbox"


def inbox_key(audit_key: bytes) -> bytes:
    """The inbox's own subkey: a MAC made for an inbox row is never one for the audit chain."""
    return hmac.new(audit_key, INBOX_KEY_LABEL, hashlib.sha256).digest()


class SqlInbox:
    """Each method is one short transaction of its own: never inside a unit of work, never
    around a Slack call."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._key = inbox_key(db.audit_key)

    @staticmethod
    def mac_of(key: str, kind: str, payload: Mapping[str, JSON], audit_key: bytes) -> str:
        # Canonical JSON: PostgreSQL's json column and SQLite give the payload back with the same
        # values, and the MAC must not depend on key order or spacing.
        body = json.dumps([key, kind, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hmac.new(inbox_key(audit_key), body.encode(), hashlib.sha256).hexdigest()

    def _authentic(self, key: str, kind: str, payload: Mapping[str, JSON], mac: str | None) -> bool:
        if not mac:
            return False
        return hmac.compare_digest(self.mac_of(key, kind, payload, self._db.audit_key), mac)

    def record(
        self,
        key: str,
        kind: str,
        payload: Mapping[str, JSON],
        *,
        owner: str,
        now: datetime,
        lease_until: datetime,
        expires_at: datetime,
    ) -> bool:
        """Record an acked request, claimed by ``owner``; False when ``key`` is already there (a
        redelivery: the first copy's work stands)."""
        try:
            with self._db.edge_writer() as conn:  # bounded: the edge answers Slack within 3 s
                conn.execute(
                    sa.insert(slack_inbox).values(
                        key=key, kind=kind, payload=dict(payload), received_at=now, expires_at=expires_at,
                        claimed_by=owner, lease_until=lease_until, attempts=1,
                        mac=self.mac_of(key, kind, payload, self._db.audit_key),
                    )
                )  # fmt: skip
        except IntegrityError:
            # Only the key already there is a redelivery; any other refusal (a constraint, a
            # trigger) means the row is not recorded, and the caller must not ack it as if it were.
            with self._db.reader() as conn:
                there = conn.execute(sa.select(slack_inbox.c.key).where(slack_inbox.c.key == key)).first()
            if there is None:
                raise
            return False
        return True

    def finish(self, key: str) -> None:
        with self._db.engine.begin() as conn:
            conn.execute(sa.delete(slack_inbox).where(slack_inbox.c.key == key))

    def release(self, keys: list[str], owner: str) -> None:
        """Give up our claim on ``keys`` (not started: a full pool, a shutdown): any replica's
        sweep may take them at once."""
        if not keys:
            return
        with self._db.engine.begin() as conn:
            conn.execute(
                sa.update(slack_inbox)
                .where(slack_inbox.c.key.in_(keys), slack_inbox.c.claimed_by == owner)
                .values(claimed_by=None, lease_until=None)
            )

    def take(self, key: str, owner: str, now: datetime, lease_until: datetime) -> bool:
        """Take ``key`` for work, until ``lease_until``: True when it is ``owner``'s now (its own
        claim, or a free or expired lease); False when the row is gone (its work is done) or
        another worker's lease stands."""
        with self._db.engine.begin() as conn:
            taken = conn.execute(
                sa.update(slack_inbox)
                .where(
                    slack_inbox.c.key == key,
                    sa.or_(
                        slack_inbox.c.claimed_by == owner,
                        slack_inbox.c.lease_until.is_(None),
                        slack_inbox.c.lease_until < now,
                    ),
                )
                .values(claimed_by=owner, lease_until=lease_until)
            )
        return taken.rowcount == 1

    def renew(self, key: str, owner: str, lease_until: datetime) -> bool:
        """Extend ``owner``'s lease on ``key`` (the heartbeat of running work); False when the row
        is gone or no longer ``owner``'s."""
        with self._db.engine.begin() as conn:
            renewed = conn.execute(
                sa.update(slack_inbox)
                .where(slack_inbox.c.key == key, slack_inbox.c.claimed_by == owner)
                .values(lease_until=lease_until)
            )
        return renewed.rowcount == 1

    def claim(self, owner: str, now: datetime, lease_until: datetime, limit: int) -> list[InboxItem]:
        """Up to ``limit`` rows nobody is working on (lease free or expired), oldest first, now
        claimed by ``owner`` until ``lease_until``."""
        if limit <= 0:
            return []
        with self._db.engine.begin() as conn:
            rows = conn.execute(
                sa.select(slack_inbox)
                .where(sa.or_(slack_inbox.c.lease_until.is_(None), slack_inbox.c.lease_until < now))
                .order_by(slack_inbox.c.received_at, slack_inbox.c.key)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            conn.execute(
                sa.update(slack_inbox)
                .where(slack_inbox.c.key.in_([row.key for row in rows]))
                .values(claimed_by=owner, lease_until=lease_until, attempts=slack_inbox.c.attempts + 1)
            )
        return [
            InboxItem(
                row.key, row.kind, row.payload, row.received_at, row.expires_at, row.attempts + 1,
                self._authentic(row.key, row.kind, row.payload, row.mac),
            )
            for row in rows
        ]

    def pending(self) -> int:
        """Rows not finished (a gauge; tests)."""
        with self._db.reader() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(slack_inbox)).scalar_one())
