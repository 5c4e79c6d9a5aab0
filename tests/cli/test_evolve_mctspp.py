"""MCTS++ recipe switches: the shipped recipe loads, mistakes are named, and the driver's GRPO stage
draws the curriculum and trains from the round's SFT policy (training itself faked; SQLite store)."""

import json
from pathlib import Path

import pytest

from rstar_cli.evolve_recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
GOOD = """
pool: {sources: [GSM8K], limit: 2}
search:
  1: {rollouts: 2, max_depth: 4}
grpo: {enabled: true, steps: 3, group_size: 2, curriculum: {hard_share_start: 0.3, hard_share_step: 0.2}}
sft_filter_min_ppm: 0.1
step_dpo: false
eval: {gsm8k_limit: 5, search: {rollouts: 1}}
"""


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_the_shipped_mctspp_recipe_loads():
    recipe = load_recipe(REPO / "deploy" / "configs" / "evolve" / "mctspp-cpu.yaml")
    assert recipe.method == "rstar" and recipe.grpo_enabled
    assert recipe.grpo["group_size"] == 2 and recipe.grpo["curriculum"]["hard_share_step"] > 0
    assert recipe.sft_filter_min_ppm == -0.5
    assert recipe.step_dpo_enabled and recipe.step_dpo["max_steps"] == 4 and recipe.step_dpo["loss_type"] == "sigmoid"


def test_the_switches_are_read_and_default_to_off(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    assert recipe.grpo_enabled and recipe.grpo["steps"] == 3 and recipe.sft_filter_min_ppm == 0.1
    plain = load_recipe(_write(tmp_path, "search: {1: {rollouts: 2}}\n"))
    assert not plain.grpo_enabled and plain.grpo == {} and plain.sft_filter_min_ppm is None
    assert not recipe.step_dpo_enabled and not plain.step_dpo_enabled and plain.step_dpo == {}
    on = load_recipe(_write(tmp_path, GOOD.replace("step_dpo: false", "step_dpo: true")))
    assert on.step_dpo_enabled and on.step_dpo["beta"] == 0.1


@pytest.mark.parametrize(("change", "message"), [
    (("step_dpo: false", "step_dpo: {betta: 1}"), r"step_dpo: unknown key\(s\) betta"),
    (("step_dpo: false", "step_dpo: {enabled: true, beta: -1}"), "step_dpo: beta must be a positive number"),
    (("steps: 3", "stepz: 3"), r"grpo: unknown key\(s\) stepz"),
    (("group_size: 2", "group_size: 1"), "grpo: group_size must be >= 2"),
    (("hard_share_start: 0.3", "hard_share_start: 1.5"), "grpo: .*hard_share_start"),
    (("enabled: true", "enabled: true, ppm_model: /x"), "grpo.ppm_model is set by the driver"),
    (("sft_filter_min_ppm: 0.1", "sft_filter_min_ppm: 2"), r"sft_filter_min_ppm must be a number in \[-1, 1\]"),
    (("pool:", "method: process-supervision\nprocess: {alpha: 1.0}\npool:"), "belong.* to method rstar"),
])
def test_mistakes_name_the_file_and_the_key(tmp_path, change, message):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


@pytest.fixture
def evolver(tmp_path):
    from rstar_cli.evolve import EvolveSettings, Evolver
    from rstar_store import Store, migrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    store = Store.from_url(url)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(3)))
    recipe = load_recipe(_write(tmp_path, GOOD.replace("steps: 3", "steps: 4, ppm_reward_weight: 0.2")))
    settings = EvolveSettings(run="mctspp-test", pool_file=pool, recipe=recipe, rounds=1, work_dir=tmp_path / "runs",
                              data_dir=tmp_path, base_model="/base")
    store.get_or_create_run(settings.run)
    store.start_evolve_step(settings.run, 0, "pool")
    store.finish_evolve_step(settings.run, 0, "pool", {"path": str(pool)})
    messages = []
    evolver = Evolver(settings, store, registry=None, echo=messages.append)
    evolver.messages = messages
    yield evolver
    store.close()


