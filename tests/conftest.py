"""Shared fixtures: the real small model, prepared once into the model cache; fresh
PostgreSQL databases for the tests that run on a real store.

PostgreSQL: `RSTAR_TEST_POSTGRES_URL` (default: postgres on 127.0.0.1:5432, trust auth) is
an admin connection used to create uniquely named databases for this session and drop
them afterwards; a test that asks for one is skipped, with the reason, when it is unreachable.
"""

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

# tests/fakes.py is imported as `fakes` by the core tests.
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RSTAR_MODEL_CACHE", str(REPO / ".cache" / "models"))
os.environ.setdefault("RSTAR_DATA_DIR", str(REPO.parent / "shared" / "data"))
# Services the tests start skip model compilation (their default): quick start-up.
os.environ.setdefault("RSTAR_ENFORCE_EAGER", "1")


@pytest.fixture(scope="session")
def model_dir() -> str:
    """SmolLM2-135M-Instruct as a bf16 safetensors directory (converted from the bundled GGUF)."""
    override = os.environ.get("RSTAR_TEST_MODEL_DIR")
    if override:
        return override
    from rstar_models.store import prepare_model

    return str(prepare_model())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["RSTAR_DATA_DIR"])
    if not (path / "eval").is_dir():
        pytest.skip(f"benchmark data not found at {path} (set RSTAR_DATA_DIR)")
    return path


ADMIN_URL = os.environ.get("RSTAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


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
