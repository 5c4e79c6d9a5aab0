"""Celery tasks: thin wrappers that run one search through gRPC clients and store it.

`rstar.search(task_id)` loads the task's problem and config from the store (with the seed
offset a batch config may carry: `app.SEED_OFFSET_KEY`), claims it,
runs MCTS with the policy, reward and executor services behind the core ports, and writes
the result idempotently (a redelivered task never writes twice). A service that is
unavailable makes the task retry with exponential backoff; a task that keeps failing ends
in the `failed` state with its reason, never silently dropped. The store being unreachable
(PostgreSQL restarting) is an outage too: the whole task is retried later, for up to
`RSTAR_DB_OUTAGE_RETRIES` times (about ten minutes), since nothing can be recorded meanwhile
and acking the message would leave the task queued or running for good. While a search
runs, its partial tree is written to the store every `RSTAR_SNAPSHOT_INTERVAL_S` seconds
(`SnapshotPublisher`) for the web console's live view.

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

from .app import SEARCH_TASK, SEED_OFFSET_KEY, app

__all__ = ["SnapshotPublisher", "search"]

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
MAX_RETRIES = int(os.environ.get("RSTAR_TASK_MAX_RETRIES", "6"))
DB_OUTAGE_RETRIES = int(os.environ.get("RSTAR_DB_OUTAGE_RETRIES", "25"))
# How often a running search publishes its partial tree for the web console (0: never).
SNAPSHOT_INTERVAL_S = float(os.environ.get("RSTAR_SNAPSHOT_INTERVAL_S", "3"))
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
        settings = dict(spec.config)
        seed_offset = int(settings.pop(SEED_OFFSET_KEY, 0))
        config = config_from_mapping(settings, source=f"task {task_id} config").replace(seed=spec.seed)
        state = _state()
        reward = state.reward if config.needs_reward_model else None
        mcts = MCTS(state.policy, state.executor, config, reward=reward)
        publish = SnapshotPublisher(db, task_id, SNAPSHOT_INTERVAL_S)
        future = asyncio.run_coroutine_threadsafe(
            _run(mcts, spec.problem, [state.policy, reward], publish, seed_offset=seed_offset), state.loop)
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


async def _run(mcts: MCTS, problem, versioned_clients, publish: "SnapshotPublisher | None" = None, *,
               seed_offset: int = 0):
    try:
        # The tree records the model versions that produced it: ask before searching, so a
        # service that rolled over to a new version is recorded correctly.
        for client in versioned_clients:
            if client is not None:
                await client.refresh_model_version()
        try:
            return await mcts.search(problem, seed_offset=seed_offset, on_tree=publish.start if publish else None)
        finally:
            if publish is not None:
                await publish.stop()
    except grpc.aio.AioRpcError as exc:
        if exc.code() in RETRYABLE:
            raise ServiceUnavailable(f"{exc.code().name}: {exc.details()}") from exc
        raise


class SnapshotPublisher:
    """Writes a running search's partial tree to the store every `interval_s` seconds.

    Lives in the search's event loop (the only place the tree may be read): the tree is
    serialised there and written from a thread, so the search never waits for the
    database. A tree that has not changed since the last write is not written again. A
    failed write is logged and skipped: the live view is a convenience, and must never
    fail or slow down the search it shows. `interval_s <= 0` publishes nothing.
    """

    def __init__(self, db: Store, task_id: int, interval_s: float) -> None:
        self.db = db
        self.task_id = task_id
        self.interval_s = interval_s
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.written = 0

    def start(self, tree) -> None:
        if self.interval_s > 0:
            self._stopping = asyncio.Event()
            self._task = asyncio.ensure_future(self._loop(tree))

    async def stop(self) -> None:
        """Stop publishing; returns after an in-flight write ended (so none lands after the result)."""
        if self._task is not None:
            self._stopping.set()
            await self._task

    async def _loop(self, tree) -> None:
        last = None
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
                return
            except asyncio.TimeoutError:
                pass
            mark = (len(tree.nodes), tree.stats.rollouts, tree.root.visits)
            if mark == last:
                continue
            data = tree.to_dict()
            try:
                if await asyncio.to_thread(self.db.save_snapshot, self.task_id, data) is None:
                    return  # the task is no longer running
                self.written += 1
                last = mark
            except Exception:  # noqa: BLE001 - see the class docstring
                log.warning("task %s: could not publish a snapshot of its tree", self.task_id, exc_info=True)
