"""The worker's live snapshots: a running search's partial tree reaches the store while it grows.

A real MCTS over the scripted fakes, a real SQLite store, the task's own `_run` with its
`SnapshotPublisher`; the policy is slowed down so the search lasts about a second.
"""

import asyncio

from fakes import InlineExecutor, ScriptedPolicy
from rstar_core.config import SearchConfig
from rstar_core.mcts import MCTS
from rstar_core.steps import OUTPUT_STOP
from rstar_core.types import Problem
from rstar_store import Store, migrate
from rstar_worker import tasks

QUESTION = "Sam has 3 apples and gets 4 more. How many apples?"


def script(prompt, call):
    tail = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if not tail:
        return [("# Sam has 3 apples.\nx = 3", "\n#"), ("# Three apples.\nx = 1 + 2", "\n#")]
    if "print(x + 4)" not in tail:
        return [("# Add 4.\nprint(x + 4)", OUTPUT_STOP)]
    return [("The answer is \\boxed{7}.", None), ("The answer is \\boxed{8}.", None)]


def test_a_running_search_publishes_growing_snapshots_and_the_result_replaces_them(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    migrate(url)
    store = Store.from_url(url)
    store.get_or_create_run("live")
    [task_id] = store.add_batch("live", 1, 0, [Problem(QUESTION, "7", "p")], {}).task_ids
    store.claim_task(task_id, worker="test")
    seen = []
    save = store.save_snapshot

    def recording_save(task, tree):
        seen.append(len(tree["nodes"]))
        return save(task, tree)

    store.save_snapshot = recording_save
    mcts = MCTS(ScriptedPolicy(script, delay_s=0.1), InlineExecutor(),
                SearchConfig(expansion_width=2, rollouts=6, max_depth=5, parallel_rollouts=1))
    publish = tasks.SnapshotPublisher(store, task_id, interval_s=0.05)
    result = asyncio.run(tasks._run(mcts, Problem(QUESTION, "7", "p"), [], publish))
    assert publish.written >= 3 and seen == sorted(seen) and seen[0] < len(result.tree.nodes)
    assert store.get_snapshot(task_id)["seq"] == publish.written
    assert store.record_result(task_id, result)
    assert store.get_snapshot(task_id) is None
    store.close()


def test_publishing_off_writes_nothing(tmp_path):
    publish = tasks.SnapshotPublisher(None, 1, interval_s=0)
    mcts = MCTS(ScriptedPolicy(script), InlineExecutor(), SearchConfig(expansion_width=2, rollouts=2, max_depth=5))
    asyncio.run(tasks._run(mcts, Problem(QUESTION, "7", "p"), [], publish))
    assert publish.written == 0
