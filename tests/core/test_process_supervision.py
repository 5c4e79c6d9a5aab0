"""MCTS process supervision's data: relative-correctness scores, the greedy walk, the search per prefix."""

import asyncio
import math

import pytest

from fakes import InlineExecutor, ScriptedPolicy
from rstar_core.config import SearchConfig
from rstar_core.mcts import MCTS
from rstar_core.process_supervision import best_step, prefix_search, relative_correctness, walk, walk_many
from rstar_core.steps import OUTPUT_STOP
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree

QUESTION = "Sam has 3 apples and gets 4 more. How many apples?"


def _child(tree, parent, text, value_sum, visits, **fields):
    return tree.add_child(parent, kind=fields.pop("kind", NodeKind.CODE), text=text, value_sum=value_sum,
                          visits=visits, **fields)


def _scored_tree():
    """A root with Q = 0.2 (1.0 / 5) and four children: Q 1.0, -1.0, 0.2 and one never visited."""
    tree = Tree.new(Problem(QUESTION, "7"))
    tree.root.value_sum, tree.root.visits = 1.0, 5
    good = _child(tree, tree.root, "good", 2.0, 2)
    bad = _child(tree, tree.root, "bad", -2.0, 2)
    same = _child(tree, tree.root, "same", 0.2, 1)
    _child(tree, tree.root, "unvisited", 0.0, 0)
    return tree, good, bad, same


def test_relative_correctness_is_alpha_times_the_q_gain_over_the_parent():
    tree, good, bad, _ = _scored_tree()
    scores = relative_correctness(tree, tree.root, alpha=0.5)
    # Hand computation: 0.5 * (1.0 - 0.2) = 0.4 and 0.5 * (-1.0 - 0.2) = -0.6.
    assert [(s.node_id, s.text) for s in scores] == [(good.id, "good"), (bad.id, "bad")]
    assert math.isclose(scores[0].score, 0.4) and math.isclose(scores[1].score, -0.6)
    assert [s.q for s in scores] == [1.0, -1.0] and not any(s.final for s in scores)


def test_steps_scoring_zero_and_unvisited_steps_are_skipped():
    tree, _, _, same = _scored_tree()
    texts = {s.text for s in relative_correctness(tree, tree.root, alpha=2.0)}
    assert "same" not in texts and "unvisited" not in texts


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_a_non_positive_alpha_is_refused(alpha):
    tree, *_ = _scored_tree()
    with pytest.raises(ValueError, match="alpha must be > 0"):
        relative_correctness(tree, tree.root, alpha)


def test_the_best_step_is_the_highest_q_visited_child_and_the_earlier_on_a_tie():
    tree, good, _, _ = _scored_tree()
    assert best_step(tree, tree.root) is good
    twin = _child(tree, tree.root, "twin", 4.0, 4)
    assert twin.q == good.q and best_step(tree, tree.root) is good
    assert best_step(tree, good) is None


class FakeSearch:
    """Hand-built trees per prefix: step k offers a good and a bad candidate; step 2's good one answers."""

    def __init__(self, last_correct=True):
        self.prefixes = []
        self.last_correct = last_correct

    async def __call__(self, problem, prefix, index):
        self.prefixes.append(tuple(n.text for n in prefix))
        tree = Tree.new(problem)
        node = tree.root
        for step in prefix:
            node = tree.add_child(node, kind=step.kind, text=step.text)
        node.value_sum, node.visits = 0.0, 4
        if index < 2:
            _child(tree, node, f"good {index}", 1.5, 2)
            _child(tree, node, f"bad {index}", -1.5, 2)
        else:
            value = 1.0 if self.last_correct else -1.0
            _child(tree, node, "answer", value, 1, kind=NodeKind.ANSWER, terminal=TerminalReason.ANSWER,
                   answer="7", correct=self.last_correct)
        tree.stats.generated_tokens = 10
        return tree, node


def test_the_walk_appends_the_best_step_and_collects_every_scored_one_until_the_answer():
    search = FakeSearch()
    result = asyncio.run(walk(search, Problem(QUESTION, "7", id="p1"), alpha=1.0, round=3, max_steps=8))
    assert search.prefixes == [(), ("good 0",), ("good 0", "good 1")]
    assert result.steps == ("good 0", "good 1", "answer")
    assert result.answer == "7" and result.correct is True and result.ended == "answer"
    assert result.searches == 3 and result.tokens == 30
    rows = [(e.prefix, e.step, e.score, e.final) for e in result.examples]
    assert rows == [((), "good 0", 0.75, False), ((), "bad 0", -0.75, False),
                    (("good 0",), "good 1", 0.75, False), (("good 0",), "bad 1", -0.75, False),
                    (("good 0", "good 1"), "answer", 1.0, True)]
    assert {(e.problem_id, e.question, e.round) for e in result.examples} == {("p1", QUESTION, 3)}


