"""The test-time methods' selection logic on hand-built samples and trees, and their settings."""

import asyncio

import pytest

from fakes import FixedReward, InlineExecutor, ScriptedPolicy
from rstar_core.config import SearchConfig
from rstar_core.evaluation import (
    Sample,
    best_of_n,
    best_trajectory,
    group_answers,
    majority_vote,
    method_config,
    method_label,
    pick_from_samples,
    pick_from_tree,
    ppm_weighted_vote,
    sample_from_tree,
    scorer_of,
    tree_answers,
    weighted_vote,
)
from rstar_core.mcts import MCTS
from rstar_core.steps import OUTPUT_STOP
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree


# ---------------------------------------------------------------------- votes


def test_answers_are_grouped_through_the_grader():
    answers = ["12", "12.0", "13", None, "\\frac{24}{2}", "13.00"]
    assert group_answers(answers) == [[0, 1, 4], [2, 5]]


def test_majority_vote_counts_equivalent_answers_as_one():
    assert majority_vote(["13", "12", "12.0", "\\frac{24}{2}", "13"]) == "12"


def test_majority_vote_tie_goes_to_the_answer_found_first():
    assert majority_vote(["3", "4", "4", "3"]) == "3"
    assert majority_vote(["4", "3", "3", "4"]) == "4"


def test_majority_vote_without_answers_is_none():
    assert majority_vote([]) is None
    assert majority_vote([None, None]) is None


def test_majority_vote_takes_any_equivalence():
    same = lambda a, b: a.lower() == b.lower()
    assert majority_vote(["x", "Y", "y", "X", "y"], same) == "Y"


def test_weighted_vote_sums_weights_per_answer():
    assert weighted_vote(["a", "b", "a"], [0.2, 0.5, 0.4], lambda a, b: a == b) == ("a", pytest.approx(0.6))
    assert weighted_vote(["a", "b"], [0.5, 0.5], lambda a, b: a == b) == ("a", 0.5)
    assert weighted_vote([None], [1.0]) == (None, None)
    with pytest.raises(ValueError, match="equal lengths"):
        weighted_vote(["a"], [1.0, 2.0])


# ---------------------------------------------------------------------- samples


def test_best_of_n_takes_the_highest_score_among_answered_samples():
    samples = [Sample("1", 0.2), Sample(None, 0.99), Sample("2", 0.7), Sample("3", 0.7), Sample("4", None)]
    assert best_of_n(samples).answer == "2"  # the tie at 0.7 goes to the first
    assert best_of_n([Sample("4", None), Sample("5", -0.9)]).answer == "5"  # unscored counts lowest
    assert best_of_n([Sample(None, 1.0)]) is None
    assert best_of_n([]) is None


def test_sample_methods_use_the_first_n_samples_and_add_their_tokens():
    samples = [Sample("5", -0.5, tokens=10, seconds=1.0), Sample("7", 0.9, tokens=20, seconds=2.0),
               Sample("7.0", 0.1, tokens=30, seconds=3.0), Sample("5", 0.2, tokens=40, seconds=4.0)]
    one = pick_from_samples("maj", samples, 1)
    assert (one.prediction, one.tokens, one.seconds) == ("5", 10, 1.0)
    three = pick_from_samples("maj", samples, 3)
    assert (three.prediction, three.tokens, three.score) == ("7", 60, None)
    assert three.candidates == (("5", -0.5), ("7", 0.9), ("7.0", 0.1))
    four = pick_from_samples("maj", samples, 4)
    assert (four.prediction, four.tokens) == ("5", 100)  # 2-2: the answer found first
    best = pick_from_samples("bon-ppm", samples, 4)
    assert (best.prediction, best.score, best.tokens) == ("7", 0.9, 100)
    assert pick_from_samples("bon-ppm", samples, 1).prediction == "5"
    with pytest.raises(ValueError, match="N must be in"):
        pick_from_samples("maj", samples, 5)
    with pytest.raises(ValueError, match="for maj, bon-ppm"):
        pick_from_samples("mcts", samples, 1)


# ---------------------------------------------------------------------- trees


def _tree(terminal_reward="ppm"):
    """root -> a -> {answer 7 (0.2), code -> answer 8 (0.9)}, root -> b -> {7.0 (0.5), error, 9 (no value)}."""
    tree = Tree.new(Problem("q?"), config={"terminal_reward": terminal_reward})
    tree.stats.generated_tokens = 321
    a = tree.add_child(tree.root, kind=NodeKind.CODE, text="# a\nx = 1")
    b = tree.add_child(tree.root, kind=NodeKind.CODE, text="# b\nx = 2")

    def answer(parent, text, value):
        node = tree.add_child(parent, kind=NodeKind.ANSWER, text=f"\\boxed{{{text}}}", answer=text)
        node.terminal, node.terminal_value = TerminalReason.ANSWER, value
        return node

    answer(a, "7", 0.2)
    deeper = tree.add_child(a, kind=NodeKind.CODE, text="# c\ny = 3")
    answer(deeper, "8", 0.9)
    answer(b, "7.0", 0.5)
    error = tree.add_child(b, kind=NodeKind.CODE, text="# d\nz = 1")
    error.terminal, error.terminal_value = TerminalReason.TOO_MANY_ERRORS, -1.0
    answer(b, "9", None)
    return tree


