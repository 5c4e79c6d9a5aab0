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


def test_sigterm_stops_the_embedded_engine_with_the_command(tmp_path, model_dir):
    """A stopped `rstar solve` (SIGTERM, as from a scheduler) leaves no engine process holding memory."""
    import signal
    import time

    import psutil

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": 2 * i}) + "\n"
                                for i in range(40)))
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", RSTAR_MODEL=model_dir)
    proc = subprocess.Popen([sys.executable, "-m", "rstar_cli.main", "solve", "--file", str(problems), "--out",
                             str(tmp_path / "out.jsonl")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    engine = []
    out = tmp_path / "out.jsonl"
    while time.monotonic() < deadline and not (out.exists() and out.read_text().strip()):  # mid-search
        engine = [p for p in psutil.Process(proc.pid).children(recursive=True) if "VLLM" in _cmdline(p)] or engine
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(1)
    assert engine, "the engine never started"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rstar: interrupted" in stderr, stderr[-2000:]
    _, alive = psutil.wait_procs(engine, timeout=30)
    assert not alive, [_cmdline(p) for p in alive]


def _cmdline(process) -> str:
    """A child's command line; "" for one that is exiting (a zombie) or gone meanwhile."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
