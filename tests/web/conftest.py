"""Web console fixtures: a real store (SQLite file and PostgreSQL) holding runs with stored trees.

PostgreSQL: as in tests/store, `RSTAR_TEST_POSTGRES_URL` (default: trust auth on
127.0.0.1:5432) creates a database per test, dropped at the end of the session; skipped
with the reason when unreachable. The data is `console_data.populate`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from console_data import populate
from rstar_store import Store, migrate

ADMIN_URL = os.environ.get("RSTAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[callable]:
    import psycopg

    admin = make_url(ADMIN_URL).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    created: list[str] = []

    def create() -> str:
        name = f"rstar_web_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as exc:
            pytest.skip(f"PostgreSQL not reachable at {admin.render_as_string()}: {exc}")
        created.append(name)
        return admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)

    yield create
    if created:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'web.db'}"
    else:
        url = request.getfixturevalue("postgres_admin")()
    migrate(url)
    return url


@pytest.fixture
def store(db_url) -> Iterator[Store]:
    store = Store.from_url(db_url)
    yield store
    store.close()


@pytest.fixture
def tasks(store) -> dict[str, int]:
    return populate(store)