def test_tree_answers_are_the_answer_terminals_in_creation_order():
    assert [n.answer for n in tree_answers(_tree())] == ["7", "8", "7.0", "9"]


def test_best_trajectory_is_the_highest_ppm_answer():
    assert best_trajectory(_tree()).answer == "8"
    assert best_trajectory(Tree.new(Problem("q?"))) is None


def test_ppm_weighted_vote_can_outvote_the_single_best_trajectory():
    # 7 and 7.0: (1.2 + 1.5) / 2 = 1.35 beats 8: 1.9 / 2 = 0.95 (9, unscored, weighs 0).
    answer, weight = ppm_weighted_vote(_tree())
    assert answer == "7" and weight == pytest.approx(1.35)


def test_tree_methods_pick_and_count_the_trees_tokens():
    tree = _tree()
    mcts = pick_from_tree("mcts", tree, seconds=2.5)
    assert (mcts.prediction, mcts.score, mcts.tokens, mcts.seconds) == ("8", 0.9, 321, 2.5)
    assert mcts.candidates == (("7", 0.2), ("8", 0.9), ("7.0", 0.5), ("9", None))
    vote = pick_from_tree("mcts-vote", tree)
    assert vote.prediction == "7" and vote.tokens == 321
    greedy = pick_from_tree("greedy", _tree("ground_truth"))
    assert (greedy.prediction, greedy.score) == ("7", None)
    assert all(value is None for _, value in greedy.candidates)  # no PPM: no values shown
    with pytest.raises(ValueError, match="picks from samples"):
        pick_from_tree("maj", tree)


def test_sample_from_tree_scores_only_ppm_terminals():
    ppm = sample_from_tree(_tree("ppm"), seconds=1.5)
    assert (ppm.answer, ppm.score, ppm.tokens, ppm.seconds) == ("8", 0.9, 321, 1.5)
    plain = _tree("ground_truth")
    for node in plain.nodes:
        if node.terminal is TerminalReason.ANSWER:
            node.terminal_value = 0.0
    sample = sample_from_tree(plain)
    assert (sample.answer, sample.score) == ("7", None)
    empty = sample_from_tree(Tree.new(Problem("q?")))
    assert (empty.answer, empty.score, empty.tokens) == (None, None, 0)


# ---------------------------------------------------------------------- settings


BASE = SearchConfig(expansion_width=8, rollouts=12, temperature=0.8, parallel_rollouts=4, use_ppm_init=True,
                    hard_extra_rollouts=16)


def test_greedy_is_one_width_1_rollout_at_temperature_0():
    config = method_config("greedy", BASE, 1)
    assert (config.expansion_width, config.rollouts, config.temperature, config.parallel_rollouts) == (1, 1, 0.0, 1)
    assert not config.needs_reward_model and config.hard_extra_rollouts == 0
    with pytest.raises(ValueError, match="greedy decodes once"):
        method_config("greedy", BASE, 2)


def test_sampling_methods_run_one_width_1_rollout_per_sample():
    maj = method_config("maj", BASE, 4)
    assert (maj.expansion_width, maj.rollouts, maj.temperature) == (1, 1, 0.8)
    assert not maj.needs_reward_model
    bon = method_config("bon-ppm", BASE, 4)
    assert bon.terminal_reward == "ppm" and not bon.use_ppm_init and bon.expansion_width == 1
    with pytest.raises(ValueError, match="temperature must be > 0"):
        method_config("maj", BASE.replace(temperature=0.0), 4)


def test_tree_methods_run_n_rollouts_with_ppm_terminal_values():
    for method in ("mcts", "mcts-vote"):
        config = method_config(method, BASE, 16)
        assert (config.rollouts, config.expansion_width, config.terminal_reward) == (16, 8, "ppm")
        assert config.use_ppm_init and config.hard_extra_rollouts == 0


@pytest.mark.parametrize("method,n,message", [("best", 1, "unknown method"), ("maj", 0, "positive integer")])
def test_method_config_rejects_bad_input(method, n, message):
    with pytest.raises(ValueError, match=message):
        method_config(method, BASE, n)


# ---------------------------------------------------------------------- with the search (fakes)


def _script(prompt, call):
    # Every other solution ends in 8 instead of 7: the samples must not all be the same path.
    tail = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if not tail:
        return [("# Sam has 3 apples and gets 4.\nprint(3 + 4)", OUTPUT_STOP)]
    return [(f"The answer is \\boxed{{{7 if call % 4 == 1 else 8}}}.", None)]


