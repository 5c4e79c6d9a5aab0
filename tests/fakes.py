"""Hand-written fakes of the three ports, for unit tests of the pure core only."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Callable, Sequence

from rstar_core.ports import Completion, ExecutionResult, ExecutionStatus, GenerationRequest, ScoringItem


class ScriptedPolicy:
    """Answers each request with `script(prompt, call_index)` -> list of (text, stop) pairs."""

    model_version = "fake-policy@1"

    def __init__(self, script: Callable[[str, int], Sequence[tuple[str, str | None]]], delay_s: float = 0.0,
                 sample_delay_s: float = 0.0):
        self.script = script
        self.delay_s = delay_s
        self.sample_delay_s = sample_delay_s
        self.requests: list[GenerationRequest] = []
        # ("request", prompt) and ("sample", text) in the order they happened.
        self.events: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        self.requests.append(request)
        self.events.append(("request", request.prompt))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            pairs = self.script(request.prompt, len(self.requests) - 1)
        finally:
            self.in_flight -= 1
        return [
            Completion(text=text, finish_reason="stop", stop_string=stop, num_tokens=max(1, len(text) // 4))
            for text, stop in pairs[: request.n]
        ]

    async def generate_stream(self, request: GenerationRequest):
        """Samples finish in order; sample i takes `sample_delay_s * i` longer than the first."""
        completions = await self.generate(request)
        for i, completion in enumerate(completions):
            if i and self.sample_delay_s:
                await asyncio.sleep(self.sample_delay_s)
            self.events.append(("sample", completion.text))
            yield completion


class InlineExecutor:
    """Runs code with exec() in this process: fine for trusted test snippets only."""

    def __init__(self) -> None:
        self.programs: list[str] = []

    async def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        self.programs.append(code)
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<step>", "exec"), {})
        except Exception as exc:  # noqa: BLE001 - the sandbox reports any failure as data
            return ExecutionResult(ExecutionStatus.ERROR, out.getvalue(), error=f"{type(exc).__name__}: {exc}")
        return ExecutionResult(ExecutionStatus.OK, out.getvalue(), exit_code=0)


class FixedReward:
    """Scores a prefix by a function of its last step's text."""

    model_version = "fake-ppm@1"

    def __init__(self, fn: Callable[[ScoringItem], float] = lambda item: 0.5):
        self.fn = fn
        self.calls: list[list[ScoringItem]] = []

    async def score(self, items: Sequence[ScoringItem]) -> list[float]:
        self.calls.append(list(items))
        return [self.fn(item) for item in items]
