"""The store's operations: enqueue problems, claim and finish search tasks, read progress and results.

`Store` holds an engine and opens one short transaction per call, so a Celery worker, the
CLI and the embedded mode share one object. The operations the distributed system relies
on are safe to repeat and to race:

* `add_batch` inserts the batch, its problems and their tasks in one transaction (all or
  nothing) and never duplicates a task: the key (run, problem, round, seed) is UNIQUE and
  inserts use ON CONFLICT DO NOTHING, so enqueuing a file again only adds what is new.
* `claim_task` is a single conditional UPDATE; a redelivered message (worker died with
  `acks_late`) can claim a task that is still `running`, but never a done or cancelled one.
* `record_result` writes the result, its trajectories and the task's `done` state in one
  transaction; the result's UNIQUE task id plus ON CONFLICT DO NOTHING make a second write,
  sequential or concurrent, a no-op that returns False.
* `add_model_version` is idempotent per version; `promote_model` and `rollback_model`
  change the promoted version of a kind and record the change in one transaction, and
  promotions of one kind take turns, so at most one version per kind is ever promoted.
* `start_evolve_step` never restarts a step that is done: a restarted self-evolution
  driver asks the store what to skip.
* `save_snapshot` (a running search's partial tree, for the live view) writes only while
  the task is running, and `record_result` deletes it: a late snapshot never outlives
  the final tree.

Unknown runs, tasks, model versions and evolve steps raise `LookupError`; bad arguments
raise `ValueError` naming the field or the record. Not here: the schema (`models`),
migrations (`db.migrate`), dataset export, the model store's files (`rstar_models.registry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Table, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from rstar_core.data import difficulty, trajectories
from rstar_core.types import Problem

from .db import SQLITE_READ_ONLY, create_engine_from_url
from .models import (
    MODEL_KINDS,
    Batch,
    EvolveState,
    EvolveStepRow,
    ModelPromotion,
    ModelStatus,
    ModelVersion,
    ProblemRow,
    Run,
    RunStatus,
    SearchResultRow,
    SearchSnapshot,
    SearchTask,
    TaskState,
    TrajectoryRow,
    utcnow,
)

if TYPE_CHECKING:
    from rstar_core.mcts.search import SearchResult

__all__ = ["EnqueueResult", "EvolveStep", "ModelVersionInfo", "RunInfo", "RunProgress", "Store", "TaskSpec"]

log = logging.getLogger(__name__)

# Long enough for a traceback's last frames, short enough to keep status queries light.
MAX_ERROR_CHARS = 8000
MAX_NAME_CHARS = 200
# Rows per IN (...) lookup: SQLite limits bound parameters per statement.
_CHUNK = 500
# States a worker may (re)start: `running` too, because a message redelivered after its
# worker died finds the task still marked running.
_CLAIMABLE = (TaskState.QUEUED, TaskState.FAILED, TaskState.RUNNING)
# A failure report never overwrites a recorded result or a cancellation.
_FAILABLE = (TaskState.QUEUED, TaskState.RUNNING, TaskState.FAILED)
_CANCELLABLE = (TaskState.QUEUED, TaskState.FAILED)
MAX_STEP_CHARS = 64
# Promotions of one kind take turns on PostgreSQL under this advisory lock (plus the
# kind's index); SQLite's BEGIN IMMEDIATE already serialises writers.
_PROMOTION_LOCK_KEY = 0x72737470  # "rstp"


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    status: str
    config_name: str | None
    config: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class EnqueueResult:
    batch_id: int
    # One task id per input problem, in input order (repeated problems share one task).
    task_ids: list[int]
    # The tasks this call created, in input order: the ones to send to the queue.
    new_task_ids: list[int]
    # Input records that repeated an earlier record of the same call verbatim (same id, or
    # no id and the same question; same question and answer) and were merged into it.
    merged_duplicates: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """What a worker needs to run one task."""

    id: int
    run: str
    round: int
    seed: int
    state: str
    attempts: int
    # `id` is the problem's external id (from the problem file, or a hash of the question).
    problem: Problem
    # The config snapshot of the batch that enqueued the task (its seed may differ from `seed`).
    config: dict[str, Any]


@dataclass(frozen=True)
class RunProgress:
    run: str
    status: str
    # Only this round, or every round when None.
    round: int | None
    # Tasks per state; every state is present.
    states: dict[str, int]
    results: int
    # Final answer correct / some trajectory correct (pass@n) / a ground truth to grade by.
    solved: int
    any_correct: int
    known: int
    tokens: int
    # Sum of the searches' own wall times, and first start to last finish of done tasks.
    search_s: float
    elapsed_s: float

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def tokens_per_s(self) -> float:
        """Generation speed of one search, over the finished results."""
        return self.tokens / self.search_s if self.search_s > 0 else 0.0

    @property
    def throughput_tokens_per_s(self) -> float:
        """Tokens per second of the whole run (all workers together)."""
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class ModelVersionInfo:
    """One version in the model store: its files, lineage, training inputs, metrics and status."""

    version: str
    kind: str
    # The version's directory in the model store.
    path: str
    round: int | None
    # The version this one was derived from, and the base model its training started from.
    parent: str | None
    base: str | None
    # The run's name (None for a version registered outside a run).
    run: str | None
    # candidate, promoted (what the services serve; one per kind) or rejected.
    status: str
    # Dataset name -> {path, content_hash, counts, ...}.
    datasets: dict[str, Any]
    train_config: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    # When it was last promoted (also after it was superseded), None if never.
    promoted_at: datetime | None


@dataclass(frozen=True)
class EvolveStep:
    """The durable state of one step of one self-evolution round."""

    id: int
    run: str
    round: int
    step: str
    # running, done or failed.
    state: str
    # What the step produced (versions, dataset manifests, metrics): what later steps read.
    result: dict[str, Any]
    error: str | None
    attempts: int
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class _NewProblem:
    external_id: str
    question: str
    answer: Any
    where: str


class Store:
    """Repository over one database: every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported database {engine.dialect.name!r}: use postgresql or sqlite")
        self.engine = engine
        self._write = sessionmaker(engine, expire_on_commit=False)
        # SQLite: readers use a plain deferred BEGIN, so they never wait for a writer.
        self._read = sessionmaker(engine.execution_options(**{SQLITE_READ_ONLY: True}))

    @classmethod
    def from_url(cls, url: str | None = None, **engine_kwargs: Any) -> "Store":
        """A store on `url`, else `RSTAR_DATABASE_URL`, else the embedded SQLite file."""
        return cls(create_engine_from_url(url, **engine_kwargs))

    def close(self) -> None:
        self.engine.dispose()

    # --- runs and enqueueing ---------------------------------------------------------

    def get_or_create_run(self, name: str, config_name: str | None = None,
                          config: Mapping[str, Any] | None = None, notes: str | None = None) -> RunInfo:
        """The run called `name`, created with this config if new (an existing run is unchanged)."""
        _check_name("name", name)
        with self._write.begin() as session:
            session.execute(
                _insert(session, Run.__table__)
                .values(name=name, status=RunStatus.ACTIVE, config_name=config_name,
                        config=dict(config or {}), notes=notes, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["name"]))
            return _run_info(_get_run(session, name))

    def add_batch(self, run: str, round: int, seed: int, problems: Sequence[Problem],
                  config: Mapping[str, Any], source: str | None = None) -> EnqueueResult:
        """Enqueue `problems` for (run, round, seed): all of them or, on any error, none.

        A problem is identified in its run by its id, or by a hash of its question when it
        has none. Problems and tasks that already exist are reused, so enqueuing the same
        file again creates no task; a known id with a different question or answer is an
        error that names the record. A record that repeats an earlier one of `problems`
        verbatim is merged into it (counted in `merged_duplicates`).
        """
        _check_int("round", round, minimum=0)
        _check_int("seed", seed)
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping, got {type(config).__name__}")
        unique, position = _validate_problems(problems)
        with self._write.begin() as session:
            # Enqueues into one run take turns (and a cancel waits for them): two batches
            # inserting overlapping problems in different orders would deadlock on
            # PostgreSQL, and a cancel racing an enqueue could leave queued tasks behind.
            run_row = _get_run(session, run, lock=True)
            if run_row.status == RunStatus.CANCELLED:
                raise ValueError(f"run {run!r} is cancelled; enqueue into a new run")
            batch = Batch(run_id=run_row.id, round=round, seed=seed, config=dict(config), source=source,
                          n_problems=len(problems), n_new_tasks=0)
            session.add(batch)
            session.flush()
            problem_ids = _upsert_problems(session, run_row.id, unique)
            task_ids, new = _upsert_tasks(session, run_row.id, batch.id, round, seed, problem_ids)
            batch.n_new_tasks = len(new)
        by_position = [task_ids[i] for i in position]
        merged = len(position) - len(unique)
        log.info("run %s round %d seed %d: %d problems enqueued (%d duplicates merged), "
                 "%d new tasks (batch %d)", run, round, seed, len(problems), merged, len(new),
                 batch.id)
        return EnqueueResult(batch.id, by_position, [t for t in task_ids if t in new], merged)

    def cancel_run(self, name: str) -> int:
        """Cancel the run and its queued or failed tasks; running ones finish. Returns the count."""
        with self._write.begin() as session:
            run_row = _get_run(session, name, lock=True)
            run_row.status = RunStatus.CANCELLED
            cancelled = session.execute(
                update(SearchTask)
                .where(SearchTask.run_id == run_row.id, SearchTask.state.in_(_CANCELLABLE))
                .values(state=TaskState.CANCELLED, finished_at=utcnow())).rowcount
        log.info("run %s cancelled: %d tasks", name, cancelled)
        return cancelled

    # --- the worker's side -----------------------------------------------------------

    def task_spec(self, task_id: int) -> TaskSpec:
        with self._read() as session:
            row = session.execute(
                select(SearchTask, Run.name, ProblemRow, Batch.config)
                .join(Run, Run.id == SearchTask.run_id)
                .join(ProblemRow, ProblemRow.id == SearchTask.problem_id)
                .join(Batch, Batch.id == SearchTask.batch_id)
                .where(SearchTask.id == task_id)).one_or_none()
        if row is None:
            raise LookupError(f"no search task {task_id}")
        task, run_name, problem, config = row
        return TaskSpec(task.id, run_name, task.round, task.seed, task.state, task.attempts,
                        Problem(question=problem.question, answer=problem.answer, id=problem.external_id),
                        config)

    def claim_task(self, task_id: int, worker: str, celery_id: str | None = None) -> bool:
        """Mark the task running on `worker`; False when it is already done or cancelled."""
        with self._write.begin() as session:
            claimed = session.execute(
                update(SearchTask)
                .where(SearchTask.id == task_id, SearchTask.state.in_(_CLAIMABLE))
                .values(state=TaskState.RUNNING, attempts=SearchTask.attempts + 1, worker=worker,
                        celery_id=celery_id, started_at=utcnow(), finished_at=None)).rowcount
            if not claimed:
                _require_task(session, task_id)
        return bool(claimed)

    def record_result(self, task_id: int, result: "SearchResult") -> bool:
        """Store the result, its trajectories and the task's `done` state, exactly once.

        Returns False, writing nothing, when the task already has a result (a redelivered
        or duplicated task). A task cancelled while its search ran still gets its result:
        the work is done. Strings are stored with NUL characters replaced by U+FFFD:
        PostgreSQL cannot store NUL in text or JSONB, and a program's printed output may
        contain one.
        """
        tree = result.tree
        row = _scrub_nul({
            "answer": result.answer,
            "correct": result.correct,
            "any_correct": result.any_correct,
            "difficulty": difficulty(tree),
            "tokens": tree.stats.generated_tokens,
            "wall_s": result.wall_s,
            "rollouts": tree.stats.rollouts,
            "model_versions": dict(tree.model_versions),
            "stats": asdict(tree.stats),
            "extra": dict(result.extra),
            "tree": tree.to_dict(),
        })
        paths = _scrub_nul([
            {"ordinal": i, "node_ids": list(t.node_ids), "steps": list(t.steps), "q_values": list(t.q_values),
             "n_steps": len(t.steps), "mean_q": t.mean_q, "answer": t.answer, "correct": t.correct,
             "terminal": t.terminal.value}
            for i, t in enumerate(trajectories(tree))
        ])
        now = utcnow()
        with self._write.begin() as session:
            question = session.scalar(
                select(ProblemRow.question).join(SearchTask, SearchTask.problem_id == ProblemRow.id)
                .where(SearchTask.id == task_id))
            if question is None:
                raise LookupError(f"no search task {task_id}")
            if question != tree.problem.question:
                raise ValueError(f"task {task_id}: the tree's question is not the task's problem")
            result_id = session.scalar(
                _insert(session, SearchResultRow.__table__)
                .values(task_id=task_id, created_at=now, **row)
                .on_conflict_do_nothing(index_elements=["task_id"])
                .returning(SearchResultRow.id))
            if result_id is None:
                log.info("task %d already has a result; this one is dropped", task_id)
                return False
            if paths:
                session.execute(TrajectoryRow.__table__.insert(), [{"result_id": result_id, **p} for p in paths])
            session.execute(update(SearchTask).where(SearchTask.id == task_id)
                            .values(state=TaskState.DONE, finished_at=now, last_error=None))
            # The result holds the whole tree: the live partial one has served its purpose.
            session.execute(delete(SearchSnapshot).where(SearchSnapshot.task_id == task_id))
        return True

    def save_snapshot(self, task_id: int, tree: Mapping[str, Any]) -> int | None:
        """Replace the running task's partial tree (a `Tree.to_dict()`); returns its sequence number.

        Returns None, writing nothing, when the task is not running (its result is recorded,
        or it was cancelled or failed meanwhile): a late snapshot never shadows a final tree.
        """
        if not isinstance(tree, Mapping) or not isinstance(tree.get("nodes"), list):
            raise ValueError("tree must be a Tree.to_dict() mapping with a 'nodes' list")
        data = _scrub_nul(dict(tree))
        with self._write.begin() as session:
            # FOR UPDATE: takes turns with `record_result`, which deletes the snapshot.
            state = session.scalar(select(SearchTask.state).where(SearchTask.id == task_id).with_for_update())
            if state is None:
                raise LookupError(f"no search task {task_id}")
            if state != TaskState.RUNNING:
                return None
            insert = _insert(session, SearchSnapshot.__table__).values(
                task_id=task_id, seq=1, n_nodes=len(data["nodes"]), tree=data, updated_at=utcnow())
            return session.scalar(
                insert.on_conflict_do_update(
                    index_elements=["task_id"],
                    set_={"seq": SearchSnapshot.__table__.c.seq + 1, "n_nodes": insert.excluded.n_nodes,
                          "tree": insert.excluded.tree, "updated_at": insert.excluded.updated_at})
                .returning(SearchSnapshot.seq))

    def get_snapshot(self, task_id: int) -> dict[str, Any] | None:
        """The task's latest partial tree as {seq, n_nodes, tree, updated_at}, or None."""
        with self._read() as session:
            row = session.get(SearchSnapshot, task_id)
            if row is None:
                return None
            return {"seq": row.seq, "n_nodes": row.n_nodes, "tree": row.tree,
                    "updated_at": _aware(row.updated_at).isoformat()}

    def mark_failed(self, task_id: int, reason: str, final: bool) -> bool:
        """Record a failed attempt: back to `queued` for a retry, or `failed` when `final`.

        Returns False (and changes nothing) when the task is already done or cancelled.
        """
        values: dict[str, Any] = {"last_error": str(reason)[-MAX_ERROR_CHARS:].replace("\x00", "\ufffd")}
        if final:
            values.update(state=TaskState.FAILED, finished_at=utcnow())
        else:
            values.update(state=TaskState.QUEUED, finished_at=None)
        with self._write.begin() as session:
            changed = session.execute(
                update(SearchTask).where(SearchTask.id == task_id, SearchTask.state.in_(_FAILABLE))
                .values(**values)).rowcount
            if not changed:
                _require_task(session, task_id)
        return bool(changed)

    # --- reading -----------------------------------------------------------------------

    def run_progress(self, name: str, round: int | None = None) -> RunProgress:
        with self._read() as session:
            run_row = _get_run(session, name)
            tasks = select(SearchTask).where(SearchTask.run_id == run_row.id)
            if round is not None:
                tasks = tasks.where(SearchTask.round == round)
            tasks = tasks.subquery()
            states = dict(session.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state)).all())
            totals = session.execute(
                select(func.count(SearchResultRow.id),
                       func.count().filter(SearchResultRow.correct.is_(True)),
                       func.count().filter(SearchResultRow.any_correct.is_(True)),
                       func.count(SearchResultRow.correct),
                       func.coalesce(func.sum(SearchResultRow.tokens), 0),
                       func.coalesce(func.sum(SearchResultRow.wall_s), 0.0))
                .join(tasks, tasks.c.id == SearchResultRow.task_id)).one()
            first, last = session.execute(
                select(func.min(tasks.c.started_at), func.max(tasks.c.finished_at))
                .where(tasks.c.state == TaskState.DONE)).one()
        elapsed = (_aware(last) - _aware(first)).total_seconds() if first and last else 0.0
        return RunProgress(
            run=run_row.name, status=run_row.status, round=round,
            states={state.value: states.get(state.value, 0) for state in TaskState},
            results=totals[0], solved=totals[1], any_correct=totals[2], known=totals[3],
            tokens=int(totals[4]), search_s=float(totals[5]), elapsed_s=max(elapsed, 0.0))

    def iter_results(self, name: str, round: int | None = None, with_tree: bool = False) -> Iterator[dict[str, Any]]:
        """One JSON-ready dict per finished task of the run, in enqueue order (streamed)."""
        # Labels are the keys of the output rows.
        columns = [SearchTask.id.label("task_id"), SearchTask.round, SearchTask.seed, SearchTask.attempts,
                   SearchTask.worker, SearchTask.finished_at, ProblemRow.external_id.label("problem_id"),
                   ProblemRow.question, ProblemRow.answer.label("ground_truth"), SearchResultRow.answer,
                   SearchResultRow.correct, SearchResultRow.any_correct, SearchResultRow.difficulty,
                   SearchResultRow.tokens, SearchResultRow.wall_s, SearchResultRow.rollouts,
                   SearchResultRow.model_versions]
        if with_tree:
            columns.append(SearchResultRow.tree)
        with self._read() as session:
            run_row = _get_run(session, name)
            query = (select(*columns)
                     .join(SearchTask, SearchTask.id == SearchResultRow.task_id)
                     .join(ProblemRow, ProblemRow.id == SearchTask.problem_id)
                     .where(SearchTask.run_id == run_row.id)
                     .order_by(SearchTask.id)
                     .execution_options(yield_per=200))
            if round is not None:
                query = query.where(SearchTask.round == round)
            for row in session.execute(query):
                out = {"run": run_row.name, **row._mapping}
                out["finished_at"] = _aware(out["finished_at"]).isoformat() if out["finished_at"] else None
                yield out

    def task_states(self, task_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """(state, last error) of each of `task_ids` that exists: what a waiting client polls."""
        out: dict[int, tuple[str, str | None]] = {}
        with self._read() as session:
            for chunk in _chunks(list(dict.fromkeys(task_ids))):
                rows = session.execute(select(SearchTask.id, SearchTask.state, SearchTask.last_error)
                                       .where(SearchTask.id.in_(chunk)))
                out.update((task_id, (state, error)) for task_id, state, error in rows)
        return out

    def task_results(self, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """{tree, wall_s, model_versions} of each of `task_ids` that has a result."""
        out: dict[int, dict[str, Any]] = {}
        with self._read() as session:
            for chunk in _chunks(list(dict.fromkeys(task_ids))):
                rows = session.execute(
                    select(SearchResultRow.task_id, SearchResultRow.tree, SearchResultRow.wall_s,
                           SearchResultRow.model_versions).where(SearchResultRow.task_id.in_(chunk)))
                out.update((task_id, {"tree": tree, "wall_s": wall_s, "model_versions": versions})
                           for task_id, tree, wall_s, versions in rows)
        return out

    def get_run(self, name: str) -> RunInfo:
        with self._read() as session:
            return _run_info(_get_run(session, name))

    # --- model versions ----------------------------------------------------------------

    def add_model_version(self, version: str, kind: str, path: str, *, round: int | None = None,
                          parent: str | None = None, base: str | None = None, run: str | None = None,
                          datasets: Mapping[str, Any] | None = None,
                          train_config: Mapping[str, Any] | None = None,
                          metrics: Mapping[str, Any] | None = None) -> ModelVersionInfo:
        """Record a version as a candidate; the same version again returns the stored row unchanged.

        A version is named after its weights, so one that is already recorded with another
        kind or path is an error (two checkpoints under one name), not a new version.
        """
        _check_version("version", version)
        _check_kind(kind)
        if not isinstance(path, str) or not path:
            raise ValueError("path must be a non-empty string")
        if round is not None:
            _check_int("round", round, minimum=0)
        if parent is not None:
            _check_version("parent", parent)
            if parent == version:
                raise ValueError(f"parent: version {version!r} cannot be its own parent")
        if base is not None and (not isinstance(base, str) or not base):
            raise ValueError("base must be a non-empty string or None")
        values = {"datasets": _json_mapping("datasets", datasets),
                  "train_config": _json_mapping("train_config", train_config),
                  "metrics": _json_mapping("metrics", metrics)}
        with self._write.begin() as session:
            run_id = _get_run(session, run).id if run is not None else None
            if parent is not None:
                _get_version(session, parent, field="parent")
            session.execute(
                _insert(session, ModelVersion.__table__)
                .values(version=version, kind=kind, path=path, parent=parent, base=base, run_id=run_id,
                        round=round, status=ModelStatus.CANDIDATE, created_at=utcnow(), **values)
                .on_conflict_do_nothing(index_elements=["version"]))
            row = _get_version(session, version)
            if (row.kind, row.path) != (kind, path):
                raise ValueError(f"version {version!r} is already recorded as a {row.kind} at {row.path!r}, "
                                 f"not a {kind} at {path!r}")
            return _version_info(session, row)

    def get_model_version(self, version: str) -> ModelVersionInfo:
        with self._read() as session:
            return _version_info(session, _get_version(session, version))

    def list_model_versions(self, kind: str | None = None, run: str | None = None) -> list[ModelVersionInfo]:
        """Versions, newest first; only one kind or one run's when given."""
        if kind is not None:
            _check_kind(kind)
        with self._read() as session:
            query = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.version.desc())
            if kind is not None:
                query = query.where(ModelVersion.kind == kind)
            if run is not None:
                query = query.where(ModelVersion.run_id == _get_run(session, run).id)
            rows = session.scalars(query).all()
            names = dict(session.execute(
                select(Run.id, Run.name).where(Run.id.in_({r.run_id for r in rows if r.run_id is not None}))).all())
            return [_version_info(session, r, names.get(r.run_id)) for r in rows]

    def update_model_metrics(self, version: str, metrics: Mapping[str, Any]) -> ModelVersionInfo:
        """Merge `metrics` into the version's (an evaluation adds its numbers beside the training's)."""
        if metrics is None:
            raise ValueError("metrics must be a mapping, got None")
        update_with = _json_mapping("metrics", metrics)
        with self._write.begin() as session:
            row = _get_version(session, version, lock=True)
            row.metrics = {**row.metrics, **update_with}
            session.flush()
            return _version_info(session, row)

    def set_model_status(self, version: str, status: str) -> ModelVersionInfo:
        """Mark a version `rejected` or `candidate` again; promotion goes through `promote_model`.

        The promoted version cannot be demoted this way (the services would keep serving
        it with no version promoted): promote another or roll back.
        """
        allowed = (ModelStatus.CANDIDATE, ModelStatus.REJECTED)
        if status not in allowed:
            raise ValueError(f"status must be one of {', '.join(allowed)} (promote with promote_model), "
                             f"got {status!r}")
        with self._write.begin() as session:
            row = _get_version(session, version, lock=True)
            if row.status == ModelStatus.PROMOTED:
                raise ValueError(f"version {version!r} is the promoted {row.kind}: "
                                 "promote another version or roll back instead")
            row.status = status
            session.flush()
            return _version_info(session, row)

    def promote_model(self, version: str) -> ModelVersionInfo:
        """Make `version` the promoted one of its kind; the previous one becomes a candidate.

        A rejected version may be promoted (that clears the rejection). Promoting the
        promoted version changes nothing and records nothing.
        """
        _check_version("version", version)
        with self._write.begin() as session:
            kind = session.scalar(select(ModelVersion.kind).where(ModelVersion.version == version))
            if kind is None:
                raise LookupError(f"no model version {version!r}")
            _lock_promotions(session, kind)
            row = _get_version(session, version, lock=True)
            if row.status == ModelStatus.PROMOTED:
                return _version_info(session, row)
            previous = _promoted(session, kind, lock=True)
            _switch_promoted(session, previous, row, new_status_of_previous=ModelStatus.CANDIDATE)
            session.add(ModelPromotion(kind=kind, version=version, action="promote",
                                       previous=previous.version if previous else None, at=row.promoted_at))
            log.info("promoted %s %s (was %s)", kind, version, previous.version if previous else "none")
            return _version_info(session, row)

    def rollback_model(self, kind: str) -> ModelVersionInfo:
        """Reject the promoted version of `kind` and promote the one promoted before it.

        Walks the promotion history from the newest entry back to the latest version that
        is neither the current one nor rejected; returns that version.
        """
        _check_kind(kind)
        with self._write.begin() as session:
            _lock_promotions(session, kind)
            current = _promoted(session, kind, lock=True)
            if current is None:
                raise ValueError(f"no {kind} version is promoted: nothing to roll back")
            history = session.scalars(
                select(ModelPromotion.version).where(ModelPromotion.kind == kind)
                .order_by(ModelPromotion.id.desc())).all()
            target = None
            for candidate in dict.fromkeys(history):
                if candidate == current.version:
                    continue
                row = session.scalar(select(ModelVersion).where(ModelVersion.version == candidate)
                                     .with_for_update())
                if row is not None and row.status != ModelStatus.REJECTED:
                    target = row
                    break
            if target is None:
                raise ValueError(f"no earlier {kind} version to roll back to from {current.version!r}")
            _switch_promoted(session, current, target, new_status_of_previous=ModelStatus.REJECTED)
            session.add(ModelPromotion(kind=kind, version=target.version, action="rollback",
                                       previous=current.version, at=target.promoted_at))
            log.info("rolled %s back from %s to %s", kind, current.version, target.version)
            return _version_info(session, target)

    def promoted_model(self, kind: str) -> ModelVersionInfo | None:
        """The version of `kind` the services should serve, or None before the first promotion."""
        _check_kind(kind)
        with self._read() as session:
            row = _promoted(session, kind)
            return _version_info(session, row) if row is not None else None

    # --- self-evolution steps ----------------------------------------------------------

    def get_evolve_step(self, run: str, round: int, step: str) -> EvolveStep | None:
        _check_step(round, step)
        with self._read() as session:
            run_row = _get_run(session, run)
            row = session.scalar(_step_query(run_row.id, round, step))
            return _evolve_step(row, run_row.name) if row is not None else None

    def start_evolve_step(self, run: str, round: int, step: str) -> EvolveStep:
        """Mark the step running (one more attempt); a step that is done is returned unchanged."""
        _check_step(round, step)
        now = utcnow()
        with self._write.begin() as session:
            run_row = _get_run(session, run)
            inserted = session.scalar(
                _insert(session, EvolveStepRow.__table__)
                .values(run_id=run_row.id, round=round, step=step, state=EvolveState.RUNNING, result={},
                        attempts=1, started_at=now)
                .on_conflict_do_nothing(index_elements=["run_id", "round", "step"])
                .returning(EvolveStepRow.id))
            if inserted is None:
                session.execute(
                    update(EvolveStepRow)
                    .where(EvolveStepRow.run_id == run_row.id, EvolveStepRow.round == round,
                           EvolveStepRow.step == step, EvolveStepRow.state != EvolveState.DONE)
                    .values(state=EvolveState.RUNNING, attempts=EvolveStepRow.attempts + 1, started_at=now,
                            finished_at=None, error=None))
            return _evolve_step(session.scalar(_step_query(run_row.id, round, step)), run_row.name)

    def finish_evolve_step(self, run: str, round: int, step: str, result: Mapping[str, Any]) -> EvolveStep:
        """Mark the step done with what it produced."""
        _check_step(round, step)
        if result is None:
            raise ValueError("result must be a mapping, got None")
        values = {"state": EvolveState.DONE, "result": _json_mapping("result", result), "error": None,
                  "finished_at": utcnow()}
        return self._set_step(run, round, step, values, states=tuple(EvolveState))

    def fail_evolve_step(self, run: str, round: int, step: str, error: str) -> EvolveStep:
        """Record the step's failure; a step that is done stays done (and is returned as is)."""
        _check_step(round, step)
        values = {"state": EvolveState.FAILED, "error": str(error)[-MAX_ERROR_CHARS:].replace("\x00", "\ufffd"),
                  "finished_at": utcnow()}
        return self._set_step(run, round, step, values, states=(EvolveState.RUNNING, EvolveState.FAILED))

    def list_evolve_steps(self, run: str) -> list[EvolveStep]:
        """The run's steps by round, then in the order they (last) started."""
        with self._read() as session:
            run_row = _get_run(session, run)
            rows = session.scalars(
                select(EvolveStepRow).where(EvolveStepRow.run_id == run_row.id)
                .order_by(EvolveStepRow.round, EvolveStepRow.started_at, EvolveStepRow.id)).all()
            return [_evolve_step(r, run_row.name) for r in rows]

    def _set_step(self, run: str, round: int, step: str, values: dict[str, Any],
                  states: tuple[str, ...]) -> EvolveStep:
        with self._write.begin() as session:
            run_row = _get_run(session, run)
            session.execute(
                update(EvolveStepRow)
                .where(EvolveStepRow.run_id == run_row.id, EvolveStepRow.round == round,
                       EvolveStepRow.step == step, EvolveStepRow.state.in_(states))
                .values(**values))
            row = session.scalar(_step_query(run_row.id, round, step))
            if row is None:
                raise LookupError(f"run {run!r} has no evolve step {step!r} in round {round}")
            return _evolve_step(row, run_row.name)


# --- helpers ----------------------------------------------------------------------------


def _insert(session: Session, table: Table):
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING on both supported backends."""
    return (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(table)


def _get_run(session: Session, name: str, lock: bool = False) -> Run:
    query = select(Run).where(Run.name == name)
    if lock:
        # FOR NO KEY UPDATE: excludes other writers of the run row, not the foreign-key
        # checks of rows that reference it. (SQLite: BEGIN IMMEDIATE already serialises.)
        query = query.with_for_update(key_share=True)
    run_row = session.scalar(query)
    if run_row is None:
        raise LookupError(f"no run named {name!r}")
    return run_row


def _require_task(session: Session, task_id: int) -> None:
    if session.scalar(select(SearchTask.id).where(SearchTask.id == task_id)) is None:
        raise LookupError(f"no search task {task_id}")


def _run_info(run_row: Run) -> RunInfo:
    return RunInfo(run_row.id, run_row.name, run_row.status, run_row.config_name, run_row.config,
                   _aware(run_row.created_at))


def _get_version(session: Session, version: str, *, lock: bool = False, field: str | None = None) -> ModelVersion:
    query = select(ModelVersion).where(ModelVersion.version == version)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise LookupError(f"{field + ': ' if field else ''}no model version {version!r}")
    return row


def _promoted(session: Session, kind: str, lock: bool = False) -> ModelVersion | None:
    query = select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.status == ModelStatus.PROMOTED)
    return session.scalar(query.with_for_update() if lock else query)


def _lock_promotions(session: Session, kind: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        # Held until the transaction ends. Without it, two first promotions of a kind would
        # both find nothing promoted and one would fail on the unique index.
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _PROMOTION_LOCK_KEY + MODEL_KINDS.index(kind)})


def _switch_promoted(session: Session, old: ModelVersion | None, new: ModelVersion, *,
                     new_status_of_previous: str) -> None:
    if old is not None:
        old.status = new_status_of_previous
        # Written before the new one is promoted: the unique index checks every statement.
        session.flush()
    new.status = ModelStatus.PROMOTED
    new.promoted_at = utcnow()
    session.flush()


def _version_info(session: Session, row: ModelVersion, run_name: str | None = None) -> ModelVersionInfo:
    if row.run_id is not None and run_name is None:
        run_name = session.scalar(select(Run.name).where(Run.id == row.run_id))
    return ModelVersionInfo(
        version=row.version, kind=row.kind, path=row.path, round=row.round, parent=row.parent, base=row.base,
        run=run_name, status=row.status, datasets=row.datasets, train_config=row.train_config,
        metrics=row.metrics, created_at=_aware(row.created_at),
        promoted_at=_aware(row.promoted_at) if row.promoted_at else None)


def _step_query(run_id: int, round: int, step: str):
    return select(EvolveStepRow).where(EvolveStepRow.run_id == run_id, EvolveStepRow.round == round,
                                       EvolveStepRow.step == step)


def _evolve_step(row: EvolveStepRow, run_name: str) -> EvolveStep:
    return EvolveStep(
        id=row.id, run=run_name, round=row.round, step=row.step, state=row.state, result=row.result,
        error=row.error, attempts=row.attempts, started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at) if row.finished_at else None)

def _validate_problems(problems: Sequence[Problem]) -> tuple[list[_NewProblem], list[int]]:
    """Check every record before touching the database.

    Returns the distinct problems and, per input position, the index of its distinct
    problem: a record repeated verbatim is enqueued once, a reused id is an error.
    """
    if isinstance(problems, (str, bytes)) or not isinstance(problems, Iterable):
        raise ValueError("problems must be a list of Problem")
    unique: list[_NewProblem] = []
    by_id: dict[str, int] = {}
    position: list[int] = []
    for i, problem in enumerate(problems):
        where = f"problem {i}" + (f" (id {problem.id!r})" if getattr(problem, "id", None) is not None else "")
        if not isinstance(problem, Problem):
            raise ValueError(f"{where}: expected a rstar_core Problem, got {type(problem).__name__}")
        record = _NewProblem(_external_id(problem), problem.question, _json_value(problem.answer, where), where)
        if len(record.external_id) > MAX_NAME_CHARS:
            raise ValueError(f"{where}: id is longer than {MAX_NAME_CHARS} characters")
        for field, value in (("id", record.external_id), ("question", record.question)):
            if "\x00" in value:
                raise ValueError(f"{where}: field {field!r} contains a NUL character")
        seen = by_id.get(record.external_id)
        if seen is None:
            by_id[record.external_id] = len(unique)
            position.append(len(unique))
            unique.append(record)
        elif (unique[seen].question, unique[seen].answer) == (record.question, record.answer):
            position.append(seen)
        else:
            raise ValueError(f"{where}: id {record.external_id!r} is also {unique[seen].where}, "
                             "with a different question or answer")
    if not unique:
        raise ValueError("problems is empty: nothing to enqueue")
    return unique, position


def _external_id(problem: Problem) -> str:
    if problem.id is not None:
        return str(problem.id)
    # Stable across re-enqueues of the same file, so idempotency holds without ids.
    return "sha256:" + hashlib.sha256(problem.question.encode()).hexdigest()[:32]


def _json_value(answer: Any, where: str) -> Any:
    """The answer as the database will give it back (lists, not tuples), checked storable."""
    try:
        text = json.dumps(answer, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: field 'answer' is not storable as JSON: {exc}") from None
    if "\\u0000" in text:
        raise ValueError(f"{where}: field 'answer' contains a NUL character")
    return json.loads(text)


def _upsert_problems(session: Session, run_id: int, problems: list[_NewProblem]) -> list[int]:
    """Insert the run's new problems; return the row id of every one, in order."""
    session.execute(
        _insert(session, ProblemRow.__table__).on_conflict_do_nothing(index_elements=["run_id", "external_id"]),
        [{"run_id": run_id, "external_id": p.external_id, "question": p.question, "answer": p.answer}
         for p in problems])
    stored: dict[str, tuple[int, str, Any]] = {}
    for chunk in _chunks([p.external_id for p in problems]):
        rows = session.execute(
            select(ProblemRow.external_id, ProblemRow.id, ProblemRow.question, ProblemRow.answer)
            .where(ProblemRow.run_id == run_id, ProblemRow.external_id.in_(chunk)))
        stored.update((ext, (pid, question, answer)) for ext, pid, question, answer in rows)
    ids = []
    for p in problems:
        pid, question, answer = stored[p.external_id]
        if (question, answer) != (p.question, p.answer):
            # Raising rolls back the whole batch, including rows inserted above.
            raise ValueError(f"{p.where}: id {p.external_id!r} is already in this run "
                             "with a different question or answer")
        ids.append(pid)
    return ids


def _upsert_tasks(session: Session, run_id: int, batch_id: int, round: int, seed: int,
                  problem_ids: list[int]) -> tuple[list[int], set[int]]:
    """Create the missing tasks; return every task id (in problem order) and the new ones."""
    now = utcnow()
    inserted = session.execute(
        _insert(session, SearchTask.__table__)
        .on_conflict_do_nothing(index_elements=["run_id", "problem_id", "round", "seed"])
        .returning(SearchTask.id),
        [{"run_id": run_id, "problem_id": pid, "batch_id": batch_id, "round": round, "seed": seed,
          "state": TaskState.QUEUED, "attempts": 0, "queued_at": now} for pid in problem_ids])
    new = set(inserted.scalars())
    by_problem: dict[int, int] = {}
    for chunk in _chunks(problem_ids):
        by_problem.update(session.execute(
            select(SearchTask.problem_id, SearchTask.id)
            .where(SearchTask.run_id == run_id, SearchTask.round == round, SearchTask.seed == seed,
                   SearchTask.problem_id.in_(chunk))).all())
    return [by_problem[pid] for pid in problem_ids], new


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _scrub_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_scrub_nul(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_nul(v) for k, v in value.items()}
    return value


def _check_name(field: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise ValueError(f"{field} must be a non-empty string of at most {MAX_NAME_CHARS} characters")


def _check_version(field: str, value: Any) -> None:
    _check_name(field, value)
    # A version is also a directory name in the model store.
    if "/" in value or "\\" in value or value.startswith(".") or value != value.strip():
        raise ValueError(f"{field} {value!r} is not a valid version name (no slashes, no leading dot or spaces)")


def _check_kind(kind: Any) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")


def _check_step(round: Any, step: Any) -> None:
    _check_int("round", round, minimum=0)
    if not isinstance(step, str) or not step.strip() or len(step) > MAX_STEP_CHARS:
        raise ValueError(f"step must be a non-empty string of at most {MAX_STEP_CHARS} characters, got {step!r}")


def _json_mapping(field: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of `value` as the database will give it back, checked storable; {} for None."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{field} must be a mapping, got {type(value).__name__}")
    try:
        encoded = json.dumps(dict(value), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field} is not storable as JSON: {exc}") from None
    if "\\u0000" in encoded:
        raise ValueError(f"{field} contains a NUL character")
    return json.loads(encoded)

def _check_int(field: str, value: Any, minimum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{field} must be an integer{bound}, got {value!r}")


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
