"""A policy wrapper that logs every request's prompt and its samples' token counts.

Used by the benchmarks to replay exactly the work a search asked for as one offline
engine batch (same prompts, same number of generated tokens). In the policy service it
is switched on by ``RSTAR_POLICY_REQUEST_LOG=<path.jsonl>``; off by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

from rstar_core.ports import Completion, GenerationRequest

__all__ = ["RecordingPolicy", "read_request_log"]


class RecordingPolicy:
    def __init__(self, inner: Any, log_path: str | Path | None = None) -> None:
        self.inner = inner
        self._log = Path(log_path).open("a", encoding="utf-8") if log_path else None
        # Without a log file: (prompt, temperature, sample token counts) per request.
        self.entries: list[tuple[str, float, list[int]]] = []

    def __getattr__(self, name: str) -> Any:
        # Everything else (shutdown, tokenizer, settings) is the wrapped engine's.
        return getattr(self.inner, name)

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        completions = await self.inner.generate(request)
        self._record(request, [c.num_tokens for c in completions])
        return completions

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Completion]:
        lengths: list[int] = []
        try:
            async for completion in self.inner.generate_stream(request):
                lengths.append(completion.num_tokens)
                yield completion
        finally:
            self._record(request, lengths)

    def _record(self, request: GenerationRequest, lengths: list[int]) -> None:
        if self._log is None:
            # In memory only when there is no file: a long-running service must not grow.
            self.entries.append((request.prompt, request.temperature, lengths))
            return
        line = json.dumps({"prompt": request.prompt, "temperature": request.temperature, "lengths": lengths})
        self._log.write(line + "\n")
        self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def read_request_log(path: str | Path) -> list[tuple[str, float, list[int]]]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out.append((record["prompt"], record["temperature"], record["lengths"]))
    return out
