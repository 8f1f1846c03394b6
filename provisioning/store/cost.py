"""Cost control's rows: the idle signals with the time each was first seen (``gpu_signals``), the
keeps and snoozes (``gpu_holds``, read here; the ``gpu.hold`` kind writes them) and the one report
message per channel (``cost_reports``).

One scan's signals are written in the transaction that reads them (``SqlCost.apply``), so two
scans cannot interleave their rows; the scan job runs on the leader only anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from handlers.cost.idle import Hold, SignalRow, StoredSignal
from handlers.plan import JSON
from provisioning.store.repositories import Tx, _upsert
from provisioning.store.schema import cost_reports, gpu_holds, gpu_signals, timers


@dataclass(frozen=True)
class SignalRecord:
    """A ``gpu_signals`` row with what it says about its item (``detail``)."""

    key: str
    workspace: str | None
    nodegroup: str | None
    signal: str
    first_seen: datetime
    last_seen: datetime
    warned_at: datetime | None
    detail: Mapping[str, JSON]


@dataclass(frozen=True)
class ReportRow:
    """Where a channel's report message is and what it said last."""

    channel: str
    ts: str | None
    digest: str
    items: Mapping[str, JSON]
    updated_at: datetime


class SqlCost:
    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    # -- signals -----------------------------------------------------------------------------------
    def signals(self, *, for_update: bool = False) -> list[StoredSignal]:
        query = sa.select(gpu_signals).order_by(gpu_signals.c.key)
        if for_update and self._tx.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return [
            StoredSignal(r.key, r.signal, r.first_seen, r.last_seen, r.reported_at, r.warned_at)
            for r in self._tx.conn.execute(query)
        ]

    def signal_rows(self) -> list[SignalRecord]:
        rows = self._tx.conn.execute(sa.select(gpu_signals).order_by(gpu_signals.c.key))
        return [
            SignalRecord(
                r.key,
                r.workspace,
                r.nodegroup,
                r.signal,
                r.first_seen,
                r.last_seen,
                r.warned_at,
                dict(r.detail),
            )
            for r in rows
        ]

    def apply(self, upsert: Iterable[SignalRow], delete: Sequence[str]) -> None:
        """Write one scan's signals: ``first_seen`` as the decision kept it (the core never moves a
        holding signal's start), ``reported_at``/``warned_at`` untouched on update."""
        conn = self._tx.conn
        for row in upsert:
            values = {
                "key": row.key,
                "kind": row.kind,
                "workspace": row.workspace,
                "nodegroup": row.nodegroup,
                "signal": row.signal,
                "first_seen": row.first_seen,
                "last_seen": row.last_seen,
                "detail": dict(row.detail),
            }
            update = {k: v for k, v in values.items() if k != "key"}
            _upsert(conn, gpu_signals, values, conflict=["key"], update=update)
        if delete:
            conn.execute(sa.delete(gpu_signals).where(gpu_signals.c.key.in_(list(delete))))

    def mark(
        self, keys: Sequence[str], *, reported: datetime | None = None, warned: datetime | None = None
    ) -> None:
        """Set ``reported_at`` (first report only) or ``warned_at`` on signals."""
        if not keys:
            return
        conn = self._tx.conn
        if reported is not None:
            conn.execute(
                sa.update(gpu_signals)
                .where(gpu_signals.c.key.in_(list(keys)), gpu_signals.c.reported_at.is_(None))
                .values(reported_at=reported)
            )
        if warned is not None:
            conn.execute(
                sa.update(gpu_signals).where(gpu_signals.c.key.in_(list(keys))).values(warned_at=warned)
            )

    # -- holds -------------------------------------------------------------------------------------
    def holds(self, now: datetime) -> list[Hold]:
        rows = self._tx.conn.execute(
            sa.select(gpu_holds.c.target, gpu_holds.c.until).where(gpu_holds.c.until > now)
        )
        return [Hold(r.target, r.until) for r in rows]

    # -- the report message per channel ------------------------------------------------------------
    def report(self, channel: str) -> ReportRow | None:
        row = self._tx.conn.execute(sa.select(cost_reports).where(cost_reports.c.channel == channel)).first()
        if row is None:
            return None
        return ReportRow(row.channel, row.ts, row.digest, dict(row.items), row.updated_at)

    def reports(self) -> list[ReportRow]:
        rows = self._tx.conn.execute(sa.select(cost_reports).order_by(cost_reports.c.channel))
        return [ReportRow(r.channel, r.ts, r.digest, dict(r.items), r.updated_at) for r in rows]

    def put_report(
        self, channel: str, ts: str | None, digest: str, items: Mapping[str, JSON], now: datetime
    ) -> None:
        values = {"channel": channel, "ts": ts, "digest": digest, "items": dict(items), "updated_at": now}
        update = {k: v for k, v in values.items() if k != "channel"}
        _upsert(self._tx.conn, cost_reports, values, conflict=["channel"], update=update)

    def delete_report(self, channel: str) -> None:
        self._tx.conn.execute(sa.delete(cost_reports).where(cost_reports.c.channel == channel))

    # -- auto-stop timers --------------------------------------------------------------------------
    def pending_timers(self, kind: str) -> dict[str, datetime]:
        """Ref -> due time of every pending timer of ``kind``."""
        rows = self._tx.conn.execute(
            sa.select(timers.c.ref, timers.c.due_at).where(timers.c.kind == kind, timers.c.done_at.is_(None))
        )
        return {r.ref: r.due_at for r in rows}
