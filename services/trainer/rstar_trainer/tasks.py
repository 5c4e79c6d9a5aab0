"""The Celery task of the trainer: `rstar.train` on the `train` queue runs one `TrainJob`.

Thin: the job's JSON comes in, `run_train_job` trains and registers, and the step's state
in the store is what the `rstar evolve --distributed` driver waits on. Delivery is
`acks_late` with `reject_on_worker_lost`: a trainer killed mid-run gets the message again
and resumes from its last checkpoint; a finished step is never trained twice. A job that
fails is recorded on its step with the reason and not retried (training errors are not
transient: bad data, a missing model, a full disk).

The task shares the Celery app of the search workers (`rstar_worker.app`: broker wiring
and queue names), not their code.
"""

from __future__ import annotations

import logging
import threading

from rstar_worker.app import app

from .jobs import TrainJob, run_train_job

__all__ = ["TRAIN_TASK", "train"]

log = logging.getLogger(__name__)

TRAIN_TASK = "rstar.train"

_lock = threading.Lock()
_registry = None


def _shared_registry():
    """One registry (and database pool) per trainer process."""
    global _registry
    from rstar_models.registry import ModelRegistry

    with _lock:
        if _registry is None:
            _registry = ModelRegistry.from_env()
        return _registry


@app.task(name=TRAIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def train(self, job: dict) -> str:
    spec = TrainJob.from_json(job)
    registry = _shared_registry()
    try:
        result = run_train_job(spec, registry.db, registry, progress_bar=False, trained_by=self.request.hostname)
    except Exception:
        log.exception("%s of run %s round %d failed", spec.step, spec.run, spec.round)
        return "failed"
    return result["version"]
