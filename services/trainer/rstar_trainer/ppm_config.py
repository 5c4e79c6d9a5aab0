"""Settings of one PPM training run, validated, loadable from a recipe mapping.

Defaults follow the published recipe where it is sound (REFERENCE.md §4: lr 7e-6, 2 epochs,
512 pairs per optimizer step on 8 GPUs, length 2048) and differ where it is not: the loss is
averaged over pairs (not summed) and sequences are padded per batch (not to 2048).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["PPMConfig"]


@dataclass(frozen=True)
class PPMConfig:
    learning_rate: float = 7e-6
    epochs: float = 2.0
    max_steps: int = -1
    # Pairs per device per forward (each pair is two sequences).
    batch_size: int = 16
    grad_accum: int = 4
    max_length: int = 2048
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    group_by_length: bool = True
    seed: int = 42
    threads: int | None = None
    # Pairs scored per forward when measuring held-out pair accuracy.
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "save_total_limit", "logging_steps",
                     "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.max_steps == 0 or not isinstance(self.max_steps, int) or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or a positive integer, got {self.max_steps!r}")
        if self.max_steps == -1 and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or null, got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
