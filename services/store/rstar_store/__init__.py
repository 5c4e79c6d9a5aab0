"""rstar store: the system of record (PostgreSQL; SQLite in embedded mode).

Runs, enqueued batches of problems, search tasks and their results (trees and extracted
trajectories), model versions (lineage, status, promotions) and the self-evolution
driver's steps, behind the small `Store` repository. Schema changes go
through the Alembic migrations shipped in this package (`migrate()`,
`python -m rstar_store migrate`).
"""

from .db import create_engine_from_url, database_url, migrate
from .repository import EnqueueResult, EvolveStep, ModelVersionInfo, RunInfo, RunProgress, Store, TaskSpec

__all__ = [
    "EnqueueResult",
    "EvolveStep",
    "ModelVersionInfo",
    "RunInfo",
    "RunProgress",
    "Store",
    "TaskSpec",
    "create_engine_from_url",
    "database_url",
    "migrate",
]
