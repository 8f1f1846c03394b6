"""``drift_reports``: where each channel's drift report message is, the digest of what it shows and
its items (key -> text), so the next report edits that message instead of posting again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from handlers.plan import JSON
from provisioning.store.repositories import Tx, _upsert
from provisioning.store.schema import drift_reports


@dataclass(frozen=True)
class DriftReportRow:
    channel: str
    ts: str | None
    digest: str
    items: Mapping[str, JSON]


class SqlDriftReports:
    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    def get(self, channel: str) -> DriftReportRow | None:
        query = sa.select(drift_reports).where(drift_reports.c.channel == channel)
        row = self._tx.conn.execute(query).first()
        return None if row is None else DriftReportRow(row.channel, row.ts, row.digest, dict(row.items))

    def put(
        self, channel: str, ts: str | None, digest: str, items: Mapping[str, JSON], now: datetime
    ) -> None:
        values = {"channel": channel, "ts": ts, "digest": digest, "items": dict(items), "updated_at": now}
        update = {k: v for k, v in values.items() if k != "channel"}
        _upsert(self._tx.conn, drift_reports, values, conflict=["channel"], update=update)
