"""Statistics for reports: accuracies with 95 % intervals and a paired test of two methods.

* `wilson_interval(successes, n)`: the Wilson score interval of a binomial proportion
  (sensible at 0 % and 100 %, unlike the normal approximation).
* `Accuracy.from_outcomes(outcomes)`: count, rate and interval of a list of per-item
  correct/incorrect outcomes.
* `paired_test(a, b)`: two methods (or two model versions) graded on the same items, compared
  by the exact McNemar test: a two-sided binomial test on the discordant items only, computed
  with integer arithmetic (`math.comb`), so it is exact for any n without scipy.

Non-goals: no multiple-comparison correction, no bootstrap or Bayesian intervals, no tests
for unpaired samples, no effect sizes beyond the difference of the two accuracies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

__all__ = ["Accuracy", "PairedTest", "paired_test", "wilson_interval"]

def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for `successes` out of `n`; (0, 1) when n is 0."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    if z <= 0:
        raise ValueError(f"z must be > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0 and n the bound is exactly 0 (or 1); rounding must not move it off.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class Accuracy:
    """`correct` out of `n` items, the rate and its 95 % Wilson interval [low, high]."""

    correct: int
    n: int
    rate: float
    low: float
    high: float

    @classmethod
    def from_counts(cls, correct: int, n: int) -> "Accuracy":
        low, high = wilson_interval(correct, n)
        return cls(correct, n, correct / n if n else 0.0, low, high)

    @classmethod
    def from_outcomes(cls, outcomes: Sequence[bool]) -> "Accuracy":
        return cls.from_counts(sum(bool(o) for o in outcomes), len(outcomes))

    def __str__(self) -> str:
        return (f"{100 * self.rate:.1f}% ({self.correct}/{self.n}, "
                f"95% CI {100 * self.low:.1f}-{100 * self.high:.1f}%)")


@dataclass(frozen=True)
class PairedTest:
    """Exact McNemar test of methods A and B graded on the same n items."""

    n: int
    # Items only A got right, items only B got right (the discordant pairs).
    a_only: int
    b_only: int
    # Two-sided exact p-value of "A and B are equally accurate".
    p_value: float
    # Accuracy of A minus accuracy of B, (a_only - b_only) / n.
    diff: float


def paired_test(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Compare per-item outcomes `a[i]`, `b[i]` of two methods on the same items."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = len(a)
    return PairedTest(
        n=n,
        a_only=a_only,
        b_only=b_only,
        p_value=_exact_mcnemar(a_only, b_only),
        diff=(a_only - b_only) / n if n else 0.0,
    )


def _exact_mcnemar(a_only: int, b_only: int) -> float:
    """Two-sided binomial test of a_only successes in a_only + b_only trials at p = 1/2."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(a_only, b_only) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**discordant)))
