"""Training the reward models: the PPM on step pairs, and the ORM and PQM baselines of the ablation.

All three are one model (`ProcessPreferenceModel`: the round's fine-tuned policy's decoder plus
a fresh linear value head read at the last token) trained by one code path; only the loss,
the batch layout and the held-out metrics differ (an `_Objective`):

* ``ppm`` (`train_ppm`): (chosen, rejected) pairs, `pairwise_loss` (Bradley-Terry on the raw
  logits) averaged over pairs; `_PairCollator` puts a batch's chosen sequences first and its
  rejected ones second in one padded tensor (one forward for both sides). Held out: pair
  accuracy (r(chosen) > r(rejected)).
* ``orm`` (`train_orm`): whole solutions labelled by their answer's correctness,
  `outcome_loss` (BCE on the raw logit). Held out: accuracy of ``sigmoid(raw) > 0.5``.
* ``pqm`` (`train_pqm`): step prefixes with their Q values, `q_value_loss` (MSE of the tanh
  score; `rstar_reward.ppm` says why tanh rather than the raw logit). Held out: MSE, and pair
  accuracy over the steps of one problem whose Q values differ (is the higher-Q step scored
  higher?), the PPM's own measure, so the two can be read side by side.

Serving applies tanh to the same forward for all three, so there is no train/serve mismatch
and any of them plugs into the reward port. The texts are the reward model's own rendering
(`rstar_trainer.datasets`).

transformers' `Trainer` runs the loop (mixed precision, gradient accumulation, schedule,
checkpoints, resume); `_ValueTrainer` overrides `compute_loss` only. The held-out split is
made by problem.

Not here: building examples (`rstar_core.curation`), registering the version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import Trainer, TrainingArguments

from rstar_reward.ppm import ProcessPreferenceModel, outcome_loss, pairwise_loss, q_value_loss

from .common import ProgressLog, atomic_output, check_model_dir, precision_args, run_metrics, run_training
from .run_config import training_arguments
from .datasets import load_training_set
from .ppm_config import PPMConfig

__all__ = ["orm_accuracy", "pair_accuracy", "pqm_metrics", "train_orm", "train_ppm", "train_pqm"]

log = logging.getLogger(__name__)


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    # Left truncation (set by the PPM's tokenizer): the end of a prefix is what is scored.
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, padding_side="right",
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@dataclass
class _PairCollator:
    tokenizer: Any
    max_length: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [r["prompt"] + r["chosen"] for r in rows] + [r["prompt"] + r["rejected"] for r in rows]
        return _encode(self.tokenizer, texts, self.max_length)


@dataclass
class _TargetCollator:
    """One sequence per row (`text`) and its float `target` (the ORM's label, the PQM's Q)."""

    tokenizer: Any
    max_length: int
    column: str

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = _encode(self.tokenizer, [r["text"] for r in rows], self.max_length)
        # Not called "labels": Trainer would count it as tokens of a language-model loss.
        batch["target"] = torch.tensor([float(r[self.column]) for r in rows], dtype=torch.float32)
        return batch


def _pair_loss(raw: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    half = raw.shape[0] // 2
    return pairwise_loss(raw[:half], raw[half:])


@dataclass(frozen=True)
class _Objective:
    kind: str
    # What one row is, in metric names: "pairs" or "examples".
    unit: str
    collator: Callable[[Any, int], Any]
    loss: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
    # Characters of a row's longest sequence: the length that groups batches.
    length: Callable[[dict[str, Any]], int]
    heldout: Callable[[ProcessPreferenceModel, Any, PPMConfig], dict[str, Any]]


class _ValueTrainer(Trainer):
    def __init__(self, *args, value_loss, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.value_loss = value_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(inputs["input_ids"], inputs["attention_mask"])
        loss = self.value_loss(out.raw, inputs)
        return (loss, out) if return_outputs else loss


def train_ppm(policy_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
              config: PPMConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Train a PPM from `policy_dir` on the pair set; returns its metrics (also in out_dir)."""
    return _train(_OBJECTIVES["ppm"], policy_dir, dataset_dir, out_dir, work_dir, config, progress_bar)


