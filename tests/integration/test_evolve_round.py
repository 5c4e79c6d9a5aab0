"""`rstar evolve` end to end: round 0 and one search round with the real model, sandbox and trainers.

A tiny recipe (a few pool problems, a few bootstrap solutions, two optimizer steps per
training, a handful of held-out items) run twice: embedded on SQLite, and distributed
through a stack started by the `make up` launcher (PostgreSQL, RabbitMQ, the policy and
executor services, a search worker and a trainer worker). Each run must record every
step, register and promote (or reject) real model versions whose files load, write
datasets anyone can load with `datasets.load_from_disk`, resume as a no-op when run again,
and give `rstar rounds` a row per round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from rstar_cli.launcher import StackSpec, start_stack, stop_stack, wait_healthy
from rstar_store import Store

pytestmark = pytest.mark.slow

ADMIN_URL = os.environ.get("RSTAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROUND0_STEPS = {"pool", "evaluate_base", "bootstrap", "data", "train_sft", "evaluate", "decide"}
ROUND1_STEPS = {"search", "data", "train_sft", "evaluate", "decide"}

TINY_RECIPE = """
pool:
  sources: [GSM8K]
  limit: 3
  practice: {levels: [1, 2], n_per_level: 2, seed: 1}
bootstrap: {limit: 16}
search:
  1: {expansion_width: 2, rollouts: 2, max_depth: 4, temperature: 0.8, max_tokens_per_step: 64,
      errors_threshold: 1, parallel_rollouts: 2, concurrent_problems: 8, hard_extra_rollouts: 0}
sft: {learning_rate: 2.0e-4, max_steps: 2, batch_size: 2, grad_accum: 1, max_length: 384, save_steps: 1, threads: 2}
ppm: {learning_rate: 2.0e-4, max_steps: 2, batch_size: 2, grad_accum: 1, max_length: 256, save_steps: 1, threads: 2}
eval:
  gsm8k_limit: 3
  practice_per_level: 1
  greedy_max_depth: 4
  greedy_max_tokens_per_step: 64
  search_limit: 1
  search: {expansion_width: 2, rollouts: 1, max_depth: 4, temperature: 0.8, max_tokens_per_step: 64,
           errors_threshold: 1, parallel_rollouts: 1, concurrent_problems: 4}
