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
* `method`: `rstar` (the default: the rounds above) or `process-supervision` (MCTS process
  supervision, arXiv 2501.01478; `process-supervision-cpu.yaml`): each round walks every pool
  problem with one search per prefix (`search.<r>`: the settings of each of those searches;
  whole steps only, no reflection) and trains the previous round's policy on the scored
  steps. Its `process` section holds alpha, beta and the training run
  (`rstar_trainer.process_config`); it uses neither `bootstrap`, `sft` nor `ppm`.
* MCTS++ switches (method `rstar` only; all off by default; `mctspp-cpu.yaml`):
  `grpo` (`rstar_trainer.grpo_config`): after each round's SFT, a GRPO stage from the SFT
  policy on the round's problems, ordered easy to hard with a hard share that grows per round
  (`curriculum: {hard_share_start, hard_share_step}`); its policy is the round's candidate.
  `sft_filter_min_ppm` (a number in [-1, 1], or null): from the round with a promoted PPM on,
  drop the SFT trajectories whose mean PPM step score is below it. `step_dpo`
  (`rstar_trainer.dpo_config`; true for the defaults, false or left out for off): a step-DPO
  pass from the SFT policy on the round's step pairs (chosen: the continuation that led to a
  correct answer; rejected: to a wrong one), before GRPO; its policy is the round's candidate.
* `extends: other.yaml` (a path relative to this file): start from that recipe and change
  only what this file gives; mappings merge key by key (so `search: {1: {reflection: true}}`
  changes one setting of round 1), anything else replaces. Chains are followed; a cycle is an
  error. The recipe's name is still this file's. `deploy/configs/evolve/methods/` uses it.

