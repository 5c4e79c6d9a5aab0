"""One training step of a self-evolution round, the same in-process and on the `train` queue.

A `TrainJob` names the run, round and step (`train_sft`, `train_ppm`, the ablation's
baselines `train_orm` and `train_pqm`, or `train_process`: MCTS process supervision's
weighted-NLL + KL round, from the previous round's policy; `train_grpo` / `train_dpo`: MCTS++'s
GRPO stage and step-DPO pass, from the round's SFT policy, each registered as a further
`policy` version of the round with the version it started from as its parent), the model it starts from, the dataset and the settings. `run_train_job`:

1. returns the recorded result when the step is already done (a redelivered message, or a
   driver that was killed after the training finished, never trains twice);
2. trains, resuming from the newest complete checkpoint in the job's work directory: in
   this process, or under `accelerate launch` (`train_once`) when ``RSTAR_ACCELERATE_CONFIG``
   names a config of `deploy/accelerate/` (GPU nodes: one GPU, DDP, FSDP, DeepSpeed);
3. registers the model as a `candidate` version (kind `policy`, `ppm`, `orm` or `pqm`) with
   its lineage: parent, base model, dataset manifest and hash, training config and metrics;
4. records the step as done with `{version, path, metrics}` in `evolve_steps`.

A finished model that was not registered yet (a crash between 2 and 3) is registered
without training again. Failures are recorded on the step with their reason and re-raised.

Not here: deciding what to train (the `rstar evolve` driver), the Celery wiring (`tasks`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainJob", "run_train_job", "train_model"]

log = logging.getLogger(__name__)

# Step -> the kind of model it registers.
STEPS = {"train_sft": "policy", "train_ppm": "ppm", "train_orm": "orm", "train_pqm": "pqm",
         "train_process": "policy", "train_grpo": "policy", "train_dpo": "policy"}
# Step -> the kind of dataset it reads, where that is not the kind of model it registers.
_DATASETS = {"train_sft": "sft", "train_process": "process", "train_grpo": "grpo", "train_dpo": "dpo"}
# Steps that register a further policy of a round: the suffix of its version's name.
_STAGE_NAMES = {"train_grpo": "grpo", "train_dpo": "dpo"}


@dataclass(frozen=True)
class TrainJob:
    run: str
    round: int
    step: str
    # SFT: the original base model; PPM, ORM, PQM: the round's fine-tuned policy; process
    # supervision: the previous round's policy (also the KL reference).
    start_model: str
    dataset: str
    work_dir: str
    config: dict[str, Any] = field(default_factory=dict)
    # Lineage: the version this one replaces, and the base model of the whole run.
    parent: str | None = None
    base: str | None = None

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {sorted(STEPS)}, got {self.step!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainJob":
        return cls(**data)


def run_train_job(job: TrainJob, store, registry, *, progress_bar: bool = True,
                  trained_by: str | None = None, isolated: bool = False) -> dict[str, Any]:
    """Train, register and record the job's step; a step already done returns its result.

    `trained_by` names the process that trains (a trainer worker's node name; default
    host:pid), kept with the version's metrics and the step's result. `isolated` trains in
    a fresh Python process (`train_once`) rather than in this one: what the in-process
    `rstar evolve` driver asks for, since its process also ran the vLLM engine of the
    searches and evaluations, which leaves torch at one intra-op thread (vLLM sizes it for
    serving) and gigabytes of memory behind.
    """
    done = store.get_evolve_step(job.run, job.round, job.step)
    if done is not None and done.state == "done":
        return done.result
    store.start_evolve_step(job.run, job.round, job.step)
    trained_by = trained_by or f"{socket.gethostname()}:{os.getpid()}"
    try:
        result = _train_and_register(job, registry, progress_bar, trained_by, isolated)
    except BaseException as exc:
        store.fail_evolve_step(job.run, job.round, job.step, f"{type(exc).__name__}: {exc}")
        raise
    store.finish_evolve_step(job.run, job.round, job.step, result)
    return result


def train_model(job: TrainJob, *, progress_bar: bool = True) -> Path:
    """Train the job's model into `<work_dir>/model` (resuming from checkpoints); no registration."""
    from .ppm_config import PPMConfig
    from .sft_config import SFTConfig, config_from_mapping

    work = Path(job.work_dir)
    out = work / "model"
    if (out / "rstar_training.json").is_file():
        return out
    if job.step == "train_sft":
        from .sft_trainer import train_sft

        config = config_from_mapping(SFTConfig, job.config, source=f"{job.step} config")
        train_sft(job.start_model, job.dataset, out, work / "checkpoints", config, progress_bar=progress_bar)
    elif job.step == "train_grpo":
        from .grpo_config import grpo_config
        from .grpo_trainer import train_grpo

        config = grpo_config(job.config, source=f"{job.step} config")
        train_grpo(job.start_model, job.dataset, out, work / "checkpoints", config, progress_bar=progress_bar)
    elif job.step == "train_dpo":
        from .dpo_config import step_dpo_config
        from .dpo_trainer import train_step_dpo

        config = step_dpo_config(job.config, source=f"{job.step} config")
        train_step_dpo(job.start_model, job.dataset, out, work / "checkpoints", config, progress_bar=progress_bar)
    elif job.step == "train_process":
        from .process_config import ProcessConfig
        from .process_trainer import train_process

        config = config_from_mapping(ProcessConfig, job.config, source=f"{job.step} config")
        train_process(job.start_model, job.dataset, out, work / "checkpoints", config, progress_bar=progress_bar)
    else:
        from . import ppm_trainer

        config = config_from_mapping(PPMConfig, job.config, source=f"{job.step} config")
        train = getattr(ppm_trainer, job.step)  # train_ppm, train_orm or train_pqm
        train(job.start_model, job.dataset, out, work / "checkpoints", config, progress_bar=progress_bar)
    return out


