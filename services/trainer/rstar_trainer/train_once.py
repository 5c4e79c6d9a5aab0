"""`python -m rstar_trainer.train_once JOB.json`: train the model of one job and exit.

What `run_train_job` launches under Accelerate on GPU nodes (``RSTAR_ACCELERATE_CONFIG``
names one of `deploy/accelerate/*.yaml`): every process of the launch runs this module,
the trainer spreads the work (DDP, FSDP or DeepSpeed as the config says) and the main
process writes the final model. Registering it is left to the caller, once, after the
launch has exited.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .jobs import TrainJob, train_model


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: python -m rstar_trainer.train_once JOB.json")
    job = TrainJob.from_json(json.loads(Path(args[0]).read_text()))
    train_model(job, progress_bar=False)


if __name__ == "__main__":
    main()
