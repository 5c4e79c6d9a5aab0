"""MCTS++'s pure parts: the GRPO curriculum, the rewards of a sampled solution, the SFT PPM filter.

After a round's SFT the policy can be refined with GRPO on the round's problems (the trainer is
`rstar_trainer.grpo_trainer`). What it needs that is not training lives here:

* **Curriculum** (`curriculum`). Each pool problem has a difficulty bucket from the newest tree
  the search grew for it (`latest_buckets`; `data.difficulty`: easy = every answer correct,
  medium = mixed, hard = none; `unknown` = never searched, e.g. round 0). A round draws `size`
  problems: a share `hard_share(round)` = ``start + step * (round - 1)`` (clamped to [0, 1],
  rounds 0 and 1 get ``start``) from the hard problems, the rest from the others; each group is
  drawn without replacement from a seeded permutation and cycled only when the round needs
  more problems than it holds. The draw is then ordered easy, medium, unknown, hard (a stable
  sort: within a bucket the draw order stays), so the trainer, which reads its dataset in order,
  meets the easy problems first. A group that is empty gives its slots to the other; the
  result depends only on its inputs and `seed`.
* **Cutting a completion into steps** (`split_completion`). GRPO samples a whole solution in
  one call, where the search stops the model at every step boundary. The completion is cut
  where the search would have stopped it (the format's stop strings: ``\\n#`` before the next
  thought, ``\\nOutput:`` where the model asks for output, the end of turn) and each piece is
  classified by `StepFormat.parse`, as the search classifies a candidate. The model's own
  ``Output:`` lines are dropped (the search never trusts them; the sandbox's output replaces
  them). One cut more than the search makes: before a line with a ``\\boxed{}`` answer, so the
  code written above an answer in the same piece always runs before the answer is graded (the
  search would take such a piece as an answer step whose code never runs, a shortcut a
  policy trained on this reward would learn).
* **Format reward** (`format_reward`): 1.0 when the completion is at least one code step and
  ends with an answer step holding a ``\\boxed{}`` answer and nothing else is invalid, else 0.0.
  It does not run anything.
* **Answer check** (`check_answer`): the steps up to the first answer step are replayed in the
  sandbox exactly as the search verifies a path (`replay.replay_steps`), a failing program or
  an invalid step ends it as the search would drop that candidate (reward 0), and the answer
  (the ``\\boxed{}`` of the answer step, or the last printed line when the model ended right
  after code, as the search reads it) is graded against the gold answer (`grading.answers_match`).
  The replayed step texts (outputs appended) are what the PPM scores for its mean step score.
* **SFT filter** (`filter_by_ppm`): drop SFT trajectories whose mean PPM step score is below a
  threshold (the scores are the caller's).

Non-goals: running the PPM or the trainer, choosing which rounds run GRPO (the `evolve` driver).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .grading import answers_match
from .ports import CodeExecutor
from .replay import replay_steps
from .steps import OUTPUT_PREFIX, OUTPUT_STOP, STEP_STOP, ParsedStep, StepKind, get_format
from .types import Problem

__all__ = [
    "AnswerCheck",
    "BUCKETS",
    "CurriculumItem",
    "check_answer",
    "curriculum",
    "filter_by_ppm",
    "format_reward",
    "hard_share",
    "latest_buckets",
    "split_completion",
]

# Easy to hard: the curriculum's order. `unknown` (never searched) sits before hard, which the
# search showed the policy cannot solve.
BUCKETS = ("easy", "medium", "unknown", "hard")
_RANK = {bucket: i for i, bucket in enumerate(BUCKETS)}


# ---------------------------------------------------------------------------- curriculum


@dataclass(frozen=True)
class CurriculumItem:
    problem: Problem
    bucket: str


def hard_share(round: int, start: float, step: float) -> float:
    """The share of hard problems in round `round`'s draw (rounds 0 and 1: `start`)."""
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round!r}")
    return min(1.0, max(0.0, start + step * max(0, round - 1)))


def latest_buckets(rows: Iterable[tuple[int, str, str]]) -> dict[str, str]:
    """Problem id -> the bucket of its newest tree, from (round, problem id, difficulty) rows."""
    newest: dict[str, tuple[int, str]] = {}
    for round, problem_id, bucket in rows:
        if bucket not in _RANK:
            raise ValueError(f"unknown difficulty {bucket!r} of problem {problem_id!r}")
        if problem_id not in newest or round >= newest[problem_id][0]:
            newest[problem_id] = (round, bucket)
    return {pid: bucket for pid, (_, bucket) in newest.items()}


