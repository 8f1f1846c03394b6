"""GPU node time as the scans observed it (``gpu_usage``), and the record of posted cost digests
(``cost_digests``).

**Accounting rule.** Each scan hands ``UsageLedger.record`` the GPU nodes it saw. A node is
charged for the time since the scan that last saw it (its ``last_scan``), capped at twice the
scan interval: a longer gap means the bot was not watching (down, or not the leader), and time
nobody observed is not billed to a workspace. A node seen for the first time is charged from
``max(now - scan_interval, created_at)``: it was not there (or not seen) one interval ago, so
at most one interval of its life is ours to count, and never time before it joined the cluster.
That under-counts a node that was up long before the bot's first scan rather than invent hours
nobody saw; the digest's totals are *observed* uptime, said as such. The state a scan sees
(idle or not) is charged for the whole interval ending at it. An interval that crosses UTC
midnight is split between the two days' rows. Recording the same instant twice adds nothing, so a
retried scan does not double-count.

One recorder at a time: the scans run on the leader only, and each ``record`` also takes a
transaction-scoped advisory lock on PostgreSQL (SQLite serialises writers with ``BEGIN
IMMEDIATE``), so two overlapping recorders cannot both charge the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from handlers.cost.digest import UsageDay
from provisioning.store.database import Database, lock_key
from provisioning.store.schema import cost_digests, gpu_usage

_LOOKUP_CHUNK = 500
"""Node names per ``IN (...)`` lookup: well under every backend's bound-parameter limit."""


@dataclass(frozen=True)
class NodeUsage:
    """One GPU node as a scan saw it."""

    node: str
    nodegroup: str
    workspace: str | None
    """None: the nodegroup is unattributed (made by hand, not adopted)."""
    instance_type: str
    idle: bool
    """The scan classified the node as idle (no GPU pod, or only idle ones)."""
    hourly_usd: float | None
    """Its price per hour (list on-demand unless overridden); None: unknown price."""
    created_at: datetime | None = None
    """``metadata.creationTimestamp``: bounds the first interval charged to a newly seen node."""

    def __post_init__(self) -> None:
        if self.hourly_usd is not None and (not math.isfinite(self.hourly_usd) or self.hourly_usd < 0):
            raise ValueError(f"hourly_usd of {self.node} must be a finite price >= 0, not {self.hourly_usd}")


