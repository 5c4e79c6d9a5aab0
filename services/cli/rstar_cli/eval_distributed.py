"""`rstar eval --distributed`: the evaluation's searches as tasks on the `eval` queue.

The plan, the validation, the picks, the rows and the reports are `eval_cmd`'s; only where
a search runs differs. Every (item, search job) of the plan (sample k of maj and bon-ppm,
the one tree of each N of the other methods) becomes one search task: the task's batch
config is the job's exact `SearchConfig` plus its seed offset (`SEED_OFFSET_KEY`, which the
worker passes to the search), and its problem has no answer, so the gold answer is hidden
from the search exactly as in-process and only grades the pick here. The command publishes
the tasks (the `rstar enqueue --eval` path), waits with a progress bar that shows the
running accuracy, reads each finished item's trees from the store and hands them to the
same code as in-process, so `items.jsonl`, resume and the reports are the same.

* The store run is ``eval-<benchmark>-<method>-<digest>``, the digest over the method, the
  config id and the versions the services serve: another experiment never shares its
  tasks, and a re-run of the same one finds its finished tasks (nothing is searched twice,
  even when the command was killed before writing the rows). A task's round is its job:
  N for greedy and the tree methods, k + 1 for sample k.
* Versions are asked from the policy (and, for PPM methods, reward) services before
  anything is enqueued: they are what resuming compares against, and ``--policy`` /
  ``--ppm`` (or ``RSTAR_MODEL`` / ``RSTAR_REWARD_MODEL``) must name what the services
  serve. Each item's rows record the versions its trees report.
* A task that ends `failed` or `cancelled` makes its item failed: no row, exit code 1;
  a re-run puts the failed tasks back on the queue. A worker that dies mid-search is the
  broker's business (acks late): the task is redelivered and finishes.

Not here: the search task (`rstar_worker.tasks`), the rows (`eval_cmd`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rstar_core.types import Problem, Tree

from .eval_cmd import _ItemState, _jobs, _Plan, _policy_version, _ppm_version, _Progress, _rows

__all__ = ["run_distributed", "served_versions"]

# How often the store is asked which tasks finished.
POLL_S = 2.0
# The priority `rstar enqueue --eval` gives evaluation searches.
EVAL_PRIORITY = 7
_FINAL = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class _Searched:
    """What the rows need of a finished search: its tree and its wall time."""

    tree: Tree
    wall_s: float


# ---------------------------------------------------------------------- versions


def served_versions(plan: _Plan) -> dict[str, Any]:
    """{"policy", "ppm"} as the services report them, checked against what the plan names."""
    from .main import UsageError

    served = asyncio.run(_ask_services(with_reward=plan.ppm_dir is not None))
    named = []
    if plan.policy_dir is not None:
        named.append(("policy", _policy_version(plan.policy_dir), "--policy (or RSTAR_MODEL)"))
    if plan.ppm_dir is not None:
        named.append(("ppm", _ppm_version(plan.ppm_dir), "--ppm (or RSTAR_REWARD_MODEL, or the promoted PPM)"))
    for kind, version, flag in named:
        if served[kind] != version:
            raise UsageError(f"the {kind} service serves {served[kind]!r}, but {flag} is {version!r}: roll it out "
                             f"(`rstar models promote`) or name the served version")
    return served


async def _ask_services(*, with_reward: bool) -> dict[str, Any]:
    import grpc
    from rstar_rpc.clients import GrpcPolicyClient, GrpcRewardClient
    from rstar_rpc.settings import ClientSettings

    from .main import UsageError

    clients = {"policy": GrpcPolicyClient(ClientSettings.from_env("policy"))}
    if with_reward:
        clients["ppm"] = GrpcRewardClient(ClientSettings.from_env("reward"))
    versions: dict[str, Any] = {"policy": None, "ppm": None}
    for kind, client in clients.items():
        async with client:
            try:
                versions[kind] = await client.refresh_model_version()
            except grpc.aio.AioRpcError as exc:
                service = "reward" if kind == "ppm" else kind
                raise UsageError(f"--distributed: cannot ask the {service} service for its model version "
                                 f"({exc.code().name}: {exc.details()}); start the stack (`rstar up`, then "
                                 f"`source runs/local/env`) or set RSTAR_{service.upper()}_ADDR") from None
    return versions


# ---------------------------------------------------------------------- running


def run_distributed(plan: _Plan, versions: dict[str, Any], todo: list[Problem], missing: dict[str, list[int]],
                    rows_path: Path) -> tuple[int, dict[str, Any]]:
    """Enqueue every missing (item, job), wait, write rows item by item; (failed items, versions)."""
    from .main import _open_store

    states = [_ItemState(item, missing[item.id]) for item in todo]
    with _open_store() as store:
        tasks = _enqueue(store, plan, versions, states)
        failed, seen = _collect(store, plan, states, tasks, rows_path)
    # The versions the results report, when all items agree (they do unless a service rolled over).
    return failed, seen[0] if len({json.dumps(v, sort_keys=True) for v in seen}) == 1 else versions


def run_name(plan: _Plan, versions: dict[str, Any]) -> str:
    """The store run of this experiment (see the module docstring)."""
    key = json.dumps([plan.method, plan.config_id, versions.get("policy"), versions.get("ppm")])
    return f"eval-{plan.benchmark[:80]}-{plan.method}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _job_round(plan: _Plan, key: int) -> int:
    from rstar_core.evaluation import SAMPLE_METHODS

    return key + 1 if plan.method in SAMPLE_METHODS else key


def _enqueue(store, plan: _Plan, versions: dict[str, Any],
             states: list[_ItemState]) -> dict[str, list[tuple[int, int]]]:
    """One batch per job, its queued (and earlier failed) tasks published; item id -> [(job key, task id)]."""
    from rstar_worker.app import EVAL_QUEUE, SEED_OFFSET_KEY

    from .main import publish_searches

    run = run_name(plan, versions)
    store.get_or_create_run(run, config_name=f"eval:{plan.method}", config=plan.base.to_dict())
    by_job: dict[int, tuple[Any, int, list[_ItemState]]] = {}
    for state, key, config, seed_offset in _jobs(plan, states, plan.configs):
        by_job.setdefault(key, (config, seed_offset, []))[2].append(state)
    tasks: dict[str, list[tuple[int, int]]] = {s.item.id: [] for s in states}
    for key, (config, seed_offset, members) in by_job.items():
        # No answer: the search must not see the gold one (it only grades the pick).
        hidden = [Problem(s.item.question, None, s.item.id) for s in members]
        batch = store.add_batch(run, _job_round(plan, key), config.seed, hidden,
                                {**config.to_dict(), SEED_OFFSET_KEY: seed_offset}, source=plan.command)
        for state, task_id in zip(members, batch.task_ids):
            tasks[state.item.id].append((key, task_id))
    ids = [t for jobs in tasks.values() for _, t in jobs]
    now = store.task_states(ids)
    retried = [t for t in ids if now[t][0] == "failed"]
    for task_id in retried:
        store.mark_failed(task_id, f"put back on the queue by a re-run (was: {now[task_id][1]})", final=False)
    queued = [t for t in ids if now[t][0] == "queued"] + retried
    publish_searches(queued, EVAL_QUEUE, EVAL_PRIORITY)
    done = sum(1 for t in ids if now[t][0] == "done")
    print(f"run {run}: {len(ids)} searches, {done} already done, {len(queued)} published to '{EVAL_QUEUE}' "
          f"({len(retried)} failed before); waiting for the workers", file=sys.stderr)
    return tasks


def _collect(store, plan: _Plan, states: list[_ItemState], tasks: dict[str, list[tuple[int, int]]],
             rows_path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Poll until every item's tasks ended; rows of each item as soon as it is complete."""
    open_items = {s.item.id: s for s in states}
    seen: list[dict[str, Any]] = []
    with _Progress(plan, len(states), rows_path) as progress:
        while open_items:
            now = store.task_states([t for i in open_items for _, t in tasks[i]])
            ended = [s for i, s in open_items.items() if all(now[t][0] in _FINAL for _, t in tasks[i])]
            results = store.task_results([t for s in ended for _, t in tasks[s.item.id]
                                          if now[t][0] == "done"])
            for state in ended:
                del open_items[state.item.id]
                versions = _take(plan, state, tasks[state.item.id], now, results)
                rows = None
                if versions is not None:
                    seen.append(versions)
                    rows = _rows(plan, state, versions)
                progress.item_done(state, rows)
            if open_items:
                time.sleep(POLL_S)
    return progress.failed, seen


def _take(plan: _Plan, state: _ItemState, jobs: list[tuple[int, int]], now: dict[int, tuple[str, str | None]],
          results: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """Put the item's trees into `state.results`; the versions they report, or None (the item failed)."""
    reported = []
    for key, task_id in jobs:
        task_state, error = now[task_id]
        if task_state != "done":
            state.failed = f"search task {task_id} {task_state}: {error or 'no reason recorded'}"
            return None
        result = results[task_id]
        state.results[key] = _Searched(Tree.from_dict(result["tree"]), float(result["wall_s"]))
        recorded = result["model_versions"] or {}
        reported.append({"policy": recorded.get("policy"),
                         "ppm": recorded.get("reward") if plan.ppm_dir is not None else None})
    if any(v != reported[0] for v in reported):
        state.failed = f"the services changed model versions during this item's searches: {reported}"
        return None
    return reported[0]
