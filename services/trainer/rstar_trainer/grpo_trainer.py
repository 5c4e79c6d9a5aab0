"""MCTS++'s RL stage: GRPO from the round's SFT policy on the round's problems, with TRL's `GRPOTrainer`.

The dataset is a GRPO set (`datasets.write_grpo_dataset`): the round's problems drawn and
ordered easy to hard by the curriculum (`rstar_core.rl.curriculum`), each as the policy's own
prompt (prompt format "sft", the prompt the SFT set trained on). The trainer reads it in that
order (`shuffle_dataset` off), one epoch of `config.steps * config.prompts_per_step` prompts.
For every prompt it samples `group_size` whole solutions from the current policy with
transformers' `generate` (no vLLM here, so it runs on a CPU), scores them with the reward
functions below and takes a GRPO step (group-normalised advantages, clipped ratio, KL to the
SFT policy weighted by `beta`; beta 0 loads no reference model).

Rewards (`GRPOTrainer` sums them with `reward_weights`):

* `answer` (weight 1): 1 when the completion, replayed step by step in the sandbox the way the
  search verifies a path, reaches the gold answer (`rstar_core.rl.check_answer`), else 0;
* `format` (`format_reward_weight`): 1 for code steps closed by a ``\\boxed{}`` answer step
  (`rstar_core.rl.format_reward`), else 0;
* `ppm` (`ppm_reward_weight`, only when > 0): the mean over the replayed steps of the PPM's
  score of each prefix (the text the reward service scores, `rstar_reward.render_prefix`);
  -1 when no step survived the replay.

All three are async and share one evaluation per completion (the sandbox runs once); they run
on the trainer's event loop thread, which also owns the sandbox and the PPM. Every completion's
outcome goes to `rewards.jsonl` in the work directory (step, problem, bucket, the three rewards,
the answer and why it failed); a resumed run appends to it, so the steps after its last
checkpoint may appear twice.

Checkpoints, resume, the progress log and the atomic final model (bf16 safetensors + tokenizer
+ `rstar_training.json`) are `common`'s, as for SFT; bf16 autocast where `precision_args()`
says so.

Not here: choosing and ordering the problems (`rstar_core.rl`), registering the version (`jobs`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from .common import ProgressLog, precision_args, run_metrics, run_training
from .grpo_config import GRPOConfig
from .run_config import bookkeeping_arguments
from .sft_trainer import load_run

__all__ = ["REWARD_LOG", "train_grpo"]

log = logging.getLogger(__name__)

REWARD_LOG = "rewards.jsonl"
PROMPT_FORMAT = "sft"


def train_grpo(start_model: str | Path, dataset_dir: str | Path, out_dir: str | Path, work_dir: str | Path,
               config: GRPOConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """GRPO from `start_model` (the round's SFT policy) on a GRPO set; returns the run's metrics."""
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    if config.ppm_reward_weight > 0 and not config.ppm_model:
        raise ValueError("ppm_reward_weight > 0 needs ppm_model (the PPM directory that scores the steps)")
    run = load_run(start_model, "start model", dataset_dir, "grpo", work_dir, config.threads)
    data, info, tokenizer, work, model = run.data, run.info, run.tokenizer, run.work, run.model
    if len(data) < config.prompts:
        raise ValueError(f"the GRPO set {info.path} holds {len(data)} prompts, the run reads {config.prompts} "
                         f"({config.steps} steps x {config.prompts_per_step}): rebuild it for these settings")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rewards = _Rewards(work / REWARD_LOG, config, _eos_ids(tokenizer))
    funcs, weights = [rewards.answer, rewards.format], [1.0, config.format_reward_weight]
    if config.ppm_reward_weight > 0:
        funcs.append(rewards.ppm)
        weights.append(config.ppm_reward_weight)
    args = TRLConfig(
        output_dir=str(work),
        learning_rate=config.learning_rate,
        max_steps=config.steps,
        # One generation batch per optimizer step: prompts_per_step groups of group_size samples.
        per_device_train_batch_size=config.group_size * config.prompts_per_step,
        gradient_accumulation_steps=1,
        num_generations=config.group_size,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        reward_weights=weights,
        # The curriculum's order is the point: read the set as written.
        shuffle_dataset=False,
        lr_scheduler_type="constant",
        **bookkeeping_arguments(config, progress_bar=progress_bar),
        **precision_args(),
    )
    progress = ProgressLog(work, "grpo")
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args,
                          train_dataset=data.select_columns(["prompt", "answer", "problem_id", "bucket", "question"]),
                          processing_class=tokenizer, callbacks=[progress])
    rewards.trainer = trainer
    try:
        result, resume, train_s = run_training(trainer, work, "GRPO")
    finally:
        asyncio.run_coroutine_threadsafe(rewards.close(), trainer.async_loop).result()
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    metrics = {
        **run_metrics("grpo", result, trainer, progress, train_s, resume, info.content_hash),
        "prompts": config.prompts,
        "group_size": config.group_size,
        "first_reward": logged[0]["reward"] if logged else None,
        "last_reward": logged[-1]["reward"] if logged else None,
        "completions": rewards.summary(),
        "precision": "bf16-autocast" if args.bf16 else ("fp16" if args.fp16 else "float32"),
    }
    if not trainer.is_world_process_zero():
        return metrics
    run.save(trainer, out_dir, metrics, config)
    log.info("GRPO done: %d steps, reward %s -> %s -> %s", metrics["steps"], metrics["first_reward"],
             metrics["last_reward"], out_dir)
    return metrics


def _eos_ids(tokenizer) -> set[int]:
    from rstar_core.steps import get_format

    ids = {tokenizer.eos_token_id}
    end = tokenizer.convert_tokens_to_ids(get_format(PROMPT_FORMAT).end_of_turn)
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return {i for i in ids if i is not None}


class _Rewards:
    """The reward functions `GRPOTrainer` calls, sharing one evaluation per completion.

    TRL calls each reward function with the same batch lists; the first call of a batch
    starts one task per completion (sandbox replay, format, optional PPM), the others await
    the same tasks. Everything runs on the trainer's async loop thread, which owns the
    sandbox and the PPM scorer.
    """

    def __init__(self, path: Path, config: GRPOConfig, eos_ids: set[int]) -> None:
        self.path = path
        self.config = config
        self.eos_ids = eos_ids
        self.trainer = None
        self._batch: list | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor = None
        self._ppm = None
        self._counts = {"completions": 0, "correct": 0, "formatted": 0, "reasons": {}}

    # TRL names each reward after its function (logs: rewards/answer/mean, ...).
    async def answer(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [r["answer"] for r in await self._evaluate(completions, completion_ids, kwargs)]

    async def format(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [r["format"] for r in await self._evaluate(completions, completion_ids, kwargs)]

    async def ppm(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        return [r["ppm"] for r in await self._evaluate(completions, completion_ids, kwargs)]

    async def _evaluate(self, completions, completion_ids, kwargs) -> list[dict[str, Any]]:
        if completions is not self._batch:
            self._batch = completions
            state = kwargs.get("trainer_state")
            step = state.global_step + 1 if state is not None else None
            self._tasks = [asyncio.ensure_future(self._one(text, ids, kwargs, i, step))
                           for i, (text, ids) in enumerate(zip(completions, completion_ids))]
            batch = asyncio.gather(*self._tasks)
            records = await batch
            self._write(records)
            return records
        return list(await asyncio.gather(*self._tasks))

    async def _one(self, text: str, ids: list[int], kwargs: dict[str, Any], i: int, step: int | None):
        from rstar_core.rl import check_answer, format_reward

        ended = bool(ids) and ids[-1] in self.eos_ids
        gold = json.loads(kwargs["answer"][i])
        check = await check_answer(text, gold, await self._sandbox(), ended=ended,
                                   timeout_s=self.config.exec_timeout_s, prompt_format=PROMPT_FORMAT)
        record = {"step": step, "problem_id": kwargs["problem_id"][i], "bucket": kwargs["bucket"][i],
                  "answer": check.reward, "format": format_reward(text, PROMPT_FORMAT, ended=ended),
                  "ppm": None, "predicted": check.answer, "reason": check.reason, "steps": len(check.steps),
                  "ended": ended, "tokens": len(ids)}
        if self.config.ppm_reward_weight > 0:
            record["ppm"] = await self._ppm_score(kwargs["question"][i], check.steps)
        return record

    async def _sandbox(self):
        if self._executor is None:
            from rstar_executor import SandboxExecutor

            self._executor = SandboxExecutor()
        return self._executor

    async def _ppm_score(self, question: str, steps: tuple[str, ...]) -> float:
        from rstar_core.ports import ScoringItem

        if not steps:
            return -1.0
        if self._ppm is None:
            from rstar_reward import PPMRewardModel

            self._ppm = PPMRewardModel.from_dir(self.config.ppm_model, prompt_format=PROMPT_FORMAT)
        scores = await self._ppm.score([ScoringItem(question, steps[:k]) for k in range(1, len(steps) + 1)])
        return sum(scores) / len(scores)

    def _write(self, records: list[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts = self._counts
        for record in records:
            counts["completions"] += 1
            counts["correct"] += int(record["answer"] > 0)
            counts["formatted"] += int(record["format"] > 0)
            reason = record["reason"] or "correct"
            counts["reasons"][reason] = counts["reasons"].get(reason, 0) + 1

    def summary(self) -> dict[str, Any]:
        return {**self._counts, "reasons": dict(sorted(self._counts["reasons"].items()))}

    async def close(self) -> None:
        if self._executor is not None:
            await self._executor.close()
        if self._ppm is not None:
            await self._ppm.close()
