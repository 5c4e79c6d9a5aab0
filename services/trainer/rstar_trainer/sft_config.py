"""Settings of one SFT run of the policy, validated, loadable from a recipe mapping.

Defaults are the published recipe (REFERENCE.md §4: lr 7e-6, 2 epochs, weight decay 0.1,
linear schedule, length 2048); the CPU recipe in `deploy/configs/evolve/cpu.yaml`
overrides them for a 135M model on 2 cores. Unknown keys are rejected. The shared fields
and their checks are `run_config.RunConfig`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from .run_config import RunConfig, config_from_mapping

__all__ = ["SFTConfig", "config_from_mapping"]


@dataclass(frozen=True)
class SFTConfig(RunConfig):
    weight_decay: float = 0.1
