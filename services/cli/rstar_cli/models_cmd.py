"""`rstar models list | show | promote | rollback`: the model registry from the command line.

Versions and their status live in the store (`RSTAR_DATABASE_URL`), their files in the
model store (`RSTAR_MODEL_STORE`, see `rstar_models.registry`). Promoting a version (or
rolling back to the previous one) changes which version of its kind the services should
serve; with a local stack (`make up` / `rstar up`) running in `--run-dir`, the matching
service is rolled onto it at once (policy: ``RSTAR_MODEL``, PPM: ``RSTAR_REWARD_MODEL``,
drain-and-restart, see `launcher.roll_service`). For compose and Kubernetes the command
prints what to run. Unknown versions and kinds end with one `rstar: error: ...` line and
exit code 2.

Not here: training or registering versions (the trainer and the evolve driver do that).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_models_subcommands"]

# Which service serves a kind, and the variable that names its model. orm and pqm are
# baselines evaluated in-process: no service serves them.
ROLLOUT = {
    "policy": ("policy", "RSTAR_MODEL"),
    "ppm": ("reward", "RSTAR_REWARD_MODEL"),
}
# The number of metrics `list` shows per version (`show` has them all).
_LIST_METRICS = 3


def add_models_subcommands(models_sub: argparse._SubParsersAction) -> None:
    """Add list, show, promote and rollback to the subparsers of `rstar models`."""
    listing = models_sub.add_parser("list", help="model versions, newest first")
    listing.add_argument("--kind", help="policy, ppm, orm or pqm")
    listing.add_argument("--run", help="only this run's versions")
    listing.set_defaults(func=cmd_models_list)

    show = models_sub.add_parser("show", help="one version's record and manifest as JSON")
    show.add_argument("version")
    show.set_defaults(func=cmd_models_show)

    for name, target, help_text in (
            ("promote", "version", "serve this version: mark it promoted and roll the local stack onto it"),
            ("rollback", "kind", "reject the promoted version of a kind and promote the previous one")):
        parser = models_sub.add_parser(name, help=help_text)
        parser.add_argument(target)
        parser.add_argument("--run-dir", default="runs/local",
                            help="the local stack to roll (`rstar up`; default runs/local)")
        parser.add_argument("--no-rollout", action="store_true",
                            help="only change the record; restart nothing")
        parser.add_argument("--grace", type=float, default=30, help="seconds a replica may drain its calls")
        parser.add_argument("--timeout", type=float, default=600, help="seconds a new replica may take to load")
        parser.set_defaults(func=cmd_models_promote if name == "promote" else cmd_models_rollback)


def cmd_models_list(args: argparse.Namespace) -> int:
    from .main import _open_store

    with _open_store() as store:
        versions = store.list_model_versions(kind=args.kind, run=args.run)
    if not versions:
        print("no model versions")
        return 0
    header = ("VERSION", "KIND", "ROUND", "STATUS", "RUN", "PARENT", "METRICS", "CREATED")
    rows = [(v.version, v.kind, "" if v.round is None else str(v.round), v.status, v.run or "", v.parent or "",
             _key_metrics(v.metrics), v.created_at.strftime("%Y-%m-%d %H:%M")) for v in versions]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from .main import _open_store

    with _open_store() as store:
        shown = _registry(store).show(args.version)
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    from .main import _open_store

    with _open_store() as store:
        info = _registry(store).promote(args.version)
    print(f"promoted {info.kind} {info.version}")
    return _roll_out(info, args)


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from .main import _open_store

    with _open_store() as store:
        info = _registry(store).rollback(args.kind)
    print(f"rolled {info.kind} back to {info.version} (the version it replaced is now rejected)")
    return _roll_out(info, args)


def _registry(store):
    from rstar_models.registry import ModelRegistry, default_store_dir

    return ModelRegistry(default_store_dir(), store)


def _roll_out(info, args: argparse.Namespace) -> int:
    """Roll the service of `info.kind` in the local stack onto `info`, or say how to elsewhere."""
    from .launcher import roll_service

    if info.kind not in ROLLOUT:
        print(f"no service serves {info.kind} models: nothing to roll out")
        return 0
    service, variable = ROLLOUT[info.kind]
    rolled = False
    if not args.no_rollout:
        print(f"rolling {service} in {args.run_dir} onto {info.version} ...", flush=True)
        try:
            rolled = roll_service(Path(args.run_dir), service, {variable: info.path}, grace_s=args.grace,
                                  timeout_s=args.timeout)
        except (RuntimeError, TimeoutError) as exc:
            print(f"rstar: error: the {service} service did not come back on {info.version}: {exc}",
                  file=sys.stderr)
            return 1
        if rolled:
            print(f"{service} now serves {info.version} ({variable}={info.path})")
        else:
            print(f"no local stack runs a {service} service in {args.run_dir}: nothing restarted")
    if not rolled:
        # Compose and Kubernetes mount the model store at /models: the version name is enough.
        print(f"compose:    {variable}={info.version} docker compose up -d --no-deps {service}")
        print(f"kubernetes: kubectl -n rstar set env deployment/{service} {variable}={info.version}")
    return 0


def _key_metrics(metrics: dict[str, Any]) -> str:
    numbers = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers[:_LIST_METRICS])
    return shown + (" ..." if len(numbers) > _LIST_METRICS else "")
