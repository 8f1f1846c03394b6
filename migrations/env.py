"""Alembic environment for kfbot.

``provisioning.store.Database.migrate`` (what ``kfbot migrate`` and the tests call) opens the
connection itself and passes it in ``config.attributes["connection"]``: the migration then runs
inside that caller's transaction, with the same SQLite pragmas and PostgreSQL search path. Only
when Alembic's own command line runs this file is a connection made here, through ``Database``
so the engine is configured the same way.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from provisioning import store

config = context.config
target_metadata = store.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or run `kfbot migrate`")
    database = store.Database(url, audit_key=b"")
    try:
        with database.engine.begin() as conn:
            _run(conn)
    finally:
        database.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
