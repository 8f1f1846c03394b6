"""SQL storage: requests, step outcomes, timers, idempotency keys, the registry of what the bot
made, and the audit chain's tables.

The package in parts: ``schema`` (the tables, SQLAlchemy Core), ``repositories`` (queries over
one unit of work's connection), ``uow`` (the unit of work: the core's port, and provisioning's
wider view), ``database`` (engine, SQLite/PostgreSQL setup, migrations), ``locks`` (keyed locks,
leader election). This module is their public surface for the rest of provisioning.

Concurrency model
-----------------
* **One unit of work = one transaction on one connection.** ``Database.uow()`` hands out a
  unit of work; leaving it without ``commit()`` rolls back. The core writes a request, its
  audit events and its timers in one such transaction, so they commit together or not at all.
* **Optimistic versions for decisions.** ``save`` is ``UPDATE … WHERE id = :id AND version =
  :expected``; a zero rowcount means another writer won (``StaleVersion``). On PostgreSQL the
  second UPDATE waits for the first one's row lock and then re-checks the version, so of two
  admins approving at once exactly one succeeds.
* **Leases for work.** A worker claims a request or a timer by setting ``claimed_by`` and
  ``lease_until`` in a short transaction; on PostgreSQL the candidate row is picked with ``SELECT …
  FOR UPDATE SKIP LOCKED`` so two workers never wait on, or both take, the same row. Every write a
  worker makes afterwards (``save_claimed``, ``record_step``) first re-reads the claim under a row
  lock in the same transaction, so a worker whose lease expired (and was taken over) writes nothing
  and gets ``LeaseLost``.
* **SQLite** is for a single process (the shell, a small deployment). It allows one writer at a
  time, so every read-write unit of work starts with ``BEGIN IMMEDIATE``: writers queue on the
  database lock (busy timeout) instead of failing later when a read transaction tries to become a
  write transaction, which would turn a lost race into "database is locked" rather than
  ``StaleVersion``. WAL mode lets read-only work (``uow(read_only=True)``, ``reader()``) run
  beside a writer. A unit of work opened in a thread that already holds one is made such a
  reader automatically (it would otherwise wait for its own thread): nested reads work, nested
  writes on SQLite do not (they time out) and are a bug anyway.
* ``DbLock`` and ``LeaderElection`` use PostgreSQL session advisory locks on dedicated
  connections, so separate processes coordinate; on SQLite they are process-local, which is all a
  single-process deployment needs.

Nothing here does I/O at import time: engines are created lazily by ``Database`` when the
composition root first uses one.
"""


from provisioning.store.cost import ReportRow, SqlCost
from provisioning.store.database import Database
from provisioning.store.inbox import InboxItem, SqlInbox
from provisioning.store.locks import DbLock, LeaderElection
from provisioning.store.outbox import Notice, Outbox, SqlOutbox
from provisioning.store.replay import SeenSignatures
from provisioning.store.repositories import LeaseLost, SqlRegistry, SqlWork, StepRecord, TimerRow
from provisioning.store.schema import (
    GENESIS_MAC,
    UtcDateTime,
    audit_events,
    audit_head,
    decision_keys,
    grants,
    idempotency_keys,
    metadata,
    requests,
    step_outcomes,
    timers,
    tokens,
    workspaces,
)
from provisioning.store.uow import ProvisioningUnitOfWork, SqlUnitOfWork
from provisioning.store.usage import NodeUsage, UsageLedger

__all__ = [
    "GENESIS_MAC",
    "Database",
    "DbLock",
    "InboxItem",
    "LeaderElection",
    "LeaseLost",
    "NodeUsage",
    "Notice",
    "Outbox",
    "ProvisioningUnitOfWork",
    "ReportRow",
    "SeenSignatures",
    "SqlCost",
    "SqlInbox",
    "SqlOutbox",
    "SqlRegistry",
    "SqlUnitOfWork",
    "SqlWork",
    "StepRecord",
    "TimerRow",
    "UsageLedger",
    "UtcDateTime",
    "audit_events",
    "audit_head",
    "decision_keys",
    "grants",
    "idempotency_keys",
    "metadata",
    "requests",
    "step_outcomes",
    "timers",
    "tokens",
    "workspaces",
]
