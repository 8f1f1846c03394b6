"""pytest fixtures for real databases (load with ``pytest_plugins = ["tests.fakes.db_fixtures"]``).

* ``sqlite_url``: a fresh SQLite file under ``tmp_path``.
* ``postgres_url``: the PostgreSQL server of ``KFBOT_TEST_POSTGRES_URL`` (default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) with a schema of its own: the URL sets
  ``search_path`` to a fresh schema that is dropped afterwards, so tests (and developers running
  tests at the same time on one server) never see each other's tables.
* ``db_url``: both of the above, as ``params=["sqlite", "postgres"]``; the postgres case carries
  ``@pytest.mark.postgres``.
* ``database``: a migrated, empty ``provisioning.store.Database`` on each backend (the schema
  is migrated once per session and emptied for each test), disposed afterwards.

An unreachable server skips the postgres tests locally but fails them when ``CI`` is set: CI
must never pass without the concurrency proofs.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from provisioning import store
from provisioning.store import Database

POSTGRES_URL_ENV = "KFBOT_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
AUDIT_KEY = b"test-audit-key-not-secret"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The server URL, checked once per session."""
    url = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        message = f"PostgreSQL at {make_url(url).render_as_string(hide_password=True)} is unreachable: {exc}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


@contextmanager
def _fresh_schema(server_url: str) -> Iterator[str]:
    """A new schema, dropped afterwards; yields a URL whose ``search_path`` points at it."""
    schema = f"kfbot_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A connection a failed test leaked could hold a lock: give up rather than hang.
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """An empty schema of this test's own."""
    with _fresh_schema(postgres_server) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A path for a new SQLite file (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 'kfbot.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


# Migrating costs more than most tests, so ``database`` starts from a database migrated once per
# session: a copy of a migrated SQLite file, or a PostgreSQL schema emptied before each test.


@pytest.fixture(scope="session")
def _migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "kfbot.db"
    db = Database(f"sqlite:///{path}", audit_key=AUDIT_KEY)
    db.migrate()
    db.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


@pytest.fixture(scope="session")
def _migrated_postgres_url(postgres_server: str) -> Iterator[str]:
    with _fresh_schema(postgres_server) as url:
        db = Database(url, audit_key=AUDIT_KEY)
        db.migrate()
        db.dispose()
        yield url


def _empty_tables(db: Database) -> None:
    names = ", ".join(f'"{t.name}"' for t in store.metadata.sorted_tables if t.name != "audit_head")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        conn.execute(sa.update(store.audit_head).values(seq=0, mac=store.GENESIS_MAC))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty ``Database`` on each backend, disposed afterwards."""
    if request.param == "sqlite":
        path = tmp_path / "kfbot.db"
        shutil.copyfile(request.getfixturevalue("_migrated_sqlite_file"), path)
        db = Database(f"sqlite:///{path}", audit_key=AUDIT_KEY)
    else:
        db = Database(request.getfixturevalue("_migrated_postgres_url"), audit_key=AUDIT_KEY)
        _empty_tables(db)
    try:
        yield db
    finally:
        db.dispose()
