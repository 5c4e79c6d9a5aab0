"""The sandbox overhead benchmark's measurement: its spacing logic with an instant fake, its figures on the real sandbox."""

from __future__ import annotations

import asyncio
import time

import pytest

from rstar_core.ports import ExecutionResult, ExecutionStatus
from rstar_executor import SandboxExecutor, SandboxSettings
from rstar_executor.bench import measure_overhead


def measure(**kwargs) -> tuple[dict, float]:
    async def main():
        async with SandboxExecutor(SandboxSettings(pool_size=2)) as ex:
            began = time.perf_counter()
            result = await measure_overhead(ex, **kwargs)
            return result, time.perf_counter() - began

    return asyncio.run(main())


def test_back_to_back_reports_ordered_percentiles():
    result, _ = measure(n=20, warmup=2)
    assert result["n"] == 20 and result["spacing_s"] == 0.0
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]


class InstantExecutor:
    """Answers `print(1)` at once and notes when each call came (pure logic of the spacing)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def run(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        self.calls.append(time.monotonic())
        return ExecutionResult(status=ExecutionStatus.OK, stdout="1\n")


def test_spaced_calls_pause_between_runs_outside_the_timed_part():
    ex = InstantExecutor()
    result = asyncio.run(measure_overhead(ex, n=6, warmup=1, spacing_s=0.05))
    assert result["spacing_s"] == 0.05 and len(ex.calls) == 7
    gaps = [b - a for a, b in zip(ex.calls[1:], ex.calls[2:])]
    # (asyncio may wake a timer up to its clock's resolution early)
    assert all(gap >= 0.045 for gap in gaps)
    # Were the pause timed, every sample would be at least 50 ms.
    assert result["p50_ms"] < 50


def test_spaced_measurement_on_the_real_sandbox():
    result, elapsed = measure(n=5, warmup=1, spacing_s=0.02)
    assert result["n"] == 5 and elapsed >= 5 * 0.02
    assert 0 < result["p50_ms"] <= result["max_ms"]


@pytest.mark.parametrize("kwargs, field", [
    ({"n": 0}, "n"), ({"warmup": -1}, "warmup"), ({"spacing_s": -0.1}, "spacing_s"),
    ({"spacing_s": float("nan")}, "spacing_s"), ({"spacing_s": True}, "spacing_s"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        asyncio.run(measure_overhead(object(), **kwargs))