Not here: running anything (`evolve`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rstar_core.config import SearchConfig, config_from_mapping, dataclass_from_mapping, read_yaml_mapping

__all__ = ["EvolveRecipe", "load_recipe"]

_SECTIONS = {"method", "pool", "bootstrap", "search", "sft", "ppm", "process", "eval", "promote",
             "reward_baselines"}
_MCTSPP_KEYS = {"grpo", "sft_filter_min_ppm", "step_dpo"}
METHODS = ("rstar", "process-supervision")


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
    # 0: no practice problems in the held-out set.
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
    # "rstar" or "process-supervision" (see the module docstring).
    method: str = "rstar"
    # Process supervision: alpha, beta and the training run (`ProcessConfig`).
    process: dict[str, Any] = field(default_factory=dict)
    # MCTS++: the GRPO stage after SFT (`rstar_trainer.grpo_config`; {} or enabled: false = off)
    # and the SFT filter by mean PPM step score (None = off).
    grpo: dict[str, Any] = field(default_factory=dict)
    sft_filter_min_ppm: float | None = None
    # MCTS++: the step-DPO pass after SFT (`rstar_trainer.dpo_config`; {} = off).
    step_dpo: dict[str, Any] = field(default_factory=dict)
    # The reward-model ablation: baselines (orm, pqm) trained after each round's decision.
    reward_baselines: tuple[str, ...] = ()

    @property
    def grpo_enabled(self) -> bool:
        return bool(self.grpo.get("enabled", False))

    @property
    def step_dpo_enabled(self) -> bool:
        return bool(self.step_dpo.get("enabled", False))

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


def _mctspp(path: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """The MCTS++ switches, validated (see the module docstring)."""
    from rstar_trainer.dpo_config import step_dpo_config
    from rstar_trainer.grpo_config import grpo_config

    given = sorted(_MCTSPP_KEYS & set(data))
    if given and data.get("method", "rstar") != "rstar":
        raise ValueError(f"{path}: {', '.join(given)} belong(s) to method rstar")
    step_dpo = step_dpo_config(data.get("step_dpo"), source=f"{path}: step_dpo")
    grpo = dict(data.get("grpo") or {})
    if "ppm_model" in grpo:
        raise ValueError(f"{path}: grpo.ppm_model is set by the driver (the round's PPM), not by a recipe")
    grpo_config(grpo, source=f"{path}: grpo")
    threshold = data.get("sft_filter_min_ppm")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not -1.0 <= threshold <= 1.0):
        raise ValueError(f"{path}: sft_filter_min_ppm must be a number in [-1, 1] or null, got {threshold!r}")
    return {"grpo": grpo, "sft_filter_min_ppm": None if threshold is None else float(threshold),
            "step_dpo": step_dpo.to_dict() if step_dpo.enabled else {}}


def _baselines(path: Path, data: Mapping[str, Any]) -> tuple[str, ...]:
    """The `reward_baselines` list, validated: orm and / or pqm, each once, method rstar only."""
    from .evolve_baselines import BASELINES

    given = data.get("reward_baselines")
    if given is None:
        return ()
    if not isinstance(given, list) or any(not isinstance(k, str) or k not in BASELINES for k in given):
        raise ValueError(f"{path}: reward_baselines must be a list of {' and '.join(BASELINES)}, got {given!r}")
    if len(set(given)) != len(given):
        raise ValueError(f"{path}: reward_baselines names a kind twice: {given!r}")
    if given and data.get("method", "rstar") != "rstar":
        raise ValueError(f"{path}: reward_baselines belong to method rstar (they are trained from its trees)")
    return tuple(given)


def merge_settings(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied: nested mappings merge key by key, other values replace."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = merge_settings(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return merged


def _read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe file's mapping with the recipes it `extends` merged under it."""
    data = read_yaml_mapping(path, what="recipe")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"{path}: extends must name a recipe file, got {base!r}")
    chain = (*chain, path.resolve())
    base_path = (path.parent / base).resolve()
    if base_path in chain:
        raise ValueError(f"{path}: extends {base} forms a cycle ({' -> '.join(p.name for p in (*chain, base_path))})")
    if not base_path.is_file():
        raise ValueError(f"{path}: extends {base}, which is not a file ({base_path})")
    return merge_settings(_read_recipe(base_path, chain), data)


def _build(cls, data: Any, source: str):
    return dataclass_from_mapping(cls, data, source=source)


def load_recipe(path: str | Path) -> EvolveRecipe:
    """Load and validate a recipe file; every error names the file and the key."""
    from rstar_trainer.ppm_config import PPMConfig
    from rstar_trainer.process_config import ProcessConfig
    from rstar_trainer.sft_config import SFTConfig, config_from_mapping as trainer_config

    path = Path(path)
    data = _read_recipe(path)
    unknown = sorted(set(data) - _SECTIONS - _MCTSPP_KEYS)
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
        method=data.get("method", "rstar"),
        process=dict(data.get("process") or {}),
        reward_baselines=_baselines(path, data),
        **_mctspp(path, data),
    )
    spec = recipe.eval
    if spec.gsm8k_limit < 1 or spec.practice_per_level < 0 or spec.search_limit < 0:
        raise ValueError(f"{path}: eval needs gsm8k_limit >= 1, practice_per_level >= 0 and search_limit >= 0")
    if recipe.method not in METHODS:
        raise ValueError(f"{path}: method must be one of {', '.join(METHODS)}, got {recipe.method!r}")
    trainer_config(SFTConfig, recipe.sft, source=f"{path}: sft")
    trainer_config(PPMConfig, recipe.ppm, source=f"{path}: ppm")
    if recipe.method == "process-supervision":
        trainer_config(ProcessConfig, recipe.process, source=f"{path}: process")
        for key in rounds:
            config = recipe.search_config(key)
            if config.granularity != "step" or config.reflection:
                raise ValueError(f"{path}: search.{key}: process supervision scores whole steps: "
                                 "granularity must be 'step' and reflection off")
    elif "process" in data:
        raise ValueError(f"{path}: the process section belongs to method process-supervision")
    recipe.eval_search_config()
    return recipe
