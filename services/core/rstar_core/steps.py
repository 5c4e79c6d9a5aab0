"""The code-augmented step format: prompts, stop strings, step parsing and code accumulation.

A solution is a sequence of steps joined by newlines. A *code step* is one short thought
written as Python comments followed by the code that carries it out::

    # There are 3 boxes with 4 pens each.
    pens = 3 * 4

When a code step prints, the sandbox output is appended to the step as ``Output: ...``
(the model never writes its own output: ``\\nOutput:`` is a stop string). The *answer step*
closes the solution: ``The answer is \\boxed{7}.``

Why this shape: measured on SmolLM2-135M-Instruct, the published format (``<code>``,
``<end_of_step>`` tags, blank-line separated steps) is copied on the surface but the model
then writes prose as Python. A small instruct model reliably writes "comment line, code line"
pairs separated by single newlines, so the step boundary is the start of the next comment
line (stop string ``\\n#``), which costs no wasted tokens.

This module is pure: it builds strings and parses them. Running code is the executor's
job; grading is in `grading`.
"""

from __future__ import annotations

import ast
import enum
from dataclasses import dataclass
from typing import Sequence

from .grading import extract_answer

__all__ = [
    "FORMATS",
    "REFLECTION_PROMPT",
    "ParsedStep",
    "StepFormat",
    "StepKind",
    "accumulate_code",
    "get_format",
    "new_output",
    "split_pending",
]

STEP_STOP = "\n#"
# Marco-o1's reflection prompt, appended after a first answer for the policy to rethink.
REFLECTION_PROMPT = "Wait! Maybe I made some mistakes! I need to rethink from scratch."
OUTPUT_STOP = "\nOutput:"
OUTPUT_PREFIX = "Output: "
# Output shown to the model is cut to this many characters (head and tail kept).
MAX_SHOWN_OUTPUT = 512


class StepKind(str, enum.Enum):
    CODE = "code"
    ANSWER = "answer"
    # Neither code that parses nor an answer: the candidate is dropped.
    INVALID = "invalid"
    # Mini-step granularity: the token budget cut the step short; the next node continues it.
    PARTIAL = "partial"


@dataclass(frozen=True)
class ParsedStep:
    kind: StepKind
    # The step as it will appear in later prompts (without the appended output).
    text: str
    code: str = ""
    answer: str | None = None
    # The model asked to see output (stopped at "Output:") or emitted EOS.
    wants_output: bool = False
    ended_solution: bool = False
    # Why a candidate is invalid (shown in counters and logs).
    reason: str = ""


@dataclass(frozen=True)
class StepFormat:
    """How prompts are built and completions are cut into steps for one kind of policy."""

    name: str
    system: str
    shots: tuple[tuple[str, str], ...]
    # Chat-style wrapper used when no tokenizer chat template is given: {role} and {content}.
    turn_template: str
    assistant_prefix: str
    end_of_turn: str
    stops: tuple[str, ...]

    def render_prompt(self, question: str, steps: Sequence[str] = ()) -> str:
        """The full prompt for generating the step after `steps` (already-rendered texts)."""
        parts = []
        if self.system:
            parts.append(self.turn_template.format(role="system", content=self.system))
        for shot_q, shot_a in self.shots:
            parts.append(self.turn_template.format(role="user", content=shot_q))
            parts.append(self.turn_template.format(role="assistant", content=shot_a))
        parts.append(self.turn_template.format(role="user", content=question))
        prompt = "".join(parts) + self.assistant_prefix
        if steps:
            prompt += "\n".join(steps) + "\n"
        return prompt

    def render_mini_step_prompt(self, question: str, steps: Sequence[str], pending: str) -> str:
        """The prompt after complete `steps` and the unfinished step's text so far (mini-steps)."""
        return self.render_prompt(question, steps) + pending

    def render_solution(self, question: str, steps: Sequence[str]) -> str:
        """Prompt plus a complete solution (for the PPM and for SFT targets)."""
        return self.render_prompt(question) + "\n".join(steps)

    def parse(self, text: str, stop_string: str | None, finish_reason: str) -> ParsedStep:
        """Classify one raw completion. Lenient: small models miss delimiters often."""
        ended = finish_reason == "stop" and stop_string in (None, self.end_of_turn)
        body = text.replace(self.end_of_turn, "").rstrip()
        # Models sometimes echo the output marker themselves; never trust their output.
        marker = "\n" + OUTPUT_PREFIX.strip()
        if marker in "\n" + body:
            # Cut at the line that starts with the marker, not at "Output:" inside a string.
            body = ("\n" + body).split(marker, 1)[0][1:].rstrip()
        if not body.strip():
            return ParsedStep(StepKind.INVALID, body, reason="empty")
        answer = extract_answer(body)
        if answer is not None and ("\\boxed" in body or not _is_python(body)):
            return ParsedStep(StepKind.ANSWER, body, answer=answer, ended_solution=True)
        if finish_reason == "length":
            return ParsedStep(StepKind.INVALID, body, reason="truncated")
        if not _is_python(body):
            return ParsedStep(StepKind.INVALID, body, reason="syntax")
        return ParsedStep(
            StepKind.CODE,
            body,
            code=body,
            wants_output=stop_string == OUTPUT_STOP,
            ended_solution=ended,
        )


    def parse_mini_step(self, pending: str, text: str, stop_string: str | None, finish_reason: str, *,
                        room_left: bool, stops: Sequence[str] | None = None) -> ParsedStep:
        """Classify one mini-step: the `text` a policy call of at most a mini-step's tokens gave
        after `pending`, the unfinished step's earlier mini-steps.

        The stop strings (`stops`, default the format's) still end a step, so a mini-step
        never spans two steps. The engine sees one chunk at a time, so a stop string split
        between two chunks (``...\nOutput`` | ``: 30``) is found here: the step ends there
        and the rest of the chunk is dropped, as the engine would have stopped. Cut by the
        token budget (finish "length") while the step has `room_left` in its own budget
        (max_tokens_per_step), the chunk is PARTIAL (its `text` is the chunk alone, verbatim:
        the next chunk continues it character for character), unless the step so far already
        holds an answer. Otherwise the whole step (`pending + text`) is parsed as `parse` does
        (cut by the budget with no room left: "truncated").
        """
        whole = pending + text
        if pending:
            found = [(whole.find(stop), stop) for stop in (self.stops if stops is None else stops) if stop]
            found = [(at, stop) for at, stop in found if 0 <= at < len(pending)]
            if found:
                at, stop = min(found)
                return self.parse(whole[:at], stop, "stop")
        if finish_reason == "length" and room_left:
            parsed = self.parse(whole, stop_string, finish_reason)
            if parsed.kind is StepKind.ANSWER:
                return parsed
            return ParsedStep(StepKind.PARTIAL, text)
        return self.parse(whole, stop_string, finish_reason)


