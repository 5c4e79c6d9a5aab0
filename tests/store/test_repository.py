"""The store's repository on SQLite and PostgreSQL: enqueue, claim, record once, progress, results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from rstar_core.data import trajectories
from rstar_core.mcts.search import SearchResult
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree
from rstar_store import Store
from rstar_store.models import Batch, ProblemRow, SearchResultRow, SearchTask, TrajectoryRow

CONFIG = {"rollouts": 8, "c_puct": 2.0, "stop": ["```output"]}


def problems(n: int, prefix: str = "p") -> list[Problem]:
    return [Problem(question=f"What is {i} + {i}?", answer=str(2 * i), id=f"{prefix}{i}") for i in range(n)]


def solved_tree(problem: Problem, *, correct_first: bool = True, tokens: int = 100) -> Tree:
    """root -> a -> {a1: answer, a2: answer}, root -> b -> too-many-errors; values backed up by hand."""
    tree = Tree.new(problem, config=CONFIG, model_versions={"policy": "smollm2@1", "ppm": "none"})
    a = tree.add_child(tree.root, kind=NodeKind.CODE, text="# add\nprint(1 + 1)\nOutput: 2", code="print(1 + 1)",
                       output="2\n", num_tokens=12)
    b = tree.add_child(tree.root, kind=NodeKind.CODE, text="# guess\nprint(3)\nOutput: 3", code="print(3)",
                       output="3\n", num_tokens=9)
    gt = problem.answer
    known = gt is not None
    a1 = tree.add_child(a, kind=NodeKind.ANSWER, text="The answer is \\boxed{%s}" % gt, answer=str(gt),
                        terminal=TerminalReason.ANSWER, correct=correct_first if known else None,
                        terminal_value=1.0 if correct_first else -1.0)
    a2 = tree.add_child(a, kind=NodeKind.ANSWER, text="The answer is \\boxed{7}", answer="7",
                        terminal=TerminalReason.ANSWER, correct=False if known else None, terminal_value=-1.0)
    b1 = tree.add_child(b, kind=NodeKind.CODE, text="# oops", terminal=TerminalReason.TOO_MANY_ERRORS,
                        terminal_value=-1.0)
    for leaf in (a1, a2, b1):
        for node in [tree.root, *tree.path(leaf)]:
            node.value_sum += leaf.terminal_value
            node.visits += 1
    for node in (tree.root, a, b):
        node.expanded = True
    tree.stats.rollouts = 3
    tree.stats.generated_tokens = tokens
    tree.stats.dropped_exec = {"error": 2}
    tree.stats.wall_s = 1.5
    return tree


def search_result(problem: Problem, *, correct: bool = True, tokens: int = 100, wall_s: float = 2.0) -> SearchResult:
    tree = solved_tree(problem, correct_first=correct, tokens=tokens)
    known = problem.answer is not None
    return SearchResult(tree, answer=str(problem.answer) if correct else "7", correct=correct if known else None,
                        any_correct=correct if known else None, wall_s=wall_s, extra={"seed_offset": 0})


def count(store: Store, model, *where) -> int:
    with store.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(*where))


def enqueue(store: Store, items: list[Problem], *, run: str = "r1", round: int = 1, seed: int = 0):
    store.get_or_create_run(run, "round1", CONFIG)
    return store.add_batch(run, round, seed, items, CONFIG, source="train.jsonl")


# --- enqueue ----------------------------------------------------------------------------


def test_add_batch_creates_problems_and_tasks(store):
    run = store.get_or_create_run("r1", "round1", CONFIG)
    assert (run.name, run.status, run.config_name, run.config) == ("r1", "active", "round1", CONFIG)
    assert store.get_or_create_run("r1", "other", {}).id == run.id  # an existing run is unchanged

    out = store.add_batch("r1", 1, 0, problems(3), CONFIG, source="train.jsonl")

    assert len(out.task_ids) == 3 and out.new_task_ids == out.task_ids
    assert count(store, ProblemRow) == 3 and count(store, SearchTask, SearchTask.state == "queued") == 3
    spec = store.task_spec(out.task_ids[1])
    assert (spec.run, spec.round, spec.seed, spec.state, spec.attempts) == ("r1", 1, 0, "queued", 0)
    assert spec.problem == Problem(question="What is 1 + 1?", answer="2", id="p1")
    assert spec.config == CONFIG


def test_add_batch_is_all_or_nothing_and_names_the_bad_record(store):
    store.get_or_create_run("r1")
    items = problems(5)
    items[2] = Problem(question="a NUL \x00 in the middle", answer="1", id="bad")

    with pytest.raises(ValueError, match=r"problem 2 \(id 'bad'\).*NUL"):
        store.add_batch("r1", 1, 0, items, CONFIG)

    assert count(store, ProblemRow) == count(store, SearchTask) == count(store, Batch) == 0


def test_add_batch_conflict_found_in_the_database_rolls_everything_back(store):
    enqueue(store, problems(2))
    changed = [*problems(2, prefix="new"), Problem(question="What is 1 + 1?", answer="3", id="p1")]

    # The clash is only visible after the new problems were inserted: the transaction undoes them.
    with pytest.raises(ValueError, match=r"problem 2 \(id 'p1'\).*already in this run"):
        store.add_batch("r1", 1, 0, changed, CONFIG)

    assert count(store, ProblemRow) == 2 and count(store, SearchTask) == 2 and count(store, Batch) == 1


def test_duplicate_ids_in_one_batch(store):
    store.get_or_create_run("r1")
    same = problems(1) * 2
    out = store.add_batch("r1", 1, 0, same, CONFIG)
    assert out.task_ids[0] == out.task_ids[1] and len(out.new_task_ids) == 1

    clash = [Problem("q one", "1", id="x"), Problem("q two", "2", id="x")]
    with pytest.raises(ValueError, match=r"problem 1 \(id 'x'\).*also problem 0"):
        store.add_batch("r1", 1, 0, clash, CONFIG)


def test_merged_duplicates_are_counted(store):
    store.get_or_create_run("r1")
    # p0 three times, an anonymous question twice: three records merged into earlier ones.
    items = [*problems(2), *problems(1), *problems(1), Problem("no id?", "1"), Problem("no id?", "1")]
    out = store.add_batch("r1", 1, 0, items, CONFIG)
    assert out.merged_duplicates == 3
    assert len(out.task_ids) == 6 and len(out.new_task_ids) == 3
    # Counted within one call: records already in the run are not duplicates of this call.
    assert store.add_batch("r1", 1, 0, problems(2), CONFIG).merged_duplicates == 0


def test_reenqueue_is_idempotent(store):
    first = enqueue(store, problems(3))

    again = store.add_batch("r1", 1, 0, problems(4), CONFIG)  # same three plus one new

    assert again.task_ids[:3] == first.task_ids
    assert again.new_task_ids == [again.task_ids[3]]
    assert count(store, SearchTask) == 4 and count(store, ProblemRow) == 4
    # Another seed is another search of the same problems.
    other_seed = store.add_batch("r1", 1, 1, problems(4), CONFIG)
    assert len(other_seed.new_task_ids) == 4 and count(store, ProblemRow) == 4
    # Problems without ids are keyed by their question, so they are idempotent too.
    anonymous = [Problem("How many legs has a cat?", 4)]
    assert store.add_batch("r1", 2, 0, anonymous, CONFIG).new_task_ids
    assert store.add_batch("r1", 2, 0, anonymous, CONFIG).new_task_ids == []


def test_bad_arguments(store):
    store.get_or_create_run("r1")
    with pytest.raises(ValueError, match="round"):
        store.add_batch("r1", -1, 0, problems(1), CONFIG)
    with pytest.raises(ValueError, match="empty"):
        store.add_batch("r1", 1, 0, [], CONFIG)
    with pytest.raises(ValueError, match=r"problem 0.*answer"):
        store.add_batch("r1", 1, 0, [Problem("q", float("nan"))], CONFIG)
    with pytest.raises(LookupError, match="no run named 'nope'"):
        store.add_batch("nope", 1, 0, problems(1), CONFIG)
    with pytest.raises(LookupError, match="no search task 999"):
        store.claim_task(999, "w")


# --- the worker's side --------------------------------------------------------------------


def test_claim_task(store):
    task_id = enqueue(store, problems(1)).task_ids[0]

    assert store.claim_task(task_id, "worker-1", "celery-a")
    # Redelivered after worker-1 died: the task is still "running" and may be claimed again.
    assert store.claim_task(task_id, "worker-2", "celery-a")
    spec = store.task_spec(task_id)
    assert (spec.state, spec.attempts) == ("running", 2)

    assert store.record_result(task_id, search_result(spec.problem))
    assert not store.claim_task(task_id, "worker-3", "celery-b")
    assert store.task_spec(task_id).attempts == 2


def test_record_result_writes_once(store):
    task_id = enqueue(store, problems(1)).task_ids[0]
    store.claim_task(task_id, "w", "c")
    result = search_result(store.task_spec(task_id).problem)

    assert store.record_result(task_id, result) is True
    assert store.record_result(task_id, result) is False

    assert count(store, SearchResultRow) == 1
    assert count(store, TrajectoryRow) == len(trajectories(result.tree)) == 3
    assert store.task_spec(task_id).state == "done"


def test_record_result_race_has_exactly_one_winner(store, db_url):
    task_ids = enqueue(store, problems(4)).task_ids
    other = Store.from_url(db_url)  # a second "worker process": its own engine and connections
    try:
        for task_id in task_ids:
            result = search_result(store.task_spec(task_id).problem)
            barrier = threading.Barrier(2)

            def write(s: Store) -> bool:
                barrier.wait()
                return s.record_result(task_id, result)

            with ThreadPoolExecutor(2) as pool:
                outcomes = sorted(pool.map(write, [store, other]))
            assert outcomes == [False, True]
    finally:
        other.close()
    assert count(store, SearchResultRow) == 4
    assert count(store, TrajectoryRow) == 4 * 3
    assert count(store, SearchTask, SearchTask.state == "done") == 4


def test_record_result_waits_for_a_concurrent_writer_and_loses(store, db_url):
    """Deterministic version of the race: the other writer's transaction is still open."""
    task_id = enqueue(store, problems(1)).task_ids[0]
    result = search_result(store.task_spec(task_id).problem)
    other = Store.from_url(db_url)
    outcome: list[bool] = []
    try:
        with other.engine.begin() as conn:
            conn.execute(SearchResultRow.__table__.insert().values(
                task_id=task_id, difficulty="easy", tokens=1, wall_s=1.0, rollouts=1, model_versions={},
                stats={}, extra={}, tree={}, created_at=datetime.now(timezone.utc)))
            writer = threading.Thread(target=lambda: outcome.append(store.record_result(task_id, result)))
            writer.start()
            writer.join(0.5)
            assert writer.is_alive(), "record_result did not wait for the open transaction"
        writer.join(10)
    finally:
        other.close()
    assert outcome == [False]
    assert count(store, SearchResultRow) == 1 and count(store, TrajectoryRow) == 0


