"""Alembic migrations; a package so that `core.store.upgrade_database` finds them when installed."""
