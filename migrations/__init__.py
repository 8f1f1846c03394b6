"""Alembic migrations of kfbot's database (``kfbot migrate`` runs them through
``provisioning.store.Database.migrate``); this package only marks where the scripts live."""
