"""The relational schema of the system of record, as SQLAlchemy 2.0 typed declarative models.

Tables: `runs`, `batches` (one enqueued file of problems), `problems` (per run),
`search_tasks` (one per run, problem, round and seed), `search_results` (exactly one per
task, with the whole tree), `search_snapshots` (the latest partial tree of a running
search, for the web console's live view), `trajectories` (root-to-terminal paths extracted from the tree
when it is written, for the data builders), `model_versions` (every trained checkpoint in
the model store: lineage, training data and config, metrics and roll-out status),
`model_promotions` (the history of promotions and rollbacks that a rollback walks) and
`evolve_steps` (the self-evolution driver's durable progress, one row per run, round and
step).

The same models serve PostgreSQL (production) and SQLite (embedded mode): JSON columns are
JSONB on PostgreSQL and JSON elsewhere, states are short strings guarded by CHECK
constraints (not native enums, which PostgreSQL cannot alter inside a transaction), and
timestamps are written by Python in UTC. The schema itself is created by the Alembic
migrations in `migrations/versions`, never by `metadata.create_all`; a test checks that
the two agree. No query logic lives here (see `repository`).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "Batch",
    "EvolveState",
    "EvolveStepRow",
    "ModelPromotion",
    "ModelStatus",
    "ModelVersion",
    "ProblemRow",
    "Run",
    "RunStatus",
    "SearchResultRow",
    "SearchSnapshot",
    "SearchTask",
    "TaskState",
    "TrajectoryRow",
]


class RunStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    DONE = "done"


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ModelStatus(enum.StrEnum):
    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    REJECTED = "rejected"


class EvolveState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# Difficulty labels of `rstar_core.data.difficulty`.
DIFFICULTIES = ("easy", "medium", "hard", "unknown")
TERMINAL_REASONS = ("answer", "no_answer", "too_many_errors", "max_depth")
# policy and ppm: the method's two models; orm and pqm: the baselines' outcome reward model
# and Q-value pointwise PRM.
MODEL_KINDS = ("policy", "ppm", "orm", "pqm")
PROMOTION_ACTIONS = ("promote", "rollback")

# Stable constraint names: Alembic needs them to drop or alter constraints later, and
# SQLite's batch mode needs them to rebuild a table.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Queryable JSON on PostgreSQL; plain JSON text on SQLite. SQL NULL (not JSON null) for
# None, so "IS NULL" means "no value".
JsonType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids for the
# tables that grow with every search.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _in(column: str, values: tuple[str, ...] | type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_in("status", RunStatus), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.ACTIVE)
    config_name: Mapped[str | None] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Batch(Base):
    """One enqueue of a problem file; re-enqueuing the same file records another batch."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint("round >= 0", name="round"),
        CheckConstraint("n_problems >= 0 AND n_new_tasks >= 0", name="counts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)
    # The search config snapshot the tasks of this batch run with.
    config: Mapped[dict[str, Any]] = mapped_column(JsonType)
    source: Mapped[str | None] = mapped_column(Text)
    n_problems: Mapped[int]
    n_new_tasks: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProblemRow(Base):
    __tablename__ = "problems"
    __table_args__ = (
        UniqueConstraint("run_id", "external_id"),
        # Target of the composite foreign key that keeps a task in its problem's run.
        UniqueConstraint("id", "run_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    # The id from the problem file, or a hash of the question when the file has none.
    external_id: Mapped[str] = mapped_column(String(200))
    question: Mapped[str] = mapped_column(Text)
    # Ground truth: a string, a number or a list; NULL when unknown.
    answer: Mapped[Any | None] = mapped_column(JsonType)


class SearchTask(Base):
    __tablename__ = "search_tasks"
    __table_args__ = (
        UniqueConstraint("run_id", "problem_id", "round", "seed"),
        ForeignKeyConstraint(["problem_id", "run_id"], ["problems.id", "problems.run_id"],
                             ondelete="CASCADE"),
        CheckConstraint(_in("state", TaskState), name="state"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # `rstar status` counts tasks by state per run (and round).
        Index("ix_search_tasks_run_round_state", "run_id", "round", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    problem_id: Mapped[int] = mapped_column(BigId)
    # The batch that first enqueued this task; its config snapshot is the task's config.
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    round: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default=TaskState.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    celery_id: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SearchResultRow(Base):
    __tablename__ = "search_results"
    __table_args__ = (CheckConstraint(_in("difficulty", DIFFICULTIES), name="difficulty"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # UNIQUE: the idempotency key of `record_result` (a redelivered task writes nothing).
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("search_tasks.id", ondelete="CASCADE"),
                                         unique=True)
    answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None]
    any_correct: Mapped[bool | None]
    difficulty: Mapped[str] = mapped_column(String(16))
    tokens: Mapped[int] = mapped_column(BigInteger)
    wall_s: Mapped[float] = mapped_column(Float)
    rollouts: Mapped[int]
    model_versions: Mapped[dict[str, Any]] = mapped_column(JsonType)
    stats: Mapped[dict[str, Any]] = mapped_column(JsonType)
    extra: Mapped[dict[str, Any]] = mapped_column(JsonType)
    tree: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SearchSnapshot(Base):
    """The latest partial tree of a running search, replaced every few seconds by its worker.

    One row per task: the web console's live view reads it while the search runs. The row
    is deleted when the final result is recorded (the result holds the whole tree); one
    left by a failed or interrupted attempt shows how far that attempt got.
    """

    __tablename__ = "search_snapshots"
    __table_args__ = (CheckConstraint("seq >= 1 AND n_nodes >= 0", name="counts"),)

    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("search_tasks.id", ondelete="CASCADE"),
                                         primary_key=True, autoincrement=False)
    # Bumped by every write, so a reader can tell a new snapshot from the one it has.
    seq: Mapped[int]
    n_nodes: Mapped[int]
    tree: Mapped[dict[str, Any]] = mapped_column(JsonType)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrajectoryRow(Base):
    __tablename__ = "trajectories"
    __table_args__ = (
        UniqueConstraint("result_id", "ordinal"),
        CheckConstraint(_in("terminal", TERMINAL_REASONS), name="terminal"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    result_id: Mapped[int] = mapped_column(BigId, ForeignKey("search_results.id", ondelete="CASCADE"))
    # Position among the tree's trajectories (the order of `rstar_core.data.trajectories`).
    ordinal: Mapped[int]
    # Tree node ids from the root's child down to the terminal.
    node_ids: Mapped[list[int]] = mapped_column(JsonType)
    steps: Mapped[list[str]] = mapped_column(JsonType)
    q_values: Mapped[list[float]] = mapped_column(JsonType)
    n_steps: Mapped[int]
    mean_q: Mapped[float] = mapped_column(Float)
    answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None]
    terminal: Mapped[str] = mapped_column(String(32))


class ModelVersion(Base):
    """A trained checkpoint in the model store, where it came from (lineage) and its status.

    At most one version per kind is `promoted` (the one the services serve): the store's
    promote and rollback keep it so, and a partial unique index makes the database refuse
    a second one.
    """

    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(_in("kind", MODEL_KINDS), name="kind"),
        CheckConstraint(_in("status", ModelStatus), name="status"),
        Index("ix_model_versions_kind_round", "kind", "round"),
        Index("uq_model_versions_promoted_kind", "kind", unique=True,
              sqlite_where=text("status = 'promoted'"), postgresql_where=text("status = 'promoted'")),
    )

    version: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Directory of the checkpoint inside the model store.
    path: Mapped[str] = mapped_column(Text)
    parent: Mapped[str | None] = mapped_column(ForeignKey("model_versions.version", ondelete="RESTRICT"))
    # The base model the training started from (a version, a path or a Hub id).
    base: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    round: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.CANDIDATE)
    # Dataset name -> {path, content_hash, counts, ...}: exactly what the training read.
    datasets: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    train_config: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When it was last promoted (kept after it is superseded; the history is in model_promotions).
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelPromotion(Base):
    """One promotion or rollback: which version became the promoted one, and which it replaced."""

    __tablename__ = "model_promotions"
    __table_args__ = (
        CheckConstraint(_in("kind", MODEL_KINDS), name="kind"),
        CheckConstraint(_in("action", PROMOTION_ACTIONS), name="action"),
        Index("ix_model_promotions_kind", "kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(ForeignKey("model_versions.version", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(16))
    previous: Mapped[str | None] = mapped_column(ForeignKey("model_versions.version", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvolveStepRow(Base):
    """One step of one self-evolution round of a run (search, select data, train, evaluate...).

    The driver records a step before running it and its result after, so a restarted
    driver skips what is done and repeats what was interrupted.
    """

    __tablename__ = "evolve_steps"
    __table_args__ = (
        UniqueConstraint("run_id", "round", "step"),
        CheckConstraint("round >= 0", name="round"),
        CheckConstraint(_in("state", EvolveState), name="state"),
        CheckConstraint("attempts >= 0", name="attempts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    round: Mapped[int]
    step: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=EvolveState.RUNNING)
    result: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
