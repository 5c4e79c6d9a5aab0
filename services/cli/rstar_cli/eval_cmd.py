"""`rstar eval`: one test-time method on a benchmark, in-process, with reports that compare.

    rstar eval --benchmark NAME|FILE --method M [--n N[,N...]] [--limit K] [--policy V]
               [--ppm V] [--orm V] [--pqm V] [--scorer ppm|orm|pqm]
               [--distributed] [--run EVOLVE_RUN] [--out DIR] [--config RECIPE] [--set KEY=VALUE ...]

* Benchmarks: a name (math500, gsm8k, aime2024, amc23, olympiadbench, collegemath,
  gaokao2023en, omni, MATH; read from ``$RSTAR_DATA_DIR/eval``), ``practice`` (the held-out
  split of the graded practice problems, ``--levels``, ``--per-level``), or a JSON/JSONL
  problem file (the loader of `rstar solve --file`).
* Methods (`rstar_core.evaluation`): greedy, maj, bon-ppm, bon-pqm, bon-orm, mcts, mcts-vote.
  ``--n`` is the number of samples (maj, bon-*) or rollouts (mcts, mcts-vote); a list
  reports each N.
  Samples are drawn once at the largest N and the smaller N use the first of them; the
  tree methods run one search per N. In-process, the samples are kept in
  ``<out>/samples.jsonl`` (answer, steps, tokens; by item, policy and budgets) and shared:
  maj and the three bon-* run into one ``--out`` select from the same samples (a paired
  comparison at equal generated tokens) and only the first run draws them.
* Budgets: the recipe ``--config`` (default ``eval``, `deploy/configs/eval.yaml`) with
  ``--set`` overrides; each method then fixes what defines it (width 1 and one rollout for
  the sampling methods, temperature 0 for greedy, N rollouts and PPM terminal values for
  the tree methods). The prompt format follows the policy (a registered fine-tuned version:
  ``sft``; any other model: ``base``) unless ``--set prompt_format=...``.
* Models: ``--policy`` / ``--ppm`` / ``--orm`` / ``--pqm`` take a directory or a version of
  the registry (looked up in the store, `RSTAR_DATABASE_URL`). Defaults: policy
  ``RSTAR_MODEL``, else the bundled model; PPM ``RSTAR_REWARD_MODEL``, else the promoted PPM;
  ORM and PQM the promoted version of their kind. Methods that need a reward model refuse to
  run without one (never an untrained head).
* Scorers (the reward-model ablation, Table 8 of the paper): ``bon-ppm`` / ``bon-pqm`` /
  ``bon-orm`` pick by the PPM, PQM or ORM; ``mcts`` and ``mcts-vote`` search with the PPM,
  or with the model ``--scorer orm|pqm`` names (their rows are labelled ``mcts-orm``, ...).
  Without a reward model: a recipe whose ``terminal_reward`` is ``confidence`` (``--config
  marco``, ``marco-ministep``, ``marco-reflect``: Marco-o1) makes ``mcts`` / ``mcts-vote`` value
  answers by the policy's token confidence (rows ``mcts-confidence``; ``--scorer confidence``
  does the same with any recipe that needs no PPM).
  One flag per kind, rather than one ``--reward`` flag whose kind is read from the model,
  so a command says what it compares, and a model of the wrong kind (a PPM given as
  ``--orm``: by its registry kind, or by the ``objective`` in its ``rstar_ppm.json``) is an
  error, not a silent change of experiment. Rows record the scorer's version under its kind
  (``versions: {policy, orm}``).
* The gold answer is hidden from the search (no terminal rewards from it, no extra
  rollouts for unsolved items) and only used to grade the picked answer afterwards.
* Resumable: items are written one at a time to ``<out>/items.jsonl``; a re-run computes
  only the (item, N) rows missing for this method, these model versions and this config.
  Reports (`eval_report`) are rewritten from every row in the folder at the end.
* ``--distributed``: the same plan, searches and rows, but every search runs as a task on
  the ``eval`` queue (workers and services of a running stack, `eval_distributed`); the
  rows record the versions the services' results report.
* ``--run NAME`` (an `rstar evolve` run): the folder defaults to
  ``<work-dir>/<NAME>/eval/<benchmark>-<method>`` (where `rstar report NAME` finds it),
  and the run's round table is written beside the reports with its accuracy-per-round plot
  (`report`), on which this evaluation's accuracy appears at the round whose policy it ran.

Bad input (unknown benchmark or method, N < 1, a version that is not in the registry, a
method without its reward model, a reward model of another kind, a ``--scorer`` that
contradicts the method, ...) ends with one ``rstar: error: ...`` line and exit code 2
before any model loads. A search that raises marks its item failed (nothing written, so a
re-run retries it) and the command exits 1.

Not here: the selection logic (`rstar_core.evaluation`), the report files (`eval_report`),
the queue and store side of ``--distributed`` (`eval_distributed`), the round plot and
`rstar report` (`report`), training the ORM/PQM baselines (`rstar_trainer.ppm_trainer`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from rstar_core.config import SearchConfig
from rstar_core.evaluation import (CONFIDENCE, METHODS, SAMPLE_METHODS, SCORERS, method_config, method_label,
                                   scorer_of)
from rstar_core.types import Problem

__all__ = ["BENCHMARKS", "add_eval_parser"]

log = logging.getLogger(__name__)

# Benchmark name -> file in $RSTAR_DATA_DIR/eval (names are matched case-insensitively).
BENCHMARKS = {
    "math500": "math500_test.json",
    "gsm8k": "GSM8K_test.json",
    "aime2024": "aime2024_test.json",
    "amc23": "amc23_test.json",
    "olympiadbench": "olympiadbench_test.json",
    "collegemath": "collegemath_test.json",
    "gaokao2023en": "gaokao2023en_test.json",
    "omni": "omni_test.json",
    "MATH": "MATH_test.json",
}
PRACTICE = "practice"
DEFAULT_N = 8
DEFAULT_CONFIG = "eval"
# What the registry's and the reward package's files are called (read here without
# importing the packages, which load torch).
_REGISTRY_MANIFEST = "rstar_model.json"
_PPM_MANIFEST = "rstar_ppm.json"
_PPM_HEAD = "value_head.safetensors"
# The samples of maj and bon-* in an output folder, shared between them (`_SampleCache`).
SAMPLES_FILE = "samples.jsonl"


@dataclass
class _Plan:
    """Everything validated before any model loads."""

    benchmark: str
    items: list[Problem]
    method: str
    # The method's name in rows and reports (`evaluation.method_label`: mcts-orm, ...).
    label: str
    ns: list[int]
    # None: the bundled model, prepared after validation.
    policy_dir: Path | None
    # The reward model the method scores with (ppm, orm or pqm; None: none) and its
    # directory (a PPM's, or the ORM's / PQM's the scorer names).
    scorer: str | None
    ppm_dir: Path | None
    # The budgets (recipe, --set, prompt format) before the method fixes its own settings.
    base: SearchConfig
    # Search settings by job key: N (greedy, tree methods) or "sample" (maj, bon-*).
    configs: dict[Any, SearchConfig]
    # Digest of `base`: rows of one method from other budgets are another experiment.
    config_id: str
    out: Path
    command: str
    # Through the eval queue and the services (`eval_distributed`) instead of in-process.
    distributed: bool = False
    # An `rstar evolve` run whose round table and accuracy per round go with the reports.
    evolve_run: str | None = None


# ---------------------------------------------------------------------- parser


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a test-time method (greedy, maj, bon-ppm/pqm/orm, mcts, "
                                    "mcts-vote) on a benchmark; resumable, with a summary, a Markdown table and a plot")
    p.add_argument("--benchmark", required=True,
                   help=f"{', '.join(BENCHMARKS)}, {PRACTICE}, or a JSON/JSONL problem file")
    p.add_argument("--method", required=True, help=", ".join(METHODS))
    p.add_argument("--n", help=f"samples (maj, bon-*) or rollouts (mcts, mcts-vote), e.g. 4 or 1,4,16 "
                               f"(default {DEFAULT_N}; greedy: 1)")
    p.add_argument("--limit", type=int, help="only the first K items")
    p.add_argument("--policy", help="policy directory or registry version (default: RSTAR_MODEL or the bundled model)")
    p.add_argument("--ppm", help="PPM directory or registry version (default: RSTAR_REWARD_MODEL or the promoted PPM)")
    p.add_argument("--orm", help="ORM directory or registry version, for bon-orm or --scorer orm (default: the "
                                 "promoted ORM)")
    p.add_argument("--pqm", help="PQM directory or registry version, for bon-pqm or --scorer pqm (default: the "
                                 "promoted PQM)")
    p.add_argument("--scorer", help=f"the reward model mcts / mcts-vote search with: {', '.join(SCORERS)}, or "
                                    f"{CONFIDENCE} (no model: the policy's token confidence) (default ppm; "
                                    f"{CONFIDENCE} with a recipe whose terminal_reward is {CONFIDENCE})")
    p.add_argument("--out", help="output folder (default runs/eval/<benchmark>-<method>, or under the evolve run "
                                 "with --run); a re-run resumes")
    p.add_argument("--distributed", action="store_true",
                   help="run the searches as tasks on the eval queue (a running stack: rstar up) instead of in-process")
    p.add_argument("--run", help="an `rstar evolve` run: also draw its accuracy per round, with this evaluation's "
                                 "accuracy at the round whose policy it ran")
    p.add_argument("--work-dir", default="runs/evolve", help="the evolve runs' folder (default runs/evolve)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"search budgets: a recipe name or YAML path (default {DEFAULT_CONFIG})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a search setting")
    p.add_argument("--seed", type=int, help="search seed (default: the recipe's)")
    p.add_argument("--levels", default="1,2,3,4,5", help="practice levels (default 1,2,3,4,5)")
    p.add_argument("--per-level", type=int, default=100, help="practice problems per level (default 100)")
    p.add_argument("--practice-seed", type=int, default=0, help="seed of the practice problems (default 0)")
    p.set_defaults(func=cmd_eval)


# ---------------------------------------------------------------------- command


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_report import ITEMS_FILE, pending, read_jsonl

    plan = _plan(args)
    if plan.distributed:
        from .eval_distributed import run_distributed, served_versions

        versions = served_versions(plan)
    else:
        policy_dir = plan.policy_dir or _bundled_policy()
        versions = _versions(_policy_version(policy_dir), plan.scorer,
                             _ppm_version(plan.ppm_dir) if plan.ppm_dir else None)
    plan.out.mkdir(parents=True, exist_ok=True)
    rows_path = plan.out / ITEMS_FILE
    missing = pending([p.id for p in plan.items], read_jsonl(rows_path), benchmark=plan.benchmark,
                      method=plan.label, ns=plan.ns, versions=versions, config=plan.config_id)
    todo = [p for p in plan.items if missing[p.id]]
    if len(todo) < len(plan.items):
        print(f"resuming: {len(plan.items) - len(todo)} of {len(plan.items)} items already in {rows_path}",
              file=sys.stderr)
    failed = 0
    start = time.perf_counter()
    if todo and plan.distributed:
        failed, versions = run_distributed(plan, versions, todo, missing, rows_path)
    elif todo:
        failed, versions = asyncio.run(_run(plan, policy_dir, versions, todo, missing, rows_path))
    _record_run(plan, versions, done=len(todo) - failed, failed=failed, wall_s=time.perf_counter() - start)
    _report(plan, versions)
    return 1 if failed else 0


def _plan(args: argparse.Namespace) -> _Plan:
    """Validate every argument; any problem is one usage error, before any model loads."""
    from .main import _as_usage_error

    with _as_usage_error():
        if args.method not in METHODS:
            raise ValueError(f"unknown method {args.method!r}: one of {', '.join(METHODS)}")
        base = _base_config(args)
        scorer = scorer_of(args.method, args.scorer, base)
        label = method_label(args.method, scorer)
        ns = _parse_ns(args.n, args.method)
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        benchmark, items = _load_benchmark(args)
        if scorer == CONFIDENCE and base.use_ppm_init:
            raise ValueError(f"--method {label} searches without a reward model, but the recipe's use_ppm_init "
                             "needs a PPM: use --config marco or --set use_ppm_init=false")
        policy_dir = _policy_dir(args.policy)
        ppm_dir = _reward_dir(args, scorer)
        if args.distributed and scorer not in (None, "ppm"):
            raise ValueError(f"--distributed scores with the reward service's model: --method {label} runs "
                             "in-process only")
        if "prompt_format" not in _set_keys(args):
            base = base.replace(prompt_format="sft" if _is_finetuned(policy_dir) else "base")
        configs: dict[Any, SearchConfig]
        if args.method in SAMPLE_METHODS:
            configs = {"sample": method_config(args.method, base, 1)}
        else:
            configs = {n: method_config(args.method, base, n, scorer) for n in ns}
        if args.run:
            from .report import read_rounds

            read_rounds(args.run)  # the run must have a round table to draw
        if args.out:
            out = Path(args.out)
        elif args.run:
            out = Path(args.work_dir) / args.run / "eval" / f"{benchmark}-{label}"
        else:
            out = Path("runs") / "eval" / f"{benchmark}-{label}"
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    from .eval_report import config_id

    return _Plan(benchmark=benchmark, items=items, method=args.method, label=label, ns=ns,
                 policy_dir=policy_dir, scorer=scorer, ppm_dir=ppm_dir, base=base, configs=configs,
                 config_id=config_id(base.to_dict()), out=out,
                 command=_command(args), distributed=args.distributed, evolve_run=args.run)


def _parse_ns(text: str | None, method: str) -> list[int]:
    if text is None:
        return [1] if method == "greedy" else [DEFAULT_N]
    ns = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise ValueError(f"--n expects positive integers separated by commas, got {text!r}") from None
        if n < 1:
            raise ValueError(f"--n: N must be >= 1, got {n}")
        ns.append(n)
    if method == "greedy" and ns != [1]:
        raise ValueError(f"--method greedy decodes once: --n must be 1 or left out, got {text!r}")
    return sorted(set(ns))


def _load_benchmark(args: argparse.Namespace) -> tuple[str, list[Problem]]:
    from .problems import load_problems

    name = args.benchmark
    known = {k.lower(): k for k in BENCHMARKS}
    if name.lower() == PRACTICE:
        items = _practice(args)
        label = PRACTICE
    elif name.lower() in known:
        label = known[name.lower()]
        data_dir = Path(os.environ.get("RSTAR_DATA_DIR", "../shared/data"))
        path = data_dir / "eval" / BENCHMARKS[label]
        if not path.is_file():
            raise ValueError(f"benchmark {label}: {path} not found (set RSTAR_DATA_DIR to the data folder)")
        items = load_problems(path)
    elif Path(name).is_file() or Path(name).suffix.lower() in (".json", ".jsonl"):
        items = load_problems(name)
        label = Path(name).stem
    else:
        raise ValueError(f"unknown benchmark {name!r}: give one of {', '.join(BENCHMARKS)}, {PRACTICE}, "
                         "or a .json/.jsonl problem file")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f"{name}: id {item.id!r} appears twice (ids must be unique to resume)")
        seen.add(item.id)
    return label, items[:args.limit] if args.limit else items


def _practice(args: argparse.Namespace) -> list[Problem]:
    from rstar_core.practice import generate_practice

    try:
        levels = [int(x) for x in args.levels.split(",")]
    except ValueError:
        raise ValueError(f"--levels expects levels 1-5 separated by commas, got {args.levels!r}") from None
    return [p.problem for p in generate_practice(levels, args.per_level, args.practice_seed, "heldout")]


def _set_keys(args: argparse.Namespace) -> set[str]:
    return {item.partition("=")[0].strip() for item in args.set or []}


def _base_config(args: argparse.Namespace) -> SearchConfig:
    from .main import UsageError, _parse_value, _resolve_config

    overrides: dict[str, Any] = {"seed": args.seed}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value, got {item!r}")
        overrides[key.strip()] = _parse_value(value)
    return _resolve_config(args.config, overrides)


# ---------------------------------------------------------------------- models


def _policy_dir(spec: str | None) -> Path | None:
    flag = "--policy"
    if spec is None and os.environ.get("RSTAR_MODEL"):
        spec, flag = os.environ["RSTAR_MODEL"], "RSTAR_MODEL"
    if spec is None:
        return None
    path = _model_dir(spec, "policy", flag)
    if not (path / "config.json").is_file():
        raise ValueError(f"{flag} {spec!r}: {path} is not a model directory (no config.json)")
    return path


def _reward_dir(args: argparse.Namespace, scorer: str | None) -> Path | None:
    """The directory of the reward model `scorer` names (None for none); flags of other kinds are noted."""
    for kind in SCORERS:
        if kind != scorer and getattr(args, kind):
            print(f"note: --method {method_label(args.method, scorer)} does not use a{_n(kind)} {kind.upper()}; "
                  f"--{kind} is ignored", file=sys.stderr)
    if scorer is None or scorer == CONFIDENCE:
        return None
    spec, flag, what = getattr(args, scorer), f"--{scorer}", scorer.upper()
    if spec is None and scorer == "ppm" and os.environ.get("RSTAR_REWARD_MODEL"):
        spec, flag = os.environ["RSTAR_REWARD_MODEL"], "RSTAR_REWARD_MODEL"
    if spec is None:
        path, why_not = _promoted(scorer)
        if path is None:
            needs = f"--method {args.method}" + (f" --scorer {scorer}" if args.scorer else "")
            raise ValueError(f"{needs} needs a{_n(scorer)} {what}: give --{scorer} VERSION|DIR ({why_not})")
        spec, flag = str(path), f"the promoted {what}"
    path = _model_dir(spec, scorer, flag)
    for name in (_PPM_MANIFEST, _PPM_HEAD):
        if not (path / name).is_file():
            raise ValueError(f"{flag} {spec!r}: {path} is not a{_n(scorer)} {what} directory (no {name})")
    kind = _objective(path)
    if kind != scorer:
        raise ValueError(f"{flag} {spec!r} is a{_n(kind)} {kind.upper()}, not a{_n(scorer)} {what}")
    return path


def _n(kind: str) -> str:
    return "n" if kind == "orm" else ""


def _model_dir(spec: str, kind: str, flag: str) -> Path:
    """A directory as given, or the directory of a registry version of `kind`."""
    from .main import _open_store

    path = Path(spec).expanduser()
    if path.is_dir():
        return path.absolute()
    if os.sep in spec or spec.startswith((".", "~")):
        raise ValueError(f"{flag} {spec!r}: no such directory")
    with _open_store() as store:
        try:
            info = store.get_model_version(spec)
        except LookupError:
            raise ValueError(f"{flag} {spec!r} is neither a directory nor a version in the registry "
                             "(see `rstar models list`)") from None
    if info.kind != kind:
        raise ValueError(f"{flag} {spec!r} is a {info.kind} version, not a {kind}")
    if not Path(info.path).is_dir():
        raise ValueError(f"{flag} {spec!r}: the version's directory {info.path} is missing")
    return Path(info.path)


def _promoted(kind: str) -> tuple[Path | None, str]:
    """The directory of the promoted version of `kind`, or None and why there is none."""
    from .main import UsageError, _open_store

    what = kind.upper()
    try:
        with _open_store() as store:
            info = store.promoted_model(kind)
    except UsageError as exc:
        return None, f"could not look up a promoted {what}: {exc}"
    if info is None:
        return None, f"no {what} is promoted"
    if not Path(info.path).is_dir():
        return None, f"the promoted {what} {info.version} has no directory at {info.path}"
    return Path(info.path), ""


def _manifest(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / _REGISTRY_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _is_finetuned(policy_dir: Path | None) -> bool:
    """A registered policy version was fine-tuned by the evolve driver (it prompts in `sft`)."""
    return policy_dir is not None and _manifest(policy_dir).get("kind") == "policy"


def _bundled_policy() -> Path:
    from rstar_models.store import prepare_model

    return prepare_model()


def _policy_version(policy_dir: Path) -> str:
    from rstar_models.store import model_version

    return model_version(policy_dir)


def _objective(reward_dir: Path) -> str:
    """ppm, orm or pqm: the registry's kind of the version, else the model's own manifest's."""
    kind = _manifest(reward_dir).get("kind")
    if kind in SCORERS:
        return kind
    try:
        return str(json.loads((reward_dir / _PPM_MANIFEST).read_text()).get("objective", "ppm"))
    except (OSError, ValueError, AttributeError):
        return "ppm"  # unreadable: loading it says what is wrong


