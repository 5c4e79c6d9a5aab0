"""Seeded practice problems: determinism, exact operation counts, integer answers, disjoint splits."""

import ast
import asyncio
from collections import Counter

import pytest
from fakes import InlineExecutor

from rstar_core.practice import LEVELS, generate_practice, practice_level
from rstar_core.steps import STEP_STOP, StepKind, accumulate_code, get_format

SFT = get_format("sft")


@pytest.fixture(scope="module")
def pool():
    return generate_practice(LEVELS, 100, seed=7, split="pool")


def _program(item) -> str:
    return "\n".join(item.steps[:-1])  # every code step; the last step is the answer


def test_deterministic_for_a_seed_and_different_across_seeds(pool):
    again = generate_practice(LEVELS, 100, seed=7, split="pool")
    assert [p.problem for p in again] == [p.problem for p in pool]
    other = generate_practice(LEVELS, 100, seed=8, split="pool")
    assert len({p.problem.question for p in other} & {p.problem.question for p in pool}) < 10


def test_ids_levels_and_order(pool):
    assert len(pool) == 500
    assert pool[0].problem.id == "practice-L1-pool-00000"
    assert pool[117].problem.id == "practice-L2-pool-00017"
    for item in pool:
        assert practice_level(item.problem.id) == item.level
    assert [item.level for item in pool] == [level for level in LEVELS for _ in range(100)]
    assert practice_level("gsm8k-train-3") is None and practice_level(None) is None


def test_level_k_needs_exactly_k_operations(pool):
    for item in pool:
        tree = ast.parse(_program(item))
        operations = [node for node in ast.walk(tree) if isinstance(node, ast.BinOp)]
        assert len(operations) == item.level, item.problem.question
        assert len(item.templates) == item.level + 2  # opening, one per operation, question


def test_answers_are_small_non_negative_integers(pool):
    for item in pool:
        assert isinstance(item.problem.answer, str) and item.problem.answer.isdigit()
        assert 0 <= int(item.problem.answer) <= 1000


def test_questions_are_distinct_and_splits_are_disjoint(pool):
    heldout = generate_practice(LEVELS, 100, seed=7, split="heldout")
    pool_questions = {p.problem.question for p in pool}
    assert len(pool_questions) == len(pool)
    assert pool_questions.isdisjoint({p.problem.question for p in heldout})
    assert heldout[0].problem.id == "practice-L1-heldout-00000"


def test_more_problems_extend_fewer():
    few = generate_practice([3], 10, seed=1, split="heldout")
    many = generate_practice([3], 40, seed=1, split="heldout")
    assert [p.problem for p in many[:10]] == [p.problem for p in few]


def test_wording_varies_within_each_level(pool):
    for level in LEVELS:
        items = [item for item in pool if item.level == level]
        events = Counter(name for item in items for name in item.templates[1:-1])
        openings = Counter(item.templates[0] for item in items)
        assert len(events) >= 5 and len(openings) >= 5, (level, events, openings)
        shapes = {tuple(item.templates) for item in items}
        assert len(shapes) >= 50


def test_reference_steps_are_valid_steps_and_print_the_answer(pool):
    executor = InlineExecutor()
    for item in pool[::7]:
        *code_steps, answer_step = item.steps
        for step in code_steps:
            assert SFT.parse(step, STEP_STOP, "stop").kind is StepKind.CODE
        answer = SFT.parse(answer_step, None, "stop")
        assert answer.kind is StepKind.ANSWER and answer.answer == item.problem.answer
        result = asyncio.run(executor.run(accumulate_code(code_steps[:-1], code_steps[-1])))
        assert result.ok and result.stdout.strip() == item.problem.answer


def test_questions_mention_every_number_of_the_reference_program(pool):
    for item in pool:
        numbers = [node.value for node in ast.walk(ast.parse(_program(item))) if isinstance(node, ast.Constant)]
        words = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}
        for number in numbers:
            assert str(number) in item.problem.question or words.get(number, "?") in item.problem.question


@pytest.mark.parametrize("kwargs,message", [
    (dict(levels=[0]), "unknown level"),
    (dict(levels=[6]), "unknown level"),
    (dict(levels=[]), "levels must not be empty"),
    (dict(levels=[2, 2]), "must not repeat"),
    (dict(n_per_level=0), "n_per_level"),
    (dict(split="train"), "split"),
])
def test_bad_arguments(kwargs, message):
    arguments = dict(levels=[1], n_per_level=1, seed=0, split="pool") | kwargs
    with pytest.raises(ValueError, match=message):
        generate_practice(**arguments)
