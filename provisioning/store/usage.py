"""GPU node time as the scans observe it (``gpu_usage``: one row per node per UTC day), for the
digest and ``/kf gpu status``'s "this month".

A stand-in with the interface the ``digest`` helper's ledger has (``UsageLedger(db,
scan_interval)``, ``record(now, nodes)``, ``days(start, end)``); the digest's version (midnight
splits, an advisory lock, unpriced time) replaces it at merge.

Each scan charges every GPU node the time since the scan that last saw it, capped at twice the
scan interval (time nobody watched is not billed); a node seen for the first time is charged at
most one interval, never before it joined. The figures are observed uptime, a lower bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from provisioning.store.database import Database
from provisioning.store.schema import gpu_usage


@dataclass(frozen=True)
class NodeUsage:
    node: str
    nodegroup: str
    workspace: str | None
    instance_type: str
    idle: bool
    """No GPU pod on it (signal 1) at this scan."""
    hourly_usd: float | None
    """On-demand list price (overrides winning); None: unknown, no dollars are booked."""
    created_at: datetime | None = None


@dataclass(frozen=True)
class UsageDay:
    day: date
    nodegroup: str
    workspace: str | None
    instance_type: str
    seconds: float
    idle_seconds: float
    usd: float
    idle_usd: float


class UsageLedger:
    def __init__(self, db: Database, scan_interval: timedelta) -> None:
        self._db = db
        self._interval = scan_interval

    def record(self, now: datetime, nodes: Sequence[NodeUsage]) -> int:
        day = now.astimezone(UTC).date()
        written = 0
        with self._db.uow() as uow:
            conn = uow.connection
            names = [n.node for n in nodes]
            last: dict[str, datetime] = {}
            if names:
                query = (
                    sa.select(gpu_usage.c.node, sa.func.max(gpu_usage.c.last_scan))
                    .where(gpu_usage.c.node.in_(names))
                    .group_by(gpu_usage.c.node)
                )
                last = {r[0]: r[1] for r in conn.execute(query)}
            for n in nodes:
                before = last.get(n.node)
                if before is not None and before >= now:
                    continue  # this instant is charged already (a retried scan)
                if before is not None:
                    start = max(before, now - 2 * self._interval)
                else:
                    start = now - self._interval
                    if n.created_at is not None:
                        start = max(start, n.created_at)
                seconds = max((now - start).total_seconds(), 0.0)
                usd = 0.0 if n.hourly_usd is None else n.hourly_usd * seconds / 3600.0
                idle_s, idle_usd = (seconds, usd) if n.idle else (0.0, 0.0)
                key = (gpu_usage.c.day == day) & (gpu_usage.c.node == n.node)
                if conn.execute(sa.select(gpu_usage.c.node).where(key)).first() is None:
                    conn.execute(
                        sa.insert(gpu_usage).values(
                            day=day,
                            node=n.node,
                            nodegroup=n.nodegroup,
                            workspace=n.workspace,
                            instance_type=n.instance_type,
                            seconds=seconds,
                            idle_seconds=idle_s,
                            usd=usd,
                            idle_usd=idle_usd,
                            last_scan=now,
                        )
                    )
                else:
                    conn.execute(
                        sa.update(gpu_usage)
                        .where(key)
                        .values(
                            seconds=gpu_usage.c.seconds + seconds,
                            idle_seconds=gpu_usage.c.idle_seconds + idle_s,
                            usd=gpu_usage.c.usd + usd,
                            idle_usd=gpu_usage.c.idle_usd + idle_usd,
                            last_scan=now,
                            workspace=n.workspace,
                            nodegroup=n.nodegroup,
                        )
                    )
                written += 1
            uow.commit()
        return written

    def days(self, start: date, end: date) -> list[UsageDay]:
        """Usage per day and nodegroup for ``start <= day < end``."""
        u = gpu_usage.c
        query = (
            sa.select(
                u.day,
                u.nodegroup,
                u.workspace,
                u.instance_type,
                sa.func.sum(u.seconds),
                sa.func.sum(u.idle_seconds),
                sa.func.sum(u.usd),
                sa.func.sum(u.idle_usd),
            )
            .where(u.day >= start, u.day < end)
            .group_by(u.day, u.nodegroup, u.workspace, u.instance_type)
            .order_by(u.day, u.nodegroup)
        )
        with self._db.uow(read_only=True) as uow:
            return [
                UsageDay(r[0], r[1], r[2], r[3], float(r[4]), float(r[5]), float(r[6]), float(r[7]))
                for r in uow.connection.execute(query)
            ]
