"""Settings of MCTS process supervision (arXiv 2501.01478): its two constants and its training run.

`alpha` scales a step's relative correctness when the data is collected
(`rstar_core.process_supervision`); `beta` weighs the KL penalty to the previous round's
policy in the loss (`process_trainer`). The run's other fields and their checks are
`run_config.RunConfig`'s. Both constants live in this one recipe section so that a round's
registered version records the whole method's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .run_config import RunConfig

__all__ = ["ProcessConfig"]


@dataclass(frozen=True)
class ProcessConfig(RunConfig):
    # Scale of a step's score alpha * (Q(step) - Q(prefix)); Q is in [-1, 1], so scores are in
    # [-2 alpha, 2 alpha].
    alpha: float = 1.0
    # Weight of the mean token-level KL(policy || previous round's policy); 0 turns it off.
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low_ok in (("alpha", False), ("beta", True)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and not low_ok):
                raise ValueError(f"{name} must be a finite number {'>=' if low_ok else '>'} 0, got {value!r}")
