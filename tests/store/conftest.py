"""Store fixtures: every store test runs on SQLite (a temp file) and on a real PostgreSQL.

PostgreSQL: fresh databases from `new_postgres_db` (tests/conftest.py); the PostgreSQL cases
are skipped, with the reason, when it is unreachable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from rstar_store import Store, migrate

BACKENDS = ["sqlite", "postgresql"]
# Every table but alembic_version: emptied between tests on the shared PostgreSQL database.
TABLES = "runs, batches, problems, search_tasks, search_results, trajectories, model_versions"


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
