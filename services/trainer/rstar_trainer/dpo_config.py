"""Settings of the step-DPO pass (MCTS++): the recipe's `step_dpo` section, validated, unknown keys rejected.

One mapping serves the recipe and the trainer: `enabled` is read by the `rstar evolve` driver
(whether the round runs the pass), the rest by `dpo_trainer.train_step_dpo`; the whole
section is kept with the registered version as its training config. A recipe may also say
`step_dpo: true` (the defaults) or `false` (off).

Defaults follow Step-DPO (Lai et al., 2024, arXiv 2406.18629: beta 0.4 for its 7B models,
lr 5e-7) scaled for a small model trained briefly: beta 0.1, lr 1e-6;
`deploy/configs/evolve/mctspp-cpu.yaml` sizes the run for 2 cores.

Not here: anything that imports torch or TRL (recipes are validated without them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from rstar_core.config import dataclass_from_mapping

__all__ = ["LOSS_TYPES", "StepDPOConfig", "step_dpo_config"]

# TRL's DPO losses that need nothing but the pairs: the paper's sigmoid loss, IPO, hinge.
LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass(frozen=True)
class StepDPOConfig:
    enabled: bool = False
    # Weight of the implicit KL to the reference (the round's SFT policy).
    beta: float = 0.1
    loss_type: str = "sigmoid"
    learning_rate: float = 1e-6
    max_steps: int = 50
    batch_size: int = 4
    grad_accum: int = 1
    # Tokens of prompt + completion; a longer pair is cut at its end (TRL keep_start).
    max_length: int = 768
    warmup_ratio: float = 0.1
    save_steps: int = 25
    save_total_limit: int = 2
    logging_steps: int = 1
    seed: int = 42
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "save_steps", "save_total_limit",
                     "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        for name, low_ok in (("beta", False), ("learning_rate", False), ("warmup_ratio", True)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value < 0 or (value == 0 and not low_ok)):
                raise ValueError(f"{name} must be a {'non-negative' if low_ok else 'positive'} number, got {value!r}")
        if self.warmup_ratio >= 1:
            raise ValueError(f"warmup_ratio must be below 1, got {self.warmup_ratio!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or null, got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def step_dpo_config(data: Any, *, source: str) -> StepDPOConfig:
    """The section as a config: a mapping, or true / false / null for the defaults, on or off."""
    if data is None or isinstance(data, bool):
        return StepDPOConfig(enabled=bool(data))
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping or true / false, got {type(data).__name__}")
    return dataclass_from_mapping(StepDPOConfig, data, source=source)
