"""`rstar evolve` and `rstar rounds`: argument parsing and wiring of the round driver.

Everything the user gives is checked (recipe, pool file, rounds, base model, database)
before any model loads; errors are one `rstar: error:` line with exit code 2.
Not here: the driver itself (`evolve`), the table (`rounds`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

__all__ = ["add_evolve_parsers"]


def _recipe_path(name_or_path: str) -> Path:
    from .main import CONFIG_DIR

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return CONFIG_DIR / "evolve" / f"{name_or_path}.yaml"


def cmd_evolve(args: argparse.Namespace) -> int:
    from rstar_models.registry import ModelRegistry, default_store_dir
    from rstar_models.store import prepare_model

    from .evolve import EvolveSettings, Evolver
    from .evolve_recipe import load_recipe
    from .main import _as_usage_error, _open_store

    with _as_usage_error():
        if args.rounds < 0:
            raise ValueError(f"--rounds must be >= 0, got {args.rounds}")
        recipe = load_recipe(_recipe_path(args.recipe))
        pool = Path(args.pool)
        if not pool.is_file():
            raise ValueError(f"{pool}: pool file not found")
        data_dir = Path(os.environ.get("RSTAR_DATA_DIR", "../shared/data"))
        if not (data_dir / "eval").is_dir():
            raise ValueError(f"{data_dir}: no eval/ folder with the held-out sets (set RSTAR_DATA_DIR)")
        base = args.base_model or os.environ.get("RSTAR_MODEL") or ""
        if base and not Path(base).is_dir():
            raise ValueError(f"--base-model {base!r} is not a directory")
    base_dir = base or str(prepare_model())
    with _open_store() as store:
        from rstar_store import migrate

        if store.engine.dialect.name == "sqlite":
            migrate(str(store.engine.url))
        registry = ModelRegistry(Path(args.model_store) if args.model_store else default_store_dir(), store)
        settings = EvolveSettings(run=args.run, pool_file=pool, recipe=recipe, rounds=args.rounds,
                                  work_dir=Path(args.work_dir), data_dir=data_dir, base_model=base_dir,
                                  distributed=args.distributed, stack_dir=Path(args.stack_dir))
        Evolver(settings, store, registry).run()
        _print_table(store, args.run)
    return 0


def cmd_rounds(args: argparse.Namespace) -> int:
    from .main import _open_store
    from .rounds import render_markdown, rounds_table

    with _open_store() as store:
        steps = store.list_evolve_steps(args.run)
        if not steps:
            raise ValueError(f"run {args.run!r} has no recorded rounds")
        rows = rounds_table(steps)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    text = render_markdown(rows)
    if args.md:
        Path(args.md).write_text(text)
    print(text, end="")
    return 0


def _print_table(store, run: str) -> None:
    from .rounds import render_markdown, rounds_table

    print(render_markdown(rounds_table(store.list_evolve_steps(run))), end="")


def add_evolve_parsers(sub) -> None:
    evolve = sub.add_parser("evolve", help="run rounds of self-evolution: search, data, SFT + PPM training, "
                                           "evaluation, promotion (resumable)")
    evolve.add_argument("--pool", required=True, help="problem pool JSONL (e.g. ../shared/data/train/problem_pool.jsonl)")
    evolve.add_argument("--rounds", type=int, default=2, help="search rounds after round 0 (default 2)")
    evolve.add_argument("--recipe", default="cpu", help="cpu, paper, or a recipe YAML path")
    evolve.add_argument("--run", required=True, help="run name; the same name resumes the run")
    evolve.add_argument("--distributed", action="store_true",
                        help="searches on the search queue and training on the train queue (a running stack)")
    evolve.add_argument("--base-model", help="base policy directory (default: RSTAR_MODEL or the bundled model)")
    evolve.add_argument("--model-store", help="model store directory (default: RSTAR_MODEL_STORE)")
    evolve.add_argument("--work-dir", default="runs/evolve", help="datasets and checkpoints (default runs/evolve)")
    evolve.add_argument("--stack-dir", default="runs/local", help="the `make up` stack to roll out to")
    evolve.set_defaults(func=cmd_evolve)

    rounds = sub.add_parser("rounds", help="the round table of an `rstar evolve` run")
    rounds.add_argument("run")
    rounds.add_argument("--json", help="also write the rows as JSON to this file")
    rounds.add_argument("--md", help="also write the Markdown table to this file")
    rounds.set_defaults(func=cmd_rounds)
