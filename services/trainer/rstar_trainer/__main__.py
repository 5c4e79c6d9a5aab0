"""`python -m rstar_trainer`: a Celery worker that consumes the `train` queue, one job at a time.

One job at a time (`-P solo -c 1`): a training run takes the whole machine (or GPU). On a
multi-GPU node, run the worker under Accelerate so each job trains on every GPU:
``accelerate launch --config_file deploy/accelerate/ddp.yaml -m rstar_trainer`` (configs for
one GPU, DDP, FSDP and DeepSpeed in `deploy/accelerate/`).
"""

from __future__ import annotations

import os
import socket
import sys

from rstar_worker.app import TRAIN_QUEUE, app

from . import tasks  # noqa: F401  (registers rstar.train)


def main(argv: list[str] | None = None) -> None:
    # Default "trainer@<host>": one per container (the compose healthcheck pings it by that name).
    name = os.environ.get("RSTAR_TRAINER_NAME", f"trainer@{socket.gethostname()}")
    app.worker_main(["worker", "-Q", TRAIN_QUEUE, "-P", "solo", "-c", "1", "--prefetch-multiplier", "1",
                     "-n", name, "--loglevel", os.environ.get("RSTAR_LOG_LEVEL", "INFO"), *(argv or sys.argv[1:])])


if __name__ == "__main__":
    main()
