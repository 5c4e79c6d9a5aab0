"""Conversions between the `rstar.v1` messages and the core value types.

The `*_from_proto` functions for requests are where servers validate their input: they
raise `ValueError` whose message names the offending field (``requests[2].n must be >= 1``),
which the server turns into INVALID_ARGUMENT. Conversions of responses trust the server.

Not here: transport concerns (deadlines, retries, status codes) and per-server limits
such as the largest n or batch a server accepts (the services check those).
"""

from __future__ import annotations

import math
from typing import Sequence

from rstar_core.ports import (
    Completion,
    ExecutionResult,
    ExecutionStatus,
    GenerationRequest,
    ScoringItem,
)

from .gen.rstar.v1 import executor_pb2, policy_pb2, reward_pb2

__all__ = [
    "completion_from_proto",
    "completion_to_proto",
    "execution_result_from_proto",
    "execution_result_to_proto",
    "generation_request_from_proto",
    "generation_request_to_proto",
    "run_request_from_proto",
    "run_request_to_proto",
    "scoring_items_from_proto",
    "scoring_items_to_proto",
]

_STATUS_TO_PROTO = {
    ExecutionStatus.OK: executor_pb2.EXECUTION_STATUS_OK,
    ExecutionStatus.ERROR: executor_pb2.EXECUTION_STATUS_ERROR,
    ExecutionStatus.TIMEOUT: executor_pb2.EXECUTION_STATUS_TIMEOUT,
    ExecutionStatus.MEMORY: executor_pb2.EXECUTION_STATUS_MEMORY,
    ExecutionStatus.OUTPUT_LIMIT: executor_pb2.EXECUTION_STATUS_OUTPUT_LIMIT,
    ExecutionStatus.KILLED: executor_pb2.EXECUTION_STATUS_KILLED,
}
_STATUS_FROM_PROTO = {v: k for k, v in _STATUS_TO_PROTO.items()}


def _field_error(field: str, exc: ValueError) -> ValueError:
    # Core validators name the field ("n must be >= 1"); prefix it with its place in a batch.
    return ValueError(f"{field}{exc}") if field else exc


# ---- policy ---------------------------------------------------------------------------


def generation_request_to_proto(request: GenerationRequest) -> policy_pb2.GenerateRequest:
    message = policy_pb2.GenerateRequest(
        prompt=request.prompt, n=request.n, temperature=request.temperature, top_p=request.top_p,
        max_tokens=request.max_tokens, stop=list(request.stop), logprobs=request.logprobs)
    if request.seed is not None:
        message.seed = request.seed
    return message


def generation_request_from_proto(message: policy_pb2.GenerateRequest, *, field: str = "") -> GenerationRequest:
    """Validate and convert; `field` prefixes error messages (``"requests[3]."``)."""
    if not message.prompt:
        raise ValueError(f"{field}prompt must not be empty")
    if not math.isfinite(message.temperature):
        raise ValueError(f"{field}temperature must be finite, got {message.temperature}")
    if message.logprobs < 0:
        raise ValueError(f"{field}logprobs must be >= 0, got {message.logprobs}")
    for i, stop in enumerate(message.stop):
        if not stop:
            raise ValueError(f"{field}stop[{i}] must not be empty")
    try:
        return GenerationRequest(
            prompt=message.prompt, n=message.n, temperature=message.temperature,
            top_p=message.top_p, max_tokens=message.max_tokens, stop=tuple(message.stop),
            seed=message.seed if message.HasField("seed") else None, logprobs=message.logprobs)
    except ValueError as exc:
        raise _field_error(field, exc) from None


def completion_to_proto(completion: Completion) -> policy_pb2.Completion:
    message = policy_pb2.Completion(text=completion.text, finish_reason=completion.finish_reason,
                                    num_tokens=completion.num_tokens)
    if completion.stop_string is not None:
        message.stop_string = completion.stop_string
    if completion.token_confidence is not None:
        message.token_confidence = completion.token_confidence
    return message


def completion_from_proto(message: policy_pb2.Completion) -> Completion:
    return Completion(
        text=message.text, finish_reason=message.finish_reason,
        stop_string=message.stop_string if message.HasField("stop_string") else None,
        num_tokens=message.num_tokens,
        token_confidence=message.token_confidence if message.HasField("token_confidence") else None)


# ---- reward ---------------------------------------------------------------------------


def scoring_items_to_proto(items: Sequence[ScoringItem]) -> list[reward_pb2.ScoringItem]:
    return [reward_pb2.ScoringItem(question=item.question, steps=list(item.steps)) for item in items]


def scoring_items_from_proto(messages: Sequence[reward_pb2.ScoringItem]) -> list[ScoringItem]:
    items = []
    for i, message in enumerate(messages):
        if not message.question:
            raise ValueError(f"items[{i}].question must not be empty")
        items.append(ScoringItem(question=message.question, steps=tuple(message.steps)))
    return items


# ---- executor -------------------------------------------------------------------------


def run_request_to_proto(code: str, timeout_s: float | None) -> executor_pb2.RunRequest:
    message = executor_pb2.RunRequest(code=code)
    if timeout_s is not None:
        message.timeout_s = timeout_s
    return message


def run_request_from_proto(message: executor_pb2.RunRequest, *, max_timeout_s: float,
                           field: str = "") -> tuple[str, float | None]:
    """(code, timeout_s); the timeout must be positive, finite and at most `max_timeout_s`."""
    if not message.HasField("timeout_s"):
        return message.code, None
    timeout = message.timeout_s
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{field}timeout_s must be a positive number of seconds, got {timeout}")
    if timeout > max_timeout_s:
        raise ValueError(f"{field}timeout_s must be at most {max_timeout_s:g}, got {timeout:g}")
    return message.code, timeout


def execution_result_to_proto(result: ExecutionResult) -> executor_pb2.ExecutionResult:
    message = executor_pb2.ExecutionResult(
        status=_STATUS_TO_PROTO[result.status], stdout=result.stdout, stderr=result.stderr,
        duration_s=result.duration_s, error=result.error)
    if result.exit_code is not None:
        message.exit_code = result.exit_code
    return message


def execution_result_from_proto(message: executor_pb2.ExecutionResult) -> ExecutionResult:
    try:
        status = _STATUS_FROM_PROTO[message.status]
    except KeyError:
        # A newer server's status this client does not know yet: a failure all the same.
        status = ExecutionStatus.ERROR
    return ExecutionResult(
        status=status, stdout=message.stdout, stderr=message.stderr,
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        duration_s=message.duration_s, error=message.error)
