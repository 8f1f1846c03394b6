"""``Database``: one database's lazily made engine, its migrations and its units of work.

* **SQLite** is for a single process (the shell, a small deployment). It allows one writer at a
  time, so every read-write unit of work starts with ``BEGIN IMMEDIATE``: writers queue on the
  database lock (busy timeout) instead of failing later when a read transaction tries to become a
  write transaction, which would turn a lost race into "database is locked" rather than
  ``StaleVersion``. WAL mode lets read-only work (``uow(read_only=True)``, ``reader()``) run
  beside a writer.
* **PostgreSQL** for several replicas: migrations take an advisory lock so two replicas starting at
  once do not both run one.

Nothing here does I/O at import time: the engine is created when the composition root first uses it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from handlers import errors
from provisioning.store.repositories import lock_key
from provisioning.store.uow import ProvisioningUnitOfWork, SqlUnitOfWork
from provisioning.store.wakeup import PgWakeups, WorkSignal

__all__ = ["Database", "lock_key"]

if TYPE_CHECKING:
    import psycopg

_SQLITE_BUSY_TIMEOUT_MS = 30_000
EDGE_WRITE_TIMEOUT_MS = 2_000
"""How long one of the Slack edge's own writes (a signature, an inbox row) may wait for a lock or
run: Slack gives up on an answer after 3 s, so a write that has not finished by then must fail (the
person is told to try again) rather than be carried out after Slack told them it failed."""
_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (which would not BEGIN before a
    # SELECT or a SAVEPOINT); _sqlite_on_begin emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")  # writers queue, not fail
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite
    finally:
        cursor.close()


def _create_private_file(database: str | None) -> None:
    """Create an absent SQLite file as 0600 before SQLite does (0644 under the usual umask): it holds
    requests, plans and the audit trail. SQLite gives its -wal and -shm files the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except (FileExistsError, FileNotFoundError):  # kept as it is; a missing folder is SQLite's to report
        return


def _sqlite_on_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so read-then-write units of work are serialised
    # (see the module docstring); read-only units of work ask for DEFERRED.
    mode = conn.get_execution_options().get("kfbot_sqlite_begin", "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")


