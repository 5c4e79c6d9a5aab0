"""From finished trees to training data: trajectories, difficulty, SFT picks, PPM pairs and the
ORM/PQM baselines' examples.

All functions are pure and read only a `Tree`:

* `trajectories(tree)`: every root-to-terminal path, each step with its Q value.
* `difficulty(tree)`: easy (every answered trajectory correct), medium (mixed), hard (none).
* `select_sft(tree)`: the top-2 correct trajectories by mean step Q (then min Q).
* `build_ppm_pairs(tree)`: per tree position, up to 2 best vs 2 worst sibling steps that
  share the same preceding steps (chosen: a correct answer below it, by Q descending;
  rejected: a wrong answer below it, by Q ascending; if one side has a single step, up to
  4 are taken from the other); a pair is kept only if Q(pos) > Q(neg). For the final answer
  step the shared-prefix rule is relaxed: the 2 best correct vs the 2 worst wrong full
  trajectories by mean Q. Trees whose trajectories are all correct or all wrong give none.

Code-error and max-depth leaves count as neither correct nor wrong when labelling steps
(as in the reference), but they still lower Q through back-propagation.

Marco-o1 trees (`mcts.search`) are read as whole steps, so no example holds half a step or a
reflection prompt:

* A `partial` node (a mini-step that ends inside a step) is never a step: the node that
  completes the step holds all of it, its partial chunks included. A path's steps are its
  non-partial nodes, and the steps that follow a step (the siblings PPM pairs compare) are
  the complete nodes reached from it through partial nodes only. A path that ends inside a
  step (a failure on a partial node) keeps the steps before it.
* A `reflection` node and everything below it are left out of everything here
  (trajectories, difficulty, labels, SFT, pairs, ORM/PQM examples). A reflected path holds
  the first answer and the reflection prompt as one node, and the steps after it build on
  both (and on the first answer's code), so it can neither be trained on as steps nor be cut
  back to a plain solution. The first answer stays a trajectory of its own. Q values are the
  search's: those of the steps above a reflection still include what was backed up from
  below it.

Nothing here filters by margin or edit distance across problems or writes files: dataset
export belongs to the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .types import Node, NodeKind, TerminalReason, Tree

__all__ = [
    "PreferencePair",
    "StepValue",
    "Trajectory",
    "build_ppm_pairs",
    "difficulty",
    "outcome_trajectories",
    "select_sft",
    "step_values",
    "trajectories",
]

Difficulty = Literal["easy", "medium", "hard", "unknown"]


@dataclass(frozen=True)
class Trajectory:
    # The nodes of `steps` (partial nodes left out, see the module docstring).
    node_ids: tuple[int, ...]
    steps: tuple[str, ...]
    q_values: tuple[float, ...]
    terminal: TerminalReason
    answer: str | None
    correct: bool | None

    @property
    def mean_q(self) -> float:
        return sum(self.q_values) / len(self.q_values) if self.q_values else 0.0

    @property
    def min_q(self) -> float:
        return min(self.q_values) if self.q_values else 0.0

    @property
    def answered(self) -> bool:
        return self.terminal is TerminalReason.ANSWER


@dataclass(frozen=True)
class PreferencePair:
    question: str
    # Steps shared by both sides (rendered texts); empty for final-answer pairs.
    prefix: tuple[str, ...]
    # The preferred / dispreferred continuation: one step, or a whole solution when
    # `whole_solution` is set (the relaxed final-step pairs).
    pos: tuple[str, ...]
    neg: tuple[str, ...]
    q_pos: float
    q_neg: float
    whole_solution: bool = False


@dataclass(frozen=True)
class StepValue:
    """One step with everything before it: what a PQM regresses onto the step's Q value."""

    # The path from the root's first step up to and including this step (rendered texts).
    steps: tuple[str, ...]
    q: float
    node_id: int


def trajectories(tree: Tree) -> list[Trajectory]:
    reflected = _reflected(tree)
    out = []
    for leaf in tree.terminals():
        path = tree.path(leaf)
        # No path: the root itself ended (no candidate ever ran).
        if not path or leaf.id in reflected:
            continue
        steps = _whole_steps(path)
        out.append(Trajectory(
            node_ids=tuple(n.id for n in steps),
            steps=tuple(n.text for n in steps),
            q_values=tuple(n.q for n in steps),
            terminal=leaf.terminal,
            answer=leaf.answer,
            correct=leaf.correct,
        ))
    return out


def difficulty(tree: Tree) -> Difficulty:
    answered = [t for t in trajectories(tree) if t.correct is not None]
    if tree.problem.answer is None or not answered:
        return "unknown" if tree.problem.answer is None else "hard"
    n_correct = sum(t.correct for t in answered)
    if n_correct == 0:
        return "hard"
    if n_correct == len(answered) and all(t.answered for t in trajectories(tree)):
        return "easy"
    return "medium"


def select_sft(tree: Tree, k: int = 2) -> list[Trajectory]:
    correct = [t for t in trajectories(tree) if t.correct]
    correct.sort(key=lambda t: (t.mean_q, t.min_q), reverse=True)
    return correct[:k]


