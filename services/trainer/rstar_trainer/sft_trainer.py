"""Supervised fine-tuning of the policy on a round's SFT set, with TRL's `SFTTrainer`.

Every round starts from the original base model (the paper's choice: no drift across
rounds). The set's `prompt` / `completion` strings are the policy's own prompt format, so
the loss covers the assistant's solution only (TRL's completion-only loss on
prompt-completion data) and the model trains on the exact prompt the search gives it.
Batches group examples of similar length instead of packing them: packing without
FlashAttention would let examples attend to each other, and on a CPU there is none.

`train_sft` resumes from the newest complete checkpoint in its work directory, so a run
killed at any point continues when called again with the same arguments; the final model
(bf16 safetensors + tokenizer) is written atomically to `out_dir`.

Not here: choosing examples, registering the version (`rstar_models.registry`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .common import ProgressLog, atomic_output, check_model_dir, precision_args, run_metrics, run_training
from .run_config import training_arguments
from .datasets import load_training_set
from .sft_config import SFTConfig

__all__ = ["train_sft"]

log = logging.getLogger(__name__)


def train_sft(base_model: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
              config: SFTConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Fine-tune `base_model` on the SFT set; returns the run's metrics (also in out_dir)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    base = check_model_dir(base_model, "base model")
    data, info = load_training_set(dataset_dir, "sft")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    _check_tokenizer(info.manifest, tokenizer, base)
    if config.threads:
        torch.set_num_threads(config.threads)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    args = TRLConfig(
        **training_arguments(config, work, progress_bar=progress_bar),
        max_length=config.max_length,
        completion_only_loss=True,
        **precision_args(),
    )
    progress = ProgressLog(work, "sft")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data.select_columns(["prompt", "completion"]),
                         processing_class=tokenizer, callbacks=[progress])
    result, resume, train_s = run_training(trainer, work, "SFT")
    metrics = {
        **run_metrics("sft", result, trainer, progress, train_s, resume, info.content_hash),
        "examples": len(data),
        "tokens": trainer.state.num_input_tokens_seen or _logged_tokens(trainer),
        "precision": "bf16-autocast" if args.bf16 else ("fp16" if args.fp16 else "float32"),
    }
    rates = [r["tokens_per_s"] for r in progress.history if r["tokens_per_s"]]
    metrics["tokens_per_s"] = round(sum(rates) / len(rates), 1) if rates else None
    if not trainer.is_world_process_zero():
        return metrics  # under a multi-process launch the main process writes the model
    with atomic_output(out_dir) as staging:
        trainer.model.to(torch.bfloat16).save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        (staging / "rstar_training.json").write_text(json.dumps(
            {"metrics": metrics, "config": config.to_dict(), "base_model": str(base),
             "dataset": {"path": info.path, **info.manifest}}, indent=2) + "\n")
    log.info("SFT done: %d steps, loss %.4f -> %s", metrics["steps"], metrics["train_loss"], out_dir)
    return metrics


def _logged_tokens(trainer) -> int:
    tokens = [entry.get("num_tokens") for entry in trainer.state.log_history if entry.get("num_tokens")]
    return int(tokens[-1]) if tokens else 0


def _check_tokenizer(manifest: dict[str, Any], tokenizer, base: Path) -> None:
    """A set tokenized for another model is refused (ours are text; a foreign one may not be)."""
    expected = manifest.get("tokenizer")
    if expected and expected != tokenizer_fingerprint(tokenizer):
        raise ValueError(f"dataset was tokenized for tokenizer {expected}, but the base model {base} "
                         f"has {tokenizer_fingerprint(tokenizer)}: rebuild the dataset for this model")


def tokenizer_fingerprint(tokenizer) -> str:
    import hashlib

    vocab = sorted(tokenizer.get_vocab().items())
    return "vocab-sha256:" + hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