def test_the_grpo_stage_trains_from_the_sft_policy_on_the_curriculum(evolver, monkeypatch):
    from rstar_trainer.datasets import load_training_set

    calls = []
    monkeypatch.setattr(evolver, "_train", lambda *args, **kwargs: calls.append((args, kwargs)) or {"version": "v-g"})
    from rstar_cli.evolve_mctspp import grpo_stage

    result = grpo_stage(evolver, 1, {"path": "/sft", "version": "v-sft"}, {"path": "/ppm", "version": "v-ppm"})
    assert result == {"version": "v-g"}
    (round, step, start, dataset, settings), kwargs = calls[0]
    assert (round, step, start, kwargs) == (1, "train_grpo", "/sft", {"parent": "v-sft"})
    assert settings["ppm_model"] == "/ppm" and settings["ppm_reward_weight"] == 0.2
    data, info = load_training_set(dataset, "grpo")
    # No tree yet: every problem is unknown; the set has steps * prompts_per_step prompts.
    assert len(data) == 4 and set(data["bucket"]) == {"unknown"} and set(data["problem_id"]) == {"p0", "p1", "p2"}
    recorded = evolver.store.get_evolve_step("mctspp-test", 1, "grpo_data")
    assert recorded.state == "done" and recorded.result["prompts"] == 4


def test_without_a_ppm_the_grpo_stage_drops_the_ppm_reward_and_says_so(evolver, monkeypatch):
    calls = []
    monkeypatch.setattr(evolver, "_train", lambda *args, **kwargs: calls.append(args) or {"version": "v-g"})
    from rstar_cli.evolve_mctspp import grpo_stage

    grpo_stage(evolver, 0, {"path": "/sft", "version": "v-sft"}, None)
    settings = calls[0][4]
    assert settings["ppm_reward_weight"] == 0.0 and "ppm_model" not in settings
    assert any("without the PPM reward" in m for m in evolver.messages)


def test_the_step_dpo_pass_trains_from_the_sft_policy_on_the_rounds_pairs(evolver, monkeypatch, tmp_path):
    from rstar_cli.evolve_mctspp import step_dpo_stage
    from rstar_core.curation import PPMExample
    from rstar_trainer.datasets import load_training_set, write_ppm_dataset

    pair = PPMExample("p1", "What is 1 + 1?", (), ("print(1 + 1)\nOutput: 2",), ("print(1 - 1)\nOutput: 0",),
                      0.5, -0.5, False, 1)
    ppm = write_ppm_dataset([pair], set(), tmp_path / "ppm", round=1, sources={})
    object.__setattr__(evolver.recipe, "step_dpo", {"enabled": True, "max_steps": 2})
    calls = []
    monkeypatch.setattr(evolver, "_train", lambda *args, **kwargs: calls.append((args, kwargs)) or {"version": "v-d"})
    sft = {"path": "/sft", "version": "v-sft"}
    assert step_dpo_stage(evolver, 1, sft, {"ppm": {"path": ppm.path}}) == {"version": "v-d"}
    (round, step, start, dataset, settings), kwargs = calls[0]
    assert (round, step, start, settings, kwargs) == (1, "train_dpo", "/sft", {"enabled": True, "max_steps": 2},
                                                      {"parent": "v-sft"})
    data, _ = load_training_set(dataset, "dpo")
    assert data[0]["chosen"] == "print(1 + 1)\nOutput: 2\n"
    assert evolver.store.get_evolve_step("mctspp-test", 1, "step_dpo_data").result["pairs"] == 1
    # A round without pairs keeps its SFT policy and says so.
    assert step_dpo_stage(evolver, 2, sft, {"ppm": None}) is sft
    assert any("step-DPO skipped" in m for m in evolver.messages)


def test_a_round_whose_search_found_nothing_correct_trains_nothing(evolver, monkeypatch):
    # No bootstrap, and round 1's trees (none stored here) hold no correct trajectory: the round
    # records its data step, trains nothing, says so, and the run goes on (no crash).
    evolver.store.start_evolve_step("mctspp-test", 1, "search")
    evolver.store.finish_evolve_step("mctspp-test", 1, "search", {"problems": 3, "any_correct": 0})
    monkeypatch.setattr(evolver, "_train", lambda *args, **kwargs: pytest.fail("nothing should be trained"))
    evolver._round(1, {"path": "unused"})
    data = evolver.store.get_evolve_step("mctspp-test", 1, "data")
    assert data.state == "done" and data.result["sft"] is None and data.result["ppm"] is None
    assert any("nothing to train, the models stay" in m for m in evolver.messages)
