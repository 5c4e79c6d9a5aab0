"""Round-0 bootstrap on real GSM8K train problems through the real sandbox."""

import asyncio
import json

import pytest

from rstar_core.bootstrap import convert_gsm8k, verify
from rstar_executor import SandboxExecutor

N_PROBLEMS = 200


@pytest.mark.slow
def test_first_200_gsm8k_problems_mostly_verify(data_dir):
    lines = (data_dir / "train" / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:N_PROBLEMS]
    records = [json.loads(line) for line in lines]
    conversions = [convert_gsm8k(r["question"], r["answer"], f"gsm8k-train-{i}") for i, r in enumerate(records)]

    async def run():
        async with SandboxExecutor() as executor:
            return await verify(conversions, executor)

    result = asyncio.run(run())
    counts = result.counts
    assert counts["total"] == N_PROBLEMS
    assert counts["correct"] == len(result.trajectories)
    assert counts["correct"] / N_PROBLEMS >= 0.85, counts
    # Anything the sandbox itself refused (timeouts, kills) would point at the sandbox, not the data.
    assert counts["ran"] == counts["converted"], counts
