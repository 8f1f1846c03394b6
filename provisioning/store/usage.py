"""GPU node time as the scans observe it (``gpu_usage``: one row per node per UTC day), for the
digest's node-hours, idle share and dollars, and ``/kf gpu status``'s "this month".

Each scan adds, per GPU node it sees, the time since that node's previous scan, capped at
``max_gap`` so that time the bot was down (or the node was not seen) is not counted as observed:
the figures are a lower bound, never an invention. The interval is booked on the day of the scan
that closes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from provisioning.records import MonthUsage
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


class UsageLedger:
    def __init__(self, conn: Connection, max_gap: timedelta = timedelta(minutes=30)) -> None:
        self._conn = conn
        self._max_gap = max_gap

    def record(self, now: datetime, nodes: Sequence[NodeUsage]) -> None:
        conn = self._conn
        day = now.date()
        names = [n.node for n in nodes]
        last: dict[str, datetime] = {}
        if names:
            rows = conn.execute(
                sa.select(gpu_usage.c.node, sa.func.max(gpu_usage.c.last_scan))
                .where(gpu_usage.c.node.in_(names))
                .group_by(gpu_usage.c.node)
            )
            last = {r[0]: r[1] for r in rows}
        for n in nodes:
            before = last.get(n.node)
            seconds = 0.0
            if before is not None and before < now:
                seconds = min(now - before, self._max_gap).total_seconds()
            usd = 0.0 if n.hourly_usd is None else n.hourly_usd * seconds / 3600.0
            idle_s, idle_usd = (seconds, usd) if n.idle else (0.0, 0.0)
            key = (gpu_usage.c.day == day) & (gpu_usage.c.node == n.node)
            found = conn.execute(sa.select(gpu_usage.c.node).where(key)).first()
            if found is None:
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

    def month(self, now: datetime) -> list[MonthUsage]:
        """Per workspace (None: unattributed), since the first day of ``now``'s UTC month."""
        start = date(now.year, now.month, 1)
        rows = self._conn.execute(
            sa.select(
                gpu_usage.c.workspace,
                sa.func.sum(gpu_usage.c.seconds),
                sa.func.sum(gpu_usage.c.idle_seconds),
                sa.func.sum(gpu_usage.c.usd),
                sa.func.sum(gpu_usage.c.idle_usd),
            )
            .where(gpu_usage.c.day >= start)
            .group_by(gpu_usage.c.workspace)
        )
        return [
            MonthUsage(
                r[0], float(r[1] or 0) / 3600, float(r[2] or 0) / 3600, float(r[3] or 0), float(r[4] or 0)
            )
            for r in rows
        ]
