"""Sandbox overhead benchmark: caller-side wall time of a trivial execution.

`measure_overhead` times `print(1)` end to end as the search sees it (pool hand-off, IPC,
fork, jail setup, exec, teardown, result mapping); nothing is subtracted. Run it on a warm
executor: the first `warmup` calls, which may start workers, are not timed.

Back to back (the default) the calls also compete with the work each execution leaves
to the background (the next child's fork and jailing, the last child's teardown), so on
a small machine the figure is the pool's throughput as much as one call's latency. With
`spacing_s` the calls come that far apart, as executions do in a search (a few at a time
between engine outputs), and the figure is the latency of a warm pool.

Non-goal: measuring the cost of user code itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from rstar_core.ports import CodeExecutor
from rstar_executor.sandbox import SandboxExecutor

__all__ = ["SEARCH_LIKE_SPACING_S", "measure_overhead"]

# Time between calls in the spaced measurement: a search runs an expansion's few
# candidates as the engine returns them, tens of milliseconds apart on 2 cores.
SEARCH_LIKE_SPACING_S = 0.02


async def measure_overhead(executor: CodeExecutor, n: int = 200, *, warmup: int = 10,
                           spacing_s: float = 0.0) -> dict:
    """Run `print(1)` n times, one after the other (`spacing_s` apart); return latency
    percentiles in ms.

    Raises RuntimeError if any run does not succeed (the numbers would be meaningless).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if (isinstance(spacing_s, bool) or not isinstance(spacing_s, (int, float))
            or not math.isfinite(spacing_s) or spacing_s < 0):
        raise ValueError(f"spacing_s must be a finite number of seconds >= 0, got {spacing_s!r}")
    for _ in range(warmup):
        await _run_ok(executor)
    samples = []
    for _ in range(n):
        if spacing_s:
            await asyncio.sleep(spacing_s)
        began = time.perf_counter()
        await _run_ok(executor)
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {
        "n": n,
        "spacing_s": spacing_s,
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
        back_to_back = await measure_overhead(executor)
        spaced = await measure_overhead(executor, spacing_s=SEARCH_LIKE_SPACING_S)
        print(json.dumps({"isolation": executor.isolation, "back_to_back": back_to_back,
                          "spaced": spaced}, indent=2))


if __name__ == "__main__":
    asyncio.run(_main())
