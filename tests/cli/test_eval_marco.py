"""`rstar eval --config marco`: MCTS valued by token confidence, without a reward model (fake engine)."""

import pytest

from rstar_core.config import SearchConfig
from rstar_core.evaluation import method_config, method_label, pick_from_tree, scorer_of
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree
from test_eval_cmd import _eval, _rows, fake_engine, no_models  # noqa: F401 - fixtures

MARCO = SearchConfig(logprobs=5, terminal_reward="confidence", use_confidence_init=True)


def test_a_confidence_recipe_makes_the_tree_methods_score_by_confidence():
    assert scorer_of("mcts", None, MARCO) == "confidence" and scorer_of("mcts-vote", None, MARCO) == "confidence"
    assert method_label("mcts", "confidence") == "mcts-confidence"
    assert scorer_of("maj", None, MARCO) is None and scorer_of("bon-ppm", None, MARCO) == "ppm"
    with pytest.raises(ValueError, match="--scorer orm does not apply"):
        scorer_of("mcts", "orm", MARCO)
    config = method_config("mcts", MARCO, 4)
    assert (config.rollouts, config.terminal_reward, config.needs_reward_model) == (4, "confidence", False)
    # Named explicitly with a recipe that asks for no logprobs: the paper's top 5.
    config = method_config("mcts", SearchConfig(), 2, "confidence")
    assert config.terminal_reward == "confidence" and config.logprobs == 5


def test_picks_from_a_confidence_tree_carry_the_confidence():
    tree = Tree.new(Problem("q"), config=MARCO.to_dict())
    for answer, value in (("3", 0.4), ("4", 0.9)):
        tree.add_child(tree.root, kind=NodeKind.ANSWER, answer=answer, terminal=TerminalReason.ANSWER,
                       terminal_value=value)
    pick = pick_from_tree("mcts", tree)
    assert (pick.prediction, pick.score) == ("4", 0.9) and pick.candidates == (("3", 0.4), ("4", 0.9))


def test_eval_with_the_marco_recipe_runs_mcts_without_a_reward_model(fake_engine, capsys):
    env = fake_engine
    code, out, err = _eval(capsys, env, "--method", "mcts", "--n", "2", "--config", "marco",
                           "--set", "expansion_width=2")
    assert code == 0, err
    rows = _rows(env)
    assert {r["method"] for r in rows} == {"mcts-confidence"} and len(rows) == 3
    assert all(r["versions"] == {"policy": "fake-policy@1", "ppm": None} for r in rows)
    # The fake policy returns no logprobs: every answer's confidence is 0, and it is still the score.
    assert {r["score"] for r in rows if r["prediction"] is not None} == {0.0}
    assert {r["prediction"] for r in rows if r["id"] == "a"} == {"7"}
    config, settings, _ = env["started"][0]
    assert config.terminal_reward == "confidence" and config.use_confidence_init and config.logprobs == 5
    assert settings.reward_model == "" and not config.needs_reward_model
    assert "mcts-confidence@2" in out


@pytest.mark.parametrize("argv,expected", [
    (["--config", "marco", "--scorer", "ppm"], "--scorer ppm does not apply"),
    (["--config", "eval", "--scorer", "confidence"], "the recipe's use_ppm_init needs a PPM"),
])
def test_confidence_scoring_that_contradicts_the_recipe_is_refused(fake_engine, capsys, argv, expected):
    code, _, err = _eval(capsys, fake_engine, "--method", "mcts", *argv)
    assert code == 2 and expected in err[-1] and not fake_engine["started"]
