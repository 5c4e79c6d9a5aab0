"""What every training run's settings share: the optimizer, schedule, checkpoint and batch knobs.

`RunConfig` holds the fields the SFT and PPM runs have in common and validates them once;
`SFTConfig` and `PPMConfig` subclass it with their own defaults and extra fields.
`training_arguments()` turns those fields into the `TrainingArguments` keywords both trainers
pass; `config_from_mapping()` builds a config from a recipe mapping (unknown keys rejected).

Not here: anything that imports torch or transformers (recipes are validated without them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rstar_core.config import dataclass_from_mapping

__all__ = ["RunConfig", "bookkeeping_arguments", "config_from_mapping", "training_arguments"]

_POSITIVE_INTS = ("batch_size", "grad_accum", "max_length", "save_steps", "save_total_limit", "logging_steps")


@dataclass(frozen=True)
class RunConfig:
    learning_rate: float = 7e-6
    # Passes over the data; `max_steps` > 0 overrides it (optimizer steps).
    epochs: float = 2.0
    max_steps: int = -1
    # Examples (SFT) or pairs (PPM) per device per forward; an optimizer step sees
    # batch_size * grad_accum * devices of them.
    batch_size: int = 4
    grad_accum: int = 4
    max_length: int = 2048
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    # A checkpoint every this many optimizer steps (resume point after a crash).
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    # Batches of similar lengths, so padding does not eat the compute.
    group_by_length: bool = True
    # Recompute activations in the backward instead of keeping them: memory for about a third
    # more compute. Off by default (TRL's SFTConfig turns it on): a small model fits without
    # it, and on a CPU it cost 18 % of the SFT step (docs/benchmarks.md). The paper recipe
    # turns it on for 7B policies.
    gradient_checkpointing: bool = False
    seed: int = 42
    # torch intra-op threads; None = torch's default.
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in self._positive_ints():
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
        for name in ("group_by_length", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or null, got {self.threads!r}")

    def _positive_ints(self) -> tuple[str, ...]:
        return _POSITIVE_INTS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def training_arguments(config: RunConfig, work_dir: str | Path, *, progress_bar: bool) -> dict[str, Any]:
    """The `TrainingArguments` keywords that follow from `config` alone (precision is the caller's)."""
    return {
        "output_dir": str(work_dir),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        # transformers reads a warmup below 1 as a share of the steps (warmup_ratio is deprecated).
        "warmup_steps": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "lr_scheduler_type": config.lr_scheduler,
        "train_sampling_strategy": "group_by_length" if config.group_by_length else "random",
        "gradient_checkpointing": config.gradient_checkpointing,
        **bookkeeping_arguments(config, progress_bar=progress_bar),
    }


def bookkeeping_arguments(config: Any, *, progress_bar: bool) -> dict[str, Any]:
    """The keywords every trainer's arguments share: checkpoints every `save_steps` (at most
    `save_total_limit` kept), logging, one seed for model and data, no reporting services."""
    return {
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "logging_steps": config.logging_steps,
        "seed": config.seed,
        "data_seed": config.seed,
        "report_to": "none",
        "disable_tqdm": not progress_bar,
        "dataloader_num_workers": 0,
    }


def config_from_mapping(cls, data: Mapping[str, Any] | None, *, source: str):
    """`cls(**data)` with unknown keys and bad values reported as one `ValueError` naming `source`."""
    return dataclass_from_mapping(cls, data, source=source)
