"""The policy engine's reduction of vLLM's per-position logprobs to one token confidence (no engine)."""

import math
from dataclasses import dataclass

import pytest

from rstar_policy.engine import completion_confidence


@dataclass
class Logprob:  # the fields of vllm.logprobs.Logprob the reduction reads
    logprob: float
    rank: int | None


def test_sampled_token_inside_the_top_k_is_normalised_over_the_top_k():
    # vLLM: {sampled token (its rank), top-1..top-k}; here the sampled token is the top-2.
    position = {7: Logprob(math.log(0.3), 2), 5: Logprob(math.log(0.6), 1)}
    assert completion_confidence([7], [position], top_k=2) == pytest.approx(0.3 / 0.9)


def test_sampled_token_outside_the_top_k_does_not_count_in_the_denominator():
    position = {9: Logprob(math.log(0.05), 7), 1: Logprob(math.log(0.5), 1), 2: Logprob(math.log(0.25), 2)}
    assert completion_confidence([9], [position], top_k=2) == pytest.approx(0.05 / 0.75)


def test_the_mean_runs_over_positions_that_carry_the_sampled_token():
    sure = {3: Logprob(0.0, 1)}
    assert completion_confidence([3, 4, 3], [sure, {}, sure], top_k=5) == pytest.approx(1.0)
    assert completion_confidence([4], [{}], top_k=5) is None
