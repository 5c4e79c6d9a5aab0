"""Run a written-out solution's code steps through a `CodeExecutor`, the way the search runs a path.

A solution that was not produced step by step by the search (round 0's converted GSM8K
solutions, a GRPO completion sampled in one go) is replayed here exactly as the search would
have verified it: every code step runs together with the code of every earlier step
(`steps.accumulate_code`, a fresh process each time), only the output it adds is appended to
its text as ``Output: ...`` (`steps.new_output`, `steps.render_output`), and the first step
whose program fails stops the replay with the execution status as the reason. Answer steps
are kept as they are.

Not here: cutting a completion into steps (`rl.split_completion`), grading (`grading`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .ports import CodeExecutor
from .steps import STEP_STOP, ParsedStep, StepKind, accumulate_code, get_format, new_output, render_output

__all__ = ["Replay", "replay_steps"]


@dataclass(frozen=True)
class Replay:
    # The step texts as the search stores them (printed output appended to code steps).
    texts: tuple[str, ...]
    # Everything the program printed, up to the last step that ran.
    stdout: str
    # "" when every code step ran, else the failing execution's status ("error", "timeout", ...).
    failure: str = ""
    # What the last code step that ran added to the output (the search reads a solution that
    # ended after code by the last line of it).
    last_output: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure

    @property
    def last_printed_line(self) -> str:
        return self.stdout.strip().splitlines()[-1].strip() if self.stdout.strip() else ""


async def replay_steps(steps: Sequence[str | ParsedStep], executor: CodeExecutor, *, timeout_s: float,
                       prompt_format: str = "sft") -> Replay:
    """Run `steps` (texts, or steps already parsed) in order; stop at the first failing program."""
    fmt = get_format(prompt_format)
    code: list[str] = []
    stdout = ""
    last_output = ""
    texts: list[str] = []
    for step in steps:
        parsed = step if isinstance(step, ParsedStep) else fmt.parse(step, STEP_STOP, "stop")
        text = step.text if isinstance(step, ParsedStep) else step
        if parsed.kind is not StepKind.CODE:
            texts.append(text)
            continue
        result = await executor.run(accumulate_code(code, parsed.code), timeout_s=timeout_s)
        if not result.ok:
            return Replay(tuple(texts), stdout, result.status.value, last_output)
        output = last_output = new_output(stdout, result.stdout)
        code.append(parsed.code)
        stdout = result.stdout
        texts.append(text + (render_output(output) if output or parsed.wants_output else ""))
    return Replay(tuple(texts), stdout, "", last_output)