def _ppm_version(ppm_dir: Path) -> str:
    """The version `PPMRewardModel.from_dir` reports (for a PPM, ORM or PQM), without loading it."""
    import hashlib

    manifest = _manifest(ppm_dir)
    if manifest.get("version") and manifest.get("kind") not in (None, "policy"):
        return str(manifest["version"])
    digest = hashlib.sha256((ppm_dir / _PPM_HEAD).read_bytes()).hexdigest()[:12]
    return f"{_objective(ppm_dir)}:{ppm_dir.resolve().name}:{digest}"


def _versions(policy: str, scorer: str | None, reward: str | None) -> dict[str, Any]:
    """What rows record: the policy's version, and the scorer's under its kind (`ppm`: None without one,
    or with the model-free confidence scorer)."""
    return {"policy": policy, scorer if scorer in SCORERS else "ppm": reward}


# ---------------------------------------------------------------------- running


@dataclass
class _ItemState:
    item: Problem
    ns: list[int]
    remaining: int = 0
    results: dict[Any, Any] = field(default_factory=dict)
    failed: str | None = None


async def _run(plan: _Plan, policy_dir: Path, versions: dict[str, Any], todo: list[Problem],
               missing: dict[str, list[int]], rows_path: Path) -> tuple[int, dict[str, Any]]:
    """Search every missing (item, N), write rows item by item; (failed items, versions used)."""
    from .embedded import EmbeddedSettings, embedded_runtime

    settings = dataclasses.replace(EmbeddedSettings.from_env(), model=str(policy_dir),
                                   reward_model=str(plan.ppm_dir or ""))
    first = next(iter(plan.configs.values()))
    states = [_ItemState(item, missing[item.id]) for item in todo]
    with _SampleCache(plan.out / SAMPLES_FILE, versions["policy"], plan.config_id) as samples:
        # A selector run after another on the same samples (maj, then bon-*) only scores them:
        # no policy engine to start.
        draws = plan.method not in SAMPLE_METHODS or any(
            samples.get(item.id, k) is None for item in todo for k in range(max(missing[item.id])))
        if not draws:
            log.info("every sample is in %s already: scoring them without starting the policy engine",
                     samples.path)
        async with embedded_runtime(first, settings, policy_engine=draws) as runtime:
            versions = _loaded_versions(plan, runtime, versions)
            searchers = {key: runtime.mcts(config) for key, config in plan.configs.items()}
            jobs = _jobs(plan, states, searchers)
            with _Progress(plan, len(todo), rows_path) as progress:

                async def finish(state: _ItemState) -> None:
                    rows = None if state.failed else await asyncio.to_thread(_rows, plan, state, versions)
                    progress.item_done(state, rows)

                async def one(state: _ItemState, key: Any, mcts, seed_offset: int) -> Any:
                    hidden = Problem(state.item.question, None, state.item.id)
                    if plan.method not in SAMPLE_METHODS:
                        return await mcts.search(hidden, seed_offset=seed_offset)
                    drawn = samples.get(state.item.id, key)
                    if drawn is None:
                        result = await mcts.search(hidden, seed_offset=seed_offset)
                        samples.put(state.item.id, key, result.tree, result.wall_s)
                        return result
                    return await drawn.scored(state.item.question, runtime.reward if plan.scorer else None)

                async def worker() -> None:
                    for state, key, mcts, seed_offset in jobs:
                        if not state.failed:
                            try:
                                state.results[key] = await one(state, key, mcts, seed_offset)
                            except Exception as exc:  # noqa: BLE001 - one item's failure must not end the run
                                log.exception("search of item %s failed", state.item.id)
                                state.failed = f"{type(exc).__name__}: {exc}"
                        state.remaining -= 1
                        if state.remaining == 0:
                            await finish(state)

                await asyncio.gather(*(worker() for _ in range(max(1, first.concurrent_problems))))
    return progress.failed, versions


