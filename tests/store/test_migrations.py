"""The Alembic migrations: they build exactly the models' schema, go down to base and up again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from rstar_store import create_engine_from_url, migrate
from rstar_store.db import alembic_config, database_url
from rstar_store.models import Base

TABLES = {"runs", "batches", "problems", "search_tasks", "search_results", "trajectories", "model_versions",
          "model_promotions", "evolve_steps", "search_snapshots"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("new_postgres_db")()


def test_migrations_match_models_and_downgrade(empty_url):
    migrate(empty_url)
    engine = create_engine_from_url(empty_url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []

        command.downgrade(alembic_config(empty_url), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

        migrate(empty_url)  # and back up: the downgrade left nothing behind
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    finally:
        engine.dispose()


def test_migrate_command_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "RSTAR_DATABASE_URL": url}

    done = subprocess.run([sys.executable, "-m", "rstar_store", "migrate"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    engine = create_engine_from_url(url)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_database_url_resolution(monkeypatch):
    monkeypatch.delenv("RSTAR_DATABASE_URL", raising=False)
    assert database_url() == "sqlite:///./rstar.db"
    monkeypatch.setenv("RSTAR_DATABASE_URL", "postgresql://u@db:5432/rstar")
    assert database_url() == "postgresql+psycopg://u@db:5432/rstar"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
