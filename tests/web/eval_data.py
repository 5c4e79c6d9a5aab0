"""`rstar eval` report folders for the console's tests, written by `rstar eval` itself.

The command runs with the fake engine of tests/cli/test_eval_cmd.py (a scripted policy,
an in-process executor) and, for an evolve run, the round table test_report.py records
through the store; so items.jsonl, runs.jsonl, summary.json, report.md and the PNG plots
are exactly what the real writers produce, in about a second per run. (A module of its
own, imported by the tests that need the `eval_reports` fixture.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The CLI tests' fixtures: importable as modules (tests/cli has no package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))

from test_eval_cmd import _run, fake_engine, no_models  # noqa: E402,F401 - fixtures
from test_report import evolve_run  # noqa: E402,F401 - fixture

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def eval_reports(evolve_run, capsys) -> dict:
    """Two report folders: `eval/problems-maj` (maj@1,3 and greedy: paired comparisons) under the
    eval root, and `evolve/evo/eval/problems-maj` (with the run's rounds.png) under the evolve root."""
    env = evolve_run
    eval_dir = env["out"].parent / "eval"
    common = ("--benchmark", env["file"], "--policy", env["policy"], "--set", "max_depth=4", "--set",
              "temperature=0.7")
    for argv in (("--method", "maj", "--n", "1,3", "--out", str(eval_dir / "problems-maj")),
                 ("--method", "greedy", "--out", str(eval_dir / "problems-maj")),
                 ("--method", "maj", "--n", "1,3", "--run", "evo", "--work-dir", str(env["work"]))):
        code, _out, err = _run(capsys, *common, *argv)
        assert code == 0, err
    return {"eval_dir": eval_dir, "evolve_dir": env["work"],
            "ids": ["eval/problems-maj", "evolve/evo/eval/problems-maj"]}