class Database:
    """One database: its lazily created engine, migrations, and units of work.

    Args:
        url: ``sqlite:///./kfbot.db`` or ``postgresql+psycopg://user@host/db``.
        audit_key: the HMAC key of the audit chain (kept outside the database).
        now: clock for the few timestamps the store makes itself (decision keys).
    """

    def __init__(self, url: str, *, audit_key: bytes, now: Callable[[], datetime] | None = None) -> None:
        self.url = make_url(url)
        backend = self.url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise errors.KfError(f"Unsupported database `{backend}`: use sqlite:/// or postgresql+psycopg://.")
        self.audit_key = audit_key
        self._now = now or (lambda: datetime.now(UTC))
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._local_locks: dict[str, threading.Lock] = {}
        self._local_locks_guard = threading.Lock()
        self._sqlite_writers = threading.local()  # per thread: read-write units of work open now
        self.work_signal = WorkSignal()
        """Notified after a commit that made work claimable, by this process's units of work and,
        on PostgreSQL, by ``wakeups()``'s listener for the other replicas' (``store.wakeup``)."""
        self.outbox_signal = WorkSignal()
        """Notified after a commit that added notices to the outbox (``provisioning.publisher``)."""

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def is_postgres(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> Engine:
        if not self.is_postgres:
            _create_private_file(self.url.database)
            # A normal (queue) pool of file connections, shared across threads.
            engine = sa.create_engine(self.url, hide_parameters=True,
                                      connect_args={"check_same_thread": False,
                                                    "timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        # pre_ping: a connection the server dropped while pooled is replaced, not handed out.
        # SQLAlchemy's default pool (5 + 10 overflow) made a burst's threads queue for a connection
        # (profiled: ~12 ms per checkout at 100 concurrent commands); connections open lazily, so
        # a larger ceiling costs nothing idle. Two replicas stay well under PostgreSQL's 100.
        # hide_parameters (both engines): an error names the statement, never its values (a
        # command's text, a live response_url, a token's hash), so none reaches a log or a reply.
        return sa.create_engine(
            self.url, pool_pre_ping=True, pool_size=10, max_overflow=30, hide_parameters=True
        )

    def dispose(self) -> None:
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def uow(self, *, read_only: bool = False) -> ProvisioningUnitOfWork:
        """A unit of work with provisioning's work queue and registry. ``read_only`` only changes
        SQLite's BEGIN (DEFERRED: never waits for or blocks a writer); use it for reads nested
        inside another unit of work."""
        return ProvisioningUnitOfWork(self.engine, self.audit_key, self._now, read_only=read_only,
                                      writers=self._sqlite_writers, on_wake=self.work_signal.notify)

    def core_uow(self) -> SqlUnitOfWork:
        """A unit of work with only what ``handlers.ports.UnitOfWork`` declares: the core's."""
        return SqlUnitOfWork(self.engine, self.audit_key, self._now, writers=self._sqlite_writers,
                             on_wake=self.work_signal.notify)

    def wakeups(self) -> PgWakeups | None:
        """The listener for other processes' work notifications (PostgreSQL only; a SQLite
        deployment is one process, whose own commits notify ``work_signal`` directly)."""
        if not self.is_postgres:
            return None
        return PgWakeups(self._listen_connection, self.work_signal)

    def _listen_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg  # noqa: PLC0415 - only a PostgreSQL deployment needs it

        # The engine's own connect arguments (host, credentials, the search_path option), on a
        # connection of its own outside the pool: LISTEN lives as long as its session does.
        cargs, cparams = self.engine.dialect.create_connect_args(self.url)
        cparams.pop("context", None)
        # A listener that only waits would never notice a dead peer on its own: TCP keepalives
        # (and PgWakeups' periodic round trip) turn a silent loss into an error, hence a reconnect.
        for key, value in (("keepalives", 1), ("keepalives_idle", 30), ("keepalives_interval", 10),
                           ("keepalives_count", 3)):
            cparams.setdefault(key, value)
        return psycopg.Connection.connect(*cargs, **cparams, autocommit=True)

    @contextmanager
    def edge_writer(self) -> Iterator[Connection]:
        """A short write transaction for the Slack edge. On PostgreSQL it fails after
        ``EDGE_WRITE_TIMEOUT_MS`` waiting for a lock or running (``lock_timeout`` and
        ``statement_timeout``, local to it), instead of outlasting Slack's 3 s behind a lock another
        session holds. SQLite keeps its busy timeout: there the lock is only ever the one process's
        own short transactions, and a burst of commands queueing for it is served, not refused."""
        with self.engine.connect() as conn, conn.begin():
            if self.is_postgres:
                ms = EDGE_WRITE_TIMEOUT_MS
                # SET LOCAL of both in one round trip (set_config(..., true) is transaction-local).
                conn.execute(
                    sa.text(
                        "SELECT set_config('lock_timeout', :ms, true),"
                        " set_config('statement_timeout', :ms, true)"
                    ),
                    {"ms": f"{ms}ms"},
                )
            yield conn

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """A connection for reads (verify, export) that never takes SQLite's write lock."""
        with self.engine.connect() as conn:
            yield conn.execution_options(kfbot_sqlite_begin="DEFERRED")

    # -- migrations ---------------------------------------------------------------------------
    def _alembic_config(self, connection: Connection | None = None) -> Any:
        from alembic.config import Config  # noqa: PLC0415 - alembic is only needed to migrate

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS_DIR))
        config.set_main_option("path_separator", "os")
        # ConfigParser interpolates '%': an escaped password must survive it.
        config.set_main_option("sqlalchemy.url",
                               self.url.render_as_string(hide_password=False).replace("%", "%%"))
        if connection is not None:
            config.attributes["connection"] = connection
        return config

    def _run_alembic(self, command_name: str, revision: str) -> None:
        from alembic import command  # noqa: PLC0415

        with self.engine.begin() as conn:
            if self.is_postgres:
                # Two replicas starting at once must not both run the same migration.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key("migrate", "schema"))))
            getattr(command, command_name)(self._alembic_config(conn), revision)

    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to the newest revision (``kfbot migrate``), or to ``revision``."""
        self._run_alembic("upgrade", revision)

    def downgrade(self, revision: str) -> None:
        self._run_alembic("downgrade", revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        with self.reader() as conn:
            revision: str | None = MigrationContext.configure(conn).get_current_revision()
            return revision

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory  # noqa: PLC0415

        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        if head is None:  # pragma: no cover - the package always ships revisions
            raise RuntimeError("no migrations found")
        return str(head)

    def check_migrated(self) -> None:
        """Raise ``KfError`` unless the schema is at the newest revision (``serve`` refuses to start)."""
        current, head = self.current_revision(), self.head_revision()
        if current == head:
            return
        where = self.url.render_as_string(hide_password=True)
        if current is None:
            raise errors.KfError(f"The database {where} has no kfbot tables yet: run `kfbot migrate`.")
        raise errors.KfError(
            f"The database {where} is at schema revision {current}, this kfbot needs {head}: "
            "run `kfbot migrate` (or, if the database is newer, upgrade kfbot)."
        )

    # -- process-local locks (SQLite) ---------------------------------------------------------
    def _local_lock(self, key: str) -> threading.Lock:
        with self._local_locks_guard:
            return self._local_locks.setdefault(key, threading.Lock())


