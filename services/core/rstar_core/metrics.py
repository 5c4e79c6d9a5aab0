"""Summaries over finished trees: format adherence and a compact, printable tree outline."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from .types import Tree

__all__ = ["format_adherence", "tree_summary"]


def format_adherence(trees: Iterable[Tree]) -> dict[str, float | int]:
    """How well the policy follows the step format.

    * ``code_run_rate``: share of code candidates whose accumulated program ran;
    * ``valid_candidate_rate``: share of all sampled candidates that became tree nodes;
    * ``answer_leaf_rate``: share of terminal leaves that carry an answer (the rest ended
      in code errors, the depth limit or without an answer);
    * ``answered_tree_rate``: share of problems with at least one answer.
    """
    totals: Counter = Counter()
    for tree in trees:
        s = tree.stats
        totals["trees"] += 1
        totals["candidates"] += s.candidates
        totals["executions"] += s.executions
        totals["exec_failed"] += sum(s.dropped_exec.values())
        totals["invalid"] += sum(s.dropped_invalid.values())
        totals["duplicates"] += s.dropped_duplicate
        totals["nodes"] += len(tree.nodes) - 1
        leaves = tree.terminals()
        answered = [n for n in leaves if n.terminal.value == "answer"]
        totals["leaves"] += len(leaves)
        totals["answer_leaves"] += len(answered)
        totals["answered_trees"] += bool(answered)
        totals["tokens"] += s.generated_tokens
    out: dict[str, float | int] = dict(totals)
    out["code_run_rate"] = _rate(totals["executions"] - totals["exec_failed"], totals["executions"])
    out["valid_candidate_rate"] = _rate(totals["nodes"], totals["candidates"])
    out["answer_leaf_rate"] = _rate(totals["answer_leaves"], totals["leaves"])
    out["answered_tree_rate"] = _rate(totals["answered_trees"], totals["trees"])
    return out


def _rate(num: int, den: int) -> float:
    return round(num / den, 4) if den else 0.0


def tree_summary(tree: Tree, *, max_lines: int = 12) -> str:
    """A few lines: sizes, leaves by kind, and the best trajectory's steps with their Q."""
    leaves = Counter(n.terminal.value for n in tree.terminals())
    depth = max(n.depth for n in tree.nodes)
    s = tree.stats
    lines = [
        f"tree: {len(tree.nodes)} nodes, depth {depth}, {s.rollouts} rollouts, "
        f"{s.candidates} candidates ({s.dropped} dropped: exec {dict(s.dropped_exec)}, "
        f"invalid {dict(s.dropped_invalid)}, dup {s.dropped_duplicate}), "
        f"leaves {dict(leaves)}",
    ]
    answers = [n for n in tree.terminals() if n.answer is not None]
    if answers:
        best = max(answers, key=lambda n: (n.correct is True, n.q))
        for node in tree.path(best):
            first = node.text.strip().splitlines()
            shown = " | ".join(line.strip() for line in first[:3])
            lines.append(f"  [Q={node.q:+.2f} N={node.visits}] {shown[:110]}")
            if len(lines) >= max_lines:
                break
    return "\n".join(lines)
