"""Training sets on disk: manifests, the PPM text contract with serving, clear errors on bad input."""

import json

import pytest

from rstar_core.curation import PPMExample, SFTExample
from rstar_reward.ppm import render_prefix
from rstar_trainer.datasets import MANIFEST, load_training_set, write_ppm_dataset, write_sft_dataset

STEPS = ("# Two apples and three more.\nx = 2 + 3", "# Print the answer.\nprint(x)\nOutput: 5",
         "The answer is \\boxed{5}.")


def _sft(n=3):
    return [SFTExample(f"p{i}", f"Q{i}: 2 apples and 3 more?", STEPS, "search", 1, 0.5) for i in range(n)]


def _pairs():
    return [
        PPMExample("p1", "Q1?", (STEPS[0],), (STEPS[1],), ("# Guess.\nprint(7)\nOutput: 7",), 0.5, -0.5, False, 1),
        PPMExample("p2", "Q2?", (), STEPS, ("The answer is \\boxed{6}.",), 1.0, -1.0, True, 1),
    ]


def test_sft_set_round_trips_with_manifest_and_policy_prompt(tmp_path):
    info = write_sft_dataset(_sft(), tmp_path / "sft", round=1, sources={"run": "r"})
    data, loaded = load_training_set(tmp_path / "sft", "sft")
    assert len(data) == 3 and loaded.content_hash == info.content_hash
    row = data[0]
    assert row["prompt"].endswith("Let's think step by step and solve the problem with code.\n")
    assert row["completion"] == "\n".join(STEPS) + "<|im_end|>"
    assert row["messages"][0] == {"role": "user", "content": "Q0: 2 apples and 3 more?"}
    assert loaded.manifest["counts"]["examples"] == 3 and loaded.manifest["round"] == 1
    assert not list(tmp_path.glob(".sft.*")), "no staging directory is left behind"


def test_ppm_pairs_are_the_reward_models_own_rendering(tmp_path):
    write_ppm_dataset(_pairs(), {"p2"}, tmp_path / "ppm", round=1, sources={})
    data, info = load_training_set(tmp_path / "ppm", "ppm")
    assert info.manifest["counts"]["train_pairs"] == 1 and info.manifest["counts"]["heldout_pairs"] == 1
    for split, example in (("train", _pairs()[0]), ("heldout", _pairs()[1])):
        row = data[split][0]
        served = render_prefix(example.question, (*example.prefix, *example.chosen))
        assert row["prompt"] + row["chosen"] == served
        assert row["prompt"] + row["rejected"] == render_prefix(example.question, (*example.prefix, *example.rejected))


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="no SFT examples"):
        write_sft_dataset([], tmp_path / "x", round=1, sources={})
    with pytest.raises(ValueError, match="does not exist"):
        load_training_set(tmp_path / "missing", "sft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable rstar_dataset.json"):
        load_training_set(tmp_path / "empty", "sft")
    write_sft_dataset(_sft(), tmp_path / "sft", round=1, sources={})
    with pytest.raises(ValueError, match="is a 'sft' set, not 'ppm'"):
        load_training_set(tmp_path / "sft", "ppm")
    for f in (tmp_path / "sft").glob("*.arrow"):
        f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_training_set(tmp_path / "sft", "sft")


def test_rewriting_a_set_replaces_it_whole(tmp_path):
    write_sft_dataset(_sft(3), tmp_path / "sft", round=1, sources={})
    write_sft_dataset(_sft(2), tmp_path / "sft", round=2, sources={})
    data, info = load_training_set(tmp_path / "sft", "sft")
    assert len(data) == 2 and json.loads((tmp_path / "sft" / MANIFEST).read_text())["round"] == 2
