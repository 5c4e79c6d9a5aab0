import asyncio
import math

import pytest

from fakes import FixedReward, InlineExecutor, ScriptedPolicy
from rstar_core.config import SearchConfig
from rstar_core.mcts import MCTS, each_bounded, pick_answer
from rstar_core.mcts.search import _Pending
from rstar_core.steps import OUTPUT_STOP
from rstar_core.types import Node, NodeKind, Problem, TerminalReason, Tree

QUESTION = "Sam has 3 apples and gets 4 more. How many apples?"


def _tail(prompt: str) -> str:
    return prompt.rsplit("<|im_start|>assistant\n", 1)[1]


def arithmetic_script(prompt: str, call: int):
    tail = _tail(prompt)
    if not tail:
        return [
            ("# Sam has 3 apples.\nx = 3", "\n#"),
            ("# Bad variable.\nx = y", "\n#"),
            ("Sam has three apples so", "\n#"),
            ("# Sam has 3 apples.\nx = 3", "\n#"),
        ]
    if "print" not in tail:
        return [("# Add 4.\nprint(x + 4)", OUTPUT_STOP)]
    return [("The answer is \\boxed{7}.", None), ("The answer is \\boxed{8}.", None)]


def run(coro):
    return asyncio.run(coro)


def make(config=None, script=arithmetic_script, reward=None, **kw):
    config = config or SearchConfig(expansion_width=4, rollouts=4, max_depth=5, parallel_rollouts=1)
    policy = ScriptedPolicy(script, **kw)
    executor = InlineExecutor()
    return MCTS(policy, executor, config, reward=reward), policy, executor


def test_search_builds_tree_grades_and_counts_drops():
    mcts, policy, executor = make()
    result = run(mcts.search(Problem(QUESTION, "7")))
    tree = result.tree
    answers = [n for n in tree.nodes if n.terminal is TerminalReason.ANSWER]
    assert {n.answer for n in answers} == {"7", "8"}
    assert {n.answer: n.correct for n in answers} == {"7": True, "8": False}
    assert result.answer in {"7", "8"} and result.any_correct is True
    stats = tree.stats
    assert stats.dropped_exec == {"error": 1}
    assert stats.dropped_invalid == {"syntax": 1}
    assert stats.dropped_duplicate == 1
    assert any("NameError" in d["reason"] for d in tree.dropped_examples)
    # The print step was run together with the earlier step, and its output shown.
    assert "# Sam has 3 apples.\nx = 3\n# Add 4.\nprint(x + 4)" in executor.programs
    printing = next(n for n in tree.nodes if "print" in n.code)
    assert printing.output == "7\n" and printing.text.endswith("\nOutput: 7")


def test_backprop_sums_terminal_values_to_root():
    mcts, _, _ = make()
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    terminals = tree.terminals()
    assert tree.root.visits == len(terminals)
    assert math.isclose(tree.root.value_sum, sum(n.terminal_value for n in terminals))
    for node in tree.nodes:
        below = [t for t in terminals if node in [tree.root, *tree.path(t)]]
        assert node.visits == len(below)


def test_error_threshold_ends_branch():
    script = lambda prompt, call: [("# oops\nprint(undefined_name)", OUTPUT_STOP)]
    config = SearchConfig(expansion_width=2, rollouts=3, errors_threshold=2, parallel_rollouts=1)
    mcts, policy, _ = make(config, script)
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    assert tree.root.terminal is TerminalReason.TOO_MANY_ERRORS
    assert len(policy.requests) == 2
    # The retry sampled the same failing code again: known to fail, so not re-run.
    assert tree.stats.dropped_exec == {"error": 1} and tree.stats.dropped_duplicate == 1
    assert tree.root.q == -1.0


def test_max_depth_makes_failure_terminals():
    script = lambda prompt, call: [(f"# step {call}\nv{call} = {call}", "\n#")]
    config = SearchConfig(expansion_width=1, rollouts=2, max_depth=3, parallel_rollouts=1)
    mcts, _, _ = make(config, script)
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    leaves = tree.terminals()
    assert leaves and all(n.terminal is TerminalReason.MAX_DEPTH and n.depth == 3 for n in leaves)
    assert all(n.terminal_value == -1.0 for n in leaves)
    assert tree.root.exhausted  # the single chain is used up: later rollouts stop early


def test_unvisited_children_explored_first_by_default():
    tree = Tree.new(Problem(QUESTION))
    tree.root.visits, tree.root.expanded = 3, True
    visited = tree.add_child(tree.root, kind=NodeKind.CODE, text="a", visits=3, value_sum=-3.0)
    unvisited = tree.add_child(tree.root, kind=NodeKind.CODE, text="b")
    mcts, _, _ = make()
    assert mcts._select_child(tree, tree.root, _Pending()) is unvisited
    greedy, _, _ = make(SearchConfig(explore_unvisited_first=False))
    # Reference rule: unvisited scores 0, the visited child scores -1 + 2*sqrt(ln3/3) > 0.
    assert greedy._select_child(tree, tree.root, _Pending()) is visited


