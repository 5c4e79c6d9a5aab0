"""Web console fixtures: a real store (SQLite file and PostgreSQL) holding runs with stored trees.

PostgreSQL: as in tests/store, `RSTAR_TEST_POSTGRES_URL` (default: trust auth on
127.0.0.1:5432) creates a database per test, dropped at the end of the session; skipped
with the reason when unreachable. The data is `console_data.populate`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from console_data import populate
from rstar_store import Store, migrate



@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'web.db'}"
    else:
        url = request.getfixturevalue("new_postgres_db")()
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
