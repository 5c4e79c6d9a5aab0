"""Token-confidence reward (Marco-o1, arXiv 2411.14405): a value from the policy's own logprobs.

For each generated token, with ``l`` the chosen token's log-probability and ``l_1..l_k`` those
of the k most likely tokens at that position (k = 5 in the paper)::

    c = exp(l) / sum_j exp(l_j)

so c is 1 when the model put (almost) all of the top-k mass on its choice and small when it
hesitated. A rollout's reward is the mean of c over its tokens. The chosen token may be
outside the top k (it was sampled at temperature > 0); it then counts against the top-k
mass alone, as in the paper, and c < 1/k.

Where the numbers come from: the policy engine asks its sampler for the top-k logprobs of
every generated token and reduces them with `mean_token_confidence` to one mean per
completion (`Completion.token_confidence`, with `num_tokens`); the search combines the means
of a path's nodes with `path_confidence`, weighting each by its token count, which is
exactly the mean over the path's tokens. Per-token values never cross the policy port.

Pure: no engine, no numpy. Not here: deciding where the value is used (`mcts`).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["mean_token_confidence", "path_confidence", "token_confidence"]


def token_confidence(chosen_logprob: float, top_logprobs: Sequence[float]) -> float:
    """``exp(chosen) / sum(exp(top))`` for one position, computed stably; in [0, 1].

    `top_logprobs` are the k alternatives' log-probabilities (the chosen token's own among
    them when it is in the top k). A chosen token more likely than the top-k mass can only
    come from inconsistent inputs, and is capped at 1.
    """
    if not top_logprobs:
        raise ValueError("top_logprobs must name at least one alternative")
    values = [float(x) for x in top_logprobs]
    if math.isnan(chosen_logprob) or any(math.isnan(v) for v in values):
        raise ValueError("logprobs must not be NaN")
    if chosen_logprob == -math.inf:
        return 0.0
    peak = max(values)
    if peak == -math.inf:
        raise ValueError("top_logprobs are all -inf but the chosen token has probability > 0")
    # exp(l) / sum exp(l_j) = exp(l - m) / sum exp(l_j - m) with m the largest l_j.
    mass = sum(math.exp(v - peak) for v in values)
    return min(1.0, math.exp(chosen_logprob - peak) / mass)


def mean_token_confidence(positions: Iterable[tuple[float, Sequence[float]]]) -> float | None:
    """Mean of `token_confidence` over (chosen logprob, top-k logprobs) positions; None if none."""
    total, count = 0.0, 0
    for chosen, top in positions:
        total += token_confidence(chosen, top)
        count += 1
    return total / count if count else None


def path_confidence(parts: Iterable[tuple[float | None, int]]) -> float | None:
    """The mean token confidence of consecutive texts from (mean, token count) per text.

    Parts without a confidence (none was asked, or no token had logprobs) or without tokens
    are left out; None when nothing remains.
    """
    total, count = 0.0, 0
    for mean, tokens in parts:
        if mean is None or tokens <= 0:
            continue
        total += mean * tokens
        count += tokens
    return total / count if count else None