def _loaded_versions(plan: _Plan, runtime, expected: dict[str, Any]) -> dict[str, Any]:
    """The versions the runtime's models report; a warning where they differ from `expected`."""
    loaded = _versions(runtime.policy.model_version, plan.scorer,
                       runtime.reward.model_version if plan.ppm_dir and runtime.reward else None)
    if loaded != expected:
        log.warning("the loaded models report %s, not %s: rows are recorded under the loaded versions "
                    "(a re-run cannot resume them)", loaded, expected)
    return loaded


@dataclass(frozen=True)
class _Drawn:
    """A sample drawn before (`_SampleCache`): its answer, the steps a reward model scores, its cost."""

    answer: str | None
    steps: tuple[str, ...] | None
    tokens: int
    seconds: float

    async def scored(self, question: str, reward) -> Any:
        """The sample as the method sees it: scored by `reward` (None: unscored, maj)."""
        from rstar_core.evaluation import Sample
        from rstar_core.ports import ScoringItem

        score = None
        if reward is not None and self.answer is not None and self.steps:
            score = (await reward.score([ScoringItem(question, self.steps)]))[0]
        return Sample(answer=self.answer, score=score, tokens=self.tokens, seconds=self.seconds)


class _SampleCache:
    """The samples of maj and bon-* in one output folder, drawn once and shared by the methods.

    A sample is a width-1, one-rollout search whose generation does not depend on the
    method (only on the policy, the budgets and its seed offset), so `<out>/samples.jsonl`
    keeps each drawn sample's answer, solution steps and cost under (item, k, policy
    version, config id): maj, bon-ppm, bon-pqm and bon-orm run into the same ``--out`` then
    compare their selectors on the very same samples at the very same generated tokens, and
    only the first of them pays for the drawing (the others score the samples with their
    reward model). One line per sample, flushed: a crash loses only samples in flight.
    """

    def __init__(self, path: Path, policy: str, config: str) -> None:
        from .eval_report import read_jsonl

        self.key = {"policy": policy, "config_id": config}
        self.drawn: dict[tuple[str, int], _Drawn] = {}
        for row in read_jsonl(path):
            if all(row.get(k) == v for k, v in self.key.items()):
                steps = row.get("steps")
                self.drawn[(row["id"], row["k"])] = _Drawn(row.get("answer"), None if steps is None else tuple(steps),
                                                           int(row["tokens"]), float(row["seconds"]))
        self.path = path
        self.out = None  # opened on the first sample drawn (the tree methods draw none)

    def __enter__(self) -> "_SampleCache":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.out is not None:
            self.out.close()

    def get(self, item_id: str, k: int) -> _Drawn | None:
        return self.drawn.get((item_id, k))

    def put(self, item_id: str, k: int, tree, wall_s: float) -> None:
        from rstar_core.evaluation import best_trajectory

        node = best_trajectory(tree)
        drawn = _Drawn(node.answer if node else None, tree.scoring_steps(node) if node else None,
                       tree.stats.generated_tokens, round(wall_s, 3))
        self.drawn[(item_id, k)] = drawn
        row = {"id": item_id, "k": k, **self.key, "answer": drawn.answer,
               "steps": None if drawn.steps is None else list(drawn.steps), "tokens": drawn.tokens,
               "seconds": drawn.seconds}
        if self.out is None:
            self.out = self.path.open("a", encoding="utf-8")
        self.out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.out.flush()


