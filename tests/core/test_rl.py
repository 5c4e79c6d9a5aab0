"""MCTS++'s pure parts: the curriculum's order and hard share, cutting completions, the rewards, the PPM filter."""

import asyncio
from collections import Counter

import pytest
from fakes import InlineExecutor

from rstar_core.rl import (check_answer, curriculum, filter_by_ppm, format_reward, hard_share, latest_buckets,
                           split_completion)
from rstar_core.steps import StepKind
from rstar_core.types import Problem

GOOD = ("# There are 3 boxes with 4 pens each.\npens = 3 * 4\n"
        "# He gives away 5 pens.\nleft = pens - 5\n"
        "# Print the answer.\nprint(left)\nOutput: 7\nThe answer is \\boxed{7}.")


def _pool(buckets: dict[str, str]) -> list[Problem]:
    return [Problem(f"question {pid}?", "1", pid) for pid in buckets]


BUCKETS = {"e1": "easy", "e2": "easy", "m1": "medium", "m2": "medium", "h1": "hard", "h2": "hard", "h3": "hard",
           "u1": "unknown"}


def test_hard_share_grows_per_round_and_is_clamped():
    assert [hard_share(r, 0.2, 0.25) for r in range(5)] == [0.2, 0.2, 0.45, 0.7, 0.95]
    assert hard_share(9, 0.2, 0.25) == 1.0 and hard_share(3, 0.1, -0.5) == 0.0
    with pytest.raises(ValueError, match="round"):
        hard_share(-1, 0.2, 0.1)


def test_curriculum_orders_easy_to_hard_with_the_rounds_hard_share():
    pool = _pool(BUCKETS)
    for round, expected_hard in ((1, 2), (2, 4), (3, 6), (5, 10)):
        items = curriculum(pool, BUCKETS, round, size=10, hard_share_start=0.2, hard_share_step=0.2, seed=3)
        assert len(items) == 10
        assert sum(i.bucket == "hard" for i in items) == expected_hard
        ranks = ["easy", "medium", "unknown", "hard"]
        assert [ranks.index(i.bucket) for i in items] == sorted(ranks.index(i.bucket) for i in items)
        assert all(BUCKETS[i.problem.id] == i.bucket for i in items)


def test_curriculum_uses_every_problem_of_a_group_before_repeating_one():
    items = curriculum(_pool(BUCKETS), BUCKETS, 1, size=10, hard_share_start=0.5, hard_share_step=0.0, seed=0)
    hard = Counter(i.problem.id for i in items if i.bucket == "hard")
    other = Counter(i.problem.id for i in items if i.bucket != "hard")
    assert sorted(hard.values()) == [1, 2, 2] and set(other) == {"e1", "e2", "m1", "m2", "u1"}


def test_curriculum_is_deterministic_with_a_seed_and_varies_with_it():
    pool = _pool(BUCKETS)
    draw = lambda seed: [i.problem.id for i in curriculum(pool, BUCKETS, 2, size=6, hard_share_start=0.3,  # noqa: E731
                                                          hard_share_step=0.1, seed=seed)]
    assert draw(7) == draw(7)
    assert len({tuple(draw(s)) for s in range(8)}) > 1


def test_curriculum_gives_an_empty_groups_slots_to_the_other():
    easy = {"a": "easy", "b": "medium"}
    items = curriculum(_pool(easy), easy, 4, size=5, hard_share_start=0.9, hard_share_step=0.1)
    assert len(items) == 5 and all(i.bucket != "hard" for i in items)
    hard = {"a": "hard"}
    assert [i.problem.id for i in curriculum(_pool(hard), hard, 1, size=3, hard_share_start=0.0,
                                             hard_share_step=0.0)] == ["a", "a", "a"]
    # Never searched: unknown, between medium and hard.
    assert {i.bucket for i in curriculum(_pool(easy), {}, 1, size=2, hard_share_start=0, hard_share_step=0)} == {
        "unknown"}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(size=0), "size"), (dict(hard_share_start=float("nan")), "hard_share_start")])
