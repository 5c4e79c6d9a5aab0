"""Celery tasks: thin wrappers that run one search through gRPC clients and store it.

`rstar.search(task_id)` loads the task's problem and config from the store, claims it,
runs MCTS with the policy, reward and executor services behind the core ports, and writes
the result idempotently (a redelivered task never writes twice). A service that is
unavailable makes the task retry with exponential backoff; a task that keeps failing ends
in the `failed` state with its reason, never silently dropped. The store being unreachable
(PostgreSQL restarting) is an outage too: the whole task is retried later, for up to
`RSTAR_DB_OUTAGE_RETRIES` times (about ten minutes), since nothing can be recorded meanwhile
and acking the message would leave the task queued or running for good.

Concurrency: run the worker with the threads pool (`-P threads -c N`): the N threads hand
their searches to one event loop per process with one gRPC channel per service, so one
process runs N searches at once and the policy service sees them as one batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from dataclasses import dataclass

import grpc
from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from rstar_core.config import config_from_mapping
from rstar_core.mcts import MCTS
from rstar_rpc.clients import GrpcExecutorClient, GrpcPolicyClient, GrpcRewardClient
from rstar_rpc.settings import ClientSettings
from rstar_store import Store

from .app import SEARCH_TASK, app

__all__ = ["search"]

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
MAX_RETRIES = int(os.environ.get("RSTAR_TASK_MAX_RETRIES", "6"))
DB_OUTAGE_RETRIES = int(os.environ.get("RSTAR_DB_OUTAGE_RETRIES", "25"))
# What the store raises while the database is down or restarting.
DATABASE_DOWN = (OperationalError, InterfaceError)


class ServiceUnavailable(Exception):
    """A service could not be reached in time: worth retrying the whole task later."""


@dataclass
class _Shared:
    """One event loop thread per worker process, and the clients that live in it.

    Celery's threads hand their searches to this loop, so all searches of a process share
    one gRPC channel per service and one loop (no per-thread pollers competing for the
    CPU with the engine), exactly like the in-process search.
    """

    loop: asyncio.AbstractEventLoop
    policy: GrpcPolicyClient
    reward: GrpcRewardClient
    executor: GrpcExecutorClient


_shared_lock = threading.Lock()
_shared: _Shared | None = None
_store_lock = threading.Lock()
_store: Store | None = None


def _state() -> _Shared:
    global _shared
    with _shared_lock:
        if _shared is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="rstar-search-loop", daemon=True).start()
            _shared = _Shared(
                loop=loop,
                policy=GrpcPolicyClient(ClientSettings.from_env("policy")),
                reward=GrpcRewardClient(ClientSettings.from_env("reward")),
                executor=GrpcExecutorClient(ClientSettings.from_env("executor")),
            )
        return _shared


def store() -> Store:
    global _store
    with _store_lock:
        if _store is None:
            _store = Store.from_url()
        return _store


@app.task(name=SEARCH_TASK, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def search(self: Task, task_id: int) -> str:
    try:
        return _search(self, task_id)
    except DATABASE_DOWN as exc:
        if self.request.retries >= DB_OUTAGE_RETRIES:
            log.error("task %s: the store stayed unreachable through %d retries: %s", task_id,
                      self.request.retries, exc)
            raise
        log.warning("task %s: the store is unreachable, retrying the task: %s", task_id, exc)
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 30), max_retries=DB_OUTAGE_RETRIES)


def _search(self: Task, task_id: int) -> str:
    db = store()
    spec = db.task_spec(task_id)
    if spec.state in ("done", "cancelled"):
        return spec.state  # a redelivery of finished work, or a cancelled run
    if not db.claim_task(task_id, worker=f"{socket.gethostname()}:{os.getpid()}", celery_id=self.request.id):
        return "skipped"
    try:
        config = config_from_mapping(spec.config, source=f"task {task_id} config").replace(seed=spec.seed)
        state = _state()
        reward = state.reward if config.needs_reward_model else None
        mcts = MCTS(state.policy, state.executor, config, reward=reward)
        future = asyncio.run_coroutine_threadsafe(_run(mcts, spec.problem, [state.policy, reward]), state.loop)
        result = future.result()
        written = db.record_result(task_id, result)
    except ServiceUnavailable as exc:
        final = self.request.retries >= MAX_RETRIES
        db.mark_failed(task_id, f"service unavailable: {exc}", final=final)
        if final:
            log.error("task %s failed for good after %d retries: %s", task_id, self.request.retries, exc)
            return "failed"
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 60), max_retries=MAX_RETRIES)
    except DATABASE_DOWN:
        raise  # an outage of the store, not of the search: `search` retries the task
    except Exception as exc:
        # Not a transient outage: a bug or bad data. Record it and stop retrying.
        log.exception("task %s failed", task_id)
        db.mark_failed(task_id, f"{type(exc).__name__}: {exc}", final=True)
        return "failed"
    return "done" if written else "duplicate"


async def _run(mcts: MCTS, problem, versioned_clients):
    try:
        # The tree records the model versions that produced it: ask before searching, so a
        # service that rolled over to a new version is recorded correctly.
        for client in versioned_clients:
            if client is not None:
                await client.refresh_model_version()
        return await mcts.search(problem)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in RETRYABLE:
            raise ServiceUnavailable(f"{exc.code().name}: {exc.details()}") from exc
        raise
