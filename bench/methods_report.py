"""The methods ablation's report: docs/methods.md and docs/methods.json from its `rstar evolve` runs.

`bench/methods_cpu.sh` runs one evolve run per recipe of `deploy/configs/evolve/methods/`
(`methods-<recipe>`, in the store of `RSTAR_DATABASE_URL`); this script reads their steps and
writes one row per trained policy: the search tokens it cost on the pool, what the search
found, what the trainer got, and its greedy accuracy on the held-out GSM8K items with the
95 % interval, against the base model and against rStar-Math's round 1 on the very same items
(exact McNemar test, `rstar_core.stats.paired_test`). It runs nothing; a run that has not
finished a round yet is listed as such.

    .venv/bin/python bench/methods_report.py --methods rstar marco-step ... --md runs/methods/methods_table.md \
        --json docs/methods.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

from rstar_cli.main import _open_store
from rstar_cli.rounds import rounds_table
from rstar_core.stats import paired_test

REFERENCE = "rstar"  # the method every other row is compared with, round 1
LABELS = {
    "rstar": "rStar-Math (MCTS, terminal-guided, SFT + PPM)",
    "rstar-3x": "rStar-Math, 11 rollouts (the token spend of reflection)",
    "marco-step": "Marco-o1 search, confidence reward, step",
    "marco-step-reflect": "Marco-o1 search, confidence reward, step + reflection",
    "marco-ministep": "Marco-o1 search, confidence reward, 32-token mini-step",
    "marco-ministep-reflect": "Marco-o1 search, confidence reward, 32-token mini-step + reflection",
    "process-supervision": "MCTS process supervision (weighted NLL + KL)",
    "mctspp": "rStar-Math + GRPO with the curriculum (MCTS++)",
}


def _outcomes(steps: list[Any]) -> dict[Any, list[bool]]:
    """Held-out greedy outcomes per round ("base" for the base model) of one run."""
    out: dict[Any, list[bool]] = {}
    for step in steps:
        if step.state != "done":
            continue
        if step.step == "evaluate_base":
            out["base"] = step.result["greedy_gsm8k"]
        elif step.step == "evaluate":
            out[step.round] = step.result["greedy_gsm8k"]
    return out


def collect(methods: list[str]) -> dict[str, Any]:
    """Every method's rows, and the unfinished ones, from the store."""
    with _open_store() as store:
        runs = {m: list(store.list_evolve_steps(f"methods-{m}")) for m in methods}
    outcomes = {m: _outcomes(steps) for m, steps in runs.items()}
    reference = outcomes.get(REFERENCE, {}).get(1)
    rows, unfinished = [], []
    for method in methods:
        table = rounds_table(runs[method])
        trained = [row for row in table if row["round"] != "base"]
        evaluated = {row["round"] for row in trained}
        idle = sorted(s.round for s in runs[method] if s.step == "data" and s.state == "done" and s.round not in evaluated)
        if not trained:
            failed = [f"{s.round}:{s.step}: {s.error}" for s in runs[method] if s.state == "failed"]
            unfinished.append({"method": method, "failed": failed})
            continue
        for row in ([table[0]] if method == REFERENCE else []) + trained:
            mine = outcomes[method][row["round"]]
            vs_reference = None
            if reference is not None and len(reference) == len(mine) and not (method == REFERENCE and row["round"] == 1):
                test = paired_test(mine, reference)
                vs_reference = {"p": round(test.p_value, 4), "only_this": test.a_only, "only_reference": test.b_only}
            base = row["round"] == "base"
            rows.append({
                **_searched(method, row["round"], runs[method]),
                "method": "base" if base else method,
                "label": "base model (SmolLM2-135M-Instruct)" if base else LABELS.get(method, method),
                "policy": row["policy"],
                "heldout": row["heldout_accuracy"],
                "vs_rstar_round1": vs_reference,
                "trained_on": row["sft_examples"] if row["process_steps"] is None else row["process_steps"],
                "trained_on_kind": _trained_on_kind(runs[method], row),
                "search_s": row["search_s"], "train_s": row["train_s"], "eval_s": row["eval_s"],
            })
        for idle_round in idle:  # a round whose search gave nothing to train on: its policy stayed
            rows.append({**_searched(method, idle_round, runs[method]), "policy": None, "heldout": None,
                         "vs_rstar_round1": None, "trained_on": 0,
                         "trained_on_kind": "(nothing to train: the policy stayed)", "train_s": 0.0, "eval_s": 0.0})
    return {"rows": rows, "unfinished": unfinished}


def _trained_on_kind(steps: list[Any], row: dict[str, Any]) -> str:
    """What the round's count counts, and the GRPO stage's prompts where there was one."""
    if row["process_steps"] is not None:
        return "scored steps"
    kind = "SFT trajectory" if row["sft_examples"] == 1 else "SFT trajectories"
    for step in steps:
        if step.state == "done" and step.step == "train_grpo" and step.round == row["round"]:
            metrics = step.result.get("metrics", {})
            kind += f" + GRPO on {metrics.get('prompts')} prompts × {metrics.get('group_size')} samples"
    return kind


def _searched(method: str, round: Any, steps: list[Any]) -> dict[str, Any]:
    """A row's method, iteration and what the round's search (or process-supervision walk) did."""
    search = next((s.result for s in steps if s.state == "done" and s.step == "search" and s.round == round), {})
    return {"method": method, "label": LABELS.get(method, method), "iteration": round,
            "pool_problems": search.get("problems"), "pool_solved": search.get("any_correct"),
            "search_tokens": search.get("tokens"), "search_s": search.get("wall_s", 0.0)}


def render(report: dict[str, Any]) -> str:
    head = ["method", "iter.", "pool search tokens", "pool solved", "trained on", "held-out GSM8K greedy, % [95 % CI]",
            "p vs base", "vs rStar-Math r1 (+/−, p)", "search s", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        acc = row["heldout"] or {}
        cell = (f"{100 * acc['rate']:.1f} ({acc['correct']}/{acc['n']}) [{100 * acc['low']:.1f}–{100 * acc['high']:.1f}]"
                if acc else "–")
        p = acc.get("p_vs_base")
        ref = row["vs_rstar_round1"]
        lines.append("| " + " | ".join([
            row["label"], str(row["iteration"]),
            "–" if row["search_tokens"] is None else f"{row['search_tokens']:,}",
            "–" if row["pool_solved"] is None else f"{row['pool_solved']}/{row['pool_problems']}",
            "–" if row["trained_on"] is None else f"{row['trained_on']} {row['trained_on_kind']}",
            cell, "–" if p is None or row["iteration"] == "base" else f"{p:.3g}",
            "–" if ref is None else f"+{ref['only_this']}/−{ref['only_reference']}, p={ref['p']:.3g}",
            f"{row['search_s']:.0f}", f"{row['train_s']:.0f}",
        ]) + " |")
    for gone in report["unfinished"]:
        lines.append(f"\n**{gone['method']}**: no trained round in the store"
                     + (f" (failed: {'; '.join(gone['failed'])})" if gone["failed"] else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--md", type=Path, help="write the table (Markdown) here")
    parser.add_argument("--json", type=Path, help="write the rows (JSON) here")
    args = parser.parse_args(argv)
    report = collect(args.methods)
    report["generated"] = datetime.date.today().isoformat()
    report["machine"] = f"{platform.machine()}, {platform.processor() or 'cpu'}"
    report["command"] = "bench/methods_cpu.sh"
    table = render(report)
    sys.stdout.write(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.md:
        args.md.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