class _Progress:
    """Rows of finished items into items.jsonl, and the progress bar with the running accuracy.

    One item's rows at a time, flushed: a crash loses only the items in flight. A failed
    item writes nothing (a re-run retries it) and is counted in `failed`.
    """

    def __init__(self, plan: _Plan, total: int, rows_path: Path) -> None:
        from tqdm import tqdm

        self.top_n = plan.ns[-1]
        self.failed = 0
        self.outcomes: list[bool] = []
        self.bar = tqdm(total=total, desc=f"{plan.benchmark} {plan.label}", unit="item", file=sys.stderr,
                        dynamic_ncols=True)
        self.out = rows_path.open("a", encoding="utf-8")

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.close()
        self.bar.close()

    def item_done(self, state: _ItemState, rows: list[dict[str, Any]] | None) -> None:
        if rows is None:
            self.failed += 1
            self.bar.write(f"[{state.item.id}] FAILED: {state.failed}", file=sys.stderr)
        else:
            self.out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            self.out.flush()
            top = next((r for r in rows if r["N"] == self.top_n), None)
            if top is not None and top["correct"] is not None:
                self.outcomes.append(top["correct"])
            if self.outcomes:
                right = sum(self.outcomes)
                self.bar.set_postfix_str(f"acc@{self.top_n} {100 * right / len(self.outcomes):.1f}% "
                                         f"({right}/{len(self.outcomes)})")
        state.results.clear()  # the trees are in no row: let them go
        self.bar.update(1)


