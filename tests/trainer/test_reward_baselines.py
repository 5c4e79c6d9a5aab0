"""The ORM and PQM baselines on the real small model: trained by the PPM's code path, then
scoring best-of-N in `rstar eval` end to end (engine and sandbox real, tiny budgets)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rstar_core.curation import ORMExample, PQMExample
from rstar_trainer.datasets import write_orm_dataset, write_pqm_dataset
from rstar_trainer.ppm_config import PPMConfig
from tools import scratch_dir

pytestmark = pytest.mark.slow

CONFIG = PPMConfig(learning_rate=5e-5, max_steps=4, batch_size=4, grad_accum=1, max_length=192, save_steps=4,
                   threads=2)
_ENTRY = "import sys; from rstar_cli.main import main; sys.exit(main(sys.argv[1:]))"


def _solution(i: int, right: bool) -> tuple[str, tuple[str, ...]]:
    a, b = i + 2, i + 5
    total = a + b if right else a * b
    question = f"Sara has {a} apples and buys {b} more. How many apples does she have?"
    op = "+" if right else "*"
    return question, (f"# Add what she buys.\ntotal = {a} {op} {b}\nprint(total)\nOutput: {total}",
                      f"The answer is \\boxed{{{total}}}.")


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory):
    from rstar_trainer.ppm_trainer import train_orm, train_pqm

    with scratch_dir(tmp_path_factory, "baselines") as root:
        orm, pqm = [], []
        for i in range(8):
            for right in (True, False):
                question, steps = _solution(i, right)
                orm.append(ORMExample(f"p{i}", question, steps, right, 1))
                pqm += [PQMExample(f"p{i}", question, steps[:1], 0.6 if right else -0.6, 1),
                        PQMExample(f"p{i}", question, steps, 1.0 if right else -1.0, 1)]
        write_orm_dataset(orm, {"p0", "p1"}, root / "orm_data", round=1, sources={})
        write_pqm_dataset(pqm, {"p0", "p1"}, root / "pqm_data", round=1, sources={})
        metrics = {
            "orm": train_orm(model_dir, root / "orm_data", root / "orm", root / "orm_work", CONFIG, progress_bar=False),
            "pqm": train_pqm(model_dir, root / "pqm_data", root / "pqm", root / "pqm_work", CONFIG, progress_bar=False),
        }
        yield root, metrics


def _tensor(path, suffix):
    """The one weight whose name ends in `suffix` (a backbone saves without the causal LM's prefix)."""
    [value] = [v for k, v in load_file(str(path)).items() if k.endswith(suffix)]
    return value


def _progress(work):
    return [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]


def test_orm_and_pqm_train_and_report_their_heldout_metrics(trained, model_dir):
    from rstar_reward import ProcessPreferenceModel

    root, metrics = trained
    orm, pqm = metrics["orm"], metrics["pqm"]
    assert orm["kind"] == "orm" and orm["steps"] == 4 and orm["train_examples"] == 12
    assert orm["heldout_examples"] == 4 and 0 <= orm["heldout_accuracy"] <= 1
    assert pqm["kind"] == "pqm" and pqm["steps"] == 4 and pqm["train_examples"] == 24
    assert 0 <= pqm["heldout_mse"] <= 4 and 0 <= pqm["heldout_pair_accuracy"] <= 1
    # Four steps of batches grouped by length are too few for a PQM loss curve to fall reliably.
    assert orm["last_loss"] < orm["first_loss"], orm
    name = "layers.0.self_attn.q_proj.weight"
    base = _tensor(Path(model_dir) / "model.safetensors", name)
    for kind in ("orm", "pqm"):
        assert all(math.isfinite(p["loss"]) for p in _progress(root / f"{kind}_work")), kind
        assert not torch.equal(base, _tensor(root / kind / "model.safetensors", name)), kind
        model = ProcessPreferenceModel.from_pretrained(root / kind, dtype="float32")
        assert model.objective == kind
        record = json.loads((root / kind / "rstar_training.json").read_text())
        assert record["dataset"]["kind"] == kind and record["metrics"]["kind"] == kind


def test_rstar_eval_best_of_n_with_each_baseline(trained, model_dir, data_dir, tmp_path):
    root, _ = trained
    out = tmp_path / "eval"
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", RSTAR_DATA_DIR=str(data_dir),
               RSTAR_DATABASE_URL=f"sqlite:///{tmp_path}/rstar.db")
    for kind in ("orm", "pqm"):
        argv = ["eval", "--benchmark", "gsm8k", "--limit", "2", "--n", "2", "--policy", model_dir,
                "--method", f"bon-{kind}", f"--{kind}", str(root / kind), "--out", str(out),
                "--set", "max_depth=4", "--set", "max_tokens_per_step=48", "--set", "concurrent_problems=2"]
        done = subprocess.run([sys.executable, "-c", _ENTRY, *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"gsm8k bon-{kind}@2:" in done.stdout
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["id"]) for r in rows) == [("bon-orm", "0"), ("bon-orm", "1"), ("bon-pqm", "0"),
                                                            ("bon-pqm", "1")]
    for r in rows:
        kind = r["method"].removeprefix("bon-")
        assert r["versions"][kind].startswith(f"{kind}:{kind}:") and len(r["candidates"]) == 2
        scored = [c["score"] for c in r["candidates"] if c["answer"] is not None]
        assert all(-1 <= s <= 1 for s in scored)
