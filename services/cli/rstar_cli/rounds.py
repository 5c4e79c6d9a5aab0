"""The round table of an `rstar evolve` run: one row per round, read from its recorded steps.

Rows: `"base"` (the base model), then rounds 0, 1, 2, ... Every accuracy carries its 95 %
Wilson interval, and each round is compared with the base model on the same items by an
exact McNemar test (`p_vs_base`), so nobody reads noise as progress. `rounds_table`
returns JSON-ready rows, `render_markdown` the table a person reads. A process-supervision
run (`evolve_process`) adds per round its scored steps and its training's loss, weighted NLL
and KL; a run with `reward_baselines` the held-out accuracy of the ORM and the held-out MSE
and pair accuracy of the PQM; MCTS++ the step-DPO pairs and final preference accuracy
(optional columns, shown only when some row has them).

Not here: running rounds (`evolve`).
"""

from __future__ import annotations

from typing import Any, Sequence

from rstar_core.stats import Accuracy, paired_test

__all__ = ["render_markdown", "rounds_table"]


def rounds_table(steps: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows from a run's `EvolveStep`s (any order); rounds without an evaluation are left out."""
    by_round: dict[int, dict[str, Any]] = {}
    for step in steps:
        if step.state == "done":
            by_round.setdefault(step.round, {})[step.step] = step.result
    base = by_round.get(0, {}).get("evaluate_base")
    if base is None:
        return []
    rows = [_row("base", base, base, {})]
    for round in sorted(by_round):
        done = by_round[round]
        if "evaluate" in done:
            rows.append(_row(round, done["evaluate"], base, done))
    return rows


def _row(label: Any, evaluation: dict[str, Any], base: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    data = done.get("data") or {}
    search = done.get("search") or {}
    policy = done.get("train_sft") or done.get("train_process") or {}
    sft = policy.get("metrics", {})
    # MCTS++: the round's GRPO policy (from its SFT or step-DPO policy) is the candidate it
    # evaluated, else its step-DPO policy.
    grpo = (done.get("train_grpo") or {}).get("metrics", {})
    dpo = (done.get("train_dpo") or {}).get("metrics", {})
    policy = done.get("train_grpo") or done.get("train_dpo") or policy
    orm = (done.get("train_orm") or {}).get("metrics", {})
    pqm = (done.get("train_pqm") or {}).get("metrics", {})
    ppm = (done.get("train_ppm") or {}).get("metrics", {})
    process = (done.get("train_process") or {}).get("metrics", {})
    decide = done.get("decide") or {}
    return {
        "round": label,
        "policy": policy.get("version"),
        "ppm": (done.get("train_ppm") or {}).get("version"),
        "promoted": decide.get("promoted") if decide else None,
        "heldout_accuracy": _compare(evaluation["greedy_gsm8k"], base["greedy_gsm8k"]),
        "heldout_search_accuracy": _compare(evaluation.get("search_gsm8k") or [], base.get("search_gsm8k") or []),
        "practice_accuracy_by_level": {
            level: _compare(outcomes, base["greedy_practice"][level])
            for level, outcomes in sorted(evaluation["greedy_practice"].items())},
        "solved_by_bucket": search.get("solved_by_bucket"),
        "sft_examples": (data.get("sft") or {}).get("examples"),
        "ppm_pairs": (data.get("ppm") or {}).get("pairs"),
        "ppm_pair_accuracy": ppm.get("heldout_pair_accuracy"),
        "train_s": round(sum(m.get("train_s", 0.0) for m in (sft, ppm, grpo, dpo, orm, pqm)), 1),
        "search_s": round(search.get("wall_s", 0.0), 1),
        "data_s": round((data.get("wall_s") or 0.0) + ((done.get("bootstrap") or {}).get("wall_s") or 0.0), 1),
        "eval_s": round(evaluation.get("wall_s", 0.0), 1),
        "tokens": (search.get("tokens") or 0) + (evaluation.get("tokens") or 0),
        "process_steps": (data.get("process") or {}).get("examples"),
        "process_loss": process.get("train_loss"),
        "weighted_nll": process.get("weighted_nll"),
        "kl": process.get("kl"),
        "dpo_pairs": dpo.get("pairs"),
        "dpo_reward_accuracy": dpo.get("last_reward_accuracy"),
        "orm_accuracy": orm.get("heldout_accuracy"),
        "pqm_mse": pqm.get("heldout_mse"),
        "pqm_pair_accuracy": pqm.get("heldout_pair_accuracy"),
    }


def _compare(outcomes: Sequence[bool], base: Sequence[bool]) -> dict[str, Any] | None:
    if not outcomes:
        return None
    acc = Accuracy.from_outcomes(outcomes)
    out = {"rate": round(acc.rate, 4), "correct": acc.correct, "n": acc.n, "low": round(acc.low, 4),
           "high": round(acc.high, 4), "p_vs_base": None}
    if len(base) == len(outcomes):
        out["p_vs_base"] = round(paired_test(outcomes, base).p_value, 4)
    return out


def _cell(acc: dict[str, Any] | None, with_p: bool = True) -> str:
    if not acc:
        return "–"
    text = f"{100 * acc['rate']:.1f} [{100 * acc['low']:.0f}–{100 * acc['high']:.0f}]"
    if with_p and acc.get("p_vs_base") is not None:
        p = acc["p_vs_base"]
        text += " p<0.001" if p < 0.001 else f" p={p:.3g}"
    return text


def render_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The round table: accuracies in % with 95 % intervals and the p-value against the base model."""
    levels = sorted({lv for row in rows for lv in row["practice_accuracy_by_level"]})
    n_greedy = next((row["heldout_accuracy"]["n"] for row in rows if row["heldout_accuracy"]), 0)
    n_search = next((row["heldout_search_accuracy"]["n"] for row in rows if row["heldout_search_accuracy"]), 0)
    process = [key for key in _PROCESS_COLUMNS if any(row.get(key) is not None for row in rows)]
    searched = [f"GSM8K-{n_search} search"] if n_search else []  # a run without the fixed-budget search: no column
    head = (["round", f"GSM8K-{n_greedy} greedy", *searched] + [f"practice L{lv}" for lv in levels]
            + ["solved e/m/h", "SFT ex.", "PPM pairs", "PPM acc."] + [_PROCESS_COLUMNS[k] for k in process]
            + ["promoted", "search s", "data s", "train s", "eval s", "tokens"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        buckets = row["solved_by_bucket"] or {}
        bucket_text = "/".join(str(buckets.get(k, 0)) for k in ("easy", "medium", "hard")) if buckets else "–"
        cells = ([str(row["round"]), _cell(row["heldout_accuracy"])]
                 + ([_cell(row["heldout_search_accuracy"])] if searched else [])
                 + [_cell(row["practice_accuracy_by_level"].get(lv)) for lv in levels]
                 + [bucket_text, _dash(row["sft_examples"]), _dash(row["ppm_pairs"]), _dash(row["ppm_pair_accuracy"])]
                 + [_number(row.get(key)) for key in process] + [_dash(row["promoted"])]
                 + [f"{row[key]:.0f}" for key in ("search_s", "data_s", "train_s", "eval_s")] + [str(row["tokens"])])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _dash(value: Any) -> str:
    return "–" if value is None else str(value)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _dash(value)


# Optional columns (process supervision, MCTS++'s step-DPO, the reward-model baselines): row key -> header.
_PROCESS_COLUMNS = {"process_steps": "PS steps", "process_loss": "PS loss", "weighted_nll": "wNLL", "kl": "KL",
                    "dpo_pairs": "DPO pairs", "dpo_reward_accuracy": "DPO acc.", "orm_accuracy": "ORM acc.",
                    "pqm_mse": "PQM MSE", "pqm_pair_accuracy": "PQM pair acc."}