def test_the_walk_stops_at_max_steps_and_when_no_step_is_left():
    result = asyncio.run(walk(FakeSearch(), Problem(QUESTION, "7"), alpha=1.0, round=1, max_steps=2))
    assert result.ended == "max_steps" and result.answer is None and result.correct is None
    assert result.examples[0].problem_id.startswith("sha256:")

    async def empty(problem, prefix, index):
        tree = Tree.new(problem)
        return tree, tree.root

    result = asyncio.run(walk(empty, Problem(QUESTION, "7"), alpha=1.0, round=1, max_steps=4))
    assert result.ended == "no_step" and result.examples == () and result.searches == 1


def _script(prompt, call):
    tail = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if not tail:
        return [("# Sam has 3 apples.\nx = 3", "\n#"), ("# Sam has 5 apples.\nx = 5", "\n#")]
    if "print" not in tail:
        return [("# Add 4.\nprint(x + 4)", OUTPUT_STOP)]
    printed = tail.rsplit("Output: ", 1)[1].strip()
    return [(f"The answer is \\boxed{{{printed}}}.", None)]


def test_a_search_from_a_prefix_continues_the_partial_solution():
    config = SearchConfig(expansion_width=2, rollouts=2, max_depth=5, parallel_rollouts=1)
    policy, executor = ScriptedPolicy(_script), InlineExecutor()
    search = prefix_search(MCTS(policy, executor, config))
    first, root = asyncio.run(search(Problem(QUESTION, "7"), (), 0))
    chosen = best_step(first, root)
    assert chosen.text == "# Sam has 3 apples.\nx = 3" and chosen.q == 1.0
    policy.requests.clear()
    tree, start = asyncio.run(search(Problem(QUESTION, "7"), (chosen,), 1))
    # The search starts below a copy of the prefix: the prompt holds the step, the sandbox its code.
    assert start.depth == 1 and start.text == chosen.text and tree.root.children == [start.id]
    assert policy.requests[0].prompt.endswith("# Sam has 3 apples.\nx = 3\n")
    assert executor.programs[-1] == "# Sam has 3 apples.\nx = 3\n# Add 4.\nprint(x + 4)"
    assert [tree.nodes[c].text for c in start.children] == ["# Add 4.\nprint(x + 4)\nOutput: 7"]


def test_walk_many_walks_every_problem_with_the_real_search():
    config = SearchConfig(expansion_width=2, rollouts=2, max_depth=5, parallel_rollouts=1)
    mcts = MCTS(ScriptedPolicy(_script), InlineExecutor(), config)
    problems = [Problem(QUESTION, "7", id="a"), Problem(QUESTION, "9", id="b")]

    async def collect():
        return {i: r async for i, r in walk_many(mcts, problems, alpha=1.0, round=1)}

    results = asyncio.run(collect())
    # x = 3 leads to 7 (right for "a"), x = 5 to 9 (right for "b"): each walk scores and follows its own.
    for result, good, bad in ((results[0], "3", "5"), (results[1], "5", "3")):
        assert result.correct is True and result.ended == "answer" and len(result.steps) == 3
        assert result.steps[0] == f"# Sam has {good} apples.\nx = {good}"
        first = {e.step: e.score for e in result.examples if not e.prefix}
        assert first[f"# Sam has {good} apples.\nx = {good}"] > 0 > first[f"# Sam has {bad} apples.\nx = {bad}"]
        assert {e.problem_id for e in result.examples} == {result.problem.id}


def test_walk_many_refuses_mini_steps_and_reflection():
    config = SearchConfig(granularity="mini-step", mini_step_tokens=16, max_tokens_per_step=64)
    mcts = MCTS(ScriptedPolicy(_script), InlineExecutor(), config)

    async def collect():
        return [r async for r in walk_many(mcts, [Problem(QUESTION, "7")], alpha=1.0, round=1)]

    with pytest.raises(ValueError, match="whole steps"):
        asyncio.run(collect())