def split_by_day(start: datetime, end: datetime) -> Iterator[tuple[date, float]]:
    """``[start, end)`` cut at UTC midnights: (day, seconds) per day touched."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), time(), UTC)
        piece_end = min(end, midnight)
        yield start.date(), (piece_end - start).total_seconds()
        start = piece_end


class UsageLedger:
    """Accumulates GPU node time per node per UTC day, and reads it back for the digest."""

    def __init__(self, db: Database, scan_interval: timedelta) -> None:
        if scan_interval <= timedelta(0):
            raise ValueError("scan_interval must be positive")
        self._db = db
        self._interval = scan_interval

    def record(self, now: datetime, nodes: Sequence[NodeUsage]) -> int:
        """Charge each node the time since its last scan (see the module docstring); returns the
        number of (node, day) rows written."""
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        latest = {n.node: n for n in nodes}  # a node listed twice counts once: the last entry wins
        horizon = now - 2 * self._interval
        rows: list[dict[str, Any]] = []
        with self._db.uow() as uow:
            conn = uow.connection
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key("usage", "gpu_usage"))))
            seen = _last_scans(conn, list(latest), horizon.astimezone(UTC).date())
            for name, usage in latest.items():
                last = seen.get(name)
                if last is not None and last >= now:
                    continue  # this instant (or a later one) is already charged
                if last is not None:
                    start = max(last, horizon)
                else:
                    start = now - self._interval
                    if usage.created_at is not None:
                        start = max(start, usage.created_at)
                pieces = list(split_by_day(start, now)) if start < now else []
                rows += [_row(usage, day, seconds, now) for day, seconds in pieces]
                if not pieces:  # nothing to charge yet, but the next scan counts from now
                    rows.append(_row(usage, now.astimezone(UTC).date(), 0.0, now))
            if rows:
                conn.execute(_accumulate(conn), rows)
            uow.commit()
        return len(rows)

    def days(self, start: date, end: date) -> list[UsageDay]:
        """Usage per day and nodegroup for ``start <= day < end``."""
        u = gpu_usage.c
        query = (
            sa.select(
                u.day, u.nodegroup, u.workspace, u.instance_type,
                sa.func.sum(u.seconds), sa.func.sum(u.idle_seconds), sa.func.sum(u.usd),
                sa.func.sum(u.idle_usd), sa.func.sum(u.unpriced_seconds),
            )
            .where(u.day >= start, u.day < end)
            .group_by(u.day, u.nodegroup, u.workspace, u.instance_type)
            .order_by(u.day, u.nodegroup)
        )
        with self._db.uow(read_only=True) as uow:
            return [
                UsageDay(day=r[0], nodegroup=r[1], workspace=r[2], instance_type=r[3], seconds=float(r[4]),
                         idle_seconds=float(r[5]), usd=float(r[6]), idle_usd=float(r[7]),
                         unpriced_seconds=float(r[8]))
                for r in uow.connection.execute(query)
            ]

    # -- the digest's slots ---------------------------------------------------------------------
    def latest_digest_slot(self) -> datetime | None:
        with self._db.uow(read_only=True) as uow:
            query = sa.select(sa.func.max(cost_digests.c.slot))
            value: datetime | None = uow.connection.execute(query).scalar()
        return None if value is None else _aware(value)

    def claim_digest(self, slot: datetime, channel: str, now: datetime) -> bool:
        """Claim ``slot`` for posting: False when it (or a later slot) was already claimed, so a
        slot is posted at most once and never after a newer one."""
        with self._db.uow() as uow:
            conn = uow.connection
            newest = conn.execute(sa.select(sa.func.max(cost_digests.c.slot))).scalar()
            if newest is not None and _aware(newest) >= slot:
                return False
            try:
                conn.execute(sa.insert(cost_digests).values(slot=slot, channel=channel, claimed_at=now))
                uow.commit()
            except IntegrityError:
                return False
        return True

    def digest_posted(self, slot: datetime, ts: str, now: datetime) -> None:
        with self._db.uow() as uow:
            uow.connection.execute(
                sa.update(cost_digests).where(cost_digests.c.slot == slot).values(ts=ts, posted_at=now)
            )
            uow.commit()

    def release_digest(self, slot: datetime) -> None:
        """Give a claimed slot back when its post failed, so the retried timer posts it."""
        with self._db.uow() as uow:
            uow.connection.execute(
                sa.delete(cost_digests).where(cost_digests.c.slot == slot, cost_digests.c.ts.is_(None))
            )
            uow.commit()


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _last_scans(conn: Connection, names: list[str], since: date) -> dict[str, datetime]:
    found: dict[str, datetime] = {}
    for i in range(0, len(names), _LOOKUP_CHUNK):
        chunk = names[i : i + _LOOKUP_CHUNK]
        query = (
            sa.select(gpu_usage.c.node, sa.func.max(gpu_usage.c.last_scan))
            .where(gpu_usage.c.node.in_(chunk), gpu_usage.c.day >= since)
            .group_by(gpu_usage.c.node)
        )
        for node, last in conn.execute(query):
            # max() over a TypeDecorator column comes back untyped on SQLite: make it aware UTC.
            found[node] = _aware(last if isinstance(last, datetime) else datetime.fromisoformat(str(last)))
    return found


def _row(usage: NodeUsage, day: date, seconds: float, now: datetime) -> dict[str, Any]:
    priced = usage.hourly_usd is not None
    usd = seconds / 3600 * usage.hourly_usd if usage.hourly_usd is not None else 0.0
    return {
        "day": day,
        "node": usage.node,
        "nodegroup": usage.nodegroup,
        "workspace": usage.workspace,
        "instance_type": usage.instance_type,
        "seconds": seconds,
        "idle_seconds": seconds if usage.idle else 0.0,
        "usd": usd,
        "idle_usd": usd if usage.idle else 0.0,
        "unpriced_seconds": 0.0 if priced else seconds,
        "last_scan": now,
    }


def _accumulate(conn: Connection) -> Any:
    """INSERT ... ON CONFLICT (day, node) DO UPDATE adding to the counters: one statement, run
    with many rows, on both backends."""
    insert = postgresql.insert(gpu_usage) if conn.dialect.name == "postgresql" else sqlite.insert(gpu_usage)
    new = insert.excluded
    c = gpu_usage.c
    return insert.on_conflict_do_update(
        index_elements=[c.day, c.node],
        set_={
            "nodegroup": new.nodegroup,
            "workspace": new.workspace,
            "instance_type": new.instance_type,
            "seconds": c.seconds + new.seconds,
            "idle_seconds": c.idle_seconds + new.idle_seconds,
            "usd": c.usd + new.usd,
            "idle_usd": c.idle_usd + new.idle_usd,
            "unpriced_seconds": c.unpriced_seconds + new.unpriced_seconds,
            "last_scan": new.last_scan,
        },
    )
