"""The search task's outage policy: a store that is down is retried, not acked and forgotten.

Pure retry logic: the store is a stand-in that fails the first calls the way SQLAlchemy
does while PostgreSQL restarts; the task runs eagerly (`apply`), where Celery re-runs a
retried task at once. The real restart is exercised by `make soak` (docs/reliability.md).
"""

from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

from rstar_worker import tasks


class FlakyStore:
    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

    def task_spec(self, task_id):
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return SimpleNamespace(state="done")


def test_a_store_outage_retries_the_task_until_the_store_is_back(monkeypatch):
    store = FlakyStore(failures=3)
    monkeypatch.setattr(tasks, "store", lambda: store)
    result = tasks.search.apply(args=[7])
    assert result.get() == "done" and store.calls == 4


def test_a_store_that_stays_down_ends_the_retries_with_its_error(monkeypatch):
    store = FlakyStore(failures=100)
    monkeypatch.setattr(tasks, "store", lambda: store)
    monkeypatch.setattr(tasks, "DB_OUTAGE_RETRIES", 2)
    result = tasks.search.apply(args=[7])
    with pytest.raises(OperationalError):
        result.get()
    assert store.calls == 3
