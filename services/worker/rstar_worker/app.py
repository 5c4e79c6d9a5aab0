"""The Celery application: broker wiring, queues and delivery guarantees.

Queues (all durable, with priorities): `search` (data-generation searches), `eval`
(evaluation searches, higher default priority so they are not starved behind a big
search batch) and `train` (the trainer's per-round jobs). Delivery: `acks_late` +
`reject_on_worker_lost` + prefetch 1, so a worker that dies mid-search gets its message
redelivered; the store makes the result write idempotent, so it is written once.

This module imports only Celery so the CLI can enqueue without gRPC or a model;
the task bodies live in `tasks`.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

__all__ = ["EVAL_QUEUE", "SEARCH_QUEUE", "SEARCH_TASK", "SEED_OFFSET_KEY", "TRAIN_QUEUE", "app", "broker_url"]

# A prefix keeps deployments (or test runs) that share one broker apart.
QUEUE_PREFIX = os.environ.get("RSTAR_QUEUE_PREFIX", "")
SEARCH_QUEUE = QUEUE_PREFIX + "search"
EVAL_QUEUE = QUEUE_PREFIX + "eval"
TRAIN_QUEUE = QUEUE_PREFIX + "train"
SEARCH_TASK = "rstar.search"
# A batch config may carry this key beside the search settings: the task's search then runs
# with `seed_offset` (how `rstar eval` draws sample k of N as its own search, exactly as it
# does in-process). Absent: 0.
SEED_OFFSET_KEY = "seed_offset"
MAX_PRIORITY = 9


def broker_url() -> str:
    return os.environ.get("RSTAR_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True,
                 queue_arguments={"x-max-priority": MAX_PRIORITY})


app = Celery("rstar", broker=broker_url(), include=["rstar_worker.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_queues=[_queue(SEARCH_QUEUE), _queue(EVAL_QUEUE), _queue(TRAIN_QUEUE)],
    task_default_queue=SEARCH_QUEUE,
    task_default_priority=4,
    task_queue_max_priority=MAX_PRIORITY,
    task_serializer="json",
    accept_content=["json"],
    # Results live in PostgreSQL, not in a Celery backend.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # Off: after a broker restart Celery lowers the prefetch count and restores it from the
    # ack callbacks, which with the threads pool run in pool threads and call basic.qos on
    # the consumer's connection beside the main loop. py-amqp is not thread-safe: the soak
    # (docs/reliability.md) caught a worker deadlocked in two concurrent basic_qos reads,
    # consuming nothing until killed. Without the reduction a reconnected worker may hold
    # up to twice its concurrency of unacked deliveries for a while; acks stay late.
    worker_enable_prefetch_count_reduction=False,
    worker_hijack_root_logger=False,
    # A search can take long; the broker must not drop the unacked delivery meanwhile
    # (RabbitMQ's consumer_timeout is raised in deploy/rabbitmq/ as well).
    broker_transport_options={"confirm_publish": True},
)
