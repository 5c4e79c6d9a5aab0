"""Monte Carlo Tree Search over code-augmented steps, as asynchronous per-problem tasks.

One `MCTS.search(problem)` builds one tree:

* **select**: from the root, descend by UCT ``Q + c*sqrt(ln N(parent) / N(child))`` over
  children that are neither terminal nor exhausted. Unvisited children: with
  ``explore_unvisited_first`` (default) they score +inf, so every candidate is tried once
  before any is revisited (standard UCT); otherwise they score 0 like the reference code,
  which makes the search greedy. Ties go to the earlier child.
* **expand** an unexpanded node with n candidates from one sampling call; candidate code is
  run together with every earlier code step of its path; failing or unparsable candidates
  are dropped and counted; if every candidate fails `errors_threshold` times in a row the
  node ends as a TOO_MANY_ERRORS terminal.
* **evaluate**: answer terminals get ±1 from the ground truth (data generation) or the PPM
  score (evaluation); failure terminals get -1; new non-terminal nodes get the PPM score as
  their initial q (N=1) when `use_ppm_init` is on.
* **back-propagate** every terminal value, once, at its creation, to every ancestor
  (``q += v, N += 1``). Unlike the reference code, failures are backed up too, so a branch
  that only produces errors loses value instead of staying attractive.

Marco-o1 variants (arXiv 2411.14405; recipes `marco*.yaml`), each a `SearchConfig` switch:

* ``terminal_reward: confidence`` / ``use_confidence_init``: the mean token confidence of
  the path (`rstar_core.confidence`, from the top-k logprobs the policy returns) is the
  answer's terminal value / a new node's initial q, where there is no ground truth and no
  PPM. Answers are then picked by value, as with the PPM.
* ``granularity: mini-step``: a node is at most ``mini_step_tokens`` tokens. The stop
  strings still end a step, so a chunk cut by the token budget is a PARTIAL node inside a
  step (no code run); the node whose chunk completes the step carries the whole step and
  runs its code. ``max_tokens_per_step`` still bounds the whole step, ``max_depth`` counts
  nodes.
* ``reflection``: an answer reached on a path without reflection gets a REFLECTION sibling
  (the answer, then "Wait! Maybe I made some mistakes! ..."); selection reaches it next, so
  the policy goes on rethinking, and the answer found below it records the first answer and
  whether it changed. Both answers are terminals of the tree.

A rollout keeps descending and expanding until it reaches a terminal or a node with no
selectable child, so each rollout is one root-to-leaf chain of n-wide expansions.
Candidates arrive one by one as the engine finishes them (`generate_stream`): each is run
and attached at once, and with `descend_on_first_child` the rollout moves on as soon as
one child exists, while the expansion keeps attaching the later ones in the background.
Without that, every level of a rollout waits for the slowest of its n samples (often a
max-length runaway that is then dropped). A search returns only after every expansion has
finished, so the tree is the same set of candidates either way; only the order in which
siblings were tried differs.
`parallel_rollouts` rollouts of one tree run at once; virtual loss (a pending visit with
value -virtual_loss on every node of an in-flight path) keeps them on different branches,
so the policy engine sees several requests per tree and many trees at once. Because
candidates arrive one at a time, a rollout that finds the best child already taken by
another in-flight rollout waits for the expansion's next candidate rather than follow it
down the same path (otherwise, with streamed samples, every rollout of a batch would
trail the first one). Once the expansion has finished, UCT with virtual loss decides, even
if that means sharing a child. So (with `explore_unvisited_first`) two rollouts share a
child only where a sequential second rollout would have had no other choice either, and
neither waits for all n samples at every level as the reference code does.

The search owns no engine, sandbox or database: it talks to the `ports` only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence

from ..config import SearchConfig
from ..confidence import path_confidence
from ..grading import answers_match
from ..ports import CodeExecutor, Completion, GenerationRequest, PolicyModel, RewardModel, ScoringItem
from ..steps import (REFLECTION_PROMPT, ParsedStep, StepKind, accumulate_code, get_format, new_output, render_output,
                     split_pending)
from ..types import Node, NodeKind, Problem, TerminalReason, Tree

__all__ = ["MCTS", "SearchResult", "each_bounded", "pick_answer", "pick_terminal"]

log = logging.getLogger(__name__)

FAILURE_VALUE = -1.0
# Dropped candidates kept on the tree for inspection.
MAX_DROPPED_EXAMPLES = 8

Grader = Callable[[str | None, Any], bool]


@dataclass
class SearchResult:
    """A finished search: the tree and the answer the search settles on."""

    tree: Tree
    answer: str | None
    correct: bool | None
    # Some terminal answer was correct (pass@n over the tree).
    any_correct: bool | None
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Context:
    """What every candidate of one expansion shares: earlier code, earlier output, texts seen."""

    code: list[str]
    stdout: str
    seen: set[str]
    # Mini-steps: the unfinished step's text so far and the tokens it has used.
    pending: str = ""
    pending_tokens: int = 0


class _Expansion:
    """One node's expansion running in the background, and a way to wait for its progress."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    def notify(self) -> None:
        # Wake every waiter once, then start a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self) -> None:
        await self._changed.wait()

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()


