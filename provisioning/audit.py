"""The append-only, HMAC-chained audit log: append, verify, export.

Chain design
------------
Row ``n`` carries ``mac_n = HMAC-SHA256(key, canonical_json({seq, at, request_id, type, actor,
data}) + mac_{n-1})`` and stores ``mac_{n-1}`` as ``prev_mac`` (the first row chains to
``GENESIS_MAC``). The key (``KFBOT_AUDIT_KEY``) lives outside the database, so someone who can
write the tables but does not have the key cannot edit a row, insert one or delete one from the
middle without ``verify`` naming the first row where the chain breaks: an edit breaks that row's
MAC, a deletion leaves a gap in ``seq`` (or, if renumbered, a MAC/``prev_mac`` mismatch), an
insertion carries a MAC nobody could compute.

What the chain alone cannot show is a truncated *tail*: cutting the last rows and rewinding the
head row leaves a shorter but valid chain. ``kfbot audit verify`` prints the head MAC; keeping
that value somewhere else (a ticket, the deploy log) and passing it back as ``expect_head``
catches the truncation.

Appends are serialised on the single ``audit_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL;
on SQLite the write transaction already holds the database lock), and ``seq`` is the primary
key, so two writers can never fork the chain: the second waits and chains onto the first.
Events are appended in the same transaction as the change they describe.

Secrets never enter the log: data keys that look like secrets are refused (callers log a
``fingerprint`` instead), and the CSV export defuses spreadsheet formulas.
"""

from __future__ import annotations

import csv
import hmac
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from handlers.plan import canonical_json
from provisioning.store import Database
from provisioning.store.audit_chain import SqlAuditLog, check_no_secrets, compute_mac, iso
from provisioning.store.schema import GENESIS_MAC, audit_events, audit_head

__all__ = [
    "GENESIS_MAC", "SqlAuditLog", "VerifyResult", "check_no_secrets", "compute_mac", "export", "verify",
]

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_COLUMNS = ("seq", "at", "request_id", "type", "actor", "data", "prev_mac", "mac")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    """Rows checked (all of them when ok)."""
    head: str
    """MAC of the last good row: keep it and pass it as ``expect_head`` next time."""
    first_bad_seq: int | None
    problem: str


def verify(source: Connection | Database, key: bytes, expect_head: str | None = None) -> VerifyResult:
    """Walk the chain in ``seq`` order and name the first row that was edited, inserted or deleted.

    ``expect_head`` is a head MAC printed by an earlier verify: it must still be in the chain
    (the log may have grown since), else the tail was truncated or rewritten.
    """
    if isinstance(source, Connection):
        return _verify(source, key, expect_head)
    with source.reader() as conn:
        # The rows and the head must come from one snapshot: at READ COMMITTED an append that
        # commits between the two reads looks exactly like a deleted tail.
        snapshot = conn.execution_options(isolation_level="REPEATABLE READ") if source.is_postgres else conn
        return _verify(snapshot, key, expect_head)


def _verify(conn: Connection, key: bytes, expect_head: str | None) -> VerifyResult:
    events = audit_events
    prev, expected, count = GENESIS_MAC, 1, 0
    seen_expected = expect_head is None or hmac.compare_digest(expect_head, GENESIS_MAC)

    def bad(seq: int | None, problem: str) -> VerifyResult:
        return VerifyResult(ok=False, rows=count, head=prev, first_bad_seq=seq, problem=problem)

    result = conn.execute(sa.select(events).order_by(events.c.seq).execution_options(yield_per=1000))
    for row in result:
        count += 1
        if row.seq < expected:  # only a forged row can sit before the first one (seq <= 0)
            return bad(row.seq, f"row {row.seq} is out of sequence: inserted")
        if row.seq != expected:
            missing = (f"row {expected} is" if row.seq == expected + 1
                       else f"rows {expected}-{row.seq - 1} are")
            return bad(expected, f"{missing} missing: deleted from the log")
        if not hmac.compare_digest(row.prev_mac, prev):
            return bad(row.seq, f"row {row.seq} does not chain to row {row.seq - 1}: inserted or replaced")
        mac = compute_mac(key, seq=row.seq, at=row.at, request_id=row.request_id, type_=row.type,
                          actor=row.actor, data=row.data, prev_mac=row.prev_mac)
        if not hmac.compare_digest(mac, row.mac):
            return bad(row.seq, f"row {row.seq} does not match its MAC: edited, or forged without the key")
        prev, expected = row.mac, expected + 1
        if expect_head is not None and hmac.compare_digest(row.mac, expect_head):
            seen_expected = True
    last = expected - 1
    head = conn.execute(
        sa.select(audit_head.c.seq, audit_head.c.mac).where(audit_head.c.id == 1)
    ).first()
    if head is None:
        return bad(None, "the chain head row is missing")
    if head.seq > last:
        return bad(last + 1, f"rows {last + 1}-{head.seq} at the end are missing: the tail was deleted")
    if head.seq < last:
        return bad(int(head.seq) + 1,
                   f"rows {head.seq + 1}-{last} were added behind the head, outside the log")
    if not hmac.compare_digest(head.mac, prev):
        return bad(last, f"the head does not match row {last}: the head row was edited")
    if not seen_expected:
        return bad(last + 1, "the expected head is not in the chain: the tail was truncated or rewritten")
    return VerifyResult(ok=True, rows=count, head=prev, first_bad_seq=None, problem="")


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    # A spreadsheet runs a cell starting with these as a formula (CSV injection).
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def export(db: Database, fmt: str, since: datetime | None = None) -> Iterator[str]:
    """The log as lines (each ends with a newline), oldest first; ``since`` keeps rows at or after it.

    Rows are streamed: the read connection stays open until the iterator is exhausted or closed.
    Raises ``ValueError`` at once (not on first iteration) for a format other than jsonl or csv.
    """
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown export format {fmt!r}: jsonl or csv")
    return _export(db, fmt, since)


def _export(db: Database, fmt: str, since: datetime | None) -> Iterator[str]:
    events = audit_events
    query = sa.select(events).order_by(events.c.seq)
    if since is not None:
        query = query.where(events.c.at >= since)
    buffer = io.StringIO()
    # RFC 4180 line ends: with them the writer also quotes a field holding a lone CR.
    writer = csv.writer(buffer)

    def csv_line(cells: Sequence[object]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([_cell(c) for c in cells])
        return buffer.getvalue()

    with db.reader() as conn:
        if fmt == "csv":
            yield csv_line(_COLUMNS)
        for row in conn.execute(query.execution_options(yield_per=1000)):
            record = {"seq": row.seq, "at": iso(row.at), "request_id": row.request_id, "type": row.type,
                      "actor": row.actor, "data": row.data, "prev_mac": row.prev_mac, "mac": row.mac}
            if fmt == "jsonl":
                yield canonical_json(record) + "\n"
            else:
                yield csv_line([record[c] if c != "data" else canonical_json(record[c]) for c in _COLUMNS])
