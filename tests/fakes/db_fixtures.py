"""pytest fixtures for real databases (load with ``pytest_plugins = ["tests.fakes.db_fixtures"]``).

* ``sqlite_url``: a fresh SQLite file under ``tmp_path``.
* ``postgres_url``: the PostgreSQL server of ``KFBOT_TEST_POSTGRES_URL`` (default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) with a schema of its own: the URL sets
  ``search_path`` to a fresh schema that is dropped afterwards, so tests (and developers running
  tests at the same time on one server) never see each other's tables.
* ``db_url``: both of the above, as ``params=["sqlite", "postgres"]``; the postgres case carries
  ``@pytest.mark.postgres``.
* ``database``: a migrated ``provisioning.store.Database`` on ``db_url``, disposed afterwards.

An unreachable server skips the postgres tests locally but fails them when ``CI`` is set: CI
must never pass without the concurrency proofs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

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


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    schema = f"kfbot_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(postgres_server).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A connection a failed test leaked could hold a lock: give up rather than hang.
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite:///{os.path.join(tmp_path, 'kfbot.db')}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url, audit_key=AUDIT_KEY)
    db.migrate()
    try:
        yield db
    finally:
        db.dispose()
