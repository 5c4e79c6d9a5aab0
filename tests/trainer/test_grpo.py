"""MCTS++'s GRPO stage: the answer reward in the real sandbox, the settings, and `train_grpo` end to end
on the small model (2 problems, groups of 2, 2 steps, 48-token completions)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rstar_core.rl import CurriculumItem, check_answer
from rstar_core.types import Problem
from rstar_trainer.datasets import load_training_set, write_grpo_dataset
from rstar_trainer.grpo_config import GRPOConfig, grpo_config

RIGHT = "# Add the pens.\npens = 3 * 4 - 5\n# Print the answer.\nprint(pens)\nOutput: 9\nThe answer is \\boxed{7}."
CRASH = "# Add the pens.\npens = 3 * 4 - 5\n# Print the answer.\nprint(pns)\nThe answer is \\boxed{7}."


def test_answer_reward_runs_the_completion_in_the_sandbox():
    from rstar_executor import SandboxExecutor

    async def run():
        async with SandboxExecutor() as executor:
            return [await check_answer(c, "7", executor, timeout_s=5.0) for c in (RIGHT, CRASH)]

    right, crash = asyncio.run(run())
    assert right.correct and right.reward == 1.0
    # The sandbox's output (7) replaces the model's (9).
    assert right.steps[1] == "# Print the answer.\nprint(pens)\nOutput: 7"
    assert not crash.correct and crash.reward == 0.0 and crash.reason == "error"


def test_settings_are_validated_and_name_the_key():
    config = grpo_config({"steps": 2, "group_size": 2, "prompts_per_step": 3,
                          "curriculum": {"hard_share_start": 0.1, "hard_share_step": 0.3}}, source="grpo")
    assert config.prompts == 6 and config.curriculum.hard_share_step == 0.3 and not config.enabled
    for bad, message in (({"group_size": 1}, "group_size must be >= 2"), ({"beta": -1}, "beta"),
                         ({"curriculum": {"hard_share_start": 2}}, "hard_share_start"),
                         ({"stepz": 1}, r"unknown key\(s\) stepz")):
        with pytest.raises(ValueError, match=message):
            grpo_config(bad, source="grpo")


def _grpo_set(path: Path) -> Path:
    items = [CurriculumItem(Problem("Tom has 3 pens and buys 4 more. How many pens does he have?", "7", "p-easy"),
                            "easy"),
             CurriculumItem(Problem("A box holds 6 eggs. How many eggs are in 5 boxes?", 30, "p-hard"), "hard")]
    write_grpo_dataset(items, path, round=1, sources={"test": True})
    return path


def test_the_grpo_set_keeps_the_curriculums_order_and_the_policy_prompt(tmp_path):
    from rstar_core.steps import get_format

    data, info = load_training_set(_grpo_set(tmp_path / "grpo"), "grpo")
    assert data["problem_id"] == ["p-easy", "p-hard"] and data["bucket"] == ["easy", "hard"]
    assert json.loads(data["answer"][1]) == 30
    assert data["prompt"][0] == get_format("sft").render_prompt(data["question"][0])
    assert info.manifest["counts"]["by_bucket"] == {"easy": 1, "hard": 1}


@pytest.mark.slow
def test_train_grpo_end_to_end_on_the_small_model(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rstar_trainer.grpo_trainer import REWARD_LOG, train_grpo

    config = GRPOConfig(enabled=True, steps=2, group_size=2, prompts_per_step=1, max_completion_length=48,
                        learning_rate=1e-5, beta=0.0, temperature=1.0, save_steps=1, threads=2)
    out, work = tmp_path / "out", tmp_path / "work"
    metrics = train_grpo(model_dir, _grpo_set(tmp_path / "grpo"), out, work, config, progress_bar=False)
    assert metrics["steps"] == 2 and metrics["kind"] == "grpo"
    assert metrics["completions"]["completions"] == 4
    records = [json.loads(line) for line in (work / REWARD_LOG).read_text().splitlines()]
    # The curriculum's order: the easy problem's group first, then the hard one's.
    assert [r["problem_id"] for r in records] == ["p-easy", "p-easy", "p-hard", "p-hard"]
    assert [r["step"] for r in records] == [1, 1, 2, 2]
    assert all(r["answer"] in (0.0, 1.0) and r["format"] in (0.0, 1.0) and r["tokens"] <= 48 for r in records)
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.model_type == "llama"
    saved = json.loads((out / "rstar_training.json").read_text())
    assert saved["config"]["group_size"] == 2 and saved["dataset"]["kind"] == "grpo"


def test_a_rounds_grpo_policy_is_not_mistaken_for_its_sft_policy(tmp_path):
    from types import SimpleNamespace

    from rstar_trainer.jobs import TrainJob, _train_and_register

    sft = SimpleNamespace(version="run-r1-policy-abc", path="/sft", round=1, metrics={"step": "train_sft"})

    class Registry:
        def list(self, kind, run):
            return [sft]

    job = lambda step: TrainJob("run", 1, step, "/start", str(tmp_path / "missing"), str(tmp_path / "w"))  # noqa: E731
    assert _train_and_register(job("train_sft"), Registry(), False, "me")["version"] == sft.version
    # The GRPO step goes on to train (and here stops at its missing dataset).
    with pytest.raises(ValueError, match="does not exist"):
        _train_and_register(job("train_grpo"), Registry(), False, "me")