def split_pending(parts: Sequence[tuple[str, bool]]) -> tuple[list[str], str]:
    """A mini-step path as (complete step texts, text of the step still being written).

    `parts` are the path's node texts with whether each is a partial mini-step. The node
    that completes a step carries the whole step, so partial nodes count only after the
    last complete one, where they are the unfinished step so far.
    """
    steps: list[str] = []
    pending: list[str] = []
    for text, partial in parts:
        if partial:
            pending.append(text)
        else:
            steps.append(text)
            pending = []
    return steps, "".join(pending)


def _is_python(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def accumulate_code(previous_code: Sequence[str], step_code: str) -> str:
    """The program to run for a candidate: every earlier code step of the path, then it.

    Each execution runs in a fresh process, so earlier steps are re-run to rebuild state;
    their output is subtracted again by `new_output`.
    """
    return "\n".join([*previous_code, step_code])


def new_output(previous_stdout: str, stdout: str) -> str:
    """The part of `stdout` this step produced (earlier steps print the same prefix)."""
    if stdout.startswith(previous_stdout):
        return stdout[len(previous_stdout):]
    return stdout


def render_output(output: str) -> str:
    """The text appended to a code step that printed something."""
    out = output.strip("\n")
    if len(out) > MAX_SHOWN_OUTPUT:
        half = MAX_SHOWN_OUTPUT // 2
        out = out[:half] + "\n...\n" + out[-half:]
    return f"\n{OUTPUT_PREFIX}{out}"


_CHATML = "<|im_start|>{role}\n{content}<|im_end|>\n"

_BASE_SYSTEM = (
    "You solve math word problems with short Python steps. Each step is a comment line "
    "and one line of code. The last step prints the answer."
)
_BASE_SHOTS = (
    (
        "Tom has 3 boxes with 4 pens in each box. He gives away 5 pens. "
        "How many pens does he have left?",
        "# There are 3 boxes with 4 pens each.\npens = 3 * 4\n"
        "# He gives away 5 pens.\nleft = pens - 5\n"
        "# Print the answer.\nprint(left)\n"
        "Output: 7\nThe answer is \\boxed{7}.",
    ),
    (
        "A shirt costs $12 and a hat costs $5. How much do 2 shirts and 1 hat cost?",
        "# Two shirts cost 2 * 12 dollars.\nshirts = 2 * 12\n"
        "# Add one hat.\ntotal = shirts + 5\n"
        "# Print the answer.\nprint(total)\n"
        "Output: 29\nThe answer is \\boxed{29}.",
    ),
)

FORMATS: dict[str, StepFormat] = {
    # Few-shot prompt for an instruct model that was never trained on the format.
    "base": StepFormat(
        name="base",
        system=_BASE_SYSTEM,
        shots=_BASE_SHOTS,
        turn_template=_CHATML,
        assistant_prefix="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        stops=(STEP_STOP, OUTPUT_STOP, "<|im_end|>"),
    ),
    # Zero-shot prompt for a policy fine-tuned on our own trajectories (and for the PPM).
    "sft": StepFormat(
        name="sft",
        system="",
        shots=(),
        turn_template=_CHATML,
        assistant_prefix="<|im_start|>assistant\nLet's think step by step and solve the problem with code.\n",
        end_of_turn="<|im_end|>",
        stops=(STEP_STOP, OUTPUT_STOP, "<|im_end|>"),
    ),
}


def get_format(name: str) -> StepFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt_format {name!r}; known: {sorted(FORMATS)}") from None
