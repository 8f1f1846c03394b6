"""The unit of work: one transaction on one connection.

``SqlUnitOfWork`` is what the core gets (``handlers.ports.UnitOfWork``, nothing more); the step
engine, the timer sweeper and the facts use ``ProvisioningUnitOfWork``, which adds the work queue
and the registry, so the core cannot reach provisioning's internals even by accident.

SQLite allows one writer at a time, so every read-write unit of work starts with ``BEGIN
IMMEDIATE`` (see ``database.py``): writers queue on the database lock instead of failing later
when a read transaction tries to become a write transaction. A unit of work opened in a thread
that already holds one is made a reader automatically (it would otherwise wait for its own
thread): nested reads work, nested writes on SQLite do not (they time out) and are a bug anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from handlers.ports import AuditLog, DecisionKeys, RequestRepository, Timers
from provisioning.store.audit_chain import SqlAuditLog
from provisioning.store.cost import SqlCost
from provisioning.store.drift import SqlDriftReports
from provisioning.store.outbox import SqlOutbox
from provisioning.store.repositories import (
    SqlDecisionKeys,
    SqlRegistry,
    SqlRequestRepository,
    SqlTimers,
    SqlWork,
    Tx,
)
from provisioning.store.wakeup import WORK_CHANNEL

if TYPE_CHECKING:
    from handlers.ports import UnitOfWork

class SqlUnitOfWork:
    """``handlers.ports.UnitOfWork`` and nothing more: one transaction on one connection.

    ``commit()`` may be called more than once (the core commits, then records where the Slack
    card went and commits again): each commit ends the current transaction and the next
    statement begins a new one. Leaving the ``with`` block rolls back whatever was not committed.
    """

    requests: RequestRepository
    decisions: DecisionKeys
    audit: AuditLog
    timers: Timers

    def __init__(self, engine: Engine, audit_key: bytes, now: Callable[[], datetime], *,
                 read_only: bool = False, writers: threading.local | None = None,
                 on_wake: Callable[[], None] | None = None) -> None:
        self._engine = engine
        self._on_wake = on_wake
        self._audit_key = audit_key
        self._now = now
        self._read_only = read_only
        self._writers = writers if writers is not None else threading.local()
        self._holds_write_lock = False
        self._conn: Connection | None = None
        self._tx: Tx | None = None

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the unit of work is not open; use it in a `with` block")
        return self._conn

    def __enter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError("a unit of work cannot be entered twice")
        conn = self._engine.connect()
        # On SQLite a unit of work opened while this thread already holds the write lock (facts
        # read inside a decision) would wait for itself until the busy timeout: it becomes a
        # DEFERRED reader instead, which WAL lets read beside the writer.
        nested = getattr(self._writers, "depth", 0) > 0
        if self._read_only or nested:
            conn = conn.execution_options(kfbot_sqlite_begin="DEFERRED")
        elif conn.dialect.name == "sqlite":
            self._writers.depth = getattr(self._writers, "depth", 0) + 1
            self._holds_write_lock = True
        self._conn = conn
        self._tx = Tx(conn)
        self._open(self._tx)
        return self

    def _open(self, tx: Tx) -> None:
        self.requests = SqlRequestRepository(tx)
        self.decisions = SqlDecisionKeys(tx, self._now)
        self.audit = SqlAuditLog(tx.conn, self._audit_key)
        self.timers = SqlTimers(tx)

    def __exit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if self._holds_write_lock:
            self._writers.depth -= 1
            self._holds_write_lock = False
        if conn is not None:
            try:
                conn.rollback()
            finally:
                conn.close()

    def commit(self) -> None:
        conn = self.connection
        wake = self._tx is not None and self._tx.wake
        if wake and conn.dialect.name == "postgresql":
            # Transactional: delivered to the other replicas' listeners when this commits, never
            # if it rolls back (provisioning.store.wakeup).
            conn.execute(sa.select(sa.func.pg_notify(WORK_CHANNEL, sa.func.current_schema())))
        conn.commit()
        if self._tx is not None:
            self._tx.wake = False
        if wake and self._on_wake is not None:
            self._on_wake()  # after the commit: a woken worker must see the row

    def rollback(self) -> None:
        self.connection.rollback()


class ProvisioningUnitOfWork(SqlUnitOfWork):
    """The same transaction with what only provisioning uses: the engine's and the sweeper's
    leases and step outcomes (``work``), the registry of what the bot made and the notices owed
    (``outbox``)."""

    work: SqlWork
    registry: SqlRegistry
    cost: SqlCost
    outbox: SqlOutbox
    drift: SqlDriftReports

    def _open(self, tx: Tx) -> None:
        super()._open(tx)
        self.work = SqlWork(tx)
        self.registry = SqlRegistry(tx)
        self.cost = SqlCost(tx)
        self.outbox = SqlOutbox(tx)
        self.drift = SqlDriftReports(tx)


if TYPE_CHECKING:

    def _conforms(uow: SqlUnitOfWork) -> UnitOfWork:  # mypy proves SqlUnitOfWork satisfies the port
        return uow
