"""Alembic migrations on SQLite and PostgreSQL: upgrade, downgrade, the schema equals
``store.metadata``, and a database that is behind is refused with a message naming the fix."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from handlers import errors
from provisioning import store
from provisioning.store import Database
from tests.fakes.db_fixtures import AUDIT_KEY

pytest_plugins = ["tests.fakes.db_fixtures"]

TABLES = {"requests", "idempotency_keys", "decision_keys", "step_outcomes", "timers", "workspaces", "grants",
          "tokens", "audit_events", "audit_head", "gpu_signals", "gpu_holds", "cost_reports", "gpu_usage",
          "cost_digests", "slack_inbox", "notification_outbox", "thread_messages", "drift_reports",
          "slack_signatures"}


@pytest.fixture
def empty(db_url: str) -> Database:
    return Database(db_url, audit_key=AUDIT_KEY)


def tables(db: Database) -> set[str]:
    with db.reader() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_upgrade_to_head_and_downgrade_to_base(empty: Database) -> None:
    try:
        assert empty.current_revision() is None
        empty.migrate()
        assert tables(empty) == TABLES | {"alembic_version"}
        assert empty.current_revision() == empty.head_revision()
        with empty.reader() as conn:
            assert tuple(conn.execute(sa.select(store.audit_head)).one()) == (1, 0, store.GENESIS_MAC)
        empty.migrate()  # a second run is a no-op
        empty.downgrade("base")
        assert tables(empty) == {"alembic_version"}
        assert empty.current_revision() is None
        empty.migrate()  # and back up again from base
        assert tables(empty) == TABLES | {"alembic_version"}
    finally:
        empty.dispose()


def test_the_migrated_schema_matches_store_metadata(empty: Database) -> None:
    try:
        empty.migrate()
        with empty.reader() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, store.metadata)
        assert diff == []
        # The comparison is not vacuous: a column the migration lacks shows up.
        changed = sa.MetaData()
        for table in store.metadata.tables.values():
            table.to_metadata(changed)
        sa.Table("requests", changed, sa.Column("extra", sa.Integer()), extend_existing=True)
        with empty.reader() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), changed)
        assert [d[0] for d in diff] == ["add_column"]
    finally:
        empty.dispose()


def test_check_migrated_refuses_an_empty_database(empty: Database) -> None:
    try:
        with pytest.raises(errors.KfError, match="kfbot migrate"):
            empty.check_migrated()
        empty.migrate()
        empty.check_migrated()
    finally:
        empty.dispose()


def test_check_migrated_refuses_an_unknown_revision(empty: Database) -> None:
    try:
        empty.migrate()
        with empty.engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
        with pytest.raises(errors.KfError, match="kfbot migrate") as caught:
            empty.check_migrated()
        assert "ffff" in caught.value.user_message
    finally:
        empty.dispose()


def test_constructing_a_database_does_no_io(tmp_path: object) -> None:
    db = Database("sqlite:////nonexistent-dir/never/kfbot.db", audit_key=b"")
    assert "sqlite" in repr(db)
    db.dispose()  # nothing was created, nothing to dispose
    with pytest.raises(errors.KfError, match="Unsupported"):
        Database("mysql://x@y/z", audit_key=b"")
