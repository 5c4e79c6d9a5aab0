"""Fixtures of the integration tests that run `rstar evolve` in this process."""

from __future__ import annotations

import pytest


@pytest.fixture
def evolve_store(tmp_path):
    """A migrated SQLite store (`tmp_path/rstar.db`) and a model registry (`tmp_path/store`) over it."""
    from rstar_models.registry import ModelRegistry
    from rstar_store import Store, migrate

    url = f"sqlite:///{tmp_path / 'rstar.db'}"
    migrate(url)
    store = Store.from_url(url)
    try:
        yield store, ModelRegistry(tmp_path / "store", store)
    finally:
        store.close()
