"""Engines and migrations: where the database is and how its schema gets to the latest revision.

`database_url()` resolves the URL (argument, else `RSTAR_DATABASE_URL`, else a SQLite file
in the current directory for the embedded single-process mode). `create_engine_from_url()`
builds an engine tuned per backend. `migrate()` runs the Alembic migrations shipped inside
this package, so it works from an installed package and from any working directory.

Not here: the queries (see `repository`) and the schema itself (see `models`).
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["alembic_config", "create_engine_from_url", "database_url", "migrate"]

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///./rstar.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# How long a SQLite writer waits for another writer's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0
# Execution option that marks a read-only SQLite transaction (plain deferred BEGIN).
SQLITE_READ_ONLY = "rstar_read_only"

# NaN and infinity are not JSON: PostgreSQL rejects them and SQLite would store text that
# other readers cannot parse, so both backends refuse them the same way, up front.
_json_dumps = partial(json.dumps, ensure_ascii=False, allow_nan=False)


def database_url(url: str | None = None) -> str:
    """The URL to use: `url`, else `RSTAR_DATABASE_URL`, else the embedded SQLite file.

    Bare `postgresql://` / `postgres://` URLs get the psycopg 3 driver, the one installed
    (SQLAlchemy would otherwise pick psycopg2).
    """
    url = url or os.environ.get("RSTAR_DATABASE_URL") or DEFAULT_URL
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def create_engine_from_url(url: str | None = None, **kwargs) -> Engine:
    """An engine for `database_url(url)`; extra keyword arguments go to `create_engine`."""
    resolved = make_url(database_url(url))
    if resolved.get_backend_name() == "sqlite":
        engine = create_engine(resolved, json_serializer=_json_dumps,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **kwargs)
        _configure_sqlite(engine, in_memory=resolved.database in (None, "", ":memory:"))
        return engine
    # Workers hold connections for hours; a database restart must not poison the pool.
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(resolved, json_serializer=_json_dumps, **kwargs)


def _configure_sqlite(engine: Engine, *, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the sqlite3 module, which
        # starts no transaction for SELECT and so breaks read-then-write atomicity.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            # Readers do not block the writer (nor it them): status queries during a run.
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # A deferred transaction that reads and then writes fails at once with "database
        # is locked" when another writer got in between (SQLite cannot wait for a lock
        # upgrade), so writers take the write lock up front and queue on busy_timeout.
        # Embedded mode is one process: serialising its writers costs nothing that matters.
        read_only = conn.get_execution_options().get(SQLITE_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the migrations shipped in this package, for any `alembic.command`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser treats "%" as interpolation; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", database_url(url).replace("%", "%%"))
    return config


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (the latest by default)."""
    config = alembic_config(url)
    engine = create_engine_from_url(url)
    try:
        with engine.connect() as connection:
            # env.py uses this connection, so SQLite gets the same transaction handling
            # as the repository.
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
    log.info("database at %s migrated to %s", make_url(database_url(url)).render_as_string(), revision)
