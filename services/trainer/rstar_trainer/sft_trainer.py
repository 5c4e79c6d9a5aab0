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

On devices without Triton (CPUs) the loss is the model's own forward (`_NativeLossSFTTrainer`):
TRL's fused LM head falls back there to torch tiles that score every position (prompt and
padding too), fold entropy and top-1 statistics over the whole vocabulary in fp32,
recompute the head in the backward and accumulate its gradient GEMMs in fp32, which cost
a third of the step on this model (docs/benchmarks.md, "Training speed"). The loss is the same
(mean NLL over completion tokens); the logged metrics are the same except entropy.

Not here: choosing examples, registering the version (`rstar_models.registry`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
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
    from trl import SFTTrainer

    run = prepare_run(base_model, "base model", dataset_dir, "sft", work_dir, config, progress_bar=progress_bar)
    data, info, tokenizer, model, args, work = run.data, run.info, run.tokenizer, run.model, run.args, run.work
    progress = ProgressLog(work, "sft")
    trainer_cls = SFTTrainer if _fused_head_pays(model) else _native_loss_trainer()
    trainer = trainer_cls(model=model, args=args, train_dataset=data.select_columns(["prompt", "completion"]),
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
    run.save(trainer, out_dir, metrics, config)
    log.info("SFT done: %d steps, loss %.4f -> %s", metrics["steps"], metrics["train_loss"], out_dir)
    return metrics


@dataclass
class PreparedRun:
    """What a TRL prompt/completion run needs before its trainer is built."""

    model_dir: Path
    data: Any
    info: Any
    tokenizer: Any
    model: Any
    args: Any
    work: Path

    def save(self, trainer, out_dir: str | Path, metrics: dict[str, Any], config) -> None:
        """The trained model (bf16 safetensors), its tokenizer and `rstar_training.json`,
        written atomically to `out_dir`."""
        import torch

        with atomic_output(out_dir) as staging:
            trainer.model.to(torch.bfloat16).save_pretrained(str(staging), safe_serialization=True)
            self.tokenizer.save_pretrained(str(staging))
            (staging / "rstar_training.json").write_text(json.dumps(
                {"metrics": metrics, "config": config.to_dict(), "base_model": str(self.model_dir),
                 "dataset": {"path": self.info.path, **self.info.manifest}}, indent=2) + "\n")


def load_run(model_dir: str | Path, what: str, dataset_dir: str | Path, kind: str, work_dir: str | Path,
             threads: int | None) -> PreparedRun:
    """Check and load a causal-LM run's inputs (model in fp32, tokenizer, `kind` set), without
    its trainer's arguments (`args` is None). Shared by SFT, process supervision, step-DPO, GRPO."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(model_dir, what)
    data, info = load_training_set(dataset_dir, kind)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    _check_tokenizer(info.manifest, tokenizer, path)
    if threads:
        torch.set_num_threads(threads)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return PreparedRun(path, data, info, tokenizer, model, None, work)


def prepare_run(model_dir: str | Path, what: str, dataset_dir: str | Path, kind: str, work_dir: str | Path,
                config, *, progress_bar: bool) -> PreparedRun:
    """`load_run` plus its TRL `SFTConfig` (completion-only loss, the precision of this
    hardware). Shared by SFT and process supervision."""
    from trl import SFTConfig as TRLConfig

    run = load_run(model_dir, what, dataset_dir, kind, work_dir, config.threads)
    run.args = TRLConfig(**training_arguments(config, run.work, progress_bar=progress_bar),
                         max_length=config.max_length, completion_only_loss=True, **precision_args())
    return run


def _fused_head_pays(model) -> bool:
    """Whether TRL's fused LM head runs its Triton kernels here (CUDA/XPU), where it saves
    memory at little cost; elsewhere its torch fallback is slower than the plain head."""
    from trl.kernels.chunked_logprob import _use_triton

    return _use_triton(next(model.parameters()).device)


def _native_loss_trainer():
    """`SFTTrainer` with the model's own forward as the loss (see the module docstring)."""
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class _NativeLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            with torch.no_grad():  # mean_token_accuracy and num_tokens, as SFTTrainer logs them
                labels = inputs["labels"][:, 1:]
                mask = labels != -100
                correct = (outputs.logits[:, :-1].argmax(-1) == labels) & mask
                valid = int(mask.sum())
                self._metrics[mode]["mean_token_accuracy"].append(int(correct.sum()) / valid if valid else 0.0)
                if mode == "train":
                    self._total_train_tokens += int(self.accelerator.gather_for_metrics(
                        inputs["attention_mask"].sum()).sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return _NativeLossSFTTrainer


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
