"""Settings of one SFT run of the policy, validated, loadable from a recipe mapping.

Defaults are the published recipe (REFERENCE.md §4: lr 7e-6, 2 epochs, weight decay 0.1,
linear schedule, length 2048); the CPU recipe in `deploy/configs/evolve/cpu.yaml`
overrides them for a 135M model on 2 cores. Unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["SFTConfig", "config_from_mapping"]


@dataclass(frozen=True)
class SFTConfig:
    learning_rate: float = 7e-6
    # Passes over the data; `max_steps` > 0 overrides it (optimizer steps).
    epochs: float = 2.0
    max_steps: int = -1
    # Sequences per device per forward; the optimizer step sees batch_size * grad_accum * devices.
    batch_size: int = 4
    grad_accum: int = 4
    max_length: int = 2048
    warmup_ratio: float = 0.0
    weight_decay: float = 0.1
    lr_scheduler: str = "linear"
    # A checkpoint every this many optimizer steps (resume point after a crash).
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    # Batches of similar lengths, so padding does not eat the compute.
    group_by_length: bool = True
    seed: int = 42
    # torch intra-op threads; None = torch's default.
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "save_total_limit", "logging_steps"):
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
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or null, got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_mapping(cls, data: Mapping[str, Any] | None, *, source: str):
    """`cls(**data)` with unknown keys and bad values reported as one `ValueError` naming `source`."""
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