def test_uct_prefers_higher_q_at_equal_visits_and_skips_terminals():
    tree = Tree.new(Problem(QUESTION))
    tree.root.visits = 4
    low = tree.add_child(tree.root, kind=NodeKind.CODE, visits=2, value_sum=-1.0)
    high = tree.add_child(tree.root, kind=NodeKind.CODE, visits=2, value_sum=1.0)
    done = tree.add_child(tree.root, kind=NodeKind.ANSWER, visits=1, value_sum=1.0,
                          terminal=TerminalReason.ANSWER)
    mcts, _, _ = make()
    assert mcts._select_child(tree, tree.root, _Pending()) is high
    # Virtual loss of in-flight rollouts pushes the next rollout to the sibling.
    pending = _Pending()
    for _ in range(3):
        pending.add(high)
    assert mcts._select_child(tree, tree.root, pending) is low
    assert done not in (low, high)


def test_parallel_rollouts_overlap_and_take_different_branches():
    def script(prompt, call):
        if not _tail(prompt):
            return [("# Sam has 3 apples.\nx = 3", "\n#"), ("# Three apples.\nx = 1 + 2", "\n#")]
        return arithmetic_script(prompt, call)

    config = SearchConfig(expansion_width=4, rollouts=4, max_depth=5, parallel_rollouts=2)
    mcts, policy, _ = make(config, script, delay_s=0.01)
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    assert policy.max_in_flight == 2
    # Virtual loss sent the two in-flight rollouts down different first steps.
    first = [tree.nodes[c] for c in tree.root.children]
    assert len(first) == 2 and all(n.visits > 0 for n in first)
    assert tree.stats.rollouts == 4 or tree.root.exhausted


def test_parallel_rollouts_do_not_trail_each_other_when_samples_stream_in():
    # Candidates finish one at a time (as from a real engine): the second rollout must
    # not follow the first into the only child there is yet, but wait for a fresh one.
    def script(prompt, call):
        if not _tail(prompt):
            return [("# Sam has 3 apples.\nx = 3", "\n#"), ("# Three apples.\nx = 1 + 2", "\n#"),
                    ("# Three.\nx = 3 * 1", "\n#"), ("# 3 apples.\nx = 6 - 3", "\n#")]
        return arithmetic_script(prompt, call)

    config = SearchConfig(expansion_width=4, rollouts=2, max_depth=5, parallel_rollouts=2)
    mcts, policy, _ = make(config, script, delay_s=0.2, sample_delay_s=0.05)
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    assert len([c for c in tree.root.children if tree.nodes[c].visits > 0]) == 2
    # Each rollout expanded its own first step (root + 2 x depth 1 + 2 x depth 2 requests).
    assert len(policy.requests) == 5


def test_search_many_runs_problems_concurrently():
    config = SearchConfig(expansion_width=4, rollouts=2, parallel_rollouts=1, concurrent_problems=8)
    mcts, policy, _ = make(config, delay_s=0.01)

    async def go():
        return [r async for r in mcts.search_many([Problem(QUESTION, "7", id=str(i)) for i in range(6)])]

    results = run(go())
    assert sorted(i for i, _ in results) == list(range(6))
    assert policy.max_in_flight >= 6


def test_each_bounded_keeps_to_its_limit_yields_failures_and_cancels_what_is_left():
    problems = [Problem(QUESTION, None, id=str(i)) for i in range(6)]
    running, peak, cancelled = set(), [0], []

    async def work(problem):
        running.add(problem.id)
        peak[0] = max(peak[0], len(running))
        try:
            await asyncio.sleep(0.01 * (1 + int(problem.id) % 3))
            if problem.id == "4":
                raise RuntimeError("boom")
            return problem.id
        except asyncio.CancelledError:
            cancelled.append(problem.id)
            raise
        finally:
            running.discard(problem.id)

    async def every():
        return [r async for r in each_bounded(problems, work, 2, what="test")]

    results = dict(run(every()))
    assert peak[0] == 2 and sorted(results) == list(range(6))
    assert isinstance(results[4], RuntimeError) and all(results[i] == str(i) for i in range(6) if i != 4)

    async def raising():
        return [r async for r in each_bounded(problems, work, 6, what="test", return_exceptions=False)]

    with pytest.raises(RuntimeError, match="boom"):
        run(raising())

    async def first_only():
        cancelled.clear()
        results = each_bounded(problems, work, 6, what="test")
        async for i, _ in results:
            break
        await results.aclose()
        return i

    run(first_only())
    assert cancelled and not running


