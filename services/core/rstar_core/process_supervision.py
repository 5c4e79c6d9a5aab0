"""MCTS process supervision (Li et al., arXiv 2501.01478): step scores from a search per prefix.

The method's data: for each problem, run a search rooted at the partial solution so far, give
every candidate next step a *relative correctness* score, keep the scored steps as training
examples, append the best step and search again from there, until the step appended ends
the solution. The policy then trains on the score-weighted likelihood of the steps
(`rstar_trainer.process_trainer`).

* `relative_correctness(tree, parent, alpha)`: ``alpha * (Q(child) - Q(parent))`` for every
  child of the search's root that the search visited, where Q is the tree's mean backed-up
  value (terminal-guided: +1 correct answer, -1 wrong answer or failure). A step better than
  the prefix it continues scores above 0, a worse one below; steps scoring exactly 0 carry
  no signal and are skipped, as are unvisited children (no estimate). We use this
  difference form, as issue #16 states it; the paper's text beyond its abstract was not at
  hand to check the exact expression, so α (the recipe's `alpha`) is the one scale knob.
* `walk(search, problem, ...)`: the greedy driver. `search(problem, prefix, index)` returns a
  tree and the node the search started from; the best step is the visited child with the
  highest Q (ties: the earlier candidate). The walk ends when that step is terminal (an
  answer, or a failure such as the depth limit) or when the search found no usable step.
* `prefix_search(mcts)`: the real `search`: a fresh tree per prefix whose first nodes are
  copies of the prefix's steps (text, code and output, so the prompt and the sandbox state
  are those of the partial solution), then `MCTS.run_rollouts(..., start=<last prefix node>)`
  with the config's rollouts. Depth counts from the question, so `max_depth` bounds the
  whole solution and hence the walk.
* `walk_many(mcts, problems, ...)`: walks of many problems at once, yielded as they finish.

Only whole steps: mini-step granularity and reflection (Marco-o1) change what a node is,
and the caller refuses them for this method. Not here: the dataset files
(`rstar_trainer.datasets`), training, the round driver (`rstar evolve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Sequence

# The same problem ids as every other training set (a hash of the question where there is none).
from .curation import _problem_id as problem_key
from .mcts import MCTS, each_bounded
from .types import Node, NodeKind, Problem, TerminalReason, Tree

__all__ = ["ProcessExample", "StepScore", "WalkResult", "best_step", "prefix_search", "relative_correctness", "walk",
           "walk_many"]


# A search rooted at a prefix: (problem, the prefix's nodes, index of the prefix) -> (tree, root of the search).
PrefixSearch = Callable[[Problem, Sequence[Node], int], Awaitable[tuple[Tree, Node]]]


@dataclass(frozen=True)
class StepScore:
    """One candidate next step with its relative correctness."""

    node_id: int
    text: str
    q: float
    score: float
    # The step ends the solution (an answer).
    final: bool


@dataclass(frozen=True)
class ProcessExample:
    """(question, partial solution, next step, score): one row of the method's training set."""

    problem_id: str
    question: str
    # The rendered steps before the scored one (outputs included, as the search shows them).
    prefix: tuple[str, ...]
    step: str
    score: float
    # The step ends the solution: the trainer closes its completion with the end of turn.
    final: bool
    round: int


@dataclass(frozen=True)
class WalkResult:
    """One problem's walk: its examples and the solution the greedy walk built."""

    problem: Problem
    examples: tuple[ProcessExample, ...]
    steps: tuple[str, ...]
    answer: str | None
    correct: bool | None
    # How the walk ended: a terminal reason of its last step, "no_step" (the search found
    # no usable candidate) or "max_steps".
    ended: str
    searches: int
    tokens: int


def relative_correctness(tree: Tree, parent: Node, alpha: float) -> list[StepScore]:
    """``alpha * (Q(child) - Q(parent))`` for every visited child of `parent`, zeros skipped."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    out = []
    for child_id in parent.children:
        child = tree.nodes[child_id]
        if child.visits == 0 or child.kind is NodeKind.PARTIAL:
            continue
        score = alpha * (child.q - parent.q)
        if score != 0.0:
            out.append(StepScore(child.id, child.text, child.q, score, child.terminal is TerminalReason.ANSWER))
    return out


def best_step(tree: Tree, parent: Node) -> Node | None:
    """The visited child of `parent` with the highest Q (the earlier one on a tie), or None."""
    best = None
    for child_id in parent.children:
        child = tree.nodes[child_id]
        if child.visits and child.kind is not NodeKind.PARTIAL and (best is None or child.q > best.q):
            best = child
    return best


async def walk(search: PrefixSearch, problem: Problem, *, alpha: float, round: int, max_steps: int) -> WalkResult:
    """Search from the prefix, score its next steps, append the best one; repeat until the end."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
    problem_id = problem_key(problem)
    prefix: list[Node] = []
    examples: list[ProcessExample] = []
    tokens = searches = 0
    ended = "max_steps"
    for index in range(max_steps):
        tree, root = await search(problem, tuple(prefix), index)
        searches += 1
        tokens += tree.stats.generated_tokens
        texts = tuple(n.text for n in prefix)
        examples += [ProcessExample(problem_id, problem.question, texts, s.text, s.score, s.final, round)
                     for s in relative_correctness(tree, root, alpha)]
        step = best_step(tree, root)
        if step is None:
            ended = "no_step"
            break
        prefix.append(step)
        if step.is_terminal:
            ended = step.terminal.value
            break
    last = prefix[-1] if prefix else None
    answered = last is not None and last.terminal is TerminalReason.ANSWER
    return WalkResult(problem, tuple(examples), tuple(n.text for n in prefix), last.answer if answered else None,
                      last.correct if answered else None, ended, searches, tokens)


def prefix_search(mcts: MCTS, *, seed_offset: int = 0) -> PrefixSearch:
    """`mcts` as a `PrefixSearch`: a fresh tree per prefix, rollouts from the prefix's last step."""

    async def search(problem: Problem, prefix: Sequence[Node], index: int) -> tuple[Tree, Node]:
        tree = Tree.new(problem, config=mcts.config.to_dict(), model_versions={"policy": mcts.policy.model_version})
        node = tree.root
        for step in prefix:
            node = tree.add_child(node, kind=step.kind, text=step.text, code=step.code, output=step.output,
                                  stdout=step.stdout, num_tokens=step.num_tokens,
                                  token_confidence=step.token_confidence)
        # Each prefix gets its own seeds: the start node's id alone would repeat them.
        await mcts.run_rollouts(tree, mcts.config.rollouts, seed_offset=seed_offset + 7919 * index, start=node)
        return tree, node

    return search


def walk_many(mcts: MCTS, problems: Sequence[Problem], *, alpha: float, round: int,
                    max_steps: int | None = None) -> AsyncIterator[tuple[int, WalkResult | Exception]]:
    """Walk every problem (`config.concurrent_problems` at once); yields (index, result or the
    exception that ended that problem's walk) as each finishes."""
    config = mcts.config
    if config.granularity != "step" or config.reflection:
        raise ValueError("process supervision scores whole steps: use granularity 'step' without reflection")
    steps = max_steps if max_steps is not None else config.max_depth
    search = prefix_search(mcts)

    async def one(problem: Problem) -> WalkResult:
        return await walk(search, problem, alpha=alpha, round=round, max_steps=steps)

    # One problem's failure must not end the others' walks.
    return each_bounded(problems, one, config.concurrent_problems, what="process-supervision walk")