def _launch(job: TrainJob, accelerate_config: str | None) -> Path:
    """Run `train_once` in a child process (under `accelerate launch` when a config is given) and wait."""
    import subprocess
    import sys

    work = Path(job.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job.to_json(), indent=2))
    if accelerate_config:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
                "-m", "rstar_trainer.train_once", str(job_file)]
    else:
        argv = [sys.executable, "-m", "rstar_trainer.train_once", str(job_file)]
    log.info("launching %s", " ".join(argv))
    code = subprocess.run(argv).returncode
    if code != 0:
        raise RuntimeError(f"{job.step} of run {job.run} round {job.round} failed in its training process "
                           f"(exit code {code}; its error is printed above); running the same command again "
                           "resumes from the last checkpoint")
    return work / "model"


def _train_and_register(job: TrainJob, registry, progress_bar: bool, trained_by: str,
                        isolated: bool = False) -> dict[str, Any]:
    from .datasets import load_training_set

    kind = STEPS[job.step]
    work = Path(job.work_dir)
    # A round may register two policies (SFT, then MCTS++'s GRPO from it): told apart by the
    # step recorded with each (versions registered before steps were recorded match any step).
    registered = [v for v in registry.list(kind=kind, run=job.run)
                  if v.round == job.round and (v.metrics or {}).get("step", job.step) == job.step]
    if registered:
        version = registered[0]
        log.info("%s of run %s round %d is already registered as %s", kind, job.run, job.round, version.version)
        return {"version": version.version, "path": version.path, "metrics": version.metrics,
                "trained_by": version.metrics.get("trained_by")}
    _, info = load_training_set(job.dataset, _DATASETS.get(job.step, kind))
    accelerate_config = os.environ.get("RSTAR_ACCELERATE_CONFIG")
    if accelerate_config:
        out = _launch(job, accelerate_config)
    elif isolated:
        out = _launch(job, None)
    else:
        out = train_model(job, progress_bar=progress_bar)
    record = json.loads((out / "rstar_training.json").read_text())
    version = registry.register(
        out, kind=kind, round=job.round, run=job.run, parent=job.parent, base=job.base,
        datasets={Path(job.dataset).name: {"path": info.path, "content_hash": info.content_hash,
                                           "counts": info.manifest.get("counts", {})}},
        train_config=record["config"], metrics={**record["metrics"], "trained_by": trained_by, "step": job.step},
        name_hint=_stage_name(job) if job.step in _STAGE_NAMES else None)
    _remove_checkpoints(work / "checkpoints")
    return {"version": version.version, "path": version.path, "metrics": record["metrics"], "trained_by": trained_by}


def _stage_name(job: TrainJob) -> str:
    """`<run>-r<round>-policy-grpo` (or `-dpo`): a round's further policy, told apart from its SFT
    policy by name."""
    import re

    safe_run = re.sub(r"[^A-Za-z0-9._-]+", "-", job.run).lstrip(".-") or "run"
    return f"{safe_run}-r{job.round}-policy-{_STAGE_NAMES[job.step]}"


def _remove_checkpoints(path: Path) -> None:
    # Optimizer state is three times the model; once the version is registered it is not needed.
    import shutil

    shutil.rmtree(path, ignore_errors=True)