def test_record_result_checks_the_task(store):
    task_id = enqueue(store, problems(2)).task_ids[0]
    with pytest.raises(ValueError, match="not the task's problem"):
        store.record_result(task_id, search_result(problems(2)[1]))
    with pytest.raises(LookupError):
        store.record_result(12345, search_result(problems(1)[0]))
    assert count(store, SearchResultRow) == 0


def test_trajectories_are_extracted(store):
    task_id = enqueue(store, problems(1)).task_ids[0]
    result = search_result(store.task_spec(task_id).problem)
    store.record_result(task_id, result)

    with store.engine.connect() as conn:
        rows = conn.execute(select(TrajectoryRow).order_by(TrajectoryRow.ordinal)).all()
    expected = trajectories(result.tree)
    assert [(list(t.node_ids), list(t.steps), list(t.q_values), t.mean_q, t.answer, t.correct, t.terminal.value)
            for t in expected] == [(r.node_ids, r.steps, r.q_values, r.mean_q, r.answer, r.correct, r.terminal)
                                   for r in rows]
    assert [r.n_steps for r in rows] == [2, 2, 2]


def test_tree_round_trips_through_json(store):
    task_id = enqueue(store, problems(1)).task_ids[0]
    result = search_result(store.task_spec(task_id).problem)
    store.record_result(task_id, result)

    [row] = store.iter_results("r1", with_tree=True)

    assert Tree.from_dict(row["tree"]) == result.tree


