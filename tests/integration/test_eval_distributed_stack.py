"""`rstar eval --distributed` end to end: real RabbitMQ, PostgreSQL, worker, policy service and model.

One stack for the module (policy service with the real small model, one executor, one
Celery worker consuming `search` and `eval`), started by the same launcher as `make up`,
isolated by its own database (dropped afterwards), queue prefix and ports.
"""

import json
import os
import subprocess
import sys
import uuid

import pytest

from rstar_cli.launcher import StackSpec, stack_env
from rstar_store import Store
from tools import running_stack

pytestmark = pytest.mark.slow

# See test_eval_end_to_end: `-m rstar_cli.main` would load the module twice.
_ENTRY = "import sys; from rstar_cli.main import main; sys.exit(main(sys.argv[1:]))"
BUDGETS = ["--set", "max_depth=4", "--set", "max_tokens_per_step=48"]


@pytest.fixture(scope="module")
def stack(model_dir, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    spec = StackSpec(
        run_dir=tmp_path_factory.mktemp("stack"),
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/rstar_it_eval_{tag}",
        workers=1, worker_concurrency=4, executors=1, with_reward=False,
        base_port=53000 + (os.getpid() % 50) * 20,
        env={"RSTAR_MODEL": model_dir, "RSTAR_QUEUE_PREFIX": f"it-eval-{tag}-", "VLLM_CPU_KVCACHE_SPACE": "2",
             "RSTAR_EXECUTOR_DEADLINE_S": "60", "VLLM_LOGGING_LEVEL": "WARNING"},
    )
    with running_stack(spec) as running:
        yield running


def _eval(spec, data_dir, *args):
    # What `source <run-dir>/env` gives a shell: the store, the broker and the services.
    env = {**os.environ, **stack_env(spec), "RSTAR_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-c", _ENTRY, "eval", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_distributed_eval_runs_on_the_eval_queue_and_resumes(stack, tmp_path, data_dir, model_dir):
    from rstar_models.store import model_version

    out = tmp_path / "eval"
    args = ["--benchmark", "gsm8k", "--limit", "2", "--method", "maj", "--n", "1,2", "--distributed",
            "--out", str(out), *BUDGETS]
    first = _eval(stack, data_dir, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "4 searches, 0 already done, 4 published to 'it-eval-" in first.stderr

    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["N"]) for r in rows) == [("0", 1), ("0", 2), ("1", 1), ("1", 2)]
    served = model_version(model_dir)
    for r in rows:
        # The version the policy service reported in the stored trees.
        assert r["versions"] == {"policy": served, "ppm": None}
        assert r["tokens"] > 0 and r["correct"] in (True, False) and r["gold"] is not None
        assert len(r["candidates"]) == r["N"] and r["method"] == "maj"
    summary = json.loads((out / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]] == ["maj@1", "maj@2"]
    assert "--distributed" in summary["runs"][0]["command"]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"

    # In the store: one task per (item, sample), run by the worker, none of them shown the gold answer.
    store = Store.from_url(stack.database_url)
    try:
        run = next(line.split()[1].rstrip(":") for line in first.stderr.splitlines() if line.startswith("run eval-"))
        results = list(store.iter_results(run))
        assert len(results) == 4 and all(r["worker"] and r["ground_truth"] is None for r in results)
        assert sorted((r["problem_id"], r["round"]) for r in results) == [("0", 1), ("0", 2), ("1", 1), ("1", 2)]
    finally:
        store.close()

    again = _eval(stack, data_dir, *args)
    assert again.returncode == 0 and "resuming: 2 of 2 items already" in again.stderr
    assert len((out / "items.jsonl").read_text().splitlines()) == 4
