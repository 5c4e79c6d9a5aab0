"""Experiment knobs for one search: a validated dataclass, loadable from a YAML recipe.

Recipes live in `deploy/configs/` (round1, rounds 2-4, evaluation, the CPU demo, the Marco-o1
variants without a reward model: marco, marco-ministep, marco-reflect). Unknown
keys are rejected so a typo never silently falls back to a default. Wiring (addresses,
paths) is not here: that comes from `RSTAR_*` environment settings of each process.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["GRANULARITIES", "SearchConfig", "TERMINAL_REWARDS", "config_from_mapping", "dataclass_from_mapping",
           "load_config", "read_yaml_mapping"]

TERMINAL_REWARDS = ("ground_truth", "ppm", "confidence")
GRANULARITIES = ("step", "mini-step")


# Terminal rewards that are a model's judgement (not the ground truth): the search answers
# with the highest-valued terminal instead of a vote (`SearchConfig.values_answers`).
VALUED_TERMINAL_REWARDS = ("ppm", "confidence")


@dataclass(frozen=True)
class SearchConfig:
    # UCT exploration constant c in Q + c*sqrt(ln N(parent) / N(child)).
    c_puct: float = 2.0
    # Candidates sampled per expansion (one sampling call with n).
    expansion_width: int = 4
    # Rollouts (MCTS iterations) per problem.
    rollouts: int = 8
    # Extra rollouts for problems no rollout solved (hard), run with a new seed.
    hard_extra_rollouts: int = 0
    # Steps below the root after which a branch ends as TOO_MANY_STEPS (nodes: mini-steps and
    # a reflection count too).
    max_depth: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens_per_step: int = 256
    # None = the prompt format's own stop strings.
    stop: tuple[str, ...] | None = None
    # Expansions of one node in a row whose candidates all failed before the node
    # becomes a TOO_MANY_ERRORS terminal (the reference: 2 in round 1, 1 later).
    errors_threshold: int = 2
    seed: int = 0
    # Which prompt format the policy gets: "base" (few-shot) or "sft" (fine-tuned policy).
    prompt_format: str = "base"
    # Score new non-terminal nodes with the PPM (rounds 3-4 and evaluation).
    use_ppm_init: bool = False
    # Terminal value of an answer: "ground_truth" (+1/-1, data generation), "ppm"
    # (evaluation) or "confidence" (Marco-o1: the mean token confidence of the rollout, in
    # [0, 1]; needs no ground truth and no PPM, needs `logprobs`).
    terminal_reward: str = "ground_truth"
    # Give new non-terminal nodes the mean token confidence of their path as initial q (N=1),
    # as use_ppm_init does with the PPM score (Marco-o1 without a reward model; needs `logprobs`).
    use_confidence_init: bool = False
    # What one tree node is: "step" (a whole code step or the answer) or "mini-step" (Marco-o1:
    # at most `mini_step_tokens` tokens; a step longer than that spans several nodes, and its
    # code runs once the node that completes it arrives).
    granularity: str = "step"
    # Tokens per mini-step node (Marco-o1 uses 32 or 64); only with granularity mini-step,
    # where it must be below max_tokens_per_step (the budget of the whole step).
    mini_step_tokens: int = 32
    # Marco-o1 reflection: an answer found on a path without reflection also gets a sibling
    # that continues after "<answer> Wait! Maybe I made some mistakes! ..."; the answer found
    # below it records the first answer and whether it changed (once per path).
    reflection: bool = False
    # True: unvisited children are explored before any visited sibling (standard UCT,
    # infinite bonus). False: the reference's rule (unvisited scores 0, search is greedy).
    explore_unvisited_first: bool = True
    # Rollouts of one tree in flight at once (virtual loss keeps them apart).
    parallel_rollouts: int = 2
    # A rollout descends into the first candidate that is ready instead of waiting for
    # the slowest of the n samples; late candidates join the tree when they finish.
    # Ignored with use_ppm_init / use_confidence_init (selection then needs every sibling's value).
    descend_on_first_child: bool = True
    # Virtual loss added per in-flight rollout passing through a node.
    virtual_loss: float = 1.0
    # Problems searched at once by one process.
    concurrent_problems: int = 16
    # Wall-clock limit for one code execution, seconds.
    exec_timeout_s: float = 5.0
    # Ask the policy for top-k logprobs (token-confidence reward); 0 = off.
    logprobs: int = 0
    # Drop exact-duplicate candidate texts within one expansion.
    dedup_candidates: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive = ("expansion_width", "rollouts", "max_depth", "max_tokens_per_step",
                     "errors_threshold", "parallel_rollouts", "concurrent_problems")
        for name in _positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.hard_extra_rollouts, int) or self.hard_extra_rollouts < 0:
            raise ValueError(f"hard_extra_rollouts must be >= 0, got {self.hard_extra_rollouts!r}")
        if not (isinstance(self.c_puct, (int, float)) and math.isfinite(self.c_puct) and self.c_puct >= 0):
            raise ValueError(f"c_puct must be a finite number >= 0, got {self.c_puct!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.exec_timeout_s, (int, float)) and self.exec_timeout_s > 0):
            raise ValueError(f"exec_timeout_s must be > 0, got {self.exec_timeout_s!r}")
        if self.virtual_loss < 0:
            raise ValueError(f"virtual_loss must be >= 0, got {self.virtual_loss!r}")
        if self.terminal_reward not in TERMINAL_REWARDS:
            raise ValueError(f"terminal_reward must be one of {', '.join(TERMINAL_REWARDS)}, "
                             f"got {self.terminal_reward!r}")
        if not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool) or self.logprobs < 0:
            raise ValueError(f"logprobs must be an integer >= 0, got {self.logprobs!r}")
        self._check_marco()
        from .steps import get_format  # local import: steps imports grading, keep config light

        get_format(self.prompt_format)
        if self.stop is not None:
            if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
                raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
            object.__setattr__(self, "stop", tuple(self.stop))

    def _check_marco(self) -> None:
        for name in ("use_ppm_init", "use_confidence_init", "reflection"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.use_ppm_init and self.use_confidence_init:
            raise ValueError("use_ppm_init and use_confidence_init are both set: a node's initial value "
                             "comes from one of them")
        if self.uses_confidence and self.logprobs < 1:
            why = "terminal_reward 'confidence'" if self.terminal_reward == "confidence" else "use_confidence_init"
            raise ValueError(f"{why} needs the policy's top-k logprobs: set logprobs >= 1 (Marco-o1 uses 5), "
                             f"got {self.logprobs}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        size = self.mini_step_tokens
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"mini_step_tokens must be a positive integer, got {size!r}")
        if self.granularity == "mini-step" and size >= self.max_tokens_per_step:
            raise ValueError(f"mini_step_tokens ({size}) must be below max_tokens_per_step "
                             f"({self.max_tokens_per_step}), or no step would ever span two mini-steps")

    @property
    def needs_reward_model(self) -> bool:
        return self.use_ppm_init or self.terminal_reward == "ppm"

    @property
    def uses_confidence(self) -> bool:
        """Token confidence gives some value of the search (terminal or initial)."""
        return self.terminal_reward == "confidence" or self.use_confidence_init

    @property
    def values_answers(self) -> bool:
        """Answer terminals carry a model's judgement (PPM or confidence), not the ground truth,
        so the answer is the highest-valued one rather than a vote."""
        return self.terminal_reward in VALUED_TERMINAL_REWARDS

    def replace(self, **changes: Any) -> "SearchConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["stop"] is not None:
            data["stop"] = list(data["stop"])
        return data


def dataclass_from_mapping(cls, data: Mapping[str, Any] | None, *, source: str, what: str = "key"):
    """`cls(**data)`; a non-mapping, unknown keys or a bad value is one `ValueError` naming `source`.

    `None` gives `cls()` (a section left out of a file takes its defaults).
    """
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{source}: unknown {what}(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def config_from_mapping(data: Mapping[str, Any], *, source: str = "config") -> SearchConfig:
    """Build a search config from a mapping; unknown keys are an error that names them."""
    if isinstance(data, Mapping) and isinstance(data.get("stop"), list):
        data = {**data, "stop": tuple(data["stop"])}
    if data is None:
        raise ValueError(f"{source}: expected a mapping of settings, got NoneType")
    return dataclass_from_mapping(SearchConfig, data, source=source, what="config key")


def read_yaml_mapping(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """The mapping at the top of a YAML file; a missing file, bad YAML or another shape is a named error."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_config(path: str | Path, **overrides: Any) -> SearchConfig:
    """Load a YAML recipe; `overrides` (e.g. from CLI flags) win over the file."""
    data = read_yaml_mapping(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(data, source=str(path))
