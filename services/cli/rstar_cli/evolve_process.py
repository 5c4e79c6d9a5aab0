"""`rstar evolve` with `method: process-supervision`: MCTS process supervision's rounds (arXiv 2501.01478).

Round r (r >= 1), each step recorded and resumable like the rStar rounds (`evolve`):

* `search`: the promoted policy (the base model before any promotion) walks every pool
  problem: a search from the question, the candidate next steps scored by relative
  correctness, the best one appended, a new search from there, until the solution ends
  (`rstar_core.process_supervision`). One JSON line per finished problem goes to
  `round-r/process_walks.jsonl`, so a killed walk resumes with the problems left. The walk
  always runs in this process (as evaluation does), also under `--distributed`.
* `data`: this round's scored steps only (the method is on-policy: each round learns from what
  the policy it starts from did) as a process-supervision set (`write_process_dataset`). A
  round whose walks scored no step (every candidate ended as its prefix did, e.g. all wrong)
  trains nothing and says so; the policy stays.
* `train_process`: the score-weighted NLL + beta * KL round, *from the policy that walked*
  (the previous round's), which is also the KL reference; registered as a `policy` version
  whose parent is that policy's version. Under `--distributed` it runs on the `train` queue.
* `evaluate`, `decide`: as every round (held-out greedy and search accuracy, promotion only if
  held-out greedy accuracy did not drop more than the recipe's tolerance), so the round table
  (`rstar rounds`) reports each iteration as the paper's Table 1 does, with the run's loss,
  weighted NLL and KL beside it; `rstar eval` evaluates the versions like any policy.

Not here: the walk and the scores (`rstar_core.process_supervision`), the loss (`rstar_trainer.process_trainer`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rstar_core.process_supervision import ProcessExample, walk_many
from rstar_core.types import Problem

from .problems import problem_from_record

if TYPE_CHECKING:
    from .evolve import Evolver

__all__ = ["process_round"]

WALKS = "process_walks.jsonl"


def process_round(evolver: "Evolver", round: int, pool: dict[str, Any]) -> None:
    walks = evolver._step(round, "search", lambda: _walk(evolver, round, pool))
    data = evolver._step(round, "data", lambda: _data(evolver, round, walks))
    if data["process"] is None:
        evolver.echo(f"round {round}: no step got a non-zero score (every candidate ended as its prefix did): "
                     "nothing to train, the policy stays")
        return
    policy = evolver._train(round, "train_process", walks["policy"], data["process"]["path"], evolver.recipe.process,
                            parent=walks["policy_version"])
    evaluation = evolver._step(round, "evaluate", lambda: evolver._evaluate(policy["path"], "sft", None))
    evolver._step(round, "decide", lambda: evolver._decide(round, policy, None, evaluation))


def _walk(evolver: "Evolver", round: int, pool: dict[str, Any]) -> dict[str, Any]:
    from rstar_trainer.process_config import ProcessConfig

    from .evolve import _read_jsonl

    policy, prompt_format = evolver._policy_for_search()
    recipe = evolver.recipe
    config = recipe.search_config(round, prompt_format=prompt_format, use_ppm_init=False,
                                  terminal_reward="ground_truth", seed=recipe.search_config(round).seed + round)
    alpha = ProcessConfig(**recipe.process).alpha
    problems = [problem_from_record(r, f"{pool['path']}: {r.get('id')}") for r in _read_jsonl(Path(pool["path"]))]
    out = evolver._dir(round) / WALKS
    done = {row["problem_id"] for row in _read_jsonl(out)} if out.exists() else set()
    todo = [p for p in problems if str(p.id) not in done]
    if todo:
        asyncio.run(_walk_embedded(todo, config, policy, alpha, round, out))
    rows = _read_jsonl(out)
    walked = [r for r in rows if "error" not in r]
    examples = [e for r in walked for e in r["examples"]]
    ended: dict[str, int] = {}
    for row in walked:
        ended[row["ended"]] = ended.get(row["ended"], 0) + 1
    return {"policy": policy, "policy_version": evolver._promoted_version("policy"), "prompt_format": prompt_format,
            "config": config.to_dict(), "alpha": alpha, "path": str(out), "problems": len(rows),
            "failed": len(rows) - len(walked), "solved": sum(bool(r["correct"]) for r in walked),
            "ended": ended, "examples": len(examples), "positive": sum(e["score"] > 0 for e in examples),
            "negative": sum(e["score"] < 0 for e in examples), "searches": sum(r["searches"] for r in walked),
            "tokens": sum(r["tokens"] for r in walked)}


async def _walk_embedded(problems: Sequence[Problem], config, policy: str, alpha: float, round: int,
                         out: Path) -> None:
    from tqdm import tqdm

    from .embedded import embedded_runtime
    from .evolve import _embedded_settings

    async with embedded_runtime(config, _embedded_settings(policy, None)) as runtime:
        mcts = runtime.mcts(config)
        bar = tqdm(total=len(problems), desc="walk", unit="problem", dynamic_ncols=True)
        with out.open("a", encoding="utf-8") as fh:
            async for i, result in walk_many(mcts, problems, alpha=alpha, round=round):
                problem = problems[i]
                if isinstance(result, Exception):
                    row = {"problem_id": str(problem.id), "error": f"{type(result).__name__}: {result}"}
                else:
                    row = {"problem_id": str(problem.id), "question": problem.question, "steps": list(result.steps),
                           "answer": result.answer, "correct": result.correct, "ended": result.ended,
                           "searches": result.searches, "tokens": result.tokens,
                           "examples": [{"prefix": list(e.prefix), "step": e.step, "score": e.score,
                                         "final": e.final} for e in result.examples]}
                # One line per problem, flushed: a killed walk keeps every finished problem.
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                bar.update(1)
        bar.close()


def _data(evolver: "Evolver", round: int, walks: dict[str, Any]) -> dict[str, Any]:
    from rstar_trainer.datasets import write_process_dataset

    from .evolve import _read_jsonl

    if not walks["examples"]:
        return {"process": None}
    examples = [ProcessExample(row["problem_id"], row["question"], tuple(e["prefix"]), e["step"], e["score"],
                               e["final"], round)
                for row in _read_jsonl(Path(walks["path"])) if "error" not in row for e in row["examples"]]
    info = write_process_dataset(examples, evolver._dir(round) / "process_data", round=round,
                                 sources={"run": evolver.s.run, "rounds": [round], "policy": walks["policy"],
                                          "alpha": walks["alpha"]})
    return {"process": {"path": info.path, "content_hash": info.content_hash, **info.manifest["counts"]}}