@dataclass
class _Pending:
    """In-flight state of one batch of rollouts, kept beside the tree (never serialized)."""

    visits: dict[int, int] = field(default_factory=dict)
    expansions: dict[int, _Expansion] = field(default_factory=dict)

    def add(self, node: Node) -> None:
        self.visits[node.id] = self.visits.get(node.id, 0) + 1

    def remove(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            self.visits[node.id] -= 1


class MCTS:
    def __init__(
        self,
        policy: PolicyModel,
        executor: CodeExecutor,
        config: SearchConfig,
        reward: RewardModel | None = None,
        grader: Grader | None = None,
    ) -> None:
        if config.needs_reward_model and reward is None:
            raise ValueError("config needs a reward model (use_ppm_init or terminal_reward='ppm') but none was given")
        self.policy = policy
        self.executor = executor
        self.reward = reward
        self.config = config
        self.format = get_format(config.prompt_format)
        self.stops = config.stop if config.stop is not None else self.format.stops
        self.grader = grader or answers_match

    # ------------------------------------------------------------------ public API

    async def search(self, problem: Problem, *, seed_offset: int = 0,
                     on_tree: Callable[[Tree], None] | None = None) -> SearchResult:
        """Search `problem` to the end. `on_tree` gets the tree once, as soon as it exists, so
        a caller can watch it grow (the worker publishes snapshots of it); it is mutated by
        this event loop, so read it only from there."""
        start = time.perf_counter()
        tree = Tree.new(problem, config=self.config.to_dict(), model_versions=self._versions())
        if on_tree is not None:
            on_tree(tree)
        await self.run_rollouts(tree, self.config.rollouts, seed_offset=seed_offset)
        if self.config.hard_extra_rollouts and problem.answer is not None and not _any_correct(tree):
            # Hard problems get another batch of rollouts with a different seed.
            await self.run_rollouts(tree, self.config.hard_extra_rollouts, seed_offset=seed_offset + 1_000_003)
        wall = time.perf_counter() - start
        tree.stats.wall_s += wall
        answer = pick_answer(tree, by_ppm=self.config.values_answers)
        correct = None
        if problem.answer is not None:
            correct = answer is not None and await asyncio.to_thread(self.grader, answer, problem.answer)
        return SearchResult(tree, answer, correct, _any_correct(tree), wall)

    def search_many(
        self, problems: Sequence[Problem], *, return_exceptions: bool = False
    ) -> AsyncIterator[tuple[int, SearchResult | Exception]]:
        """Search many problems at once; yields (index, result) as each finishes.

        With `return_exceptions`, a problem whose search raised yields the exception
        instead of ending the whole batch.
        """
        return each_bounded(problems, self.search, self.config.concurrent_problems, what="search",
                            return_exceptions=return_exceptions)

    async def run_rollouts(self, tree: Tree, count: int, *, seed_offset: int = 0, start: Node | None = None) -> None:
        """`count` rollouts from `start` (default: the root). A later node of the tree is the
        root of a search that continues a given partial solution: the steps above it are the
        prompt's and the code's context, and selection never leaves its subtree."""
        start = start if start is not None else tree.root
        pending = _Pending()
        todo = iter(range(count))

        async def lane() -> None:
            for index in todo:
                if start.exhausted or start.is_terminal:
                    return
                await self._rollout(tree, pending, seed_offset + index, start)
                tree.stats.rollouts += 1

        lanes = [asyncio.ensure_future(lane()) for _ in range(min(self.config.parallel_rollouts, count))]
        try:
            await asyncio.gather(*lanes)
            # Expansions that rollouts moved past are still attaching their late candidates.
            await asyncio.gather(*(e.task for e in pending.expansions.values()))
        finally:
            # On failure or cancellation, stop everything this batch started before returning.
            await _cancel_all([*lanes, *(e.task for e in pending.expansions.values())])

    # ------------------------------------------------------------------ one rollout

    async def _rollout(self, tree: Tree, pending: _Pending, rollout_seed: int, start: Node) -> None:
        # Initial values (PPM or confidence) rank siblings: selection needs all of them.
        wait_for_all = (self.config.use_ppm_init or self.config.use_confidence_init
                        or not self.config.descend_on_first_child)
        node = start
        path = [node]
        pending.add(node)
        try:
            while not node.is_terminal:
                expansion = pending.expansions.get(node.id)
                if expansion is None and not node.expanded:
                    expansion = self._start_expansion(tree, node, pending, rollout_seed)
                if expansion is not None and expansion.done:
                    expansion.task.result()  # re-raise a failed expansion here
                elif expansion is not None and wait_for_all:
                    await asyncio.shield(expansion.task)
                if node.is_terminal:
                    break
                child = self._select_child(tree, node, pending)
                still_expanding = expansion is not None and not expansion.done
                if still_expanding and (child is None or pending.visits.get(child.id, 0) > 0):
                    # Nothing to descend into yet, or only the child another in-flight rollout
                    # took: wait for the next candidate instead of trailing that rollout.
                    await expansion.wait_change()
                    continue
                if child is None:
                    self._mark_exhausted(tree, node)
                    break
                node = child
                path.append(node)
                pending.add(node)
        finally:
            pending.remove(path)

    def _select_child(self, tree: Tree, node: Node, pending: _Pending) -> Node | None:
        c = self.config.c_puct
        vl = self.config.virtual_loss
        parent_n = node.visits + pending.visits.get(node.id, 0)
        best, best_score = None, -math.inf
        for child_id in node.children:
            child = tree.nodes[child_id]
            if child.is_terminal or child.exhausted:
                continue
            in_flight = pending.visits.get(child.id, 0)
            n = child.visits + in_flight
            if n == 0:
                score = math.inf if self.config.explore_unvisited_first else 0.0
            else:
                q = (child.value_sum - vl * in_flight) / n
                bonus = c * math.sqrt(math.log(parent_n) / n) if parent_n > 0 else 0.0
                score = q + bonus
            if score > best_score:
                best, best_score = child, score
        return best

    def _mark_exhausted(self, tree: Tree, node: Node) -> None:
        """No selectable child is left below `node`: propagate upwards while that holds."""
        while node is not None and node.expanded:
            if any(not tree.nodes[c].is_terminal and not tree.nodes[c].exhausted for c in node.children):
                return
            node.exhausted = True
            node = tree.nodes[node.parent] if node.parent is not None else None

    # ------------------------------------------------------------------ expansion

    def _start_expansion(self, tree: Tree, node: Node, pending: _Pending, rollout_seed: int) -> _Expansion:
        expansion = _Expansion()
        expansion.task = asyncio.ensure_future(self._expand(tree, node, rollout_seed, expansion))
        expansion.task.add_done_callback(lambda _: expansion.notify())
        pending.expansions[node.id] = expansion
        return expansion

    async def _expand(self, tree: Tree, node: Node, rollout_seed: int, expansion: _Expansion) -> None:
        """Sample n candidates and turn each into a child as soon as it is finished."""
        cfg = self.config
        path = tree.path(node)
        if node.depth >= cfg.max_depth:
            self._make_terminal(tree, node, TerminalReason.MAX_DEPTH, FAILURE_VALUE)
            node.expanded = True
            return
        steps, pending = _steps_of(path)
        prompt = self.format.render_prompt(tree.problem.question, steps) + pending
        context = _Context([n.code for n in path if n.code], node.stdout, set(), pending,
                           _pending_tokens(path))
        max_tokens = cfg.max_tokens_per_step
        if cfg.granularity == "mini-step":
            max_tokens = min(cfg.mini_step_tokens, cfg.max_tokens_per_step - context.pending_tokens)
        while node.failed_expansions < cfg.errors_threshold:
            seed = _derive_seed(cfg.seed, rollout_seed, node.id, node.failed_expansions)
            jobs = []
            tree.stats.policy_calls += 1
            try:
                async for completion in self.policy.generate_stream(self._request(prompt, seed, max_tokens)):
                    tree.stats.candidates += 1
                    tree.stats.generated_tokens += completion.num_tokens
                    step = self._screen(tree, completion, context)
                    if step is not None:
                        jobs.append(asyncio.ensure_future(
                            self._add_child(tree, node, completion, step, context, expansion)))
                added = await asyncio.gather(*jobs)
            finally:
                await _cancel_all(jobs)
            if any(added):
                break
            node.failed_expansions += 1
        node.expanded = True
        tree.stats.expansions += 1
        if not node.children:
            self._make_terminal(tree, node, TerminalReason.TOO_MANY_ERRORS, FAILURE_VALUE)

    def _request(self, prompt: str, seed: int, max_tokens: int) -> GenerationRequest:
        cfg = self.config
        return GenerationRequest(
            prompt=prompt,
            n=cfg.expansion_width,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=max_tokens,
            stop=self.stops,
            seed=seed,
            logprobs=cfg.logprobs,
        )

    def _screen(self, tree: Tree, completion: Completion, context: "_Context") -> ParsedStep | None:
        """Parse a candidate; drop (and count) invalid ones and exact duplicates."""
        stats = tree.stats
        if self.config.granularity == "mini-step":
            room_left = context.pending_tokens + completion.num_tokens < self.config.max_tokens_per_step
            step = self.format.parse_mini_step(context.pending, completion.text, completion.stop_string,
                                               completion.finish_reason, room_left=room_left, stops=self.stops)
        else:
            step = self.format.parse(completion.text, completion.stop_string, completion.finish_reason)
        if step.kind is StepKind.INVALID:
            stats.count(stats.dropped_invalid, step.reason)
            self._keep_dropped(tree, completion.text, step.reason)
            return None
        if self.config.dedup_candidates and step.text in context.seen:
            stats.dropped_duplicate += 1
            return None
        context.seen.add(step.text)
        return step

    async def _add_child(self, tree: Tree, node: Node, completion: Completion, step: ParsedStep,
                         context: "_Context", expansion: _Expansion) -> bool:
        """Run, evaluate and attach one candidate; False if its code failed."""
        common = dict(num_tokens=completion.num_tokens, token_confidence=completion.token_confidence)
        if step.kind is StepKind.PARTIAL:
            # Part of a step: nothing to run until the node that completes it.
            child = tree.add_child(node, kind=NodeKind.PARTIAL, text=step.text, stdout=context.stdout, **common)
            await self._init_value(tree, child)
            expansion.notify()
            return True
        if step.kind is StepKind.ANSWER:
            child = tree.add_child(node, kind=NodeKind.ANSWER, text=step.text, answer=step.answer,
                                   stdout=context.stdout, **common)
            await self._finish_answer(tree, child)
            expansion.notify()
            return True
        program = accumulate_code(context.code, step.code)
        result = await self.executor.run(program, timeout_s=self.config.exec_timeout_s)
        tree.stats.executions += 1
        if not result.ok:
            tree.stats.count(tree.stats.dropped_exec, result.status.value)
            self._keep_dropped(tree, step.text, f"{result.status.value}: {result.error}")
            return False
        output = new_output(context.stdout, result.stdout)
        text = step.text + (render_output(output) if output or step.wants_output else "")
        child = tree.add_child(node, kind=NodeKind.CODE, text=text, code=step.code, output=output,
                               stdout=result.stdout, **common)
        if step.ended_solution:
            # The model ended after code: its last printed line is its answer.
            last_line = output.strip().splitlines()[-1].strip() if output.strip() else None
            if last_line is None:
                self._make_terminal(tree, child, TerminalReason.NO_ANSWER, FAILURE_VALUE)
            else:
                child.answer, child.answer_from_output = last_line, True
                await self._finish_answer(tree, child)
        else:
            await self._init_value(tree, child)
        expansion.notify()
        return True

    async def _init_value(self, tree: Tree, node: Node) -> None:
        """A new non-terminal node's initial q (N=1): its PPM score or its path's token confidence."""
        if self.config.use_ppm_init:
            [value] = await self._score(tree, [node])
        elif self.config.use_confidence_init:
            value = self._confidence(tree, node)
        else:
            return
        node.init_value = value
        node.value_sum += value
        node.visits += 1

    def _keep_dropped(self, tree: Tree, text: str, reason: str) -> None:
        if len(tree.dropped_examples) < MAX_DROPPED_EXAMPLES:
            tree.dropped_examples.append({"text": text[:500], "reason": reason[:200]})

    # ------------------------------------------------------------------ evaluation

    async def _finish_answer(self, tree: Tree, node: Node) -> None:
        truth = tree.problem.answer
        if truth is not None:
            node.correct = await asyncio.to_thread(self.grader, node.answer, truth)
        reflected = next((n for n in tree.path(node) if n.kind is NodeKind.REFLECTION), None)
        if reflected is not None:
            first = tree.nodes[reflected.reflection_of].answer
            node.answer_before_reflection = first
            node.reflection_changed = not await asyncio.to_thread(_same_answer, self.grader, node.answer, first)
        if self.config.terminal_reward == "ppm":
            [value] = await self._score(tree, [node])
        elif self.config.terminal_reward == "confidence":
            value = self._confidence(tree, node)
        elif node.correct is not None:
            value = 1.0 if node.correct else -1.0
        else:
            # No ground truth and no PPM: the answer carries no signal either way.
            value = 0.0
        self._make_terminal(tree, node, TerminalReason.ANSWER, value)
        if self.config.reflection and reflected is None:
            await self._add_reflection(tree, node)

    async def _add_reflection(self, tree: Tree, answer: Node) -> None:
        """Marco-o1 reflection: a sibling of `answer` that shows it, then asks to rethink.

        The answer stays a terminal of its own (its value is already backed up); the sibling
        is an ordinary node that selection reaches next (unvisited), so the rollout that found
        the answer goes on below it. Its path holds the answer's tokens once, through it.
        """
        parent = tree.nodes[answer.parent]
        child = tree.add_child(parent, kind=NodeKind.REFLECTION, text=f"{answer.text}\n{REFLECTION_PROMPT}",
                               code=answer.code, output=answer.output, stdout=answer.stdout,
                               reflection_of=answer.id)
        await self._init_value(tree, child)

    def _confidence(self, tree: Tree, node: Node) -> float:
        """The mean token confidence of the path down to `node` (0 when no token had logprobs)."""
        parts = []
        for n in tree.path(node):
            source = tree.nodes[n.reflection_of] if n.kind is NodeKind.REFLECTION else n
            parts.append((source.token_confidence, source.num_tokens))
        value = path_confidence(parts)
        return 0.0 if value is None else value

    async def _score(self, tree: Tree, nodes: Sequence[Node]) -> list[float]:
        assert self.reward is not None
        items = [ScoringItem(tree.problem.question, tree.scoring_steps(node)) for node in nodes]
        tree.stats.reward_calls += 1
        return list(await self.reward.score(items))

    def _make_terminal(self, tree: Tree, node: Node, reason: TerminalReason, value: float) -> None:
        node.terminal = reason
        node.terminal_value = value
        walk: Node | None = node
        while walk is not None:
            walk.visits += 1
            walk.value_sum += value
            walk = tree.nodes[walk.parent] if walk.parent is not None else None

    def _versions(self) -> dict[str, str]:
        versions = {"policy": self.policy.model_version}
        if self.reward is not None:
            versions["reward"] = self.reward.model_version
        return versions


async def each_bounded(problems: Sequence[Problem], work: Callable[[Problem], Awaitable[Any]], limit: int, *,
                       what: str, return_exceptions: bool = True) -> AsyncIterator[tuple[int, Any]]:
    """`work(problem)` for every problem, `limit` at once; yields (index, result) as each finishes.

    With `return_exceptions`, a problem whose work raised yields the exception (logged with
    `what`) instead of ending the others'; leaving the loop early cancels what still runs.
    """
    gate = asyncio.Semaphore(limit)

    async def one(i: int, problem: Problem) -> tuple[int, Any]:
        async with gate:
            try:
                return i, await work(problem)
            except Exception as exc:
                if not return_exceptions:
                    raise
                log.exception("%s of problem %s failed", what, problem.id)
                return i, exc

    tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(problems)]
    try:
        for fut in asyncio.as_completed(tasks):
            yield await fut
    finally:
        await _cancel_all(tasks)