def _jobs(plan: _Plan, states: list[_ItemState], searchers: dict[Any, Any]) -> Iterator[tuple]:
    """(item, job key, search, seed offset), item by item so that items finish in order."""
    for state in states:
        if plan.method in SAMPLE_METHODS:
            keys = [(k, searchers["sample"], k) for k in range(max(state.ns))]
        else:
            keys = [(n, searchers[n], 0) for n in state.ns]
        state.remaining = len(keys)
        for key, mcts, seed_offset in keys:
            yield state, key, mcts, seed_offset


def _rows(plan: _Plan, state: _ItemState, versions: dict[str, Any]) -> list[dict[str, Any]]:
    """Pick, grade and describe one finished item, one row per missing N (runs in a thread)."""
    from rstar_core.evaluation import Sample, pick_from_samples, pick_from_tree, sample_from_tree
    from rstar_core.grading import answers_match
    from rstar_core.practice import practice_level

    item = state.item
    if plan.method in SAMPLE_METHODS:
        results = [state.results[k] for k in range(max(state.ns))]
        samples = [r if isinstance(r, Sample) else sample_from_tree(r.tree, r.wall_s) for r in results]
        picks = {n: pick_from_samples(plan.method, samples, n) for n in state.ns}
    else:
        picks = {n: pick_from_tree(plan.method, state.results[n].tree, state.results[n].wall_s) for n in state.ns}
    level = practice_level(item.id)
    rows = []
    for n, pick in picks.items():
        correct = None if item.answer is None else answers_match(pick.prediction, item.answer)
        row = {"benchmark": plan.benchmark, "id": item.id, "question": item.question, "gold": item.answer,
               "prediction": pick.prediction, "correct": correct, "tokens": pick.tokens,
               "seconds": round(pick.seconds, 3), "method": plan.label, "N": n, "versions": versions,
               "config_id": plan.config_id, "score": pick.score,
               "candidates": [{"answer": a, "score": s} for a, s in pick.candidates]}
        if level is not None:
            row["level"] = level
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- reports


