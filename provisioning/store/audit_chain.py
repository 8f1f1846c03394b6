"""The audit chain's writing half: the MAC of a row, the secret check, and ``SqlAuditLog`` (the
``handlers.ports.AuditLog`` of a unit of work). The chain's design, and its verify and export, are
in ``provisioning/audit.py``."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from handlers.model import Event, EventType
from handlers.plan import JSON, canonical_json
from provisioning.store.schema import audit_events, audit_head

_SECRET_WORDS = ("password", "token", "secret", "hash", "kubeconfig")
# imds_tokens is EC2's metadata mode ("required"/"optional") in a launch template's params.
_ALLOWED_KEYS = frozenset({"fingerprint", "token_id", "imds_tokens"})


def check_no_secrets(data: JSON, path: str = "data") -> None:
    """Raise ``ValueError`` if any key, at any depth, looks like it holds a secret."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            name = str(key).lower()
            if name not in _ALLOWED_KEYS and any(word in name for word in _SECRET_WORDS):
                raise ValueError(f"audit data {path}.{key} looks like a secret; log a fingerprint instead")
            check_no_secrets(value, f"{path}.{key}")
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            check_no_secrets(value, f"{path}[{i}]")


def iso(at: datetime) -> str:
    # Fixed precision and zone, so the text MACed at append is the text rebuilt at verify.
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def compute_mac(key: bytes, *, seq: int, at: datetime, request_id: str | None, type_: str, actor: str | None,
                data: JSON, prev_mac: str) -> str:
    body = canonical_json({"seq": seq, "at": iso(at), "request_id": request_id, "type": type_,
                           "actor": actor, "data": data})
    return hmac.new(key, body.encode() + prev_mac.encode(), hashlib.sha256).hexdigest()


class SqlAuditLog:
    """``handlers.ports.AuditLog`` writing into the caller's transaction."""

    def trail(self, request_id: str) -> list[Event]:
        """The request's events in order, keeping only rows whose MAC this key computes: a row
        edited or inserted without the key is left out, so it can authorize nothing. (A deleted
        row does not show here; ``verify`` names it.)"""
        events = audit_events
        rows = self._conn.execute(
            sa.select(events).where(events.c.request_id == request_id).order_by(events.c.seq)
        )
        trail = []
        for row in rows:
            mac = compute_mac(self._key, seq=row.seq, at=row.at, request_id=row.request_id, type_=row.type,
                              actor=row.actor, data=row.data, prev_mac=row.prev_mac)
            if not hmac.compare_digest(mac, row.mac):
                continue
            try:
                type_ = EventType(row.type)
            except ValueError:
                continue
            trail.append(Event(type_, row.request_id, row.at, row.actor, dict(row.data)))
        return trail

    def __init__(self, connection: Connection, key: bytes) -> None:
        self._conn = connection
        self._key = key

    def append(self, events: Sequence[Event]) -> None:
        if not events:
            return
        prepared = []
        for event in events:
            if event.at.tzinfo is None:
                raise ValueError(f"audit event {event.type} has a naive timestamp")
            check_no_secrets(event.data)
            # Through JSON and back: what is stored (tuples become lists, keys strings) is exactly
            # what was MACed, so verify recomputes the same bytes.
            data = json.loads(canonical_json(dict(event.data)))
            prepared.append((event, data))
        head = self._conn.execute(
            sa.select(audit_head.c.seq, audit_head.c.mac)
            .where(audit_head.c.id == 1)
            .with_for_update()
        ).first()
        if head is None:
            raise RuntimeError("the audit chain head row is missing: run `kfbot migrate`")
        seq, prev = int(head.seq), str(head.mac)
        rows: list[dict[str, Any]] = []
        for event, data in prepared:
            seq += 1
            type_ = str(event.type.value)
            mac = compute_mac(self._key, seq=seq, at=event.at, request_id=event.request_id, type_=type_,
                              actor=event.actor, data=data, prev_mac=prev)
            rows.append({"seq": seq, "at": event.at, "request_id": event.request_id, "type": type_,
                         "actor": event.actor, "data": data, "prev_mac": prev, "mac": mac})
            prev = mac
        self._conn.execute(sa.insert(audit_events), rows)
        self._conn.execute(
            sa.update(audit_head).where(audit_head.c.id == 1).values(seq=seq, mac=prev)
        )
