"""The console's read-only queries over the store: runs with their rounds and batches, tasks,
trees (final or live), model versions and evolve rounds, as JSON-ready dicts.

Aggregates are computed by the database in a few grouped queries per page, never by
loading rows into Python, so a run of 100,000 tasks reads as fast as one of ten. Trees
are returned as stored (`Tree.to_dict()`) plus what the page derives from them: the
chosen answer's path. Not here: writes (enqueue goes through the CLI's `enqueue_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from rstar_core.config import VALUED_TERMINAL_REWARDS
from rstar_core.mcts import pick_terminal
from rstar_core.types import Tree
from rstar_store import Store
from rstar_store.db import SQLITE_READ_ONLY
from rstar_store.models import Batch, ProblemRow, Run, SearchResultRow, SearchSnapshot, SearchTask, TaskState

__all__ = ["ConsoleQueries"]

STATES = tuple(s.value for s in TaskState)
MAX_PAGE = 500
# Questions and errors in task lists are cut to this; the task page shows them whole.
LIST_TEXT_CHARS = 160


class ConsoleQueries:
    def __init__(self, store: Store) -> None:
        self.store = store
        # SQLite: a plain deferred BEGIN, so the console never waits for a worker's write.
        self._read = sessionmaker(store.engine.execution_options(**{SQLITE_READ_ONLY: True}))

    def ping(self) -> None:
        """Raises unless the store answers and has the schema."""
        with self._read() as session:
            session.execute(select(func.count()).select_from(Run).where(Run.id == -1)).scalar()

    # --- runs ---------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with task counts, results and throughput."""
        with self._read() as session:
            runs = session.scalars(select(Run).order_by(Run.created_at.desc(), Run.id.desc())).all()
            summaries = self._summaries(session, [SearchTask.run_id])
        return [{**_run_dict(r), **summaries.get((r.id,), _empty_summary())} for r in runs]

    def run(self, name: str) -> dict[str, Any]:
        """One run: totals, one row per round and one per batch (each with its counts)."""
        with self._read() as session:
            run = session.scalar(select(Run).where(Run.name == name))
            if run is None:
                raise LookupError(f"no run named {name!r}")
            only = SearchTask.run_id == run.id
            totals = self._summaries(session, [SearchTask.run_id], only).get((run.id,), _empty_summary())
            rounds = self._summaries(session, [SearchTask.round], only)
            by_batch = self._summaries(session, [SearchTask.batch_id], only)
            batches = session.scalars(select(Batch).where(Batch.run_id == run.id).order_by(Batch.id)).all()
        return {
            **_run_dict(run), **totals,
            "config": run.config,
            "rounds": [{"round": r, **rounds[(r,)]} for (r,) in sorted(rounds)],
            "batches": [{"id": b.id, "round": b.round, "seed": b.seed, "source": b.source,
                         "n_problems": b.n_problems, "n_new_tasks": b.n_new_tasks,
                         "created_at": _iso(b.created_at), **by_batch.get((b.id,), _empty_summary())}
                        for b in batches],
        }

    def _summaries(self, session, keys, *where) -> dict[tuple, dict[str, Any]]:
        """Task counts by state, result totals and throughput, grouped by `keys`."""
        out: dict[tuple, dict[str, Any]] = {}
        counts = session.execute(select(*keys, SearchTask.state, func.count()).where(*where)
                                 .group_by(*keys, SearchTask.state))
        for *key, state, n in counts:
            out.setdefault(tuple(key), _empty_summary())["states"][state] = n
        results = session.execute(
            select(*keys, func.count(SearchResultRow.id),
                   func.count().filter(SearchResultRow.correct.is_(True)),
                   func.count(SearchResultRow.correct),
                   func.coalesce(func.sum(SearchResultRow.tokens), 0),
                   func.min(SearchTask.started_at), func.max(SearchTask.finished_at))
            .join(SearchTask, SearchTask.id == SearchResultRow.task_id).where(*where).group_by(*keys))
        for *key, n, solved, known, tokens, first, last in results:
            summary = out.setdefault(tuple(key), _empty_summary())
            minutes = (_aware(last) - _aware(first)).total_seconds() / 60 if first and last else 0.0
            summary.update(results=n, solved=solved, known=known, tokens=int(tokens),
                           accuracy=round(solved / known, 4) if known else None,
                           problems_per_min=round(n / minutes, 2) if minutes > 0 else None)
        for summary in out.values():
            summary["total"] = sum(summary["states"].values())
        return out

    # --- tasks --------------------------------------------------------------------------

    def tasks(self, run: str, *, round: int | None = None, state: str | None = None,
              offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of the run's tasks in enqueue order, with their results' summary."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"offset must be >= 0 and limit in 1..{MAX_PAGE}")
        with self._read() as session:
            run_id = session.scalar(select(Run.id).where(Run.name == run))
            if run_id is None:
                raise LookupError(f"no run named {run!r}")
            where = [SearchTask.run_id == run_id]
            if round is not None:
                where.append(SearchTask.round == round)
            if state is not None:
                where.append(SearchTask.state == state)
            total = session.scalar(select(func.count()).select_from(SearchTask).where(*where))
            rows = session.execute(
                select(SearchTask, ProblemRow.external_id, ProblemRow.question, SearchResultRow.answer,
                       SearchResultRow.correct, SearchResultRow.difficulty, SearchResultRow.tokens,
                       SearchResultRow.wall_s, SearchSnapshot.n_nodes)
                .join(ProblemRow, ProblemRow.id == SearchTask.problem_id)
                .outerjoin(SearchResultRow, SearchResultRow.task_id == SearchTask.id)
                .outerjoin(SearchSnapshot, SearchSnapshot.task_id == SearchTask.id)
                .where(*where).order_by(SearchTask.id).offset(offset).limit(limit)).all()
        return {"run": run, "total": total, "offset": offset, "limit": limit, "tasks": [
            {**_task_dict(task), "problem": external_id, "question": _cut(question),
             "answer": answer, "correct": correct, "difficulty": difficulty, "tokens": tokens, "wall_s": wall_s,
             "live_nodes": live_nodes, "last_error": _cut(task.last_error)}
            for task, external_id, question, answer, correct, difficulty, tokens, wall_s, live_nodes in rows]}

    def task(self, task_id: int) -> dict[str, Any]:
        """A task with its problem, its result's summary (no tree) and its live snapshot's state."""
        with self._read() as session:
            row = session.execute(
                select(SearchTask, Run.name, ProblemRow)
                .join(Run, Run.id == SearchTask.run_id).join(ProblemRow, ProblemRow.id == SearchTask.problem_id)
                .where(SearchTask.id == task_id)).one_or_none()
            if row is None:
                raise LookupError(f"no search task {task_id}")
            task, run, problem = row
            result = session.scalar(select(SearchResultRow).where(SearchResultRow.task_id == task_id))
            snapshot = session.execute(select(SearchSnapshot.seq, SearchSnapshot.n_nodes, SearchSnapshot.updated_at)
                                       .where(SearchSnapshot.task_id == task_id)).one_or_none()
        out = {**_task_dict(task), "run": run, "last_error": task.last_error,
               "problem": {"id": problem.external_id, "question": problem.question, "answer": problem.answer},
               "result": None, "snapshot": None}
        if result is not None:
            out["result"] = {"answer": result.answer, "correct": result.correct, "any_correct": result.any_correct,
                             "difficulty": result.difficulty, "tokens": result.tokens, "wall_s": result.wall_s,
                             "rollouts": result.rollouts, "model_versions": result.model_versions,
                             "stats": result.stats, "created_at": _iso(result.created_at)}
        if snapshot is not None:
            out["snapshot"] = {"seq": snapshot.seq, "n_nodes": snapshot.n_nodes, "updated_at": _iso(snapshot.updated_at)}
        return out

    def tree(self, task_id: int) -> dict[str, Any]:
        """The final tree when the task has a result, else its latest snapshot (`final` says which).

        Raises LookupError when there is neither (a task still queued).
        """
        with self._read() as session:
            state = session.scalar(select(SearchTask.state).where(SearchTask.id == task_id))
            if state is None:
                raise LookupError(f"no search task {task_id}")
            row = session.execute(select(SearchResultRow.tree, SearchResultRow.answer)
                                  .where(SearchResultRow.task_id == task_id)).one_or_none()
            if row is not None:
                return tree_payload(row.tree, final=True, state=state, answer=row.answer)
            snap = session.execute(select(SearchSnapshot.tree, SearchSnapshot.seq)
                                   .where(SearchSnapshot.task_id == task_id)).one_or_none()
        if snap is None:
            raise LookupError(f"task {task_id} ({state}) has no tree yet")
        return tree_payload(snap.tree, final=False, state=state, seq=snap.seq)

    def live_mark(self, task_id: int) -> tuple[str, int | None, bool]:
        """What the live view polls: (task state, snapshot seq or None, has a result)."""
        with self._read() as session:
            row = session.execute(
                select(SearchTask.state, SearchSnapshot.seq, SearchResultRow.id)
                .outerjoin(SearchSnapshot, SearchSnapshot.task_id == SearchTask.id)
                .outerjoin(SearchResultRow, SearchResultRow.task_id == SearchTask.id)
                .where(SearchTask.id == task_id)).one_or_none()
        if row is None:
            raise LookupError(f"no search task {task_id}")
        return row[0], row[1], row[2] is not None

    # --- models and rounds --------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The registry, newest first; `parent` links each version to the one it came from."""
        return [_jsonable(asdict(v)) for v in self.store.list_model_versions()]

    def rounds(self, run: str) -> dict[str, Any]:
        """The round table of an `rstar evolve` run and its recorded steps."""
        from rstar_cli.rounds import rounds_table

        steps = self.store.list_evolve_steps(run)
        return {"run": run, "rows": rounds_table(steps),
                "steps": [_jsonable({k: v for k, v in asdict(s).items() if k != "result"}) for s in steps]}


def tree_payload(tree: Mapping[str, Any], *, final: bool, state: str, answer: str | None = None,
                 seq: int | None = None) -> dict[str, Any]:
    """The stored tree plus the node ids from the root to the terminal of the chosen answer."""
    chosen: list[int] = []
    if final:
        parsed = Tree.from_dict(dict(tree))
        # As the search picked it: by value where the terminals carry a model's judgement.
        node = pick_terminal(parsed, by_ppm=parsed.config.get("terminal_reward") in VALUED_TERMINAL_REWARDS)
        if node is not None and node.answer == answer:
            chosen = [0] + [n.id for n in parsed.path(node)]
    return {"final": final, "state": state, "seq": seq, "answer": answer, "chosen_path": chosen, "tree": tree}


def _empty_summary() -> dict[str, Any]:
    return {"states": {s: 0 for s in STATES}, "total": 0, "results": 0, "solved": 0, "known": 0, "tokens": 0,
            "accuracy": None, "problems_per_min": None}


def _run_dict(run: Run) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "status": run.status, "config_name": run.config_name,
            "created_at": _iso(run.created_at)}


def _task_dict(task: SearchTask) -> dict[str, Any]:
    return {"id": task.id, "round": task.round, "seed": task.seed, "state": task.state, "attempts": task.attempts,
            "worker": task.worker, "queued_at": _iso(task.queued_at), "started_at": _iso(task.started_at),
            "finished_at": _iso(task.finished_at)}


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= LIST_TEXT_CHARS:
        return text
    return text[:LIST_TEXT_CHARS - 1] + "…"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return _aware(moment).isoformat() if moment is not None else None


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in data.items()}