def test_nul_in_program_output_is_stored(store):
    task_id = enqueue(store, problems(1)).task_ids[0]
    result = search_result(store.task_spec(task_id).problem)
    result.tree.nodes[1].output = "a\x00b"

    assert store.record_result(task_id, result)
    [row] = store.iter_results("r1", with_tree=True)
    assert row["tree"]["nodes"][1]["output"] == "a\ufffdb"


def test_mark_failed(store):
    task_id = enqueue(store, problems(1)).task_ids[0]
    store.claim_task(task_id, "w", "c")

    assert store.mark_failed(task_id, "policy UNAVAILABLE", final=False)
    spec = store.task_spec(task_id)
    assert spec.state == "queued"
    store.claim_task(task_id, "w", "c")
    assert store.mark_failed(task_id, "Traceback ...\nTimeoutError", final=True)
    assert store.task_spec(task_id).state == "failed"
    # A failed task may be run again; once done, a late failure report changes nothing.
    assert store.claim_task(task_id, "w", "c")
    store.record_result(task_id, search_result(spec.problem))
    assert not store.mark_failed(task_id, "late duplicate", final=True)
    assert store.task_spec(task_id).state == "done"


def test_cancel_run(store):
    task_ids = enqueue(store, problems(3)).task_ids
    store.claim_task(task_ids[0], "w", "c")

    assert store.cancel_run("r1") == 2

    assert [store.task_spec(t).state for t in task_ids] == ["running", "cancelled", "cancelled"]
    assert not store.claim_task(task_ids[1], "w", "c")
    assert store.run_progress("r1").status == "cancelled"
    with pytest.raises(ValueError, match="cancelled"):
        store.add_batch("r1", 1, 0, problems(1), CONFIG)


