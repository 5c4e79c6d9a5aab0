"""Train jobs: which steps exist and what each registers (no training here)."""

import pytest

from rstar_trainer.jobs import STEPS, TrainJob


def test_the_ablation_baselines_are_train_steps_of_their_own_kind():
    assert STEPS == {"train_sft": "policy", "train_ppm": "ppm", "train_orm": "orm", "train_pqm": "pqm",
                     "train_process": "policy", "train_grpo": "policy"}
    for step in ("train_orm", "train_pqm"):
        job = TrainJob("run", 2, step, "/policy", "/data", "/work", {"max_steps": 4})
        assert TrainJob.from_json(job.to_json()) == job
    with pytest.raises(ValueError, match="step must be one of"):
        TrainJob("run", 2, "train_prm", "/policy", "/data", "/work")


def test_every_reward_step_names_its_trainer():
    from rstar_trainer import ppm_trainer

    for step, kind in STEPS.items():
        if kind != "policy":
            assert callable(getattr(ppm_trainer, step))
