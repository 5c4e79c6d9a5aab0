"""MCTS++'s step-DPO pass: the settings, the set built from a round's PPM pairs (the policy's prompt,
continuations closed as in SFT), and `train_step_dpo` end to end on the small model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rstar_core.curation import PPMExample
from rstar_core.steps import get_format
from rstar_trainer.datasets import load_training_set, write_ppm_dataset, write_step_dpo_dataset
from rstar_trainer.dpo_config import StepDPOConfig, step_dpo_config

QUESTION = "Tom has 3 pens and buys 4 more. How many pens does he have?"
FIRST = "# Tom starts with 3 pens.\npens = 3"
GOOD = "# He buys 4 more.\nprint(pens + 4)\nOutput: 7"
BAD = "# He gives 4 away.\nprint(pens - 4)\nOutput: -1"


def _ppm_set(path: Path) -> Path:
    pairs = [
        # A step pair after a shared first step (neither side answers yet).
        PPMExample("p1", QUESTION, (FIRST,), (GOOD,), (BAD,), 0.5, -0.5, False, 1),
        # Whole solutions: both sides end with their answer step.
        PPMExample("p2", QUESTION, (), (FIRST, GOOD, "The answer is \\boxed{7}."),
                   (FIRST, BAD, "The answer is \\boxed{-1}."), 1.0, -1.0, True, 1),
    ]
    write_ppm_dataset(pairs, {"p2"}, path, round=1, sources={"test": True})
    return path


def test_settings_are_validated_and_name_the_key():
    assert step_dpo_config(True, source="step_dpo") == StepDPOConfig(enabled=True)
    assert not step_dpo_config(None, source="step_dpo").enabled
    config = step_dpo_config({"enabled": True, "beta": 0.3, "loss_type": "ipo", "max_steps": 2}, source="step_dpo")
    assert config.beta == 0.3 and config.loss_type == "ipo" and config.max_steps == 2
    for bad, message in (({"beta": 0}, "beta must be a positive number"), ({"loss_type": "kto"}, "loss_type"),
                         ({"max_steps": 0}, "max_steps must be a positive integer"),
                         ({"warmup_ratio": 1.0}, "warmup_ratio must be below 1"),
                         ({"betta": 1}, r"step_dpo: unknown key\(s\) betta"), ("yes", "expected a mapping")):
        with pytest.raises(ValueError, match=message):
            step_dpo_config(bad, source="step_dpo")


def test_the_step_dpo_set_is_the_rounds_pairs_as_policy_continuations(tmp_path):
    info = write_step_dpo_dataset(_ppm_set(tmp_path / "ppm"), tmp_path / "dpo", round=1, sources={"run": "r"})
    data, loaded = load_training_set(info.path, "dpo")
    fmt = get_format("sft")
    rows = {r["problem_id"]: r for r in data}
    assert set(rows) == {"p1", "p2"}  # both of the PPM set's splits
    # The prompt is the policy's own after the shared steps; a step is closed by a newline, a
    # solution that answers by the end of the turn, as in the SFT set.
    assert rows["p1"]["prompt"] == fmt.render_prompt(QUESTION, (FIRST,))
    assert (rows["p1"]["chosen"], rows["p1"]["rejected"]) == (GOOD + "\n", BAD + "\n")
    assert rows["p2"]["prompt"] == fmt.render_prompt(QUESTION, ())
    assert rows["p2"]["chosen"].endswith("\\boxed{7}." + fmt.end_of_turn)
    assert rows["p2"]["rejected"].endswith("\\boxed{-1}." + fmt.end_of_turn)
    assert loaded.manifest["counts"] == {"pairs": 2, "problems": 2, "chosen_final": 1}
    assert loaded.manifest["sources"]["ppm_set"] == str(tmp_path / "ppm")


@pytest.mark.slow
def test_train_step_dpo_end_to_end_on_the_small_model(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rstar_trainer.dpo_trainer import train_step_dpo

    dataset = write_step_dpo_dataset(_ppm_set(tmp_path / "ppm"), tmp_path / "dpo", round=1, sources={}).path
    # No warmup: the first step already moves (a warmup share of two steps would make its rate 0).
    config = StepDPOConfig(enabled=True, beta=0.1, learning_rate=5e-5, warmup_ratio=0.0, max_steps=2, batch_size=2,
                           max_length=160, save_steps=2, threads=2)
    out, work = tmp_path / "out", tmp_path / "work"
    metrics = train_step_dpo(model_dir, dataset, out, work, config, progress_bar=False)
    assert metrics["kind"] == "step-dpo" and metrics["steps"] == 2 and metrics["pairs"] == 2
    assert metrics["first_loss"] is not None and metrics["last_reward_accuracy"] is not None
    # Two steps on the same two pairs: the chosen side pulls ahead of the rejected one.
    assert metrics["last_reward_margin"] > 0
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.model_type == "llama"
    saved = json.loads((out / "rstar_training.json").read_text())
    assert saved["config"]["beta"] == 0.1 and saved["dataset"]["kind"] == "dpo"
    # Killed after its last checkpoint and run again: it resumes, it does not start over.
    import shutil

    shutil.rmtree(out)
    again = train_step_dpo(model_dir, dataset, out, work, config, progress_bar=False)
    assert again["resumed_from"] == "checkpoint-2"