def train_orm(policy_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
              config: PPMConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Train an outcome reward model from `policy_dir` on an ORM set; returns its metrics."""
    return _train(_OBJECTIVES["orm"], policy_dir, dataset_dir, out_dir, work_dir, config, progress_bar)


def train_pqm(policy_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
              config: PPMConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Train a pointwise Q-value model from `policy_dir` on a PQM set; returns its metrics."""
    return _train(_OBJECTIVES["pqm"], policy_dir, dataset_dir, out_dir, work_dir, config, progress_bar)


def _train(objective: _Objective, policy_dir, dataset_dir, out_dir, work_dir, config: PPMConfig,
           progress_bar: bool) -> dict[str, Any]:
    kind, unit = objective.kind, objective.unit
    policy = check_model_dir(policy_dir, "policy model")
    data, info = load_training_set(dataset_dir, kind)
    if config.threads:
        torch.set_num_threads(config.threads)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = ProcessPreferenceModel.from_policy(policy, dtype="float32", seed=config.seed, objective=kind)
    train_set = data["train"]
    args = TrainingArguments(
        **training_arguments(config, work, progress_bar=progress_bar),
        length_column_name="length",
        remove_unused_columns=False,
        **precision_args(),
    )
    progress = ProgressLog(work, kind)
    trainer = _ValueTrainer(model=model, args=args,
                            train_dataset=train_set.add_column("length", [objective.length(r) for r in train_set]),
                            data_collator=objective.collator(model.tokenizer, config.max_length),
                            callbacks=[progress], value_loss=objective.loss)
    result, resume, train_s = run_training(trainer, work, f"{kind.upper()} training")
    model.eval()
    heldout = data["heldout"] if "heldout" in data else None
    metrics = {
        **run_metrics(kind, result, trainer, progress, train_s, resume, info.content_hash),
        f"train_{unit}": len(train_set),
        f"{unit}_per_s": round(len(train_set) * (trainer.state.epoch or 0) / train_s, 2) if train_s else None,
        f"heldout_{unit}": len(heldout) if heldout is not None else 0,
        **objective.heldout(model, heldout, config),
    }
    if not trainer.is_world_process_zero():
        return metrics  # under a multi-process launch the main process writes the model
    with atomic_output(out_dir) as staging:
        model.backbone.to(torch.bfloat16)
        model.save_pretrained(staging)
        (staging / "rstar_training.json").write_text(json.dumps(
            {"metrics": metrics, "config": config.to_dict(), "policy": str(policy),
             "dataset": {"path": info.path, **info.manifest}}, indent=2) + "\n")
    log.info("%s done: %d steps, held-out %s -> %s", kind.upper(), metrics["steps"],
             {k: v for k, v in metrics.items() if k.startswith("heldout_")}, out_dir)
    return metrics


def _raw_scores(model: ProcessPreferenceModel, rows, collate, batch_size: int) -> Iterator[tuple[list, torch.Tensor]]:
    """(rows, raw logits) batch by batch, without gradients, in the training compute type."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_args().get("bf16", False)
                              and model.device.type == "cpu")
    with torch.inference_mode(), autocast:
        for start in range(0, len(rows), batch_size):
            batch_rows = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
            batch = collate(batch_rows)
            raw = model(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)).raw
            yield batch_rows, raw.float().cpu()


def pair_accuracy(model: ProcessPreferenceModel, pairs, config: PPMConfig) -> float | None:
    """Share of pairs whose chosen side scores above the rejected side."""
    if pairs is None or len(pairs) == 0:
        return None
    wins = 0
    for rows, raw in _raw_scores(model, pairs, _PairCollator(model.tokenizer, config.max_length),
                                 config.eval_batch_size):
        half = len(rows)
        wins += int((raw[:half] > raw[half:]).sum())
    return round(wins / len(pairs), 4)


def orm_accuracy(model: ProcessPreferenceModel, rows, config: PPMConfig) -> float | None:
    """Share of solutions whose predicted outcome (``sigmoid(raw) > 0.5``) is their label."""
    if rows is None or len(rows) == 0:
        return None
    right = 0
    for batch_rows, raw in _raw_scores(model, rows, _TargetCollator(model.tokenizer, config.max_length, "label"),
                                       config.eval_batch_size):
        labels = torch.tensor([r["label"] for r in batch_rows]).bool()
        right += int(((raw > 0) == labels).sum())
    return round(right / len(rows), 4)


def pqm_metrics(model: ProcessPreferenceModel, rows, config: PPMConfig) -> dict[str, float | None]:
    """Held-out MSE of the served score against Q, and pair accuracy within each problem.

    A pair is two steps of one problem whose Q values differ; it is won when the higher-Q
    step gets the higher score.
    """
    if rows is None or len(rows) == 0:
        return {"heldout_mse": None, "heldout_pair_accuracy": None}
    scored: dict[str, list[tuple[float, float]]] = {}
    squared = 0.0
    for batch_rows, raw in _raw_scores(model, rows, _TargetCollator(model.tokenizer, config.max_length, "q"),
                                       config.eval_batch_size):
        for row, score in zip(batch_rows, torch.tanh(raw).tolist()):
            squared += (score - row["q"]) ** 2
            scored.setdefault(row["problem_id"], []).append((row["q"], score))
    pairs = wins = 0
    for steps in scored.values():
        for i, (q_a, s_a) in enumerate(steps):
            for q_b, s_b in steps[i + 1:]:
                if q_a != q_b:
                    pairs += 1
                    wins += (s_a - s_b) * (q_a - q_b) > 0
    return {"heldout_mse": round(squared / len(rows), 4),
            "heldout_pair_accuracy": round(wins / pairs, 4) if pairs else None}


_OBJECTIVES = {
    "ppm": _Objective(
        "ppm", "pairs", _PairCollator, _pair_loss,
        lambda r: len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])),
        lambda model, rows, config: {"heldout_pair_accuracy": pair_accuracy(model, rows, config)}),
    "orm": _Objective(
        "orm", "examples", lambda tok, n: _TargetCollator(tok, n, "label"),
        lambda raw, inputs: outcome_loss(raw, inputs["target"]), lambda r: len(r["text"]),
        lambda model, rows, config: {"heldout_accuracy": orm_accuracy(model, rows, config)}),
    "pqm": _Objective(
        "pqm", "examples", lambda tok, n: _TargetCollator(tok, n, "q"),
        lambda raw, inputs: q_value_loss(raw, inputs["target"]), lambda r: len(r["text"]), pqm_metrics),
}
