"""External command-line tools some tests use when present, a free local port, a test stack, and
scratch directories that module-scoped fixtures remove when their module is done.

`make deploy-tools` installs docker-compose with apt and unpacks Debian's prometheus
package (prometheus, promtool) into .cache/tools without installing it: no root needed
and no daemon started. Tests that need a tool skip without it (`needs`).
"""

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

UNPACKED = Path(__file__).resolve().parents[1] / ".cache" / "tools" / "usr" / "bin"


def find_tool(name: str) -> str | None:
    """The tool on PATH, else the one `make deploy-tools` unpacked, else None."""
    return shutil.which(name) or shutil.which(name, path=str(UNPACKED))


def needs(tool: str):
    """Skip the test when `tool` cannot be found."""
    return pytest.mark.skipif(find_tool(tool) is None, reason=f"{tool} not available (make deploy-tools)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def scratch_dir(tmp_path_factory, name: str):
    """A fresh directory under pytest's base temp, removed when the block ends.

    For module-scoped fixtures that hold trained models and checkpoints (gigabytes each):
    pytest keeps those directories until the session ends, and a whole suite of them fills
    a small disk. Function-scoped `tmp_path` is cleaned by `tmp_path_retention_policy`.
    """
    path = tmp_path_factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running_stack(spec, timeout_s: float = 300):
    """`rstar up`'s processes for `spec` while the block runs; afterwards its database and queues are gone.

    `spec.database_url` must name a database of its own (it is dropped) and `spec.env` a
    `RSTAR_QUEUE_PREFIX` of its own (its queues are deleted).
    """
    import psycopg
    from kombu import Connection
    from sqlalchemy.engine import make_url

    from rstar_cli.launcher import start_stack, stop_stack, wait_healthy

    admin = os.environ.get("RSTAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    start_stack(spec)
    try:
        wait_healthy(spec, timeout_s=timeout_s)
        yield spec
    finally:
        stop_stack(spec.run_dir, grace_s=10)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{make_url(spec.database_url).database}" WITH (FORCE)')
        with Connection(spec.broker_url) as conn:
            for name in ("search", "eval", "train"):
                conn.default_channel.queue_delete(spec.env["RSTAR_QUEUE_PREFIX"] + name)
