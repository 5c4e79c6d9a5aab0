"""Training sets on disk: manifests, the PPM/ORM/PQM text contract with serving, clear errors on bad input."""

import json

import pytest

from rstar_core.curation import ORMExample, PPMExample, PQMExample, SFTExample
from rstar_reward.ppm import render_prefix
from rstar_trainer.datasets import (
    MANIFEST,
    load_training_set,
    write_orm_dataset,
    write_ppm_dataset,
    write_pqm_dataset,
    write_sft_dataset,
)

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


def test_orm_and_pqm_sets_render_what_the_reward_model_scores_split_by_problem(tmp_path):
    orm = [ORMExample("p1", "Q1?", STEPS, True, 2), ORMExample("p1", "Q1?", (STEPS[0], "The answer is \\boxed{6}."),
                                                              False, 2),
           ORMExample("p2", "Q2?", STEPS, True, 2)]
    info = write_orm_dataset(orm, {"p2"}, tmp_path / "orm", round=2, sources={"run": "r"})
    data, loaded = load_training_set(tmp_path / "orm", "orm")
    assert loaded.content_hash == info.content_hash and loaded.manifest["round"] == 2
    assert loaded.manifest["counts"] == {"examples": 3, "train_examples": 2, "heldout_examples": 1, "problems": 2,
                                         "heldout_problems": 1, "correct": 2}
    assert [r["label"] for r in data["train"]] == [1, 0] and data["heldout"][0]["problem_id"] == "p2"
    assert data["train"][1]["text"] == render_prefix("Q1?", orm[1].steps)

    pqm = [PQMExample("p1", "Q1?", STEPS[:1], 0.25, 2), PQMExample("p1", "Q1?", STEPS, 1.0, 2),
           PQMExample("p3", "Q3?", STEPS[:2], -0.5, 2)]
    write_pqm_dataset(pqm, {"p3"}, tmp_path / "pqm", round=2, sources={})
    data, loaded = load_training_set(tmp_path / "pqm", "pqm")
    assert loaded.manifest["kind"] == "pqm" and loaded.manifest["counts"]["train_examples"] == 2
    assert [(r["text"], r["q"], r["depth"]) for r in data["train"]] == [
        (render_prefix("Q1?", STEPS[:1]), 0.25, 1), (render_prefix("Q1?", STEPS), 1.0, 3)]
    assert data["heldout"][0]["q"] == -0.5


def test_orm_and_pqm_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="no ORM examples"):
        write_orm_dataset([], set(), tmp_path / "x", round=1, sources={})
    with pytest.raises(ValueError, match="outside \\[-1, 1\\]"):
        write_pqm_dataset([PQMExample("p1", "Q?", STEPS, 1.5, 1)], set(), tmp_path / "x", round=1, sources={})
    with pytest.raises(ValueError, match="every PQM row fell into the held-out split"):
        write_pqm_dataset([PQMExample("p1", "Q?", STEPS, 0.5, 1)], {"p1"}, tmp_path / "x", round=1, sources={})
    write_orm_dataset([ORMExample("p1", "Q?", STEPS, True, 1)], set(), tmp_path / "orm", round=1, sources={})
    with pytest.raises(ValueError, match="is a 'orm' set, not 'pqm'"):
        load_training_set(tmp_path / "orm", "pqm")
