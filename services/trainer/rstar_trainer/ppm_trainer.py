"""Training the process preference model on a round's step pairs (Bradley-Terry loss).

The PPM is initialised from the round's fine-tuned policy (`ProcessPreferenceModel.from_policy`:
the decoder plus a fresh linear value head) and trained on (chosen, rejected) pairs with
`pairwise_loss` on the raw head logits, averaged over pairs; serving applies tanh to the
same forward, so there is no train/serve mismatch. The pair texts are the reward model's
own rendering (`rstar_trainer.datasets`).

transformers' `Trainer` runs the loop (mixed precision, gradient accumulation, schedule,
checkpoints, resume); it cannot express a pairwise loss by itself, so `_PairTrainer`
overrides `compute_loss` only, and `_PairCollator` puts a batch's chosen sequences first
and its rejected ones second in one padded tensor (one forward for both sides).
After training, pair accuracy (r(chosen) > r(rejected)) is measured on the held-out split,
which is split by problem.

Not here: building pairs (`rstar_core.curation`), registering the version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from rstar_reward.ppm import ProcessPreferenceModel, pairwise_loss

from .common import ProgressLog, atomic_output, check_model_dir, precision_args, run_metrics, run_training
from .run_config import training_arguments
from .datasets import load_training_set
from .ppm_config import PPMConfig

__all__ = ["pair_accuracy", "train_ppm"]

log = logging.getLogger(__name__)


@dataclass
class _PairCollator:
    tokenizer: Any
    max_length: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [r["prompt"] + r["chosen"] for r in rows] + [r["prompt"] + r["rejected"] for r in rows]
        # Left truncation (set by the PPM's tokenizer): the end of a prefix is what is scored.
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             padding_side="right", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class _PairTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(inputs["input_ids"], inputs["attention_mask"])
        half = inputs["input_ids"].shape[0] // 2
        loss = pairwise_loss(out.raw[:half], out.raw[half:])
        return (loss, out) if return_outputs else loss


def train_ppm(policy_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
              config: PPMConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Train a PPM from `policy_dir` on the pair set; returns its metrics (also in out_dir)."""
    policy = check_model_dir(policy_dir, "policy model")
    data, info = load_training_set(dataset_dir, "ppm")
    if config.threads:
        torch.set_num_threads(config.threads)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = ProcessPreferenceModel.from_policy(policy, dtype="float32", seed=config.seed)
    train_set = data["train"]
    lengths = [len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) for r in train_set]
    args = TrainingArguments(
        **training_arguments(config, work, progress_bar=progress_bar),
        length_column_name="length",
        remove_unused_columns=False,
        **precision_args(),
    )
    progress = ProgressLog(work, "ppm")
    trainer = _PairTrainer(model=model, args=args, train_dataset=train_set.add_column("length", lengths),
                           data_collator=_PairCollator(model.tokenizer, config.max_length), callbacks=[progress])
    result, resume, train_s = run_training(trainer, work, "PPM training")
    model.eval()
    heldout = data["heldout"] if "heldout" in data else None
    metrics = {
        **run_metrics("ppm", result, trainer, progress, train_s, resume, info.content_hash),
        "train_pairs": len(train_set),
        "pairs_per_s": round(len(train_set) * (trainer.state.epoch or 0) / train_s, 2) if train_s else None,
        "heldout_pairs": len(heldout) if heldout is not None else 0,
        "heldout_pair_accuracy": pair_accuracy(model, heldout, config) if heldout is not None else None,
    }
    if not trainer.is_world_process_zero():
        return metrics  # under a multi-process launch the main process writes the model
    with atomic_output(out_dir) as staging:
        model.backbone.to(torch.bfloat16)
        model.save_pretrained(staging)
        (staging / "rstar_training.json").write_text(json.dumps(
            {"metrics": metrics, "config": config.to_dict(), "policy": str(policy),
             "dataset": {"path": info.path, **info.manifest}}, indent=2) + "\n")
    log.info("PPM done: %d steps, held-out pair accuracy %s -> %s", metrics["steps"],
             metrics["heldout_pair_accuracy"], out_dir)
    return metrics


def pair_accuracy(model: ProcessPreferenceModel, pairs, config: PPMConfig) -> float | None:
    """Share of pairs whose chosen side scores above the rejected side."""
    if pairs is None or len(pairs) == 0:
        return None
    collate = _PairCollator(model.tokenizer, config.max_length)
    wins = 0
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_args().get("bf16", False)
                              and model.device.type == "cpu")
    with torch.inference_mode(), autocast:
        for start in range(0, len(pairs), config.eval_batch_size):
            rows = [pairs[i] for i in range(start, min(start + config.eval_batch_size, len(pairs)))]
            batch = collate(rows)
            raw = model(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)).raw
            half = len(rows)
            wins += int((raw[:half] > raw[half:]).sum())
    return round(wins / len(pairs), 4)
