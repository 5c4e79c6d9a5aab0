"""MCTS process supervision's training (arXiv 2501.01478): score-weighted NLL plus a KL penalty.

One round trains the policy *from the previous round's model* (not the base, unlike rStar's
SFT) on the round's scored steps (`datasets.write_process_dataset`):

    loss = sum_i w_i * sum_t -log p(y_it)  /  T   +   beta * sum_i sum_t KL_it / T

over the completion tokens t of the examples i of a batch (T of them), where w_i is the
step's relative-correctness score and KL_it = KL(p(. | y_i<t) || p_ref(. | y_i<t)) is the
exact KL over the vocabulary to the frozen starting model (the previous round's policy).
With every w = 1 and beta = 0 this is the SFT loss (mean NLL over completion tokens), so the
method is the SFT path (`sft_trainer`, TRL's `SFTTrainer` on prompt-completion data) with
one more column and one more model; `_WeightedKLTrainer` overrides `compute_loss` only.
Negative scores push a worse-than-its-prefix step's likelihood down; that term is unbounded,
so the KL penalty (beta > 0) is what keeps a round near the policy it started from.

Each micro-batch's loss is its own token mean (the reference and the weights differ per
batch, so this is not folded into the model's loss); gradient accumulation averages the
micro-batches. Logged per step, and in the run's metrics: `loss`, `weighted_nll` and `kl`.

Not here: collecting the scored steps (`rstar_core.process_supervision`), registering the
version (`jobs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .common import ProgressLog, run_metrics, run_training
from .process_config import ProcessConfig
from .sft_trainer import _logged_tokens, prepare_run

__all__ = ["WeightedLoss", "train_process", "weighted_nll_kl"]

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class WeightedLoss:
    loss: torch.Tensor
    # The two terms, detached: the score-weighted NLL and the mean token KL (before beta).
    weighted_nll: torch.Tensor
    kl: torch.Tensor


def weighted_nll_kl(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                    ref_logits: torch.Tensor | None = None, beta: float = 0.0) -> WeightedLoss:
    """The method's loss for one batch (see the module docstring).

    `logits`, `ref_logits`: (batch, length, vocab) from the same inputs; `labels`: (batch,
    length) with -100 where no loss applies (prompt, padding); position t predicts label t+1,
    as in every causal LM. `weights`: (batch,) the examples' scores.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    if weights.shape != labels.shape[:1]:
        raise ValueError(f"weights must have one score per example ({labels.shape[0]}), got {tuple(weights.shape)}")
    if ref_logits is not None and ref_logits.shape != logits.shape:
        raise ValueError(f"reference logits {tuple(ref_logits.shape)} differ from logits {tuple(logits.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    targets = labels[:, 1:]
    mask = (targets != IGNORE).float()
    tokens = mask.sum().clamp(min=1.0)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    weighted_nll = -(token_logp * weights.float().unsqueeze(1) * mask).sum() / tokens
    loss = weighted_nll
    kl = torch.zeros((), device=logits.device)
    if ref_logits is not None:
        ref_logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
        token_kl = (logp.exp() * (logp - ref_logp)).sum(-1)
        kl = (token_kl * mask).sum() / tokens
        if beta:
            loss = loss + beta * kl
    return WeightedLoss(loss, weighted_nll.detach(), kl.detach())


def train_process(start_model: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
                  config: ProcessConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Train from `start_model` (the previous round's policy, also the KL reference) on a
    process-supervision set; returns the run's metrics (also in out_dir)."""
    from transformers import AutoModelForCausalLM

    run = prepare_run(start_model, "start model", dataset_dir, "process", work_dir, config, progress_bar=progress_bar)
    start, data, info, tokenizer, model, args, work = (run.model_dir, run.data, run.info, run.tokenizer, run.model,
                                                       run.args, run.work)
    reference = None
    if config.beta > 0:
        reference = AutoModelForCausalLM.from_pretrained(str(start), dtype=torch.float32)
        reference.requires_grad_(False).eval()
    progress = ProgressLog(work, "process")
    trainer = _weighted_kl_trainer()(model=model, args=args,
                                     train_dataset=data.select_columns(["prompt", "completion", "score"]),
                                     processing_class=tokenizer, callbacks=[progress], reference=reference,
                                     beta=config.beta)
    result, resume, train_s = run_training(trainer, work, "process supervision")
    logged = [entry for entry in trainer.state.log_history if "weighted_nll" in entry]
    metrics = {
        **run_metrics("process", result, trainer, progress, train_s, resume, info.content_hash),
        "examples": len(data),
        "tokens": _logged_tokens(trainer),
        "alpha": config.alpha,
        "beta": config.beta,
        "weighted_nll": _mean(e["weighted_nll"] for e in logged),
        "kl": _mean(e["kl"] for e in logged),
        "last_weighted_nll": logged[-1]["weighted_nll"] if logged else None,
        "last_kl": logged[-1]["kl"] if logged else None,
        "precision": "bf16-autocast" if args.bf16 else ("fp16" if args.fp16 else "float32"),
    }
    if not trainer.is_world_process_zero():
        return metrics  # under a multi-process launch the main process writes the model
    run.save(trainer, out_dir, metrics, config)
    log.info("process supervision done: %d steps, loss %.4f, weighted NLL %s, KL %s -> %s", metrics["steps"],
             metrics["train_loss"], metrics["weighted_nll"], metrics["kl"], out_dir)
    return metrics


def _mean(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 6) if values else None


def _weighted_kl_trainer():
    """TRL's `SFTTrainer` with the weighted NLL + KL loss (built lazily: TRL is heavy to import)."""
    from trl import SFTTrainer

    class _WeightedKLTrainer(SFTTrainer):
        def __init__(self, *args, reference, beta: float, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.beta = beta
            self.reference = reference.to(self.args.device) if reference is not None else None
            # TRL's collator pads the tokens; the scores ride along beside them.
            self.data_collator = _WithScores(self.data_collator)
            # Each micro-batch's loss is its own mean: let Trainer average them over accumulation.
            self.loss_is_scaled_for_ga = False

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "score" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "score"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            weights = inputs.pop("score")
            labels = inputs.pop("labels")
            outputs = model(**inputs, use_cache=False)
            ref_logits = None
            if self.reference is not None:
                with torch.no_grad():
                    ref_logits = self.reference(**inputs, use_cache=False).logits
            result = weighted_nll_kl(outputs.logits, labels, weights, ref_logits, self.beta)
            metrics = self._metrics[mode]
            metrics["weighted_nll"].append(result.weighted_nll.item())
            metrics["kl"].append(result.kl.item())
            with torch.no_grad():  # num_tokens and mean_token_accuracy, as SFTTrainer logs them
                targets = labels[:, 1:]
                mask = targets != IGNORE
                valid = int(mask.sum())
                correct = int(((outputs.logits[:, :-1].argmax(-1) == targets) & mask).sum())
                metrics["mean_token_accuracy"].append(correct / valid if valid else 0.0)
                if mode == "train":
                    self._total_train_tokens += int(self.accelerator.gather_for_metrics(
                        inputs["attention_mask"].sum()).sum())
                metrics["num_tokens"] = [self._total_train_tokens]
            return (result.loss, outputs) if return_outputs else result.loss

    return _WeightedKLTrainer


@dataclass
class _WithScores:
    """A collator that adds the examples' `score` column as a float tensor to another's batch."""

    inner: Any

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner([{k: v for k, v in example.items() if k != "score"} for example in examples])
        batch["score"] = torch.tensor([example["score"] for example in examples], dtype=torch.float32)
        return batch