def test_ppm_initial_values_for_new_nodes():
    reward = FixedReward(lambda item: 0.25)
    config = SearchConfig(expansion_width=4, rollouts=1, use_ppm_init=True, parallel_rollouts=1)
    mcts, _, _ = make(config, reward=reward)
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    inited = [n for n in tree.nodes if n.init_value is not None]
    assert inited and all(n.init_value == 0.25 and n.kind is NodeKind.CODE for n in inited)
    # Scored with the whole path as the prefix.
    assert any(len(item.steps) == 2 for call in reward.calls for item in call)
    assert tree.model_versions == {"policy": "fake-policy@1", "reward": "fake-ppm@1"}


def test_ppm_terminal_values_pick_the_answer_without_ground_truth():
    reward = FixedReward(lambda item: 0.9 if "{8}" in item.steps[-1] else -0.3)
    config = SearchConfig(expansion_width=4, rollouts=2, terminal_reward="ppm", parallel_rollouts=1)
    mcts, _, _ = make(config, reward=reward)
    result = run(mcts.search(Problem(QUESTION)))
    assert result.answer == "8" and result.correct is None
    values = {n.answer: n.terminal_value for n in result.tree.terminals()}
    assert values == {"7": -0.3, "8": 0.9}


def test_without_ground_truth_or_ppm_answers_are_neutral():
    mcts, _, _ = make()
    result = run(mcts.search(Problem(QUESTION)))
    assert all(n.terminal_value == 0.0 for n in result.tree.terminals())
    assert result.correct is None and result.any_correct is None


def test_code_step_that_ends_the_solution_answers_from_its_output():
    def script(prompt, call):
        return [("# Total apples.\nprint(3 + 4)", None)]  # EOS right after the code

    config = SearchConfig(expansion_width=1, rollouts=1, parallel_rollouts=1)
    mcts, _, _ = make(config, script)
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    [leaf] = tree.terminals()
    assert leaf.answer == "7" and leaf.answer_from_output and leaf.correct


def test_missing_reward_model_is_rejected():
    with pytest.raises(ValueError, match="reward model"):
        MCTS(ScriptedPolicy(arithmetic_script), InlineExecutor(), SearchConfig(use_ppm_init=True))


def test_pick_answer_majority_vote():
    tree = Tree.new(Problem(QUESTION))
    for ans in ["5", "7", "7.", "5", "7"]:
        tree.add_child(tree.root, kind=NodeKind.ANSWER, answer=ans, terminal=TerminalReason.ANSWER)
    assert pick_answer(tree, by_ppm=False) == "7"


def test_tree_json_round_trip_is_lossless():
    mcts, _, _ = make()
    tree = run(mcts.search(Problem(QUESTION, ["7", "7.0"], id="p1"))).tree
    again = Tree.from_json(tree.to_json())
    assert again == tree
    assert again.to_json() == tree.to_json()
    assert isinstance(again.nodes[1], Node) and isinstance(again.nodes[1].kind, NodeKind)


def _two_first_steps(prompt, call):
    if not _tail(prompt):
        return [("# Sam has 3 apples.\nx = 3", "\n#"), ("# Three apples.\nx = 1 + 2", "\n#")]
    return arithmetic_script(prompt, call)


def test_rollout_descends_on_first_ready_child_and_late_ones_still_join():
    config = SearchConfig(expansion_width=2, rollouts=1, max_depth=5, parallel_rollouts=1)
    mcts, policy, _ = make(config, _two_first_steps, sample_delay_s=0.2)
    tree = run(mcts.search(Problem(QUESTION, "7"))).tree
    kinds = [kind for kind, _ in policy.events]
    # The depth-1 request went out before the root's second (slow) sample arrived ...
    second_root_sample = [i for i, (k, text) in enumerate(policy.events) if text.startswith("# Three")][0]
    assert kinds.index("request", 1) < second_root_sample
    # ... and the slow sample still joined the tree before the search returned.
    assert len(tree.root.children) == 2 and tree.root.expanded


def test_waiting_for_all_candidates_when_asked():
    config = SearchConfig(expansion_width=2, rollouts=1, max_depth=5, parallel_rollouts=1,
                          descend_on_first_child=False)
    mcts, policy, _ = make(config, _two_first_steps, sample_delay_s=0.05)
    run(mcts.search(Problem(QUESTION, "7")))
    second_root_sample = [i for i, (k, text) in enumerate(policy.events) if text.startswith("# Three")][0]
    assert [k for k, _ in policy.events].index("request", 1) > second_root_sample
