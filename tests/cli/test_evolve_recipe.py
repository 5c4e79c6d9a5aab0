"""Self-evolution recipes: the shipped ones load, every mistake in a file is named before anything runs."""

from pathlib import Path

import pytest

from rstar_cli.evolve_recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
GOOD = """
pool: {sources: [GSM8K], limit: 4, practice: {levels: [1, 2], n_per_level: 3, seed: 1}}
bootstrap: {limit: 10}
search:
  1: {rollouts: 2, max_depth: 4}
  3: {rollouts: 6, max_depth: 4}
sft: {max_steps: 2}
ppm: {max_steps: 2}
eval: {gsm8k_limit: 5, search: {rollouts: 1}}
promote: {tolerance: 0.01}
"""


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["cpu", "paper", "marco"])
def test_the_shipped_recipes_load(name):
    recipe = load_recipe(REPO / "deploy" / "configs" / "evolve" / f"{name}.yaml")
    assert recipe.name == name and recipe.search and recipe.eval.gsm8k_limit > 0
    recipe.search_config(1)
    recipe.eval_search_config()


def test_a_recipe_gives_each_round_its_search_and_the_last_one_to_later_rounds(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    assert [recipe.search_config(r).rollouts for r in (1, 2, 3, 4)] == [2, 2, 6, 6]
    assert recipe.search_config(2, prompt_format="sft").prompt_format == "sft"
    assert recipe.pool.practice.levels == (1, 2) and recipe.pool.sources == ("GSM8K",)
    assert recipe.bootstrap.limit == 10 and recipe.promote_tolerance == 0.01
    greedy = recipe.greedy_config("sft")
    assert greedy.temperature == 0.0 and greedy.expansion_width == 1 and greedy.rollouts == 1


@pytest.mark.parametrize(("change", "message"), [
    (("promote: {tolerance: 0.01}", "promote: {tolerance: 0.01}\nrounds: 3"), r"unknown section\(s\) rounds"),
    (("limit: 10}", "limt: 10}"), r"bootstrap: unknown key\(s\) limt"),
    (("levels: [1, 2]", "levels: [1, 7]"), "pool.practice needs levels in 1..5"),
    (("  3: {rollouts: 6", "  zero: {rollouts: 6"), "search keys are round numbers >= 1, got 'zero'"),
    (("  1: {rollouts: 2,", "  1: {rolouts: 2,"), r"search.1: unknown config key\(s\) rolouts"),
    (("sft: {max_steps: 2}", "sft: {max_steps: 0}"), "sft: max_steps must be -1"),
    (("ppm: {max_steps: 2}", "ppm: {batch: 2}"), r"ppm: unknown key\(s\) batch"),
    (("eval: {gsm8k_limit: 5,", "eval: {gsm8k_limt: 5,"), r"eval: unknown key\(s\) gsm8k_limt"),
    (("bootstrap: {limit: 10}", "bootstrap: [1, 2]"), "bootstrap: expected a mapping"),
    (("eval: {gsm8k_limit: 5,", "eval: {practice_per_level: -1,"), "eval needs gsm8k_limit >= 1, practice_per_level >= 0"),
])
def test_mistakes_name_the_file_and_the_key(tmp_path, change, message):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_recipe(_write(tmp_path, "search: {1: [\n"))
    with pytest.raises(ValueError, match="search must map round numbers"):
        load_recipe(_write(tmp_path, "pool: {}\n"))


def test_extends_changes_only_what_the_file_gives(tmp_path):
    _write(tmp_path, GOOD)
    child = tmp_path / "child.yaml"
    child.write_text("extends: recipe.yaml\nsearch: {1: {max_depth: 6}}\nsft: {max_steps: 3}\n"
                     "pool: {practice: {levels: [3]}}\n")
    recipe = load_recipe(child)
    assert recipe.name == "child"
    # Round 1 keeps its rollouts and gets the new depth; round 3 and the other sections are the base's.
    assert (recipe.search_config(1).rollouts, recipe.search_config(1).max_depth) == (2, 6)
    assert recipe.search_config(3).rollouts == 6 and recipe.bootstrap.limit == 10
    assert recipe.sft == {"max_steps": 3} and recipe.ppm == {"max_steps": 2}
    # A list replaces: levels [1, 2] -> [3]; the practice seed and count stay.
    assert recipe.pool.practice.levels == (3,) and recipe.pool.practice.n_per_level == 3
    grandchild = tmp_path / "sub" / "grandchild.yaml"
    grandchild.parent.mkdir()
    grandchild.write_text("extends: ../child.yaml\neval: {gsm8k_limit: 7}\n")
    recipe = load_recipe(grandchild)
    assert recipe.eval.gsm8k_limit == 7 and recipe.search_config(1).max_depth == 6 and recipe.sft["max_steps"] == 3


def test_a_bad_extends_is_named(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match=r"forms a cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_recipe(a)
    a.write_text("extends: missing.yaml\n")
    with pytest.raises(ValueError, match="extends missing.yaml, which is not a file"):
        load_recipe(a)
    a.write_text("extends: [b.yaml]\n")
    with pytest.raises(ValueError, match="extends must name a recipe file"):
        load_recipe(a)
    # An error in the merged recipe still names the file that was loaded.
    b.write_text(GOOD)
    a.write_text("extends: b.yaml\nsearch: {1: {rolouts: 2}}\n")
    with pytest.raises(ValueError, match=r"a.yaml: search.1: unknown config key\(s\) rolouts"):
        load_recipe(a)


@pytest.mark.parametrize("name", ["marco-step", "marco-step-reflect", "marco-ministep", "marco-ministep-reflect",
                                  "process-supervision", "mctspp"])
def test_the_methods_ablation_shares_the_pool_and_held_out_set_of_rstar_math(name):
    methods = REPO / "deploy" / "configs" / "evolve" / "methods"
    reference, recipe = load_recipe(methods / "rstar.yaml"), load_recipe(methods / f"{name}.yaml")
    assert recipe.name == name and (recipe.pool, recipe.eval, recipe.bootstrap) == (
        reference.pool, reference.eval, reference.bootstrap)
    assert recipe.promote_tolerance == reference.promote_tolerance == 1.0
    mine, theirs = recipe.search_config(1), reference.search_config(1)
    # Sampling and the per-step budget are the same everywhere; the Marco recipes differ only
    # in what Marco-o1 changes (its values, its node size, reflection and the depth they need).
    assert (mine.temperature, mine.max_tokens_per_step, mine.rollouts, mine.expansion_width) == (
        theirs.temperature, theirs.max_tokens_per_step, theirs.rollouts, theirs.expansion_width)
    if name.startswith("marco"):
        assert mine.terminal_reward == "confidence" and mine.use_confidence_init and mine.logprobs == 5
        assert mine.granularity == ("mini-step" if "ministep" in name else "step")
        assert mine.reflection == name.endswith("reflect")
    else:
        assert mine == theirs
    assert (recipe.method == "process-supervision") == (name == "process-supervision")
    assert recipe.grpo_enabled == (name == "mctspp")


def test_the_matched_token_reference_only_searches_longer():
    methods = REPO / "deploy" / "configs" / "evolve" / "methods"
    reference, longer = load_recipe(methods / "rstar.yaml"), load_recipe(methods / "rstar-3x.yaml")
    assert longer.search_config(1) == reference.search_config(1).replace(rollouts=11)
    assert (longer.pool, longer.eval, longer.sft, longer.ppm) == (reference.pool, reference.eval, reference.sft,
                                                                  reference.ppm)
