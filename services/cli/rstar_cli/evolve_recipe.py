"""A self-evolution recipe: the pool, the round-0 bootstrap, each round's search, training and evaluation.

Recipes live in `deploy/configs/evolve/` (`cpu`: sized for 2 cores and the 135M model;
`paper`: the published budgets, for GPUs). Every section is validated when the recipe is
loaded, before any model is touched, and unknown keys are rejected:

* `pool`: which problems of the `--pool` file to use (`sources`, `limit`), plus a practice pool
  generated from a seed (`practice: {levels, n_per_level, seed}`) mixed in.
* `bootstrap`: round 0, how many of the pool's worked reference solutions (the
  `reference_solution` of GSM8K records) to convert; `enabled: false` skips round 0's data.
* `search`: one mapping of search settings per round (`rounds.<r>`, falling back to the
  last one given); `rstar_core.config.SearchConfig` validates each. The driver sets the
  prompt format (base model: `base`, fine-tuned: `sft`) and the PPM switch itself.
* `sft`, `ppm`: the trainers' settings (`rstar_trainer.sft_config` / `ppm_config`).
* `eval`: the held-out sets (the first `gsm8k_limit` GSM8K test problems, `practice_per_level`
  practice problems per level) and the budgets of greedy decoding and of the fixed search.

Not here: running anything (`evolve`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rstar_core.config import SearchConfig, config_from_mapping, dataclass_from_mapping, read_yaml_mapping

__all__ = ["EvolveRecipe", "load_recipe"]

_SECTIONS = {"pool", "bootstrap", "search", "sft", "ppm", "eval", "promote"}


@dataclass(frozen=True)
class PracticeSpec:
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    n_per_level: int = 0
    seed: int = 0


@dataclass(frozen=True)
class PoolSpec:
    # Records of the --pool file whose `source` is one of these (empty: every record).
    sources: tuple[str, ...] = ()
    # Problems taken from the --pool file after that filter (None: all of them).
    limit: int | None = None
    practice: PracticeSpec = PracticeSpec()


@dataclass(frozen=True)
class BootstrapSpec:
    enabled: bool = True
    # Pool records with a `reference_solution` (GSM8K calculator annotations) converted.
    limit: int | None = None


@dataclass(frozen=True)
class EvalSpec:
    gsm8k_file: str = "eval/GSM8K_test.json"
    gsm8k_limit: int = 200
    practice_per_level: int = 100
    practice_seed: int = 0
    # Greedy decoding: one candidate per step at temperature 0.
    greedy_max_depth: int = 10
    greedy_max_tokens_per_step: int = 256
    # The fixed-budget search on the GSM8K held-out items (0: skip).
    search_limit: int = 200
    search: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvolveRecipe:
    name: str
    pool: PoolSpec
    bootstrap: BootstrapSpec
    # round -> search settings (a mapping accepted by SearchConfig).
    search: dict[int, dict[str, Any]]
    sft: dict[str, Any]
    ppm: dict[str, Any]
    eval: EvalSpec
    # Promote a round's models only if held-out greedy accuracy did not drop by more than this.
    promote_tolerance: float = 0.0

    def search_config(self, round: int, **forced: Any) -> SearchConfig:
        """The round's search settings (the last round given applies to later ones)."""
        known = sorted(self.search)
        chosen = max((r for r in known if r <= round), default=known[0])
        return config_from_mapping({**self.search[chosen], **forced}, source=f"recipe {self.name}: search.{chosen}")

    def eval_search_config(self, **forced: Any) -> SearchConfig:
        return config_from_mapping({**self.eval.search, **forced}, source=f"recipe {self.name}: eval.search")

    def greedy_config(self, prompt_format: str) -> SearchConfig:
        return SearchConfig(expansion_width=1, rollouts=1, temperature=0.0, max_depth=self.eval.greedy_max_depth,
                            max_tokens_per_step=self.eval.greedy_max_tokens_per_step, errors_threshold=1,
                            parallel_rollouts=1, concurrent_problems=64, prompt_format=prompt_format)


def _build(cls, data: Any, source: str):
    return dataclass_from_mapping(cls, data, source=source)


def load_recipe(path: str | Path) -> EvolveRecipe:
    """Load and validate a recipe file; every error names the file and the key."""
    from rstar_trainer.ppm_config import PPMConfig
    from rstar_trainer.sft_config import SFTConfig, config_from_mapping as trainer_config

    path = Path(path)
    data = read_yaml_mapping(path, what="recipe")
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}")
    pool_data = dict(data.get("pool") or {})
    practice = _build(PracticeSpec, pool_data.pop("practice", None), f"{path}: pool.practice")
    practice = dataclasses.replace(practice, levels=tuple(practice.levels))
    if any(level not in range(1, 6) for level in practice.levels) or practice.n_per_level < 0:
        raise ValueError(f"{path}: pool.practice needs levels in 1..5 and n_per_level >= 0")
    bootstrap = _build(BootstrapSpec, data.get("bootstrap"), f"{path}: bootstrap")
    pool = _build(PoolSpec, pool_data, f"{path}: pool")
    pool = dataclasses.replace(pool, practice=practice, sources=tuple(pool.sources))
    search = data.get("search") or {}
    if not isinstance(search, Mapping) or not search:
        raise ValueError(f"{path}: search must map round numbers to search settings")
    rounds: dict[int, dict[str, Any]] = {}
    for key, settings in search.items():
        if not isinstance(key, int) or key < 1:
            raise ValueError(f"{path}: search keys are round numbers >= 1, got {key!r}")
        rounds[key] = dict(settings or {})
        config_from_mapping(rounds[key], source=f"{path}: search.{key}")
    recipe = EvolveRecipe(
        name=path.stem,
        pool=pool,
        bootstrap=bootstrap,
        search=rounds,
        sft=dict(data.get("sft") or {}),
        ppm=dict(data.get("ppm") or {}),
        eval=_build(EvalSpec, data.get("eval"), f"{path}: eval"),
        promote_tolerance=float((data.get("promote") or {}).get("tolerance", 0.0)),
    )
    trainer_config(SFTConfig, recipe.sft, source=f"{path}: sft")
    trainer_config(PPMConfig, recipe.ppm, source=f"{path}: ppm")
    recipe.eval_search_config()
    return recipe
