"""The Marco-o1 recipes (issue #16 A) with the real small model, vLLM engine and sandbox.

One engine for the module; each recipe searches two demo problems with a tiny budget. No
ground truth reaches the search (as in `rstar eval`): every value comes from the policy's
token confidence.
"""

from pathlib import Path

import pytest

from rstar_cli.main import DEMO_PROBLEMS
from rstar_core.confidence import path_confidence
from rstar_core.config import load_config
from rstar_core.mcts import MCTS
from rstar_core.steps import REFLECTION_PROMPT
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree

from engine_fixtures import executor, loop, policy  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"
TINY = dict(rollouts=2, expansion_width=2, parallel_rollouts=2, concurrent_problems=2)


def _search(loop, policy, executor, recipe, **changes):
    config = load_config(CONFIGS / f"{recipe}.yaml").replace(**{**TINY, **changes})
    mcts = MCTS(policy, executor, config)
    problems = [Problem(p.question, None, p.id) for p in DEMO_PROBLEMS[:2]]

    async def go():
        return [r async for r in mcts.search_many(problems)]

    results = dict(loop.run_until_complete(go()))
    trees = [results[i].tree for i in range(len(problems))]
    for tree in trees:
        assert Tree.from_json(tree.to_json()) == tree
        assert tree.stats.rollouts >= 1
    return [results[i] for i in range(len(problems))], trees


def _path_confidence(tree, node):
    parts = []
    for n in tree.path(node):
        source = tree.nodes[n.reflection_of] if n.kind is NodeKind.REFLECTION else n
        parts.append((source.token_confidence, source.num_tokens))
    return path_confidence(parts)


def _trailing_partials(tree, node):
    chunks = []
    while node.kind is NodeKind.PARTIAL:
        chunks.append(node)
        node = tree.nodes[node.parent]
    return chunks[::-1]


def test_marco_values_answers_and_nodes_by_token_confidence(loop, policy, executor):
    results, trees = _search(loop, policy, executor, "marco")
    generated = [n for t in trees for n in t.nodes[1:]]
    assert generated and all(0 < n.token_confidence <= 1 for n in generated)
    for tree in trees:
        for node in tree.nodes[1:]:
            if not node.is_terminal:
                assert node.init_value == pytest.approx(_path_confidence(tree, node))
    answers = [(t, n) for t in trees for n in t.terminals() if n.terminal is TerminalReason.ANSWER]
    assert answers, "the small model answered none of the demo problems"
    for tree, node in answers:
        assert 0 < node.terminal_value <= 1
        assert node.terminal_value == pytest.approx(_path_confidence(tree, node))
    for result, tree in zip(results, trees):
        found = [n for n in tree.terminals() if n.terminal is TerminalReason.ANSWER]
        if found:
            assert result.answer == max(found, key=lambda n: n.terminal_value).answer


def test_marco_ministep_cuts_steps_into_chunks_and_runs_only_whole_steps(loop, policy, executor):
    # 12-token mini-steps: most code steps of this format span two or three.
    # Four rollouts: with two, a CI run once ended every path inside a step (nothing completed).
    _, trees = _search(loop, policy, executor, "marco-ministep", mini_step_tokens=12, rollouts=4)
    nodes = [n for t in trees for n in t.nodes[1:]]
    partial = [n for n in nodes if n.kind is NodeKind.PARTIAL]
    assert partial and all(n.num_tokens == 12 and not n.code for n in partial)
    completed = 0
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.kind in (NodeKind.CODE, NodeKind.ANSWER) and tree.nodes[node.parent].kind is NodeKind.PARTIAL:
                completed += 1
                if node.code:
                    # The completing node carries the whole step, made of the chunks before it and its
                    # own (a stop string split between two chunks ends the step inside the earlier one).
                    chunks = "".join(n.text for n in _trailing_partials(tree, tree.nodes[node.parent]))
                    assert node.code.startswith(chunks) or chunks.startswith(node.code)
                    assert "\nOutput:" not in node.code
    assert completed, "no step was completed after a mini-step"
    assert sum(t.stats.executions for t in trees) > 0
    assert all(n.num_tokens <= 12 for n in nodes if n.kind is not NodeKind.REFLECTION)


def test_marco_reflect_rethinks_after_an_answer_and_records_both(loop, policy, executor):
    _, trees = _search(loop, policy, executor, "marco-reflect", rollouts=3)
    reflections = [(t, n) for t in trees for n in t.nodes if n.kind is NodeKind.REFLECTION]
    assert reflections, "no answer was reached, so nothing was reflected on"
    for tree, node in reflections:
        first = tree.nodes[node.reflection_of]
        assert first.terminal is TerminalReason.ANSWER and node.parent == first.parent
        assert node.text.endswith(REFLECTION_PROMPT)
        # Once per path: nothing below a reflection is reflected on again.
        below = [n for n in tree.nodes if node in tree.path(n) and n is not node]
        assert not any(n.kind is NodeKind.REFLECTION for n in below)
        for n in below:
            if n.terminal is TerminalReason.ANSWER:
                assert n.answer_before_reflection == first.answer
                assert isinstance(n.reflection_changed, bool)
    assert any(node.expanded for _, node in reflections), "no rollout continued after a reflection"