def curriculum(problems: Sequence[Problem], buckets: Mapping[str, str], round: int, *, size: int,
               hard_share_start: float, hard_share_step: float, seed: int = 0) -> list[CurriculumItem]:
    """`size` problems, easy to hard, with the round's share of hard ones (module docstring)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    if not problems:
        raise ValueError("no problems for the curriculum")
    for name, value in (("hard_share_start", hard_share_start), ("hard_share_step", hard_share_step)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    items = [CurriculumItem(p, buckets.get(str(p.id), "unknown")) for p in problems]
    for item in items:
        if item.bucket not in _RANK:
            raise ValueError(f"unknown difficulty {item.bucket!r} of problem {item.problem.id!r}")
    hard = [i for i in items if i.bucket == "hard"]
    other = [i for i in items if i.bucket != "hard"]
    n_hard = round_half_up(hard_share(round, hard_share_start, hard_share_step) * size)
    if not hard:
        n_hard = 0
    elif not other:
        n_hard = size
    rng = random.Random(f"curriculum:{seed}:{round}")
    drawn = _cycle(hard, n_hard, rng) + _cycle(other, size - n_hard, rng)
    order = sorted(range(len(drawn)), key=lambda k: (_RANK[drawn[k].bucket], k))
    return [drawn[k] for k in order]


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _cycle(group: list[CurriculumItem], n: int, rng: random.Random) -> list[CurriculumItem]:
    """`n` items of `group`: seeded permutations, one after another (each used before a repeat)."""
    out: list[CurriculumItem] = []
    while len(out) < n:
        perm = list(group)
        rng.shuffle(perm)
        out += perm[:n - len(out)]
    return out


# ---------------------------------------------------------------------------- rewards


def split_completion(completion: str, prompt_format: str = "sft", *, ended: bool = True) -> list[ParsedStep]:
    """The steps the search would have cut `completion` into, each parsed by the step format.

    `ended`: the model ended its turn (EOS) rather than running out of tokens; the last piece
    is then a finished step (a code step that ended the solution), else a truncated one.
    """
    fmt = get_format(prompt_format)
    rest = completion
    if fmt.end_of_turn and fmt.end_of_turn in rest:
        rest, ended = rest.split(fmt.end_of_turn, 1)[0], True
    steps: list[ParsedStep] = []
    while rest.strip():
        found = [(rest.find(stop, 1), stop) for stop in (STEP_STOP, OUTPUT_STOP)]
        boxed = _ANSWER_LINE.search(rest, 1)
        found = [(at, stop) for at, stop in found if at >= 0] + ([(boxed.start(), STEP_STOP)] if boxed else [])
        if not found:
            steps.append(fmt.parse(rest, None if ended else STEP_STOP, "stop" if ended else "length"))
            break
        at, stop = min(found)
        steps.append(fmt.parse(rest[:at], stop, "stop"))
        rest = rest[at + 1:]  # drop the newline; a next thought starts with "#"
        if stop == OUTPUT_STOP:
            rest = _skip_model_output(rest)
    return steps


# The newline before a line with a boxed answer: the answer is a step of its own.
_ANSWER_LINE = re.compile(r"\n(?=[^\n]*\\boxed)")


def _skip_model_output(text: str) -> str:
    """Drop the model's own ``Output: ...`` lines up to its next thought or answer."""
    lines = text.split("\n")
    k = 1 if lines and lines[0].startswith(OUTPUT_PREFIX.strip()) else 0
    while k < len(lines) and not (lines[k].startswith("#") or "\\boxed" in lines[k]
                                  or "answer" in lines[k].lower()):
        k += 1
    return "\n".join(lines[k:])


def format_reward(completion: str, prompt_format: str = "sft", *, ended: bool = True) -> float:
    """1.0 for code steps then one ``\\boxed{}`` answer step, nothing invalid; else 0.0."""
    steps = split_completion(completion, prompt_format, ended=ended)
    if len(steps) < 2 or steps[-1].kind is not StepKind.ANSWER or "\\boxed" not in steps[-1].text:
        return 0.0
    return 1.0 if all(s.kind is StepKind.CODE for s in steps[:-1]) else 0.0


@dataclass(frozen=True)
class AnswerCheck:
    correct: bool
    answer: str | None
    # Why it is not correct: "invalid:<reason>", "no_answer", an execution status
    # ("error", "timeout", ...), "wrong_answer"; "" when correct.
    reason: str
    # The replayed steps as the search stores them (outputs appended), up to the answer.
    steps: tuple[str, ...] = ()

    @property
    def reward(self) -> float:
        return 1.0 if self.correct else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"correct": self.correct, "answer": self.answer, "reason": self.reason, "steps": len(self.steps)}


async def check_answer(completion: str, gold: Any, executor: CodeExecutor, *, ended: bool = True,
                       timeout_s: float = 5.0, prompt_format: str = "sft",
                       grader: Callable[[str | None, Any], bool] = answers_match) -> AnswerCheck:
    """Replay the completion's steps in the sandbox and grade its answer (module docstring)."""
    steps = split_completion(completion, prompt_format, ended=ended)
    if not steps:
        return AnswerCheck(False, None, "invalid:empty")
    kept: list[ParsedStep] = []
    for step in steps:
        if step.kind is StepKind.INVALID:
            return AnswerCheck(False, None, f"invalid:{step.reason}")
        kept.append(step)
        if step.kind is StepKind.ANSWER:
            break
    replay = await replay_steps(kept, executor, timeout_s=timeout_s, prompt_format=prompt_format)
    if not replay.ok:
        return AnswerCheck(False, None, replay.failure, replay.texts)
    last = kept[-1]
    if last.kind is StepKind.ANSWER:
        answer = last.answer
    elif last.ended_solution and replay.last_output.strip():
        answer = replay.last_output.strip().splitlines()[-1].strip()
    else:
        return AnswerCheck(False, None, "no_answer", replay.texts)
    correct = await asyncio.to_thread(grader, answer, gold)
    return AnswerCheck(bool(correct), answer, "" if correct else "wrong_answer", replay.texts)


# ---------------------------------------------------------------------------- SFT filter


def filter_by_ppm(examples: Sequence[Any], mean_scores: Sequence[float | None],
                  min_mean: float) -> tuple[list[Any], int]:
    """(examples whose mean PPM step score is >= `min_mean`, how many were dropped).

    `mean_scores[i]` belongs to `examples[i]`; None (not scored, e.g. no PPM yet) keeps it.
    """
    if len(examples) != len(mean_scores):
        raise ValueError(f"{len(examples)} examples but {len(mean_scores)} scores")
    if not (isinstance(min_mean, (int, float)) and -1.0 <= min_mean <= 1.0):
        raise ValueError(f"min_mean must be in [-1, 1] (PPM scores are), got {min_mean!r}")
    kept = [e for e, s in zip(examples, mean_scores) if s is None or s >= min_mean]
    return kept, len(examples) - len(kept)
