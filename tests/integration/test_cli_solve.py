"""`rstar solve --file --out` end to end: real model, engine and sandbox in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _solve(*args, cwd):
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "rstar_cli.main", "solve", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_solve_file_writes_results_and_resumes(tmp_path, model_dir, monkeypatch):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(json.dumps(p) for p in [
        {"id": "a", "question": "A box holds 6 eggs. How many eggs are in 4 boxes?", "answer": "24"},
        {"id": "b", "question": "Ben had 20 dollars. He spent 8 dollars. How many dollars are left?", "answer": 12},
    ]) + "\n")
    out = tmp_path / "results.jsonl"
    args = ["--file", str(problems), "--out", str(out), "--rollouts", "2", "--set", "max_tokens_per_step=64"]
    monkeypatch.setenv("RSTAR_MODEL", model_dir)
    first = _solve(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["a", "b"]
    for r in records:
        assert r["rollouts"] >= 1 and r["tokens"] > 0 and r["tree"]["nodes"]
        assert r["correct"] in (True, False) and r["difficulty"] in ("easy", "medium", "hard")
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["problems"] == 2 and "code_run_rate" in summary["format"]

    again = _solve(*args, cwd=tmp_path)
    assert again.returncode == 0 and "2 of 2 problems already" in again.stderr
    assert len(out.read_text().splitlines()) == 2
