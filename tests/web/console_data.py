"""Web console test data: runs with stored trees, written into a real store.

Trees come from the real MCTS over hand-written fakes of the policy and the sandbox
(tests/fakes.py): the stored JSON is exactly what a worker writes. One step of the scripted
policy prints a `<script>` tag, so every page can be checked for escaping. (A module of its
own, not conftest: `from conftest import` finds another directory's conftest when several
test directories run in one session.)
"""

from __future__ import annotations

import asyncio

from fakes import InlineExecutor, ScriptedPolicy
from rstar_core.config import SearchConfig
from rstar_core.mcts import MCTS
from rstar_core.steps import OUTPUT_STOP
from rstar_core.types import Problem
from rstar_store import Store

TOKEN = "test-token-0123456789abcdef"
SCRIPT_TAG = "<script>window.pwned=1</script>"
QUESTION = "Sam has 3 apples and gets 4 more. How many apples?"


def _tail(prompt: str) -> str:
    return prompt.rsplit("<|im_start|>assistant\n", 1)[1]


def script(prompt: str, call: int):
    """Two first steps (one prints a <script> tag), a failing one, then answers 7 (right) or 8."""
    tail = _tail(prompt)
    if not tail:
        return [("# Sam has 3 apples.\nx = 3", "\n#"),
                (f"# Show a tag {SCRIPT_TAG}\nx = 3\nprint('{SCRIPT_TAG}')", OUTPUT_STOP),
                ("# Bad variable.\nx = y", "\n#")]
    if "print(x + 4)" not in tail:
        return [("# Add 4.\nprint(x + 4)", OUTPUT_STOP)]
    return [("The answer is \\boxed{7}.", None), ("The answer is \\boxed{8}.", None)]


def search(problem: Problem, *, rollouts: int = 6, delay_s: float = 0.0, on_tree=None):
    config = SearchConfig(expansion_width=3, rollouts=rollouts, max_depth=5, parallel_rollouts=1)
    mcts = MCTS(ScriptedPolicy(script, delay_s=delay_s), InlineExecutor(), config)
    return mcts.search(problem, on_tree=on_tree)


def populate(store: Store) -> dict[str, int]:
    """Run `demo`: a done task with a tree, a running one with a snapshot, a failed and a queued one."""
    store.get_or_create_run("demo", config_name="round1", config={"rollouts": 6})
    problems = [Problem(QUESTION, "7", "p-done"), Problem("How many legs do 2 cats have?", "8", "p-running"),
                Problem("What is 2 + 2?", "4", "p-failed"), Problem("What is 5 - 1?", None, "p-queued")]
    batch = store.add_batch("demo", 1, 0, problems, {"rollouts": 6}, source="demo.jsonl")
    done, running, failed, queued = batch.task_ids
    store.claim_task(done, worker="test")
    assert store.record_result(done, asyncio.run(search(problems[0])))
    store.claim_task(running, worker="test")
    partial = asyncio.run(search(Problem(problems[1].question, "8"), rollouts=2)).tree
    assert store.save_snapshot(running, partial.to_dict()) == 1
    store.claim_task(failed, worker="test")
    store.mark_failed(failed, "RuntimeError: <b>boom</b>", final=True)
    return {"done": done, "running": running, "failed": failed, "queued": queued}
