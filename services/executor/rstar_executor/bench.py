"""Sandbox overhead benchmark: caller-side wall time of a trivial execution.

`measure_overhead` times `print(1)` end to end as the search sees it (pool hand-off, IPC,
fork, jail setup, exec, teardown, result mapping); nothing is subtracted. Run it on a warm
executor: the first `warmup` calls, which may start workers, are not timed.

Non-goal: measuring the cost of user code itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from rstar_core.ports import CodeExecutor
from rstar_executor.sandbox import SandboxExecutor

__all__ = ["measure_overhead"]


async def measure_overhead(executor: CodeExecutor, n: int = 200, *, warmup: int = 10) -> dict:
    """Run `print(1)` n times, one after the other; return latency percentiles in ms.

    Raises RuntimeError if any run does not succeed (the numbers would be meaningless).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        await _run_ok(executor)
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        await _run_ok(executor)
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {
        "n": n,
        "p50_ms": _percentile(samples, 50),
        "p90_ms": _percentile(samples, 90),
        "p99_ms": _percentile(samples, 99),
        "mean_ms": sum(samples) / n,
        "max_ms": samples[-1],
    }


async def _run_ok(executor: CodeExecutor) -> None:
    result = await executor.run("print(1)")
    if not result.ok or result.stdout != "1\n":
        raise RuntimeError(f"benchmark run failed: {result.status.value} {result.error!r}")


def _percentile(sorted_samples: list[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


async def _main() -> None:
    async with SandboxExecutor() as executor:
        print(json.dumps({"isolation": executor.isolation, **await measure_overhead(executor)},
                         indent=2))


if __name__ == "__main__":
    asyncio.run(_main())
