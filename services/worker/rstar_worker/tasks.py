"""Celery tasks: thin wrappers that run one search through gRPC clients and store it.

`rstar.search(task_id)` loads the task's problem and config from the store, claims it,
runs MCTS with the policy, reward and executor services behind the core ports, and writes
the result idempotently (a redelivered task never writes twice). A service that is
unavailable makes the task retry with exponential backoff; a task that keeps failing ends
in the `failed` state with its reason, never silently dropped.

Concurrency: run the worker with the threads pool (`-P threads -c N`): each thread keeps
its own event loop and gRPC channels, so one process runs N searches at once and the
policy service sees them as one batch.
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


class ServiceUnavailable(Exception):
    """A service could not be reached in time: worth retrying the whole task later."""


@dataclass
class _ThreadState:
    loop: asyncio.AbstractEventLoop
    policy: GrpcPolicyClient
    reward: GrpcRewardClient
    executor: GrpcExecutorClient


_local = threading.local()
_store_lock = threading.Lock()
_store: Store | None = None


def _state() -> _ThreadState:
    """This thread's event loop and clients, created once and reused across tasks."""
    state = getattr(_local, "state", None)
    if state is None:
        state = _ThreadState(
            loop=asyncio.new_event_loop(),
            policy=GrpcPolicyClient(ClientSettings.from_env("policy")),
            reward=GrpcRewardClient(ClientSettings.from_env("reward")),
            executor=GrpcExecutorClient(ClientSettings.from_env("executor")),
        )
        _local.state = state
    return state


def store() -> Store:
    global _store
    with _store_lock:
        if _store is None:
            _store = Store.from_url()
        return _store


@app.task(name=SEARCH_TASK, bind=True, max_retries=MAX_RETRIES, acks_late=True, reject_on_worker_lost=True)
def search(self: Task, task_id: int) -> str:
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
        result = state.loop.run_until_complete(_run(mcts, spec.problem, [state.policy, reward]))
    except ServiceUnavailable as exc:
        final = self.request.retries >= self.max_retries
        db.mark_failed(task_id, f"service unavailable: {exc}", final=final)
        if final:
            log.error("task %s failed for good after %d retries: %s", task_id, self.request.retries, exc)
            return "failed"
        raise self.retry(exc=exc, countdown=min(2 ** self.request.retries, 60))
    except Exception as exc:
        # Not a transient outage: a bug or bad data. Record it and stop retrying.
        log.exception("task %s failed", task_id)
        db.mark_failed(task_id, f"{type(exc).__name__}: {exc}", final=True)
        return "failed"
    written = db.record_result(task_id, result)
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
