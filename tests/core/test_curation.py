"""Choosing training examples from trees: SFT union and dedup, PPM pairs, splits, decontamination."""

import pytest
from test_data import mixed_tree

from rstar_core.curation import (
    SFTExample,
    decontaminate,
    normalise_question,
    orm_examples,
    ppm_examples,
    pqm_examples,
    sft_examples,
    split_by_problem,
    union_sft,
)
from rstar_core.types import Problem


def test_sft_examples_take_the_correct_trajectories_of_each_tree():
    tree = mixed_tree()
    tree.problem = Problem("q?", "7", id="p1")
    [example] = sft_examples([tree], round=2)
    assert example.steps == ("# a\nx = 7", "\\boxed{7}")
    assert (example.problem_id, example.source, example.round) == ("p1", "search", 2)


def test_union_keeps_the_first_occurrence_and_ignores_whitespace():
    boot = SFTExample("p1", "What is 2+2?", ("# add\nx = 2 + 2",), "bootstrap", 0)
    same = SFTExample("p1", "What  is 2+2? ", ("# add\nx  =  2 + 2",), "search", 1)
    other = SFTExample("p1", "What is 2+2?", ("# add\nx = 4",), "search", 1)
    assert union_sft([boot], [same, other]) == [boot, other]


def test_ppm_examples_keep_the_problem_id_for_the_split():
    tree = mixed_tree()
    tree.problem = Problem("q?", "7", id="p9")
    pairs = ppm_examples([tree], round=1)
    assert pairs and {p.problem_id for p in pairs} == {"p9"}
    assert all(p.q_chosen > p.q_rejected for p in pairs)
    assert any(p.whole_solution for p in pairs)


def test_orm_and_pqm_examples_come_from_the_same_tree_with_its_problem_id():
    tree = mixed_tree()
    tree.problem = Problem("q?", "7", id="p9")
    orm = orm_examples([tree], round=3)
    assert [(e.steps[-1], e.correct) for e in orm] == [("\\boxed{7}", True), ("\\boxed{6}", False),
                                                        ("\\boxed{8}", False)]
    pqm = pqm_examples([tree], round=3)
    assert len(pqm) == 5 and {(e.problem_id, e.round, e.question) for e in orm + pqm} == {("p9", 3, "q?")}
    assert [e.q for e in pqm] == [0.0, -1.0, 1.0, -1.0, -1.0]


def test_split_is_by_problem_stable_and_near_the_fraction():
    ids = [f"p{i}" for i in range(2000)]
    heldout = split_by_problem(ids + ids, 0.1)
    assert heldout == split_by_problem(reversed(ids), 0.1)
    assert 150 < len(heldout) < 250
    assert split_by_problem(ids, 0.1, seed=1) != heldout
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_by_problem(ids, 1.0)


def test_decontamination_matches_normalised_questions():
    pool = [Problem("What is 2 + 2?", "4", "a"), Problem("what is 2+2", "4", "b"), Problem("Name 3 primes.", None, "c")]
    kept, dropped = decontaminate(pool, ["WHAT is 2 + 2 ?"])
    assert [p.id for p in kept] == ["c"] and dropped == 2
    assert normalise_question("Ｗhat  is\n2+2?") == "what is 2 2"
