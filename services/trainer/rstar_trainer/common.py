"""What the SFT and PPM trainers share: compute type, checkpoints, atomic outputs, progress.

* `precision_args()`: bf16 autocast over float32 weights where the hardware computes bf16
  natively (`rstar_models.hardware`; pure bf16 weights stall small-model training), fp16 on
  GPUs without bf16, plain float32 elsewhere.
* Checkpoints: transformers' `Trainer` writes `checkpoint-N/` in place, the trainer state
  file last. `resume_checkpoint()` deletes checkpoints a kill left without that file and
  returns the newest complete one, so a killed run resumes where it saved last.
* `run_training()`: `trainer.train()` from the newest complete checkpoint, timed; a full
  disk while a checkpoint is written is a clear error (the run resumes from the last
  complete checkpoint once space is freed).
* `atomic_output()`: a final model is written into a temporary sibling and renamed into
  place; a crash or a full disk never leaves half a model under the final name.
* `ProgressLog`: loss, learning rate and tokens/s per logging step, to the log and to a
  JSONL file in the work directory (what `rstar evolve` and the web console read).

Not here: the training loops themselves (`sft_trainer`, `ppm_trainer`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from transformers import TrainerCallback

__all__ = ["ProgressLog", "atomic_output", "check_model_dir", "precision_args", "resume_checkpoint", "run_metrics",
           "run_training"]

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
PROGRESS_FILE = "progress.jsonl"


def precision_args() -> dict[str, Any]:
    """`TrainingArguments` keywords for this machine's compute type."""
    import torch
    from rstar_models.hardware import preferred_dtype

    dtype = preferred_dtype()
    # Both switches always explicit: TRL's configs (SFT, DPO, GRPO) turn bf16 on by default, which
    # on a CPU without bf16 arithmetic (AVX2 only) emulates every matrix product: measured on a
    # 2-core EPYC, 0.3 GFLOPS in bf16 against 133 in float32, an SFT step of minutes, not seconds.
    return {"use_cpu": not torch.cuda.is_available(), "bf16": dtype == "bfloat16", "fp16": dtype == "float16"}


def check_model_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{what} {str(path)!r} is not a model directory (no config.json)")
    return path


def resume_checkpoint(work_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` in `work_dir`; incomplete ones are removed."""
    work = Path(work_dir)
    complete = []
    for ckpt in work.glob("checkpoint-*"):
        step = ckpt.name.rsplit("-", 1)[-1]
        if not step.isdigit():
            continue
        if (ckpt / TRAINER_STATE).is_file():
            complete.append((int(step), ckpt))
        else:
            log.warning("removing incomplete checkpoint %s (the run was killed while saving it)", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    if not complete:
        return None
    return str(max(complete)[1])


def run_training(trainer, work_dir: str | Path, label: str) -> tuple[Any, str | None, float]:
    """Train (resuming if a checkpoint exists): (train output, checkpoint resumed from, seconds)."""
    resume = resume_checkpoint(work_dir)
    if resume:
        log.info("%s resumes from %s", label, resume)
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RuntimeError(f"no space left on the device while {label} wrote a checkpoint in {work_dir}: "
                               "free space and run again (training resumes from its last complete "
                               "checkpoint)") from None
        raise
    return result, resume, time.perf_counter() - start


def run_metrics(kind: str, result, trainer, progress: "ProgressLog", train_s: float, resume: str | None,
                dataset_hash: str) -> dict[str, Any]:
    """What every training run reports: losses, steps, time, the checkpoint it resumed from."""
    return {
        "kind": kind,
        "train_loss": result.training_loss,
        "first_loss": progress.history[0]["loss"] if progress.history else None,
        "last_loss": progress.history[-1]["loss"] if progress.history else None,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_s": round(train_s, 1),
        "resumed_from": Path(resume).name if resume else None,
        "dataset_hash": dataset_hash,
    }


@contextlib.contextmanager
def atomic_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a staging directory that becomes `out_dir` only if the block succeeds."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            yield staging
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise RuntimeError(f"no space left on the device while writing {out}: nothing was kept; "
                                   "free space and run again (training resumes from its last checkpoint)") from None
            raise
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ProgressLog(TrainerCallback):
    """Logs loss, learning rate and tokens/s at every logging step."""

    def __init__(self, work_dir: str | Path, label: str, tokens_key: str = "num_tokens") -> None:
        self.path = Path(work_dir) / PROGRESS_FILE
        self.label = label
        self.tokens_key = tokens_key
        self._last: tuple[float, float] | None = None
        self.history: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        tokens = float(logs.get(self.tokens_key, 0.0))
        rate = None
        if self._last is not None and tokens and now > self._last[0]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, tokens)
        record = {"label": self.label, "step": state.global_step, "max_steps": state.max_steps,
                  "epoch": round(state.epoch or 0.0, 4), "loss": logs["loss"],
                  "learning_rate": logs.get("learning_rate"), "tokens_per_s": round(rate, 1) if rate else None,
                  "time": time.time()}
        self.history.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info("%s step %d/%d loss %.4f lr %s tokens/s %s", self.label, state.global_step, state.max_steps,
                 logs["loss"], logs.get("learning_rate"), record["tokens_per_s"])
