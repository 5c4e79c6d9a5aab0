"""MCTS++'s optional step-DPO pass: DPO from the round's SFT policy on the round's step pairs (TRL `DPOTrainer`).

The dataset is a step-DPO set (`datasets.write_step_dpo_dataset`): the round's PPM pairs as
policy continuations: after the same prompt (question and shared steps), the step (or the
rest of the solution) that led to a correct answer is `chosen` and the one that led to a
wrong answer `rejected`. That is Step-DPO's data (Lai et al., 2024): preferences per step,
not per whole solution; MCTS gives them for free, with Q values behind each side.

The reference model is the start model (the round's SFT policy; TRL keeps a frozen copy),
so beta weighs how far the pass may move from it. Checkpoints, resume, the progress log and
the atomic final model (bf16 safetensors + tokenizer + `rstar_training.json`) are `common`'s,
as for SFT; bf16 autocast where `precision_args()` says so.

Not here: choosing the pairs (`rstar_core.curation.ppm_examples`), registering the version
(`jobs`), deciding when the pass runs (`rstar evolve`, `evolve_mctspp`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import ProgressLog, precision_args, run_metrics, run_training
from .dpo_config import StepDPOConfig
from .run_config import bookkeeping_arguments
from .sft_trainer import load_run

__all__ = ["train_step_dpo"]

log = logging.getLogger(__name__)


def train_step_dpo(start_model: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
                   config: StepDPOConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Step-DPO from `start_model` (also the reference) on a step-DPO set; returns the run's metrics."""
    from trl import DPOConfig, DPOTrainer

    run = load_run(start_model, "start model", dataset_dir, "dpo", work_dir, config.threads)
    if run.tokenizer.pad_token is None:
        run.tokenizer.pad_token = run.tokenizer.eos_token
    args = DPOConfig(
        output_dir=str(run.work),
        beta=config.beta,
        loss_type=[config.loss_type],
        learning_rate=config.learning_rate,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length,
        # transformers reads a warmup below 1 as a share of the steps (warmup_ratio is deprecated).
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="cosine",
        **bookkeeping_arguments(config, progress_bar=progress_bar),
        **precision_args(),
    )
    progress = ProgressLog(run.work, "step-dpo")
    trainer = DPOTrainer(model=run.model, args=args,
                         train_dataset=run.data.select_columns(["prompt", "chosen", "rejected"]),
                         processing_class=run.tokenizer, callbacks=[progress])
    result, resume, train_s = run_training(trainer, run.work, "step-DPO")
    logged = [entry for entry in trainer.state.log_history if "rewards/accuracies" in entry]
    metrics = {
        **run_metrics("step-dpo", result, trainer, progress, train_s, resume, run.info.content_hash),
        "pairs": len(run.data),
        "beta": config.beta,
        # The implicit reward's preference accuracy on the training batches, first and last logged.
        "first_reward_accuracy": logged[0]["rewards/accuracies"] if logged else None,
        "last_reward_accuracy": logged[-1]["rewards/accuracies"] if logged else None,
        "last_reward_margin": logged[-1].get("rewards/margins") if logged else None,
        "precision": "bf16-autocast" if args.bf16 else ("fp16" if args.fp16 else "float32"),
    }
    if not trainer.is_world_process_zero():
        return metrics
    run.save(trainer, out_dir, metrics, config)
    log.info("step-DPO done: %d steps, loss %s -> %s -> %s", metrics["steps"], metrics["first_loss"],
             metrics["last_loss"], out_dir)
    return metrics