async def _cancel_all(tasks: Sequence[asyncio.Future]) -> None:
    """Cancel what is still running and wait for it, so no task outlives its owner."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


def pick_answer(tree: Tree, *, by_ppm: bool) -> str | None:
    """The search's final answer without looking at the ground truth.

    With PPM terminal values: the answer of the highest-valued terminal. Otherwise a
    majority vote over answer terminals (ties: the earliest found).
    """
    node = pick_terminal(tree, by_ppm=by_ppm)
    return node.answer if node is not None else None


def pick_terminal(tree: Tree, *, by_ppm: bool) -> Node | None:
    """The terminal whose answer `pick_answer` returns (the first found of a voted answer)."""
    answers = [n for n in tree.nodes if n.terminal is TerminalReason.ANSWER and n.answer is not None]
    if not answers:
        return None
    if by_ppm:
        return max(answers, key=lambda n: n.terminal_value or 0.0)
    votes = Counter(_normalise(n.answer) for n in answers)
    best = max(votes.values())
    return next(n for n in answers if votes[_normalise(n.answer)] == best)


def _normalise(answer: str) -> str:
    return answer.strip().rstrip(".").replace(" ", "")


def _any_correct(tree: Tree) -> bool | None:
    if tree.problem.answer is None:
        return None
    return any(n.correct for n in tree.nodes)


def _steps_of(path: Sequence[Node]) -> tuple[list[str], str]:
    """The path's complete steps and the unfinished step's mini-steps so far (`split_pending`)."""
    return split_pending([(n.text, n.kind is NodeKind.PARTIAL) for n in path])


def _pending_tokens(path: Sequence[Node]) -> int:
    """Tokens of the trailing partial mini-steps: what the unfinished step has used of its budget."""
    tokens = 0
    for node in reversed(path):
        if node.kind is not NodeKind.PARTIAL:
            break
        tokens += node.num_tokens
    return tokens


def _same_answer(grader: Grader, answer: str | None, other: str | None) -> bool:
    if answer is None or other is None:
        return answer is other
    return answer == other or grader(answer, other)


def _derive_seed(*parts: int) -> int:
    """A stable 31-bit seed from integers (Python's hash() of tuples is not stable across runs)."""
    value = 0x345678
    for part in parts:
        value = (value * 1_000_003 ^ (part & 0xFFFFFFFF)) & 0xFFFFFFFFFFFF
    return value & 0x7FFFFFFF