def test_curriculum_rejects_bad_arguments(kwargs, message):
    args = {**dict(size=3, hard_share_start=0.2, hard_share_step=0.1), **kwargs}
    with pytest.raises(ValueError, match=message):
        curriculum(_pool(BUCKETS), BUCKETS, 1, **args)


def test_latest_buckets_keeps_each_problems_newest_tree():
    rows = [(1, "a", "hard"), (2, "a", "medium"), (1, "b", "easy"), (3, "c", "hard")]
    assert latest_buckets(rows) == {"a": "medium", "b": "easy", "c": "hard"}
    with pytest.raises(ValueError, match="difficulty"):
        latest_buckets([(1, "a", "trivial")])


def test_a_completion_is_cut_where_the_search_would_stop_the_model():
    steps = split_completion(GOOD)
    assert [s.kind for s in steps] == [StepKind.CODE, StepKind.CODE, StepKind.CODE, StepKind.ANSWER]
    assert steps[2].text == "# Print the answer.\nprint(left)" and steps[2].wants_output
    assert steps[3].answer == "7"
    # The model's own output lines never reach a step.
    assert not any("Output" in s.text for s in steps)
    truncated = split_completion("# Add.\nx = 1 +", ended=False)
    assert [s.kind for s in truncated] == [StepKind.INVALID] and truncated[0].reason == "truncated"


@pytest.mark.parametrize(("completion", "reward"), [
    (GOOD, 1.0),
    (GOOD + "<|im_end|>ignored", 1.0),
    (GOOD.replace("\\boxed{7}", "7"), 0.0),                 # an answer, but not boxed
    (GOOD.replace("left = pens - 5", "left is pens minus 5"), 0.0),  # prose where code belongs
    ("The answer is \\boxed{7}.", 0.0),                      # no code step
    ("# Print.\nprint(7)", 0.0),                             # no answer step
    ("", 0.0),
])
def test_format_reward(completion, reward):
    assert format_reward(completion) == reward


def _check(completion, gold, **kwargs):
    return asyncio.run(check_answer(completion, gold, InlineExecutor(), **kwargs))


def test_answer_check_replays_the_code_and_grades_the_boxed_answer():
    check = _check(GOOD, 7)
    assert check.correct and check.reward == 1.0 and check.answer == "7" and check.reason == ""
    # The sandbox's output, not the model's, is appended to the step that printed.
    assert check.steps[2] == "# Print the answer.\nprint(left)\nOutput: 7"
    wrong = _check(GOOD.replace("\\boxed{7}", "\\boxed{8}"), "7")
    assert not wrong.correct and wrong.reason == "wrong_answer" and wrong.reward == 0.0


def test_answer_check_fails_a_program_that_errors_or_a_step_that_is_invalid():
    assert _check(GOOD.replace("pens - 5", "pns - 5"), 7).reason == "error"
    assert _check(GOOD.replace("left = pens - 5", "left is pens minus 5"), 7).reason == "invalid:syntax"
    assert _check("", 7).reason == "invalid:empty"


def test_answer_check_reads_the_last_printed_line_when_the_model_ended_after_code():
    assert _check("# Add.\nx = 3 + 4\n# Print.\nprint(x)", 7, ended=True).correct
    assert _check("# Add.\nx = 3 + 4", 7, ended=True).reason == "no_answer"


def test_filter_by_ppm_drops_low_mean_scores_and_keeps_unscored():
    kept, dropped = filter_by_ppm(["a", "b", "c", "d"], [0.5, -0.2, None, 0.1], 0.1)
    assert kept == ["a", "c", "d"] and dropped == 1
    with pytest.raises(ValueError, match="scores"):
        filter_by_ppm(["a"], [], 0.0)
    with pytest.raises(ValueError, match="min_mean"):
        filter_by_ppm(["a"], [0.0], 2.0)


def test_code_written_above_an_answer_runs_before_the_answer_is_graded():
    steps = split_completion("# Print.\nprint(y)\nThe answer is \\boxed{7}.")
    assert [s.kind for s in steps] == [StepKind.CODE, StepKind.ANSWER]
    assert _check("# Print.\nprint(y)\nThe answer is \\boxed{7}.", 7).reason == "error"
