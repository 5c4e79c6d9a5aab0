"""Store fixtures: every store test runs on SQLite (a temp file) and on a real PostgreSQL.

PostgreSQL: `RSTAR_TEST_POSTGRES_URL` (default: postgres on 127.0.0.1:5432, trust auth) is
an admin connection used to create uniquely named databases for this session and drop
them afterwards. The PostgreSQL cases are skipped, with the reason, when it is unreachable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from rstar_store import Store, migrate

ADMIN_URL = os.environ.get("RSTAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]
# Every table but alembic_version: emptied between tests on the shared PostgreSQL database.
TABLES = "runs, batches, problems, search_tasks, search_results, trajectories, model_versions"


@pytest.fixture(scope="session")
def new_postgres_db() -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty PostgreSQL databases (SQLAlchemy URLs), dropped at the end."""
    import psycopg

    admin = make_url(ADMIN_URL).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    created: list[str] = []

    def create() -> str:
        name = f"rstar_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as exc:
            pytest.skip(f"PostgreSQL not reachable at {admin.render_as_string()} "
                        f"(set RSTAR_TEST_POSTGRES_URL): {exc}")
        created.append(name)
        return admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)

    yield create
    if created:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url(new_postgres_db) -> str:
    """One migrated database shared by the session's tests (emptied before each)."""
    url = new_postgres_db()
    migrate(url)
    return url


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        migrate(url)
        return url
    url = request.getfixturevalue("postgres_url")
    store = Store.from_url(url)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    store.close()
    return url


@pytest.fixture
def store(db_url) -> Iterator[Store]:
    store = Store.from_url(db_url)
    yield store
    store.close()
