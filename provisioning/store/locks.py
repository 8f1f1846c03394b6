"""Locks and leadership over the database: ``DbLock`` (a keyed lock for read-modify-write on one
remote object) and ``LeaderElection`` (which process runs the timer sweeper).

Both use PostgreSQL session advisory locks on dedicated connections, so separate processes
coordinate; on SQLite they are process-local, which is all a single-process deployment needs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from handlers import errors
from provisioning.store.database import Database, lock_key

_LOCK_NOT_AVAILABLE = "55P03"


class DbLock:
    """``provisioning.actions.KeyedLock`` backed by the database.

    PostgreSQL: a session advisory lock on a dedicated connection, so workers in different
    processes serialise read-modify-write on one remote object (an IAM policy). SQLite: one
    ``threading.Lock`` per key in this process; a SQLite deployment is a single process, so that
    is the same guarantee. Waiting longer than ``timeout`` raises ``TemporaryError`` (the engine
    retries the step later).
    """

    def __init__(self, database: Database, *, timeout: float = 60.0) -> None:
        self._db = database
        self._timeout = timeout

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        if not self._db.is_postgres:
            lock = self._db._local_lock(key)
            if not lock.acquire(timeout=self._timeout):
                raise errors.TemporaryError(f"Another worker is still changing {key}; trying again.")
            try:
                yield
            finally:
                lock.release()
            return
        with self._db.engine.connect() as conn:
            try:
                # SET LOCAL bounds only this wait; the session lock outlives the commit below, so
                # the connection does not sit idle in a transaction while the caller works.
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(self._timeout * 1000)}")
                conn.execute(sa.select(sa.func.pg_advisory_lock(lock_key("lock", key))))
                conn.commit()
            except OperationalError as exc:
                conn.rollback()
                if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                    raise errors.TemporaryError(
                        f"Another worker is still changing {key}; trying again.") from exc
                raise
            try:
                yield
            finally:
                try:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(lock_key("lock", key))))
                    conn.commit()
                except DBAPIError:
                    # The session is broken, which ends it and its locks; make sure the pool does
                    # not hand the connection out again.
                    conn.invalidate()


class LeaderElection:
    """Which process runs the timer sweeper.

    PostgreSQL: ``pg_try_advisory_lock`` taken on a dedicated connection and held for as long as
    leadership lasts; if that connection dies the server drops the lock and another process can
    take over, which ``still_leader()`` notices by pinging the connection. SQLite: the single
    process is always the leader.
    """

    def __init__(self, database: Database, name: str) -> None:
        self._db = database
        self._name = name
        self._conn: Connection | None = None
        self._leader = False
        self._mutex = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leader

    def try_acquire(self) -> bool:
        with self._mutex:
            if not self._db.is_postgres:
                self._leader = True
                return True
            if self._conn is not None and self._ping():
                return True
            conn = self._db.engine.connect()
            try:
                query = sa.select(sa.func.pg_try_advisory_lock(lock_key("leader", self._name)))
                got = bool(conn.execute(query).scalar_one())
                conn.commit()  # the session lock stays; no transaction stays open
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn, self._leader = conn, True
            return True

    def still_leader(self) -> bool:
        with self._mutex:
            if not self._db.is_postgres:
                return self._leader
            return self._conn is not None and self._ping()

    def _ping(self) -> bool:
        conn = self._conn
        assert conn is not None
        try:
            conn.exec_driver_sql("SELECT 1")
            conn.commit()
        except DBAPIError:
            conn.invalidate()
            conn.close()
            self._conn, self._leader = None, False
            return False
        return True

    def release(self) -> None:
        with self._mutex:
            conn, self._conn, self._leader = self._conn, None, False
            if conn is None:
                return
            try:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(lock_key("leader", self._name))))
                conn.commit()
            except DBAPIError:
                conn.invalidate()
            finally:
                conn.close()