# Promote whatever the two-step training gives, so round 1 searches with round 0's policy.
promote: {tolerance: 1.0}
"""


def _rstar(env: dict[str, str], *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "rstar_cli.main", *args], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"rstar {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _evolve_args(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    return ["evolve", "--pool", str(data_dir / "train" / "problem_pool.jsonl"), "--rounds", "1",
            "--recipe", str(recipe), "--run", "tiny", "--work-dir", str(tmp_path / "work"),
            "--model-store", str(tmp_path / "store"), *extra]


def _check_run(database_url: str, tmp_path: Path) -> None:
    from datasets import load_from_disk

    store = Store.from_url(database_url)
    try:
        steps = {(s.round, s.step): s for s in store.list_evolve_steps("tiny")}
        assert all(s.state == "done" for s in steps.values()), {k: (s.state, s.error) for k, s in steps.items()}
        assert {step for r, step in steps if r == 0} == ROUND0_STEPS
        assert ROUND1_STEPS <= {step for r, step in steps if r == 1}

        bootstrap = steps[0, "bootstrap"].result
        assert bootstrap["examples"] > 0
        assert bootstrap["counts"]["total"] == 16 and bootstrap["counts"]["correct"] == bootstrap["examples"]
        search = steps[1, "search"].result
        assert search["problems"] == 7 and search["failed"] == 0
        assert store.run_progress("tiny", round=1).states["done"] == 7

        for r in (0, 1):
            data = steps[r, "data"].result
            sft = load_from_disk(data["sft"]["path"])
            assert len(sft) == data["sft"]["examples"] > 0 and "messages" in sft.column_names
            policy = steps[r, "train_sft"].result
            version = store.get_model_version(policy["version"])
            assert version.kind == "policy" and version.round == r and version.run == "tiny"
            assert Path(version.path, "model.safetensors").is_file()
            assert steps[r, "decide"].result["promoted"] is True
        data1 = steps[1, "data"].result
        if data1["ppm"]:
            pairs = load_from_disk(data1["ppm"]["path"])
            assert {"prompt", "chosen", "rejected"} <= set(pairs["train"].column_names)
            ppm = store.get_model_version(steps[1, "train_ppm"].result["version"])
            assert ppm.kind == "ppm" and ppm.parent is None
        promoted = store.promoted_model("policy")
        assert promoted.version == steps[1, "train_sft"].result["version"]
    finally:
        store.close()


def _check_rounds_table(env: dict[str, str], tmp_path: Path) -> None:
    table = tmp_path / "rounds.json"
    shown = _rstar(env, "rounds", "tiny", "--json", str(table)).stdout
    rows = json.loads(table.read_text())
    assert [row["round"] for row in rows] == ["base", 0, 1]
    assert all(set(row["practice_accuracy_by_level"]) == {"1", "2", "3", "4", "5"} for row in rows)
    assert "| base |" in shown and "| 1 |" in shown


@pytest.mark.timeout(1800)
def test_an_embedded_run_learns_registers_and_resumes(model_dir, data_dir, tmp_path):
    env = {"RSTAR_DATABASE_URL": f"sqlite:///{tmp_path / 'rstar.db'}", "RSTAR_MODEL": model_dir,
           "RSTAR_DATA_DIR": str(data_dir), "VLLM_CPU_KVCACHE_SPACE": "2"}
    args = _evolve_args(tmp_path, data_dir)
    first = _rstar(env, *args)
    assert "round 1: search done" in first.stdout
    _check_run(env["RSTAR_DATABASE_URL"], tmp_path)

    # The same command again resumes a finished run: no step runs twice, no model is added.
    again = _rstar(env, *args, timeout=300)
    assert " ..." not in again.stdout, again.stdout
    versions = sorted(p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith("."))
    assert len(versions) == len({v.rsplit("-", 1)[0] for v in versions})
    _check_rounds_table(env, tmp_path)


@pytest.mark.timeout(1800)
def test_a_distributed_run_searches_on_workers_and_trains_on_the_trainer(model_dir, data_dir, tmp_path):
    tag = uuid.uuid4().hex[:8]
    db_name = f"rstar_evolve_{tag}"
    store_dir = tmp_path / "store"
    spec = StackSpec(
        run_dir=tmp_path / "stack",
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}",
        workers=1, worker_concurrency=8, executors=1, with_reward=False, trainers=1,
        base_port=47000 + (os.getpid() % 50) * 20,
        env={"RSTAR_MODEL": model_dir, "RSTAR_MODEL_STORE": str(store_dir), "RSTAR_QUEUE_PREFIX": f"ev-{tag}-",
             "RSTAR_DATA_DIR": str(data_dir), "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_LOGGING_LEVEL": "WARNING",
             "RSTAR_EXECUTOR_DEADLINE_S": "60"},
    )
    start_stack(spec)
    try:
        wait_healthy(spec, timeout_s=300)
        env = {**spec.env, "RSTAR_DATABASE_URL": spec.database_url, "RSTAR_BROKER_URL": spec.broker_url,
               "RSTAR_POLICY_ADDR": f"127.0.0.1:{spec.base_port}"}
        out = _rstar(env, *_evolve_args(tmp_path, data_dir, "--distributed", "--stack-dir", str(spec.run_dir)))
        prefix = spec.env["RSTAR_QUEUE_PREFIX"]
        assert f"round 1: train_sft sent to '{prefix}train'" in out.stdout
        assert f"round 1: 7 searches published to '{prefix}search'" in out.stdout
        _check_run(spec.database_url, tmp_path)
        store = Store.from_url(spec.database_url)
        try:
            # The trainer worker, not the driver, wrote the models; the search worker claimed the tasks.
            trained_by = {store.get_model_version(store.get_evolve_step("tiny", r, "train_sft").result["version"])
                          .metrics.get("trained_by") for r in (0, 1)}
            claimed_by = {row["worker"] for row in store.iter_results("tiny", round=1)}
        finally:
            store.close()
        assert all(name and name.startswith("trainer0.") for name in trained_by), trained_by
        assert all(name and not name.startswith("evolve:") for name in claimed_by), claimed_by
        _check_rounds_table(env, tmp_path)
    finally:
        stop_stack(spec.run_dir, grace_s=10)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        from kombu import Connection

        with Connection(spec.broker_url) as conn:
            for name in ("search", "eval", "train"):
                conn.default_channel.queue_delete(spec.env["RSTAR_QUEUE_PREFIX"] + name)
