"""`rstar report` and `rstar eval --run`: the page, the round table and the accuracy-per-round plot.

The round table comes from evolve steps recorded through the store, as the evolve driver
records them; the eval folders are written by `rstar eval` (the fake engine of
`test_eval_cmd`); nothing here is hand-made report JSON.
"""

import json

import pytest

from rstar_cli.report import plot_rounds
from test_eval_cmd import _run, fake_engine, no_models  # noqa: F401 - fixtures

PNG = b"\x89PNG\r\n\x1a\n"


def _evaluation(gsm8k, practice):
    # What `Evolver._evaluate` records: outcomes per held-out item.
    return {"greedy_gsm8k": gsm8k, "greedy_practice": {"1": practice}, "search_gsm8k": gsm8k[:2], "wall_s": 1.0,
            "tokens": 10}


@pytest.fixture
def evolve_run(fake_engine):
    """A two-row round table (base, round 1) in the store; round 1's policy is the one the fake engine serves."""
    from rstar_store import Store

    store = Store.from_url(f"sqlite:///{fake_engine['out'].parent}/rstar.db")
    store.get_or_create_run("evo")
    steps = [(0, "evaluate_base", _evaluation([False, False, True, False], [False, True])),
             (1, "train_sft", {"version": "fake-policy@1", "metrics": {"train_s": 2.0}}),
             (1, "evaluate", _evaluation([True, False, True, True], [True, True])),
             (1, "decide", {"promoted": True})]
    for round, step, result in steps:
        store.start_evolve_step("evo", round, step)
        store.finish_evolve_step("evo", round, step, result)
    store.close()
    return {**fake_engine, "work": fake_engine["out"].parent / "evolve"}


def _eval_args(env, *argv):
    return ("--benchmark", env["file"], "--policy", env["policy"], "--set", "max_depth=4", "--set",
            "temperature=0.7", *argv)


def test_eval_with_an_evolve_run_draws_accuracy_per_round(evolve_run, capsys):
    env = evolve_run
    code, out, err = _run(capsys, *_eval_args(env, "--method", "maj", "--n", "1,3", "--run", "evo", "--work-dir",
                                              str(env["work"])))
    assert code == 0, err
    folder = env["work"] / "evo" / "eval" / "problems-maj"
    assert (folder / "items.jsonl").is_file() and "accuracy per round in" in out
    rows = json.loads((folder / "rounds.json").read_text())
    assert [r["round"] for r in rows] == ["base", 1] and rows[1]["heldout_accuracy"]["correct"] == 3
    assert (folder / "rounds.png").read_bytes()[:8] == PNG
    # The evaluation's own accuracy is drawn at round 1, whose policy it ran.
    summary = json.loads((folder / "summary.json").read_text())
    names = plot_rounds(rows, folder / "check.png", [summary], caption=None, title="evo")
    assert {"held-out GSM8K, greedy", "practice L1, greedy", "eval problems maj@3"} <= set(names)

    code, _, err = _run(capsys, *_eval_args(env, "--method", "maj", "--run", "nope"))
    assert code == 2 and "run 'nope' has no recorded rounds" in err[0]


def test_report_collects_the_round_table_and_the_eval_folders(evolve_run, capsys, monkeypatch):
    from rstar_cli.main import main

    env = evolve_run
    assert _run(capsys, *_eval_args(env, "--method", "maj", "--n", "1,3", "--run", "evo", "--work-dir",
                                    str(env["work"])))[0] == 0
    elsewhere = env["out"]
    assert _run(capsys, *_eval_args(env, "--method", "greedy", "--out", str(elsewhere)))[0] == 0

    code = main(["report", "evo", str(elsewhere), "--work-dir", str(env["work"])])
    out = capsys.readouterr().out
    page = env["work"] / "evo" / "run_report.md"
    assert code == 0 and f"wrote {page} (2 round rows, 2 evaluations)" in out
    text = page.read_text()
    assert text.startswith("# rstar report: evo\n") and "Produced by `rstar report evo " in text
    assert "## Self-evolution rounds" in text and "| base | 25.0 [" in text and "![accuracy per round](rounds.png)" in text
    assert "### eval/problems-maj" in text and "![test-time scaling: accuracy against generated tokens]" \
                                              "(eval/problems-maj/accuracy.png)" in text
    assert "### ../../out" in text and "| problems | greedy | 1 |" in text and "#### Paired comparisons" in text
    for image in ("rounds.png", "eval/problems-maj/accuracy.png", "../../out/accuracy.png"):
        assert (page.parent / image).read_bytes()[:8] == PNG

    # A folder needs no store: its eval folders and the round table `rstar eval --run` left there.
    monkeypatch.setenv("RSTAR_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    folder = env["work"] / "evo" / "eval"
    code = main(["report", str(folder), "--out", str(env["work"] / "page.md")])
    assert code == 0 and "(2 round rows, 1 evaluations)" in capsys.readouterr().out
    assert "### evo/eval/problems-maj" in (env["work"] / "page.md").read_text()


def test_report_input_errors_are_one_line(evolve_run, capsys, tmp_path):
    from rstar_cli.main import main

    for argv, expected in [(["nope"], "run 'nope' has no recorded rounds"),
                           (["evo", str(tmp_path)], "not an `rstar eval` folder (no items.jsonl)"),
                           ([str(tmp_path)], "nothing to report")]:
        code = main(["report", *argv, "--work-dir", str(evolve_run["work"])])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err
