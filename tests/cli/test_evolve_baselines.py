"""The reward-model ablation's baselines in `rstar evolve`: the switch is validated, and after a round's
decision the driver builds the ORM and PQM sets from the round's trees (the PPM's trees, held out by
the same problems), trains both from the round's policy and promotes them with the round (training and
registry faked; real searches on a scripted policy; SQLite store)."""

import asyncio
import json
from pathlib import Path

import pytest

from fakes import InlineExecutor, ScriptedPolicy
from rstar_cli.evolve_recipe import load_recipe
from rstar_core.config import SearchConfig
from rstar_core.curation import split_by_problem
from rstar_core.mcts import MCTS
from rstar_core.steps import OUTPUT_STOP
from rstar_core.types import Problem

REPO = Path(__file__).resolve().parents[2]
RECIPE = """
pool: {sources: [GSM8K], limit: 2}
search:
  1: {rollouts: 2, max_depth: 4}
ppm: {max_steps: 3}
eval: {gsm8k_limit: 5, search: {rollouts: 1}}
reward_baselines: [orm, pqm]
"""


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_the_shipped_reward_models_recipe_trains_both_baselines():
    recipe = load_recipe(REPO / "deploy" / "configs" / "evolve" / "reward-models-cpu.yaml")
    assert recipe.method == "rstar" and recipe.reward_baselines == ("orm", "pqm")
    assert load_recipe(REPO / "deploy" / "configs" / "evolve" / "cpu.yaml").reward_baselines == ()


@pytest.mark.parametrize(("change", "message"), [
    ("[orm, pqm]", None),
    ("[pqm]", None),
    ("[orm, prm]", r"reward_baselines must be a list of orm and pqm, got \['orm', 'prm'\]"),
    ("orm", "reward_baselines must be a list of orm and pqm, got 'orm'"),
    ("[orm, orm]", "reward_baselines names a kind twice"),
])
def test_the_switch_is_validated_with_the_file_named(tmp_path, change, message):
    path = _write(tmp_path, RECIPE.replace("[orm, pqm]", change))
    if message is None:
        assert load_recipe(path).reward_baselines == tuple(change.strip("[]").split(", "))
        return
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


def test_the_baselines_belong_to_the_rstar_method(tmp_path):
    path = _write(tmp_path, RECIPE.replace("pool:", "method: process-supervision\nprocess: {alpha: 1.0}\npool:"))
    with pytest.raises(ValueError, match="reward_baselines belong to method rstar"):
        load_recipe(path)


def _script(prompt, call):
    """Three first steps, then answers 7 (right) and 8 (wrong): every tree has both outcomes."""
    tail = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if not tail:
        return [("# Start at 3.\nx = 3", "\n#"), ("# Start at three.\nx = 3", "\n#")]
    if "print(x + 4)" not in tail:
        return [("# Add 4.\nprint(x + 4)", OUTPUT_STOP)]
    return [("The answer is \\boxed{7}.", None), ("The answer is \\boxed{8}.", None)]


class _Registry:
    def __init__(self):
        self.calls = []

    def promote(self, version):
        self.calls.append(("promote", version))

    def reject(self, version):
        self.calls.append(("reject", version))


@pytest.fixture
def evolver(tmp_path):
    from rstar_cli.evolve import EvolveSettings, Evolver
    from rstar_store import Store, migrate

    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    store = Store.from_url(url)
    recipe = load_recipe(_write(tmp_path, RECIPE))
    settings = EvolveSettings(run="rm-test", pool_file=tmp_path / "pool.jsonl", recipe=recipe, rounds=1,
                              work_dir=tmp_path / "runs", data_dir=tmp_path, base_model="/base")
    store.get_or_create_run(settings.run)
    problems = [Problem("What is 3 + 4?", "7", f"p{i}") for i in range(12)]
    batch = store.add_batch(settings.run, 1, 0, problems, {"rollouts": 4}, source="pool")
    mcts = MCTS(ScriptedPolicy(_script), InlineExecutor(),
                SearchConfig(expansion_width=2, rollouts=4, max_depth=4, parallel_rollouts=1))
    for problem, task in zip(problems, batch.task_ids):
        store.claim_task(task, worker="test")
        assert store.record_result(task, asyncio.run(mcts.search(problem)))
    messages = []
    evolver = Evolver(settings, store, registry=_Registry(), echo=messages.append)
    evolver.messages = messages
    yield evolver
    store.close()


def test_the_baselines_train_from_the_rounds_trees_and_follow_its_decision(evolver, monkeypatch):
    from rstar_cli.evolve_baselines import reward_baselines
    from rstar_trainer.datasets import load_training_set

    calls = []

    def train(round, step, start, dataset, config, parent=None):
        calls.append((round, step, start, config, parent))
        return {"version": f"{step}-v", "path": f"/{step}", "dataset": dataset}

    monkeypatch.setattr(evolver, "_train", train)
    trained = reward_baselines(evolver, 1, {"path": "/policy-r1", "version": "pol@1"}, {"promoted": True})
    assert [c[:3] for c in calls] == [(1, "train_orm", "/policy-r1"), (1, "train_pqm", "/policy-r1")]
    assert all(c[3] == {"max_steps": 3} for c in calls)
    assert evolver.registry.calls == [("promote", "train_orm-v"), ("promote", "train_pqm-v")]

    data = evolver.store.get_evolve_step("rm-test", 1, "baselines_data").result
    ppm_heldout = split_by_problem([f"p{i}" for i in range(12)], 0.1)
    for kind, unit in (("orm", "examples"), ("pqm", "examples")):
        info = data[kind]
        sets, _ = load_training_set(trained[kind]["dataset"], kind)
        rows = [r for split in sets.values() for r in split]
        assert {r["problem_id"] for r in rows} == {f"p{i}" for i in range(12)}
        held = {r["problem_id"] for r in sets["heldout"]} if "heldout" in sets else set()
        assert held == ppm_heldout  # the PPM's held-out problems, and only they
        assert info[unit] == len(rows) and info["problems"] == 12
    orm_rows, _ = load_training_set(trained["orm"]["dataset"], "orm")
    assert {r["label"] for r in orm_rows["train"]} == {0, 1}  # right and wrong whole solutions

    # Run again (a resumed driver): the recorded sets and decision are used, nothing is redone
    # (`Evolver._train` itself returns a training step already done).
    monkeypatch.setattr("rstar_cli.evolve_baselines.baselines_data", lambda *a: pytest.fail("data built twice"))
    assert reward_baselines(evolver, 1, {"path": "/policy-r1", "version": "pol@1"}, {"promoted": True}) == trained
    assert len(evolver.registry.calls) == 2
    decided = evolver.store.get_evolve_step("rm-test", 1, "promote_baselines").result
    assert {k: decided[k] for k in ("promoted", "orm", "pqm")} == {"promoted": True, "orm": "train_orm-v",
                                                                    "pqm": "train_pqm-v"}


def test_a_rejected_round_rejects_its_baselines(evolver, monkeypatch):
    from rstar_cli.evolve_baselines import reward_baselines

    monkeypatch.setattr(evolver, "_train", lambda r, step, *a, **k: {"version": f"{step}-v", "path": "/x"})
    reward_baselines(evolver, 1, {"path": "/p", "version": "p@1"}, {"promoted": False})
    assert evolver.registry.calls == [("reject", "train_orm-v"), ("reject", "train_pqm-v")]
    assert any("ORM, PQM rejected with the round's models" in m for m in evolver.messages)
