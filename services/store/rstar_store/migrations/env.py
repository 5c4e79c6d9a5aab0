"""Alembic environment of the rstar store: runs the migrations in `versions/`.

Used by `rstar_store.db.migrate()` (which passes its own connection) and by the `alembic`
command line with `-c services/store/rstar_store/alembic.ini` (which builds an engine from
`sqlalchemy.url`, i.e. `RSTAR_DATABASE_URL`).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from rstar_store.db import create_engine_from_url, database_url
from rstar_store.models import Base

config = context.config
target_metadata = Base.metadata
# Any constant: every process migrating the same PostgreSQL database takes this lock, so
# workers starting together do not race to create the same tables.
_MIGRATION_LOCK_KEY = 0x72737461  # "rsta"


def _url() -> str:
    if config.config_file_name is None:  # migrate(): the URL it was given
        return database_url(config.get_main_option("sqlalchemy.url"))
    # The alembic command line: the same database the services use, else the ini's.
    return database_url(os.environ.get("RSTAR_DATABASE_URL") or config.get_main_option("sqlalchemy.url"))


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (`alembic upgrade head --sql`) instead of running it."""
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until the migration transaction ends.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = create_engine_from_url(_url())
    try:
        with engine.connect() as connection:
            _run_with(connection)
    finally:
        engine.dispose()


if config.config_file_name is not None:
    fileConfig(config.config_file_name)
if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
