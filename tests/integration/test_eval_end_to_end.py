"""`rstar eval` end to end on the real small model, engine and sandbox (tiny budgets)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# Not `python -m rstar_cli.main`: the command's modules import `rstar_cli.main`, which
# `-m` would load a second time beside `__main__`.
_ENTRY = "import sys; from rstar_cli.main import main; sys.exit(main(sys.argv[1:]))"
BUDGETS = ["--set", "max_depth=4", "--set", "max_tokens_per_step=48", "--set", "concurrent_problems=4"]


def _eval(*args, cwd, data_dir):
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", RSTAR_DATA_DIR=str(data_dir))
    return subprocess.run([sys.executable, "-c", _ENTRY, "-v", "eval", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_eval_greedy_maj_and_bon_write_reports_and_resume(tmp_path, model_dir, data_dir):
    out = tmp_path / "eval"
    common = ["--benchmark", "gsm8k", "--limit", "2", "--policy", model_dir, "--out", str(out), *BUDGETS]
    maj = _eval(*common, "--method", "maj", "--n", "2", cwd=tmp_path, data_dir=data_dir)
    assert maj.returncode == 0, maj.stderr[-3000:]
    greedy = _eval(*common, "--method", "greedy", cwd=tmp_path, data_dir=data_dir)
    assert greedy.returncode == 0, greedy.stderr[-3000:]

    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["id"]) for r in rows) == [("greedy", "0"), ("greedy", "1"), ("maj", "0"),
                                                            ("maj", "1")]
    for r in rows:
        assert r["tokens"] > 0 and r["correct"] in (True, False) and r["gold"] is not None
        assert r["versions"]["policy"].startswith("SmolLM2-135M-Instruct") and r["versions"]["ppm"] is None
    assert all(r["N"] == 2 and len(r["candidates"]) == 2 for r in rows if r["method"] == "maj")
    summary = json.loads((out / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]] == ["greedy@1", "maj@2"]
    assert summary["comparisons"] and summary["comparisons"][0]["items"] == 2
    report = (out / "report.md").read_text()
    assert "| gsm8k | maj | 2 |" in report and "Paired comparisons" in report
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "gsm8k greedy@1:" in greedy.stdout

    again = _eval(*common, "--method", "maj", "--n", "2", cwd=tmp_path, data_dir=data_dir)
    assert again.returncode == 0 and "resuming: 2 of 2 items already" in again.stderr
    assert len((out / "items.jsonl").read_text().splitlines()) == 4

    # Best-of-N after maj into the same folder: the PPM scores maj's samples; no policy engine starts.
    from rstar_reward import build_ppm_dir

    ppm = tmp_path / "ppm-untrained"
    build_ppm_dir(model_dir, str(ppm))
    bon = _eval(*common, "--method", "bon-ppm", "--n", "2", "--ppm", str(ppm), cwd=tmp_path, data_dir=data_dir)
    assert bon.returncode == 0, bon.stderr[-3000:]
    assert "scoring them without starting the policy engine" in bon.stderr
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    tokens = {(r["method"], r["id"]): r["tokens"] for r in rows}
    assert all(tokens["bon-ppm", i] == tokens["maj", i] for i in ("0", "1"))
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