def _record_run(plan: _Plan, versions: dict[str, Any], *, done: int, failed: int, wall_s: float) -> None:
    from .eval_report import RUNS_FILE, machine_line

    first = next(iter(plan.configs.values()))
    record = {"command": plan.command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_line(), "benchmark": plan.benchmark, "method": plan.label, "ns": plan.ns,
              "versions": versions, "config_id": plan.config_id, "config": plan.base.to_dict(),
              "method_config": first.to_dict(),
              "items": len(plan.items), "searched": done, "failed": failed, "wall_s": round(wall_s, 1)}
    with (plan.out / RUNS_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _report(plan: _Plan, versions: dict[str, Any]) -> None:
    from .eval_report import MARKDOWN_FILE, PLOT_FILE, SUMMARY_FILE, accuracy_text, versions_key, write_reports

    summary = write_reports(plan.out)
    mine = [g for g in summary["groups"] if g["benchmark"] == plan.benchmark and g["method"] == plan.label
            and g["config_id"] == plan.config_id and versions_key(g["versions"]) == versions_key(versions)]
    for g in mine:
        print(f"{g['benchmark']} {g['method']}@{g['N']}: {accuracy_text(g)}, "
              f"{g['tokens_per_item']:.0f} tokens/item, {g['seconds_per_item']:.1f} s/item")
    print(f"reports in {plan.out}/: {MARKDOWN_FILE}, {SUMMARY_FILE}, {PLOT_FILE}, items.jsonl")
    if plan.evolve_run:
        from .report import ROUNDS_JSON, ROUNDS_PLOT, write_rounds

        write_rounds(plan.evolve_run, plan.out, [summary], plan.command)
        print(f"run {plan.evolve_run}: round table in {plan.out}/{ROUNDS_JSON}, accuracy per round in "
              f"{plan.out}/{ROUNDS_PLOT}")


def _command(args: argparse.Namespace) -> str:
    parts = ["rstar", "eval", "--benchmark", args.benchmark, "--method", args.method]
    optional = [("--n", args.n), ("--limit", args.limit), ("--policy", args.policy), ("--ppm", args.ppm),
                ("--orm", args.orm), ("--pqm", args.pqm), ("--scorer", args.scorer), ("--seed", args.seed),
                ("--run", args.run), ("--out", args.out)]
    if args.distributed:
        parts.append("--distributed")
    if args.run and args.work_dir != "runs/evolve":
        optional.append(("--work-dir", args.work_dir))
    if args.config != DEFAULT_CONFIG:
        optional.append(("--config", args.config))
    if args.benchmark.lower() == PRACTICE:
        optional += [("--levels", args.levels), ("--per-level", args.per_level),
                     ("--practice-seed", args.practice_seed)]
    for flag, value in optional:
        if value is not None:
            parts += [flag, str(value)]
    for item in args.set or []:
        parts += ["--set", item]
    return shlex.join(parts)
