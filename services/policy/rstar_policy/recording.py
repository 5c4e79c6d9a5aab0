"""A policy wrapper that logs every request's prompt and its samples' token counts.

Used by the benchmarks to replay exactly the work a search asked for as one offline
engine batch (same prompts, same number of generated tokens). Each record also carries
when the request started and when each of its samples finished (wall-clock seconds), so
a benchmark can show how many sequences the engine had in flight over time. In the
policy service it is switched on by ``RSTAR_POLICY_REQUEST_LOG=<path.jsonl>``; off by default.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

from rstar_core.ports import Completion, GenerationRequest

__all__ = ["RecordingPolicy", "read_request_log", "read_request_timings"]


class RecordingPolicy:
    def __init__(self, inner: Any, log_path: str | Path | None = None) -> None:
        self.inner = inner
        self._log = Path(log_path).open("a", encoding="utf-8") if log_path else None
        # Without a log file: (prompt, temperature, sample token counts) per request,
        # and beside it (start, [finish time of each sample]).
        self.entries: list[tuple[str, float, list[int]]] = []
        self.timings: list[tuple[float, list[float]]] = []

    def __getattr__(self, name: str) -> Any:
        # Everything else (shutdown, tokenizer, settings) is the wrapped engine's.
        return getattr(self.inner, name)

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    async def generate(self, request: GenerationRequest) -> list[Completion]:
        start = time.time()
        completions = await self.inner.generate(request)
        done = time.time()
        self._record(request, [c.num_tokens for c in completions], start, [done] * len(completions))
        return completions

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Completion]:
        start = time.time()
        lengths: list[int] = []
        finished: list[float] = []
        try:
            async for completion in self.inner.generate_stream(request):
                lengths.append(completion.num_tokens)
                finished.append(time.time())
                yield completion
        finally:
            self._record(request, lengths, start, finished)

    def _record(self, request: GenerationRequest, lengths: list[int], start: float, finished: list[float]) -> None:
        if self._log is None:
            # In memory only when there is no file: a long-running service must not grow.
            self.entries.append((request.prompt, request.temperature, lengths))
            self.timings.append((start, finished))
            return
        line = json.dumps({"prompt": request.prompt, "temperature": request.temperature, "lengths": lengths,
                           "start": round(start, 4), "finished": [round(t, 4) for t in finished]})
        self._log.write(line + "\n")
        self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def read_request_log(path: str | Path) -> list[tuple[str, float, list[int]]]:
    """(prompt, temperature, sample token counts) per logged request."""
    return [(r["prompt"], r["temperature"], r["lengths"]) for r in _records(path)]


def read_request_timings(path: str | Path) -> list[tuple[float, list[float]]]:
    """(start, [finish time of each sample]) per logged request, in wall-clock seconds."""
    return [(r["start"], r["finished"]) for r in _records(path)]


def _records(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