def test_run_progress(store):
    items = [*problems(3), Problem(question="Prove it.", answer=None, id="open")]
    task_ids = enqueue(store, items).task_ids
    store.add_batch("r1", 2, 0, problems(1, prefix="later"), CONFIG)
    for t in task_ids:
        store.claim_task(t, "w", "c")
    store.record_result(task_ids[0], search_result(items[0], correct=True, tokens=100, wall_s=2.0))
    store.record_result(task_ids[1], search_result(items[1], correct=False, tokens=300, wall_s=2.0))
    store.record_result(task_ids[3], search_result(items[3], tokens=200, wall_s=1.0))
    store.mark_failed(task_ids[2], "boom", final=True)

    progress = store.run_progress("r1", round=1)

    assert progress.states == {"queued": 0, "running": 0, "done": 3, "failed": 1, "cancelled": 0}
    assert (progress.results, progress.solved, progress.any_correct, progress.known) == (3, 1, 1, 2)
    assert progress.tokens == 600 and progress.search_s == pytest.approx(5.0)
    assert progress.tokens_per_s == pytest.approx(120.0)
    assert progress.elapsed_s > 0.0 and progress.throughput_tokens_per_s > 0.0
    everything = store.run_progress("r1")
    assert everything.total == 5 and everything.states["queued"] == 1


def test_iter_results(store):
    items = problems(3)
    task_ids = enqueue(store, items).task_ids
    for t, p in zip(task_ids[:2], items):
        store.claim_task(t, "worker-1", "c")
        store.record_result(t, search_result(p, tokens=50))

    rows = list(store.iter_results("r1"))

    assert [r["problem_id"] for r in rows] == ["p0", "p1"]
    first = rows[0]
    assert first["question"] == items[0].question and first["ground_truth"] == "0"
    assert (first["answer"], first["correct"], first["any_correct"], first["difficulty"]) == ("0", True, True, "medium")
    assert (first["round"], first["seed"], first["tokens"], first["rollouts"], first["worker"]) == (1, 0, 50, 3, "worker-1")
    assert first["model_versions"] == {"policy": "smollm2@1", "ppm": "none"}
    assert "tree" not in first and first["finished_at"].endswith("+00:00")
    assert list(store.iter_results("r1", round=2)) == []
