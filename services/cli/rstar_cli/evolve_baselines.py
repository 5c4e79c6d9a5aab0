"""The reward-model ablation's baselines in `rstar evolve`: an ORM and a PQM from each round's trees.

With ``reward_baselines: [orm, pqm]`` in a recipe (method rstar), every search round whose data
gave the PPM its pairs also trains, after `decide`, the baselines the paper compares the PPM
with (Table 8), from the same trees, the same round's policy and the recipe's `ppm` settings:

* `baselines_data`: the ORM set (whole solutions labelled by their answer's correctness,
  `orm_examples`) and the PQM set (step prefixes with their Q values, `pqm_examples`) from
  the trees of every round up to this one, exactly the trees the round's PPM pairs came from,
  held out by the same problems (`split_by_problem` hashes each problem id on its own, so a
  problem is held out in all three sets or in none);
* `train_orm`, `train_pqm`: `run_train_job` through `Evolver._train` (in-process, or on the
  `train` queue with ``--distributed``); registered as versions of kind `orm` / `pqm` with
  the round's policy as their start model;
* `promote_baselines`: promoted when the round's models were promoted, rejected otherwise,
  so ``rstar eval --method bon-orm`` (or ``--scorer orm``) finds the baseline of the round
  whose PPM it would use.

Every step is recorded like the others: adding the switch to the recipe of a finished run and
running the same `rstar evolve` command trains its rounds' baselines and redoes nothing else.

Not here: the datasets' rows and the trainers (`rstar_trainer.datasets`, `ppm_trainer`), the
evaluation that compares the scorers (`rstar eval`).
"""

from __future__ import annotations

from typing import Any

from rstar_core.curation import orm_examples, pqm_examples, split_by_problem
from rstar_core.types import Tree

__all__ = ["BASELINES", "reward_baselines"]

# Baseline kind -> its training step (`rstar_trainer.jobs.STEPS`).
BASELINES = {"orm": "train_orm", "pqm": "train_pqm"}


def reward_baselines(evolver, round: int, policy: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """Train and promote (or reject) the recipe's baselines of `round`; {kind: step result}."""
    data = evolver._step(round, "baselines_data", lambda: baselines_data(evolver, round))
    trained: dict[str, Any] = {}
    for kind in evolver.recipe.reward_baselines:
        if not data.get(kind):
            continue
        trained[kind] = evolver._train(round, BASELINES[kind], policy["path"], data[kind]["path"],
                                       evolver.recipe.ppm, parent=evolver._promoted_version(kind))
    if trained:
        evolver._step(round, "promote_baselines", lambda: _promote(evolver, round, trained, decision))
    return trained


def baselines_data(evolver, round: int) -> dict[str, Any]:
    """The ORM and PQM sets of `round` (a kind without a usable set is None, with the reason echoed)."""
    from rstar_trainer.datasets import write_orm_dataset, write_pqm_dataset

    from .evolve import HELDOUT_FRACTION

    trees = {r: [Tree.from_dict(row["tree"]) for row in evolver.store.iter_results(evolver.s.run, round=r,
                                                                                   with_tree=True)]
             for r in range(1, round + 1)}
    sources = {"run": evolver.s.run, "rounds": list(range(1, round + 1))}
    builders = {"orm": (orm_examples, write_orm_dataset), "pqm": (pqm_examples, write_pqm_dataset)}
    result: dict[str, Any] = {}
    for kind in evolver.recipe.reward_baselines:
        examples_of, write = builders[kind]
        examples = [e for r, searched in trees.items() for e in examples_of(searched, r)]
        heldout = split_by_problem((e.problem_id for e in examples), HELDOUT_FRACTION)
        try:
            info = write(examples, heldout, evolver._dir(round) / f"{kind}_data", round=round, sources=sources)
        except ValueError as exc:
            evolver.echo(f"round {round}: no {kind.upper()} this round: {exc}")
            result[kind] = None
            continue
        result[kind] = {"path": info.path, "content_hash": info.content_hash, **info.manifest["counts"]}
    return result


def _promote(evolver, round: int, trained: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    promote = bool(decision.get("promoted"))
    for result in trained.values():
        (evolver.registry.promote if promote else evolver.registry.reject)(result["version"])
    verdict = "promoted with the round's models" if promote else "rejected with the round's models"
    evolver.echo(f"round {round}: {', '.join(k.upper() for k in trained)} {verdict}")
    return {"promoted": promote, **{kind: result["version"] for kind, result in trained.items()}}
