"""Settings of one PPM training run (and of the ORM and PQM baselines), validated, loadable from a recipe.

Defaults follow the published recipe where it is sound (REFERENCE.md §4: lr 7e-6, 2 epochs,
512 pairs per optimizer step on 8 GPUs, length 2048) and differ where it is not: the loss is
averaged over pairs (not summed) and sequences are padded per batch (not to 2048). The shared
fields and their checks are `run_config.RunConfig`'s. The ORM and PQM baselines train with the
same settings, so that the ablation changes the objective only; their `batch_size` and
`eval_batch_size` count rows of one sequence each instead of pairs of two.
"""

from __future__ import annotations

from dataclasses import dataclass

from .run_config import RunConfig

__all__ = ["PPMConfig"]


@dataclass(frozen=True)
class PPMConfig(RunConfig):
    # Pairs per device per forward (each pair is two sequences; ORM/PQM: rows of one).
    batch_size: int = 16
    # Pairs (ORM/PQM: rows) scored per forward when measuring the held-out metrics.
    eval_batch_size: int = 16

    def _positive_ints(self) -> tuple[str, ...]:
        return (*super()._positive_ints(), "eval_batch_size")
