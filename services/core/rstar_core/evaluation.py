"""Test-time methods of `rstar eval`: their search settings and how each picks its answer.

Seven methods, each reporting the generated tokens it spent per item so that any two can be
compared at equal compute:

* ``greedy``: pass@1, one step per expansion at temperature 0 (an MCTS with width 1 and one
  rollout, as the evolve driver's held-out evaluation does).
* ``maj``: majority vote over N sampled solutions.
* ``bon-ppm``: the sampled solution whose answer step the PPM scores highest, of N.
* ``bon-orm``, ``bon-pqm``: the same with the ablation's baselines as the scorer: an outcome
  reward model (one score per full solution) or a pointwise Q-value model.
* ``mcts``: MCTS with the PPM (N rollouts); the answer of the best PPM-scored trajectory.
* ``mcts-vote``: the same tree; a PPM-weighted vote over all its answers.

**Scorers.** The reward model a method scores with is its *scorer*: ``ppm``, ``orm`` or
``pqm`` (`SCORERS`). A ``bon-*`` method names its own; the tree methods take any (default
``ppm``), so MCTS can run with each reward model. The search is blind to which one it is:
all three give values in [-1, 1] through the same port. `method_label` names a method with
a non-default scorer for the reports (``mcts-orm``, ``mcts-vote-pqm``), so its rows never mix
with the PPM's. Below, "PPM" stands for whichever scorer is in use.
The tree methods also take ``confidence`` (`CONFIDENCE`), which is no model: Marco-o1's token
confidence of the policy itself (values in [0, 1]), chosen by a recipe whose
``terminal_reward`` is ``confidence`` (``--config marco``) or by name; rows ``mcts-confidence``.

**A sample** (``maj``, ``bon-*``) is one complete step-by-step solution generated the way
the search generates a path: one candidate per step at the config's temperature, code
steps run in the sandbox, failing candidates retried up to ``errors_threshold``. We draw it
as its own width-1, one-rollout search with its own seed offset, rather than as N rollouts
of one width-1 tree: in a width-1 tree every node has a single child, so a second rollout
would walk the first one's path again instead of sampling a new solution. Independent
searches also make the samples nested: the first k of N samples are exactly what a run
with N = k draws, so one run with the largest N reports every smaller N of `--n` at the
tokens those k samples cost.

Tokens are the policy's generated tokens: every candidate sampled, including the ones that
were dropped (their compute was spent too). PPM forward passes are not generated tokens
and are not counted.

Answers are compared through the project's grader (`grading.answers_match`), so ``12``,
``12.0`` and ``\\frac{24}{2}`` are one vote. A PPM-weighted vote weighs each answer by
``(1 + v) / 2`` for its PPM value v in [-1, 1], so every answer adds a non-negative weight
and a frequent answer can never lose weight by being found again.

Pure: no engine, no files. Running the searches, grading against the gold answer and the
reports are `rstar_cli.eval_cmd`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from .config import SearchConfig
from .grading import answers_match
from .types import Node, TerminalReason, Tree

__all__ = [
    "BON_METHODS",
    "CONFIDENCE",
    "METHODS",
    "PPM_METHODS",
    "SAMPLE_METHODS",
    "SCORERS",
    "TREE_METHODS",
    "Pick",
    "Sample",
    "best_of_n",
    "best_trajectory",
    "group_answers",
    "majority_vote",
    "method_config",
    "method_label",
    "pick_from_samples",
    "pick_from_tree",
    "ppm_weighted_vote",
    "sample_from_tree",
    "scorer_of",
    "tree_answers",
    "weighted_vote",
]

METHODS = ("greedy", "maj", "bon-ppm", "bon-pqm", "bon-orm", "mcts", "mcts-vote")
# The reward models a method can score with; the first is the default of the tree methods.
SCORERS = ("ppm", "orm", "pqm")
# Best-of-N methods and the scorer each picks by.
BON_METHODS = {"bon-ppm": "ppm", "bon-pqm": "pqm", "bon-orm": "orm"}
# Methods whose N is the number of independent samples (drawn once at the largest N).
SAMPLE_METHODS = ("maj", *BON_METHODS)
# Methods whose N is the number of rollouts of one tree (one search per N).
TREE_METHODS = ("mcts", "mcts-vote")
# Methods that need a reward model (a PPM, or the ORM/PQM a bon-* method names).
PPM_METHODS = (*BON_METHODS, *TREE_METHODS)
# The tree methods' scorer that is no model: the policy's token confidence (Marco-o1).
CONFIDENCE = "confidence"
# Top-k logprobs a confidence search asks for when its recipe asks for none (the paper's 5).
CONFIDENCE_TOP_K = 5

# Two answers are the same vote when this says so: (answer, representative) -> bool.
Same = Callable[[str, str], bool]


def _same_answer(answer: str, representative: str) -> bool:
    return answers_match(answer, representative)


@dataclass(frozen=True)
class Sample:
    """One complete sampled solution: its answer (None if it found none), its PPM score."""

    answer: str | None
    # The PPM's value of the whole solution (its answer step); None when no PPM scored it.
    score: float | None = None
    tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Pick:
    """What a method settled on for one item at one N, and what it cost."""

    prediction: str | None
    # The PPM score behind the pick (bon-*, mcts: the picked answer's value; mcts-vote:
    # the winning answer's summed weight); None for greedy and maj.
    score: float | None
    tokens: int
    seconds: float
    # Every answer considered, with its PPM value where there is one: [(answer, value)].
    candidates: tuple[tuple[str | None, float | None], ...] = ()


# ---------------------------------------------------------------------- settings


def scorer_of(method: str, scorer: str | None = None, base: SearchConfig | None = None) -> str | None:
    """The reward model `method` scores with: None (greedy, maj), the bon-* method's own, or
    `scorer` for the tree methods (default: ``confidence`` when the recipe `base` gives
    answers confidence values, else ``ppm``). A `scorer` that contradicts the method or the
    recipe is a `ValueError`."""
    _check_method(method)
    if scorer is not None and scorer not in (*SCORERS, CONFIDENCE):
        raise ValueError(f"unknown scorer {scorer!r}: one of {', '.join((*SCORERS, CONFIDENCE))}")
    if method in TREE_METHODS:
        if base is not None and base.terminal_reward == CONFIDENCE and scorer not in (None, CONFIDENCE):
            raise ValueError(f"the recipe values answers by token confidence (terminal_reward: confidence): "
                             f"--scorer {scorer} does not apply (leave it out, or use another recipe)")
        if base is not None and base.terminal_reward == CONFIDENCE:
            return CONFIDENCE
        return scorer or SCORERS[0]
    own = BON_METHODS.get(method)
    if scorer is not None and scorer != own:
        needs = f"scores with the {own.upper()}" if own else "uses no reward model"
        raise ValueError(f"{method} {needs}: a {scorer} scorer does not apply (use --method bon-{scorer} or an "
                         "MCTS method)")
    return own


def method_label(method: str, scorer: str | None = None) -> str:
    """The method's name in rows and reports: a tree method with a scorer other than the PPM
    carries it (``mcts-orm``); every other method is its own name."""
    used = scorer_of(method, scorer)
    return f"{method}-{used}" if method in TREE_METHODS and used != SCORERS[0] else method


def method_config(method: str, base: SearchConfig, n: int, scorer: str | None = None) -> SearchConfig:
    """The search settings one search of `method` at `n` runs with, from the `base` budgets.

    greedy, maj and bon-* run width-1, one-rollout searches (greedy at temperature 0);
    the tree methods run `n` rollouts of `base`. Methods that pick by the PPM get PPM
    terminal values; tree methods whose scorer is ``confidence`` (`scorer_of`) get token
    confidence terminal values (with top-5 logprobs if `base` asks for none). Extra
    rollouts for unsolved problems never apply: the search does not see the gold answer.
    """
    _check_method(method)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"N must be a positive integer, got {n!r}")
    if method == "greedy" and n != 1:
        raise ValueError(f"greedy decodes once: N must be 1, got {n}")
    common = {"hard_extra_rollouts": 0}
    if method in TREE_METHODS:
        if scorer_of(method, scorer, base) == CONFIDENCE:
            return base.replace(rollouts=n, terminal_reward=CONFIDENCE, logprobs=base.logprobs or CONFIDENCE_TOP_K,
                                **common)
        return base.replace(rollouts=n, terminal_reward="ppm", **common)
    width1 = {"expansion_width": 1, "rollouts": 1, "parallel_rollouts": 1, "use_ppm_init": False, **common}
    if method == "greedy":
        return base.replace(temperature=0.0, terminal_reward="ground_truth", **width1)
    if base.temperature <= 0:
        raise ValueError(f"{method} needs samples that differ: temperature must be > 0, got {base.temperature}")
    return base.replace(terminal_reward="ppm" if method in BON_METHODS else "ground_truth", **width1)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: one of {', '.join(METHODS)}")


# ---------------------------------------------------------------------- votes


def group_answers(answers: Sequence[str | None], same: Same = _same_answer) -> list[list[int]]:
    """Indices of `answers` grouped into equivalent answers, groups in order of first appearance.

    Each answer joins the first group whose first answer it matches; None answers join no
    group.
    """
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            representative = answers[group[0]]
            if answer == representative or same(answer, representative):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float],
                  same: Same = _same_answer) -> tuple[str | None, float | None]:
    """The answer whose group has the largest total weight, and that weight.

    Ties go to the group found first; its first answer is returned. (None, None) when no
    answer is given.
    """
    if len(answers) != len(weights):
        raise ValueError(f"answers and weights need equal lengths, got {len(answers)} and {len(weights)}")
    best, best_weight = None, -math.inf
    for group in group_answers(answers, same):
        weight = sum(weights[i] for i in group)
        if weight > best_weight:
            best, best_weight = answers[group[0]], weight
    return (best, best_weight) if best is not None else (None, None)


def majority_vote(answers: Sequence[str | None], same: Same = _same_answer) -> str | None:
    """The most frequent answer (up to equivalence); ties go to the one found first."""
    return weighted_vote(answers, [1.0] * len(answers), same)[0]


def _ppm_weight(value: float | None) -> float:
    # A PPM value in [-1, 1] as a vote weight in [0, 1]; an unscored answer weighs nothing.
    return 0.0 if value is None else (1.0 + max(-1.0, min(1.0, value))) / 2.0


# ---------------------------------------------------------------------- samples


def sample_from_tree(tree: Tree, seconds: float = 0.0) -> Sample:
    """A width-1, one-rollout search as one sample: its answer, PPM score and tokens.

    The score is the answer terminal's value only when the tree's config gave terminals
    PPM (or confidence) values; a tree without an answer is a sample with answer None.
    """
    node = best_trajectory(tree)
    scored = _scored(tree)
    return Sample(answer=node.answer if node else None,
                  score=node.terminal_value if node is not None and scored else None,
                  tokens=tree.stats.generated_tokens, seconds=seconds)


def best_of_n(samples: Sequence[Sample]) -> Sample | None:
    """The answered sample with the highest score (unscored counts lowest); ties: the first."""
    best, best_score = None, -math.inf
    for sample in samples:
        if sample.answer is None:
            continue
        score = sample.score if sample.score is not None else -math.inf
        if best is None or score > best_score:
            best, best_score = sample, score
    return best


def pick_from_samples(method: str, samples: Sequence[Sample], n: int, same: Same = _same_answer) -> Pick:
    """maj or bon-* at `n` over the first `n` of `samples` (the nested samples of one draw)."""
    if method not in SAMPLE_METHODS:
        raise ValueError(f"pick_from_samples is for {', '.join(SAMPLE_METHODS)}, got {method!r}")
    if not 1 <= n <= len(samples):
        raise ValueError(f"N must be in [1, {len(samples)}] (the samples drawn), got {n}")
    used = samples[:n]
    tokens = sum(s.tokens for s in used)
    seconds = sum(s.seconds for s in used)
    candidates = tuple((s.answer, s.score) for s in used)
    if method == "maj":
        return Pick(majority_vote([s.answer for s in used], same), None, tokens, seconds, candidates)
    best = best_of_n(used)
    return Pick(best.answer if best else None, best.score if best else None, tokens, seconds, candidates)


# ---------------------------------------------------------------------- trees


def tree_answers(tree: Tree) -> list[Node]:
    """The tree's answer terminals (answers found), in the order they were created."""
    return [n for n in tree.nodes if n.terminal is TerminalReason.ANSWER and n.answer is not None]


