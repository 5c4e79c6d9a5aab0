"""Train jobs: which steps exist and what each registers (no training here)."""

import pytest

from rstar_trainer.jobs import STEPS, TrainJob


def test_the_ablation_baselines_are_train_steps_of_their_own_kind():
    assert STEPS == {"train_sft": "policy", "train_ppm": "ppm", "train_orm": "orm", "train_pqm": "pqm",
                     "train_process": "policy", "train_grpo": "policy", "train_dpo": "policy"}
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


def test_an_isolated_training_runs_in_a_child_process_and_its_failure_is_one_clear_error(tmp_path, capfd):
    from rstar_core.curation import ORMExample
    from rstar_trainer.datasets import write_orm_dataset
    from rstar_trainer.jobs import _train_and_register

    examples = [ORMExample("p1", "q?", ("\\boxed{1}",), True, 1), ORMExample("p1", "q?", ("\\boxed{2}",), False, 1)]
    dataset = write_orm_dataset(examples, set(), tmp_path / "orm", round=1, sources={}).path

    class Registry:
        def list(self, kind, run):
            return []

    job = TrainJob("run", 1, "train_orm", str(tmp_path / "no-model"), dataset, str(tmp_path / "work"), {"max_steps": 1})
    with pytest.raises(RuntimeError, match=r"train_orm of run run round 1 failed in its training process \(exit code 1"):
        _train_and_register(job, Registry(), False, "me", isolated=True)
    # The child's own error reached the console; the job it ran is kept beside its work.
    assert "is not a model directory" in capfd.readouterr().err
    assert (tmp_path / "work" / "job.json").is_file()