def test_width_1_searches_are_complete_independent_samples():
    policy = ScriptedPolicy(_script)
    config = method_config("bon-ppm", SearchConfig(max_depth=4, temperature=0.7), 1)
    mcts = MCTS(policy, InlineExecutor(), config, reward=FixedReward(lambda item: 0.1 * len(item.steps)))

    async def draw():
        return [await mcts.search(Problem("Sam has 3 apples and gets 4 more. How many?"), seed_offset=k)
                for k in range(4)]

    results = asyncio.run(draw())
    samples = [sample_from_tree(r.tree, r.wall_s) for r in results]
    assert [s.answer for s in samples] == ["7", "8", "7", "8"]
    # One code step and one answer step each; the PPM scored the two-step path.
    assert all(s.score == pytest.approx(0.2) for s in samples)
    assert [s.tokens for s in samples] == [r.tree.stats.generated_tokens for r in results]
    assert all(s.tokens > 0 for s in samples)
    assert len(policy.requests) == 8 and all(r.n == 1 for r in policy.requests)
    pick = pick_from_samples("maj", samples, 3)
    assert pick.prediction == "7" and pick.tokens == sum(s.tokens for s in samples[:3])


# ---------------------------------------------------------------------- scorers (the reward-model ablation)


def test_each_method_has_its_scorer():
    assert [scorer_of(m) for m in ("greedy", "maj", "bon-ppm", "bon-pqm", "bon-orm")] == [None, None, "ppm", "pqm",
                                                                                          "orm"]
    assert scorer_of("mcts") == "ppm" and scorer_of("mcts-vote", "orm") == "orm"
    assert [method_label("mcts"), method_label("mcts", "ppm"), method_label("mcts-vote", "pqm"),
            method_label("bon-orm", "orm"), method_label("maj")] == ["mcts", "mcts", "mcts-vote-pqm", "bon-orm", "maj"]


@pytest.mark.parametrize("method,scorer,message", [
    ("bon-orm", "ppm", "bon-orm scores with the ORM: a ppm scorer does not apply"),
    ("maj", "orm", "maj uses no reward model"),
    ("mcts", "prm", "unknown scorer 'prm': one of ppm, orm, pqm"),
    ("best", None, "unknown method"),
])
def test_a_scorer_that_contradicts_the_method_is_refused(method, scorer, message):
    with pytest.raises(ValueError, match=message):
        scorer_of(method, scorer)


def test_every_best_of_n_scores_the_whole_sampled_solution():
    for method in ("bon-orm", "bon-pqm"):
        config = method_config(method, BASE, 4)
        assert config.terminal_reward == "ppm" and not config.use_ppm_init and config.expansion_width == 1


def _three_answers(prompt, call):
    # Sample k (two policy calls each) answers 7, 8, 9, 7, ...: the scorers disagree on them.
    tail = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if not tail:
        return [("# Sam has 3 apples and gets 4.\nprint(3 + 4)", OUTPUT_STOP)]
    return [(f"The answer is \\boxed{{{7 + (call // 2) % 3}}}.", None)]


# What each fake reward model thinks of a solution's answer step: they prefer different answers.
PREFERS = {"ppm": "7", "pqm": "8", "orm": "9"}


def _fake_scorer(kind):
    return FixedReward(lambda item: 0.9 if f"boxed{{{PREFERS[kind]}}}" in item.steps[-1] else -0.2)


@pytest.mark.parametrize("method", ["bon-ppm", "bon-pqm", "bon-orm"])
def test_best_of_n_picks_what_its_scorer_prefers(method):
    scorer = scorer_of(method)
    policy = ScriptedPolicy(_three_answers)
    reward = _fake_scorer(scorer)
    mcts = MCTS(policy, InlineExecutor(), method_config(method, SearchConfig(max_depth=4, temperature=0.7), 1),
                reward=reward)

    async def draw():
        return [await mcts.search(Problem("Sam has 3 apples and gets 4 more. How many?"), seed_offset=k)
                for k in range(3)]

    samples = [sample_from_tree(r.tree, r.wall_s) for r in asyncio.run(draw())]
    assert [s.answer for s in samples] == ["7", "8", "9"]
    pick = pick_from_samples(method, samples, 3)
    assert pick.prediction == PREFERS[scorer] and pick.score == pytest.approx(0.9)
    # The scorer saw whole solutions only (width 1, no initial values): one call per sample.
    assert len(reward.calls) == 3 and all(len(c[0].steps) == 2 for c in reward.calls)
    # With two samples the ORM's favourite (the third) is not drawn: the best of the first two wins.
    assert pick_from_samples(method, samples, 2).prediction == ("7" if scorer != "pqm" else "8")
