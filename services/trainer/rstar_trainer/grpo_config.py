"""Settings of MCTS++'s GRPO stage: the recipe's `grpo` section, validated, unknown keys rejected.

One mapping serves the recipe and the trainer: `enabled` and `curriculum` are read by the
`rstar evolve` driver (whether the round runs GRPO, how it orders the round's problems:
`rstar_core.rl.curriculum`), the rest by `grpo_trainer.train_grpo`; the whole section is kept
with the registered version as its training config. `ppm_model` is set by the driver (the PPM
of the round, when `ppm_reward_weight` > 0), not by a recipe.

Defaults follow the usual GRPO settings for math (DeepSeekMath: lr 1e-6, KL beta 0.04,
8 samples per prompt); `deploy/configs/evolve/mctspp-cpu.yaml` shrinks them for 2 cores.

Not here: anything that imports torch or TRL (recipes are validated without them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from rstar_core.config import dataclass_from_mapping

__all__ = ["CurriculumSpec", "GRPOConfig", "grpo_config"]


@dataclass(frozen=True)
class CurriculumSpec:
    # Share of hard problems (no correct answer in their newest tree) in the round's draw:
    # start + step * (round - 1), clamped to [0, 1].
    hard_share_start: float = 0.2
    hard_share_step: float = 0.1

    def __post_init__(self) -> None:
        _finite(self, "hard_share_start", 0.0, 1.0)
        _finite(self, "hard_share_step", -1.0, 1.0)


@dataclass(frozen=True)
class GRPOConfig:
    enabled: bool = False
    # Optimizer steps; each sees `prompts_per_step` problems with `group_size` samples each.
    steps: int = 100
    group_size: int = 8
    prompts_per_step: int = 1
    # New tokens per sampled solution (a longer one is cut and is then neither formatted nor answered).
    max_completion_length: int = 512
    learning_rate: float = 1e-6
    # Weight of the KL penalty to the SFT policy (0: no reference model is loaded).
    beta: float = 0.04
    temperature: float = 1.0
    # Reward = answer (1 correct / 0) + format_reward_weight * format (1 / 0)
    #          + ppm_reward_weight * mean PPM step score (in [-1, 1]; 0 turns it off).
    format_reward_weight: float = 0.5
    ppm_reward_weight: float = 0.0
    # Set by the driver: the PPM directory scoring the steps when ppm_reward_weight > 0.
    ppm_model: str | None = None
    # Sandbox seconds per program of a replayed solution.
    exec_timeout_s: float = 5.0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    seed: int = 42
    threads: int | None = None
    curriculum: CurriculumSpec = field(default_factory=CurriculumSpec)

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be true or false, got {self.enabled!r}")
        for name in ("steps", "group_size", "prompts_per_step", "max_completion_length", "save_steps",
                     "save_total_limit", "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO compares samples of one prompt), got {self.group_size}")
        _finite(self, "learning_rate", 0.0, None, low_ok=False)
        _finite(self, "beta", 0.0, None)
        _finite(self, "temperature", 0.0, None, low_ok=False)
        _finite(self, "format_reward_weight", 0.0, None)
        _finite(self, "ppm_reward_weight", 0.0, None)
        _finite(self, "exec_timeout_s", 0.0, None, low_ok=False)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or null, got {self.threads!r}")
        if isinstance(self.curriculum, Mapping):
            object.__setattr__(self, "curriculum", dataclass_from_mapping(CurriculumSpec, self.curriculum,
                                                                          source="curriculum"))
        elif not isinstance(self.curriculum, CurriculumSpec):
            raise ValueError(f"curriculum must be a mapping, got {type(self.curriculum).__name__}")

    @property
    def prompts(self) -> int:
        """Problems the whole run reads (the length of its curriculum)."""
        return self.steps * self.prompts_per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def grpo_config(data: Mapping[str, Any] | None, *, source: str) -> GRPOConfig:
    """The section as a `GRPOConfig`; unknown keys and bad values are one `ValueError` naming `source`."""
    return dataclass_from_mapping(GRPOConfig, data, source=source)


def _finite(obj, name: str, low: float, high: float | None, *, low_ok: bool = True) -> None:
    value = getattr(obj, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not low_ok) or (high is not None and value > high):
        bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