def build_ppm_pairs(tree: Tree, per_side: int = 2) -> list[PreferencePair]:
    trajs = trajectories(tree)
    if not _both_outcomes(trajs):
        return []
    reflected = _reflected(tree)
    below = _leaf_labels(tree, reflected)
    pairs: list[PreferencePair] = []
    frontier = [tree.root]
    while frontier:
        node = frontier.pop(0)
        kids = _next_steps(tree, node, reflected)
        # Answer steps are paired as whole solutions below.
        steps = [k for k in kids if k.terminal is not TerminalReason.ANSWER]
        chosen = sorted((k for k in steps if below[k.id][0]), key=lambda k: -k.q)
        rejected = sorted((k for k in steps if below[k.id][1]), key=lambda k: k.q)
        if chosen and rejected:
            n_pos = per_side * 2 if len(rejected) == 1 else per_side
            n_neg = per_side * 2 if len(chosen) == 1 else per_side
            prefix = tuple(n.text for n in _whole_steps(tree.path(node)))
            for pos in chosen[:n_pos]:
                for neg in rejected[:n_neg]:
                    if pos.id != neg.id and pos.q > neg.q:
                        pairs.append(PreferencePair(tree.problem.question, prefix, (pos.text,), (neg.text,),
                                                    pos.q, neg.q))
        frontier.extend(k for k in kids if below[k.id][0] and below[k.id][1])
    pairs.extend(_final_step_pairs(tree.problem.question, trajs, per_side))
    return pairs


def outcome_trajectories(tree: Tree) -> list[Trajectory]:
    """The answered trajectories with a known outcome, of a tree with both outcomes (else none)."""
    trajs = trajectories(tree)
    if not _both_outcomes(trajs):
        return []
    return [t for t in trajs if t.answered and t.correct is not None]


def step_values(tree: Tree) -> list[StepValue]:
    """Every node with a graded answer below it (answer steps included), once, breadth first.

    Nodes below which only code errors or the depth limit ended are left out, as they are
    from the PPM pairs: their Q says nothing about a right or wrong answer.
    """
    if not _both_outcomes(trajectories(tree)):
        return []
    reflected = _reflected(tree)
    below = _leaf_labels(tree, reflected)
    out: list[StepValue] = []
    frontier = _next_steps(tree, tree.root, reflected)
    while frontier:
        node = frontier.pop(0)
        if not any(below[node.id]):
            continue
        out.append(StepValue(tuple(n.text for n in _whole_steps(tree.path(node))), node.q, node.id))
        frontier.extend(_next_steps(tree, node, reflected))
    return out


def _both_outcomes(trajs: list[Trajectory]) -> bool:
    return any(t.correct for t in trajs) and any(t.correct is False for t in trajs)


def _final_step_pairs(question: str, trajs: list[Trajectory], per_side: int) -> list[PreferencePair]:
    good = sorted((t for t in trajs if t.correct), key=lambda t: -t.mean_q)[:per_side]
    bad = sorted((t for t in trajs if t.correct is False), key=lambda t: t.mean_q)[:per_side]
    return [
        PreferencePair(question, (), g.steps, b.steps, g.mean_q, b.mean_q, whole_solution=True)
        for g in good for b in bad if g.mean_q > b.mean_q
    ]


def _whole_steps(path: list[Node]) -> list[Node]:
    """The path's steps: a partial node's chunk is repeated in the node that completes it."""
    return [n for n in path if n.kind is not NodeKind.PARTIAL]


def _next_steps(tree: Tree, node: Node, reflected: set[int]) -> list[Node]:
    """The complete steps that follow `node`: its children, looking through partial nodes."""
    out = []
    for child in (tree.nodes[c] for c in node.children if c not in reflected):
        if child.kind is NodeKind.PARTIAL:
            out.extend(_next_steps(tree, child, reflected))
        else:
            out.append(child)
    return out


def _reflected(tree: Tree) -> set[int]:
    """The ids of every reflection node and of every node below one."""
    out: set[int] = set()
    stack = [n.id for n in tree.nodes if n.kind is NodeKind.REFLECTION]
    while stack:
        node_id = stack.pop()
        if node_id not in out:
            out.add(node_id)
            stack.extend(tree.nodes[node_id].children)
    return out


def _leaf_labels(tree: Tree, reflected: set[int]) -> dict[int, tuple[bool, bool]]:
    """For every node: (a correct answer below it, a wrong answer below it); answers below a
    reflection label nothing."""
    labels = {n.id: (False, False) for n in tree.nodes}
    for leaf in tree.terminals():
        if leaf.terminal is not TerminalReason.ANSWER or leaf.correct is None or leaf.id in reflected:
            continue
        walk: Node | None = leaf
        while walk is not None:
            good, bad = labels[walk.id]
            labels[walk.id] = (good or leaf.correct, bad or not leaf.correct)
            walk = tree.nodes[walk.parent] if walk.parent is not None else None
    return labels
