"""The round table: rows from recorded steps, intervals, paired tests against the base, the Markdown."""

from datetime import datetime, timezone

from rstar_cli.rounds import render_markdown, rounds_table
from rstar_store.repository import EvolveStep

NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)


def _step(round, name, result, state="done"):
    return EvolveStep(id=0, run="r", round=round, step=name, state=state, result=result, error=None, attempts=1,
                      started_at=NOW, finished_at=NOW)


def _evaluation(gsm8k, practice, search=(), wall_s=10.0):
    return {"greedy_gsm8k": list(gsm8k), "greedy_practice": {str(lv): list(v) for lv, v in practice.items()},
            "search_gsm8k": list(search), "wall_s": wall_s, "tokens": 100}


BASE = _evaluation([False] * 20, {1: [False] * 10, 2: [False] * 10}, [False] * 4)
ROUND1 = _evaluation([True] * 8 + [False] * 12, {1: [True] * 10, 2: [False] * 10}, [True] * 4, wall_s=20.0)


def test_rows_compare_every_round_with_the_base_on_the_same_items():
    steps = [
        _step(1, "evaluate", ROUND1),
        _step(0, "evaluate_base", BASE),
        _step(1, "search", {"solved_by_bucket": {"easy": 2, "hard": 1}, "tokens": 50, "wall_s": 30.0}),
        _step(1, "data", {"sft": {"examples": 12}, "ppm": {"pairs": 6}, "wall_s": 1.0}),
        _step(1, "train_sft", {"version": "r-r1-policy-aa", "metrics": {"train_s": 5.0}}),
        _step(1, "train_ppm", {"version": "r-r1-ppm-bb", "metrics": {"train_s": 2.0, "heldout_pair_accuracy": 0.75}}),
        _step(1, "decide", {"promoted": True}),
        _step(2, "search", {"wall_s": 3.0}, state="running"),
    ]
    base, round1 = rounds_table(steps)
    assert base["round"] == "base" and round1["round"] == 1
    assert base["heldout_accuracy"]["p_vs_base"] == 1.0
    held = round1["heldout_accuracy"]
    assert (held["correct"], held["n"], held["rate"]) == (8, 20, 0.4)
    assert held["low"] < 0.4 < held["high"] and held["p_vs_base"] < 0.01  # 8 discordant pairs, all one way
    assert round1["practice_accuracy_by_level"]["1"]["rate"] == 1.0
    assert round1["practice_accuracy_by_level"]["2"]["p_vs_base"] == 1.0
    assert (round1["policy"], round1["ppm"], round1["promoted"]) == ("r-r1-policy-aa", "r-r1-ppm-bb", True)
    assert (round1["train_s"], round1["search_s"], round1["eval_s"], round1["tokens"]) == (7.0, 30.0, 20.0, 150)
    assert round1["data_s"] == 1.0
    assert (round1["sft_examples"], round1["ppm_pairs"], round1["ppm_pair_accuracy"]) == (12, 6, 0.75)

    text = render_markdown([base, round1])
    header, _, base_line, round_line = text.splitlines()
    assert "GSM8K-20 greedy" in header and "GSM8K-4 search" in header and "practice L2" in header
    assert round_line.startswith("| 1 | 40.0 [") and "| 2/0/1 |" in round_line
    assert "| – |" in base_line  # the base model has no search buckets


def test_a_run_without_a_base_evaluation_has_no_rows():
    assert rounds_table([_step(0, "evaluate_base", BASE, state="running")]) == []


def test_baselines_and_step_dpo_add_their_columns_only_when_a_round_has_them():
    steps = [
        _step(0, "evaluate_base", BASE),
        _step(1, "evaluate", ROUND1),
        _step(1, "train_sft", {"version": "r-r1-policy-aa", "metrics": {"train_s": 5.0}}),
        _step(1, "train_dpo", {"version": "r-r1-policy-dpo", "metrics": {"train_s": 4.0, "pairs": 9,
                                                                         "last_reward_accuracy": 0.5}}),
        _step(1, "train_orm", {"version": "r-r1-orm-cc", "metrics": {"train_s": 1.0, "heldout_accuracy": 0.6}}),
        _step(1, "train_pqm", {"version": "r-r1-pqm-dd", "metrics": {"train_s": 1.0, "heldout_mse": 0.31,
                                                                     "heldout_pair_accuracy": 0.55}}),
    ]
    base, round1 = rounds_table(steps)
    assert round1["policy"] == "r-r1-policy-dpo" and round1["train_s"] == 11.0  # the DPO policy was evaluated
    assert (round1["orm_accuracy"], round1["pqm_mse"], round1["pqm_pair_accuracy"]) == (0.6, 0.31, 0.55)
    header, _, _, line = render_markdown([base, round1]).splitlines()
    assert "| DPO pairs | DPO acc. | ORM acc. | PQM MSE | PQM pair acc. |" in header
    assert "| 9 | 0.5 | 0.6 | 0.31 | 0.55 |" in line
    assert "ORM acc." not in render_markdown(rounds_table(steps[:3]))


def test_a_run_without_the_fixed_budget_search_has_no_search_column():
    base = _evaluation([False] * 4, {1: [False] * 2})
    rows = rounds_table([_step(0, "evaluate_base", base), _step(1, "evaluate", base)])
    header = render_markdown(rows).splitlines()[0]
    assert "GSM8K-0" not in header and header.startswith("| round | GSM8K-4 greedy | practice L1 |")