def best_trajectory(tree: Tree) -> Node | None:
    """The answer terminal with the highest value (the PPM's, in evaluation); ties: the first.

    A terminal without a value counts as -1, the lowest a PPM gives.
    """
    best, best_value = None, -math.inf
    for node in tree_answers(tree):
        value = node.terminal_value if node.terminal_value is not None else -1.0
        if value > best_value:
            best, best_value = node, value
    return best


def ppm_weighted_vote(tree: Tree, same: Same = _same_answer) -> tuple[str | None, float | None]:
    """The answer with the largest summed weight ``(1 + v) / 2`` over the tree's answers."""
    nodes = tree_answers(tree)
    return weighted_vote([n.answer for n in nodes], [_ppm_weight(n.terminal_value) for n in nodes], same)


def pick_from_tree(method: str, tree: Tree, seconds: float = 0.0, same: Same = _same_answer) -> Pick:
    """greedy, mcts or mcts-vote from one finished search tree."""
    _check_method(method)
    if method in SAMPLE_METHODS:
        raise ValueError(f"{method} picks from samples, not from one tree")
    nodes = tree_answers(tree)
    scored = _scored(tree)
    candidates = tuple((n.answer, n.terminal_value if scored else None) for n in nodes)
    tokens = tree.stats.generated_tokens
    if method == "greedy":
        # Width 1: at most one answer; should a retried path leave several, the first counts.
        answer = nodes[0].answer if nodes else None
        return Pick(answer, None, tokens, seconds, candidates)
    if method == "mcts":
        node = best_trajectory(tree)
        return Pick(node.answer if node else None, node.terminal_value if node else None, tokens, seconds,
                    candidates)
    answer, weight = ppm_weighted_vote(tree, same)
    return Pick(answer, weight, tokens, seconds, candidates)


def _scored(tree: Tree) -> bool:
    # Terminal values are a model's judgement (PPM or token confidence), not the gold answer.
    return tree.config.get("terminal_reward") in ("ppm", CONFIDENCE)
