"""Which examples the trainer gets: SFT picks, PPM pairs and ORM/PQM examples, deduplicated and clean.

Pure functions over finished trees and verified trajectories:

* `sft_examples(trees, round)`: per tree the top-2 correct trajectories by mean Q
  (`data.select_sft`), as `SFTExample`s.
* `union_sft(*example_lists)`: earlier rounds' and round 0's examples plus this round's,
  deduplicated on normalised text (question + solution); the first occurrence wins, so an
  example keeps the round that first found it.
* `ppm_examples(trees)`: `data.build_ppm_pairs` of every tree, with the problem id kept so
  that the held-out split can be made by problem (`split_by_problem`), never by pair: two
  pairs of one problem share their prefix, and a split by pair would leak it.
* `orm_examples(trees)` / `pqm_examples(trees)`: the reward-model ablation's baselines from
  the same trees (`data.outcome_trajectories`, `data.step_values`): one example per graded
  full solution (label: its answer is correct) and one per step (target: its Q value),
  with the problem id kept for the same split by problem.
* `decontaminate(problems, eval_questions)`: drops pool problems whose normalised question
  appears in an evaluation set, and says how many.

Every example is made of whole steps: `data` folds mini-step chunks into the step they
complete and leaves reflected paths out (its docstring has the rule), and nothing here reads
tree nodes itself.

The strings the models train on are not rendered here: the trainer renders SFT examples
with the policy's prompt format and PPM pairs, ORM solutions and PQM steps with the very
function the reward model scores with, so nothing here can drift from serving. Not here
either: files, HF datasets, hashes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

from .data import build_ppm_pairs, outcome_trajectories, select_sft, step_values
from .types import Problem, Tree

__all__ = [
    "ORMExample",
    "PPMExample",
    "PQMExample",
    "SFTExample",
    "decontaminate",
    "normalise_question",
    "orm_examples",
    "ppm_examples",
    "pqm_examples",
    "sft_examples",
    "split_by_problem",
    "union_sft",
]


@dataclass(frozen=True)
class SFTExample:
    problem_id: str
    question: str
    # Rendered step texts, exactly as the search stored them (outputs included).
    steps: tuple[str, ...]
    # Where it came from: "bootstrap" (round 0) or "search".
    source: str
    round: int
    mean_q: float = 0.0

    @property
    def key(self) -> str:
        """The deduplication key: normalised question and solution."""
        return _normalise_text(self.question) + "\x1f" + _normalise_text("\n".join(self.steps))


@dataclass(frozen=True)
class PPMExample:
    problem_id: str
    question: str
    # Steps shared by both sides; the preferred and rejected continuations.
    prefix: tuple[str, ...]
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    q_chosen: float
    q_rejected: float
    whole_solution: bool
    round: int


@dataclass(frozen=True)
class ORMExample:
    problem_id: str
    question: str
    # A whole solution, answer step included.
    steps: tuple[str, ...]
    correct: bool
    round: int


@dataclass(frozen=True)
class PQMExample:
    problem_id: str
    question: str
    # The steps up to and including the one whose Q value is the target.
    steps: tuple[str, ...]
    q: float
    round: int


def sft_examples(trees: Iterable[Tree], round: int, per_problem: int = 2) -> list[SFTExample]:
    out = []
    for tree in trees:
        for traj in select_sft(tree, k=per_problem):
            out.append(SFTExample(_problem_id(tree.problem), tree.problem.question, traj.steps,
                                  "search", round, traj.mean_q))
    return out


def union_sft(*example_lists: Sequence[SFTExample]) -> list[SFTExample]:
    seen: set[str] = set()
    out = []
    for examples in example_lists:
        for example in examples:
            if example.key not in seen:
                seen.add(example.key)
                out.append(example)
    return out


def ppm_examples(trees: Iterable[Tree], round: int, per_side: int = 2) -> list[PPMExample]:
    out = []
    for tree in trees:
        for pair in build_ppm_pairs(tree, per_side=per_side):
            out.append(PPMExample(_problem_id(tree.problem), pair.question, pair.prefix, pair.pos, pair.neg,
                                  pair.q_pos, pair.q_neg, pair.whole_solution, round))
    return out


def orm_examples(trees: Iterable[Tree], round: int) -> list[ORMExample]:
    return [ORMExample(_problem_id(tree.problem), tree.problem.question, traj.steps, bool(traj.correct), round)
            for tree in trees for traj in outcome_trajectories(tree)]


def pqm_examples(trees: Iterable[Tree], round: int) -> list[PQMExample]:
    return [PQMExample(_problem_id(tree.problem), tree.problem.question, step.steps, step.q, round)
            for tree in trees for step in step_values(tree)]


def split_by_problem(problem_ids: Iterable[str], heldout_fraction: float, seed: int = 0) -> set[str]:
    """The problem ids that go to the held-out split: a stable hash, the same on every run."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    heldout = set()
    for pid in set(problem_ids):
        digest = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction:
            heldout.add(pid)
    return heldout


def normalise_question(text: str) -> str:
    """Lower case, Unicode NFKC, every run of non-alphanumerics as one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[\W_]+", " ", text).strip()


def decontaminate(problems: Sequence[Problem], eval_questions: Iterable[str]) -> tuple[list[Problem], int]:
    """Problems whose normalised question is in no evaluation set, and how many were dropped."""
    banned = {normalise_question(q) for q in eval_questions}
    kept = [p for p in problems if normalise_question(p.question) not in banned]
    return kept, len(problems) - len(kept)


def _normalise_text(text: str) -> str:
    return " ".join(text.split())


def _problem_id(problem: Problem) -> str:
    if problem.id is not None:
        return str(problem.id)
    return "sha256:" + hashlib.sha256(problem.question.encode()).hexdigest()[:32]
