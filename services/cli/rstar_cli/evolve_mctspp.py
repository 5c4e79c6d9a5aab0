"""`rstar evolve`'s MCTS++ switches (issue #16 part C): a GRPO stage and a step-DPO pass after SFT, and
the SFT PPM filter.

With `grpo.enabled` a round (round 0 included) runs two more steps between its training and its
evaluation, recorded and resumable like every step (`evolve`):

* `grpo_data`: the pool's problems drawn and ordered by the curriculum (`rstar_core.rl.curriculum`):
  each problem's difficulty is the bucket of its newest tree in this run's rounds up to this
  one (`latest_buckets`; round 0, with no tree yet, has only `unknown`), `steps *
  prompts_per_step` problems with the round's share of hard ones, easy first; written as a
  GRPO set (`write_grpo_dataset`) in `round-r/grpo_data`. The draw's seed is the GRPO seed.
* `train_grpo`: GRPO from this round's SFT policy (`rstar_trainer.grpo_trainer`), registered as
  a second `policy` version of the round whose parent is the SFT version; with
  `ppm_reward_weight` > 0 the PPM scoring the steps is this round's (else the promoted one;
  with none, that reward is left out and the run says so). Under `--distributed` it runs on
  the `train` queue like the other trainings.

The GRPO policy is then the round's candidate: it is evaluated and promoted or rejected; the
SFT version stays a candidate, kept as its parent.

With `step_dpo.enabled` a round that has PPM pairs runs two steps after its PPM and before
GRPO (so GRPO, when on, starts from the DPO policy):

* `step_dpo_data`: the round's PPM set as policy continuations (`write_step_dpo_dataset`):
  after the same question and shared steps, the continuation that led to a correct answer is
  chosen, the one that led to a wrong answer rejected;
* `train_dpo`: DPO from the round's SFT policy, which is also the reference
  (`rstar_trainer.dpo_trainer`), registered as a further `policy` version of the round whose
  parent is the version it started from. A round without pairs skips the pass and says so.

`sft_filter_min_ppm`: when a PPM is promoted, the round's SFT set (the union of every round's
picks) is scored with it, step prefix by step prefix as the search scores nodes, and the
trajectories whose mean step score is below the threshold are dropped (`rstar_core.rl.filter_by_ppm`);
the data step's result counts them. Before any PPM it changes nothing.

Not here: the curriculum and rewards (`rstar_core.rl`), the trainer (`rstar_trainer.grpo_trainer`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rstar_core.curation import SFTExample
from rstar_core.rl import curriculum, filter_by_ppm, latest_buckets

from .problems import problem_from_record

if TYPE_CHECKING:
    from .evolve import Evolver

__all__ = ["filter_sft_by_ppm", "grpo_stage", "step_dpo_stage"]


def step_dpo_stage(evolver: "Evolver", round: int, sft_policy: dict[str, Any],
                   data: dict[str, Any]) -> dict[str, Any]:
    """Run the round's step-DPO steps; the DPO policy's train result, or `sft_policy` without pairs."""
    from rstar_trainer.datasets import write_step_dpo_dataset

    if not data.get("ppm"):
        evolver.echo(f"round {round}: no step pairs this round: step-DPO skipped, the SFT policy stays the candidate")
        return sft_policy

    def dpo_data() -> dict[str, Any]:
        info = write_step_dpo_dataset(data["ppm"]["path"], evolver._dir(round) / "dpo_data", round=round,
                                      sources={"run": evolver.s.run, "rounds": list(range(1, round + 1))})
        return {"path": info.path, "content_hash": info.content_hash, **info.manifest["counts"]}

    dpo = evolver._step(round, "step_dpo_data", dpo_data)
    return evolver._train(round, "train_dpo", sft_policy["path"], dpo["path"], dict(evolver.recipe.step_dpo),
                          parent=sft_policy["version"])


def grpo_stage(evolver: "Evolver", round: int, sft_policy: dict[str, Any],
               ppm: dict[str, Any] | None) -> dict[str, Any]:
    """Run the round's GRPO steps; the GRPO policy's train result (the round's candidate)."""
    from rstar_trainer.grpo_config import grpo_config

    config = grpo_config(evolver.recipe.grpo, source=f"recipe {evolver.recipe.name}: grpo")
    data = evolver._step(round, "grpo_data", lambda: _grpo_data(evolver, round, config))
    settings = dict(evolver.recipe.grpo)
    if config.ppm_reward_weight > 0:
        ppm_path = ppm["path"] if ppm else evolver._promoted_path("ppm")
        if ppm_path:
            settings["ppm_model"] = ppm_path
        else:
            evolver.echo(f"round {round}: no PPM yet: GRPO runs without the PPM reward")
            settings["ppm_reward_weight"] = 0.0
    return evolver._train(round, "train_grpo", sft_policy["path"], data["path"], settings,
                          parent=sft_policy["version"])


def _grpo_data(evolver: "Evolver", round: int, config) -> dict[str, Any]:
    from rstar_trainer.datasets import write_grpo_dataset

    from .evolve import _read_jsonl

    pool = evolver.store.get_evolve_step(evolver.s.run, 0, "pool").result
    rows = _read_jsonl(Path(pool["path"]))
    problems = [problem_from_record(r, f"{pool['path']}: {r.get('id')}") for r in rows]
    problems = [p for p in problems if p.answer is not None]
    buckets = latest_buckets((r, str(row["problem_id"]), row["difficulty"])
                             for r in range(1, round + 1)
                             for row in evolver.store.iter_results(evolver.s.run, round=r))
    spec = config.curriculum
    items = curriculum(problems, buckets, round, size=config.prompts, hard_share_start=spec.hard_share_start,
                       hard_share_step=spec.hard_share_step, seed=config.seed)
    info = write_grpo_dataset(items, evolver._dir(round) / "grpo_data", round=round,
                              sources={"run": evolver.s.run, "rounds": list(range(1, round + 1)),
                                       "pool": pool["path"], "hard_share_start": spec.hard_share_start,
                                       "hard_share_step": spec.hard_share_step})
    return {"path": info.path, "content_hash": info.content_hash, **info.manifest["counts"]}


def filter_sft_by_ppm(evolver: "Evolver", examples: Sequence[SFTExample]) -> tuple[list[SFTExample], dict[str, Any]]:
    """The SFT examples the promoted PPM scores at least `sft_filter_min_ppm` on average (module docstring)."""
    threshold = evolver.recipe.sft_filter_min_ppm
    ppm_path = evolver._promoted_path("ppm")
    if threshold is None or ppm_path is None:
        return list(examples), {}
    means = asyncio.run(_mean_scores(ppm_path, examples))
    kept, dropped = filter_by_ppm(examples, means, threshold)
    evolver.echo(f"SFT filter: {dropped} of {len(examples)} trajectories have a mean PPM step score "
                 f"below {threshold} and are dropped")
    return kept, {"ppm_filter": {"ppm": ppm_path, "min_mean": threshold, "dropped": dropped}}


async def _mean_scores(ppm_path: str, examples: Sequence[SFTExample]) -> list[float | None]:
    from rstar_core.ports import ScoringItem
    from rstar_reward import PPMRewardModel

    model = PPMRewardModel.from_dir(ppm_path)
    try:
        means: list[float | None] = []
        for example in examples:
            if not example.steps:
                means.append(None)
                continue
            scores = await model.score([ScoringItem(example.question, tuple(example.steps[:k]))
                                        for k in range(1, len(example.steps) + 1)])
            means.append(sum(scores) / len(scores))
        return means
    finally:
        await model.close()
