"""`rstar eval` without a real model: bad input, resume, rows and reports (the engine is a fake)."""

import json
import re
from contextlib import asynccontextmanager

import pytest

from fakes import FixedReward, InlineExecutor, ScriptedPolicy
from rstar_cli.eval_report import pending, summarise
from rstar_cli.main import main
from rstar_core.steps import OUTPUT_STOP

QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


def _run(capsys, *argv):
    code = main(["eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.fixture
def no_models(monkeypatch, tmp_path):
    """Any model load fails the test; an empty registry; no model variables."""
    from rstar_store import migrate

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("rstar_cli.eval_cmd._bundled_policy", forbidden)
    monkeypatch.setattr("rstar_cli.embedded.embedded_runtime", forbidden)
    url = f"sqlite:///{tmp_path}/rstar.db"
    migrate(url)
    monkeypatch.setenv("RSTAR_DATABASE_URL", url)
    monkeypatch.delenv("RSTAR_MODEL", raising=False)
    monkeypatch.delenv("RSTAR_REWARD_MODEL", raising=False)
    return tmp_path


def _problems(tmp_path, records):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("argv,expected", [
    (["--benchmark", "nope", "--method", "maj"], "unknown benchmark 'nope': give one of math500, gsm8k"),
    (["--benchmark", "{file}", "--method", "best-of"], "unknown method 'best-of': one of greedy, maj, bon-ppm"),
    (["--benchmark", "{file}", "--method", "maj", "--n", "0"], "--n: N must be >= 1, got 0"),
    (["--benchmark", "{file}", "--method", "maj", "--n", "4,-2"], "--n: N must be >= 1, got -2"),
    (["--benchmark", "{file}", "--method", "maj", "--n", "4,x"], "--n expects positive integers"),
    (["--benchmark", "{file}", "--method", "greedy", "--n", "4"], "greedy decodes once"),
    (["--benchmark", "{file}", "--method", "maj", "--limit", "0"], "--limit must be >= 1"),
    (["--benchmark", "{file}", "--method", "maj", "--set", "rollout=3"], "unknown config key(s) rollout"),
    (["--benchmark", "{file}", "--method", "maj", "--set", "temperature=0"], "temperature must be > 0"),
    (["--benchmark", "{tmp}/missing.jsonl", "--method", "maj"], "missing.jsonl: file not found"),
    (["--benchmark", "practice", "--method", "maj", "--levels", "1,9"], "level"),
    (["--benchmark", "{file}", "--method", "maj", "--policy", "/no/such/dir"], "--policy '/no/such/dir': no such dir"),
    (["--benchmark", "{file}", "--method", "maj", "--policy", "run-r1-policy-0123456789"],
     "--policy 'run-r1-policy-0123456789' is neither a directory nor a version in the registry"),
    (["--benchmark", "{file}", "--method", "mcts", "--ppm", "nope-ppm"],
     "--ppm 'nope-ppm' is neither a directory nor a version in the registry"),
    (["--benchmark", "{file}", "--method", "bon-ppm"], "--method bon-ppm needs a PPM: give --ppm VERSION|DIR "
                                                       "(no PPM is promoted)"),
    (["--benchmark", "{file}", "--method", "mcts-vote", "--ppm", "{tmp}"], "is not a PPM directory"),
    (["--benchmark", "{file}", "--method", "maj", "--out", "{file}"], "is a file, not a folder"),
])
def test_bad_input_is_one_line_before_any_model_loads(no_models, capsys, argv, expected):
    tmp = no_models
    file = _problems(tmp, [{"question": "What is 1 + 1?", "answer": "2"}])
    argv = [a.format(file=file, tmp=tmp) for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("rstar: error: ") and expected in err[0], err[0]


def test_duplicate_ids_are_refused(no_models, capsys):
    file = _problems(no_models, [{"id": "a", "question": "q1?"}, {"id": "a", "question": "q2?"}])
    code, _, err = _run(capsys, "--benchmark", file, "--method", "greedy")
    assert code == 2 and "id 'a' appears twice" in err[0]


def test_a_version_of_the_wrong_kind_is_refused(no_models, capsys, monkeypatch):
    from rstar_store import Store

    store = Store.from_url(f"sqlite:///{no_models}/rstar.db")
    store.get_or_create_run("r")
    ppm_dir = no_models / "ppm-version"
    ppm_dir.mkdir()
    store.add_model_version("r-r1-ppm-abc", path=str(ppm_dir), kind="ppm", round=1, run="r")
    store.close()
    file = _problems(no_models, [{"question": "What is 1 + 1?", "answer": "2"}])
    code, _, err = _run(capsys, "--benchmark", file, "--method", "greedy", "--policy", "r-r1-ppm-abc")
    assert code == 2 and "is a ppm version, not a policy" in err[0]


# ---------------------------------------------------------------------- pure helpers


def _row(id, method="maj", n=1, correct=True, policy="p@1", ppm=None, config="c1", benchmark="b", tokens=10):
    return {"benchmark": benchmark, "id": id, "method": method, "N": n, "correct": correct, "tokens": tokens,
            "seconds": 1.0, "versions": {"policy": policy, "ppm": ppm}, "config_id": config}


def test_pending_lists_the_missing_n_of_each_item():
    rows = [_row("a", n=1), _row("a", n=4), _row("b", n=1), _row("c", n=4, policy="other"),
            _row("d", n=4, config="c2"), _row("e", n=4, method="bon-ppm"), {"id": "torn"}]
    missing = pending(["a", "b", "c", "d", "e"], rows, benchmark="b", method="maj", ns=[1, 4],
                      versions={"policy": "p@1", "ppm": None}, config="c1")
    assert missing == {"a": [], "b": [4], "c": [1, 4], "d": [1, 4], "e": [1, 4]}


def test_summary_accuracies_and_which_pairs_are_compared():
    rows = []
    for i, (g, m1, m4) in enumerate([(True, True, True), (False, False, True), (False, True, True),
                                     (False, False, True), (True, False, False)]):
        rows += [_row(str(i), "greedy", 1, g), _row(str(i), "maj", 1, m1), _row(str(i), "maj", 4, m4, tokens=40)]
    rows.append(_row("5", "maj", 4, None, tokens=40))  # no gold: counted as an item, not graded
    rows.append(_row("0", "maj", 4, False, tokens=40))  # a later row for the same key wins
    summary = summarise(rows)
    groups = {g["label"]: g for g in summary["groups"]}
    assert list(groups) == ["greedy@1", "maj@1", "maj@4"]
    maj4 = groups["maj@4"]
    assert (maj4["items"], maj4["graded"], maj4["correct"]) == (6, 5, 3)
    assert maj4["ci_low"] < 0.6 < maj4["ci_high"] and maj4["tokens_per_item"] == 40
    pairs = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    # maj@4 vs maj@1 (more N), maj@1 vs greedy@1 (same N), maj@4 vs greedy (largest N vs greedy).
    assert set(pairs) == {("maj@4", "maj@1"), ("greedy@1", "maj@1"), ("maj@4", "greedy@1")}
    c = pairs[("maj@4", "greedy@1")]
    assert (c["items"], c["a_only"], c["b_only"]) == (5, 3, 2) and 0 < c["p_value"] <= 1


def test_versions_and_benchmarks_appear_in_labels_only_when_they_vary():
    rows = [_row("0", policy="p@1"), _row("0", policy="p@2"), _row("1", policy="p@1", benchmark="x")]
    labels = [g["label"] for g in summarise(rows)["groups"]]
    assert labels == ["b: maj@1 [p@1]", "b: maj@1 [p@2]", "x: maj@1 [p@1]"]
    assert [(c["a"], c["b"]) for c in summarise(rows)["comparisons"]] == [("b: maj@1 [p@1]", "b: maj@1 [p@2]")]


# ---------------------------------------------------------------------- the command, fake engine


def _script(prompt, call):
    a, b = map(int, QUESTION.findall(prompt)[-1])
    tail = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if a == 99:
        raise RuntimeError("engine fell over")
    if not tail:
        return [(f"# Add the two numbers.\nprint({a} + {b})", OUTPUT_STOP)]
    # 5 + 5 is always answered wrong, so the accuracies are known.
    return [(f"The answer is \\boxed{{{a + b + (a == 5)}}}.", None)]


@pytest.fixture
def fake_engine(no_models, monkeypatch):
    """The embedded runtime with a scripted policy, an in-process executor and a fixed PPM."""
    from rstar_cli.embedded import Runtime

    started = []

    @asynccontextmanager
    async def runtime(config, settings, policy_engine=True):
        from rstar_cli.embedded import NoPolicyEngine

        policy = ScriptedPolicy(_script) if policy_engine else NoPolicyEngine(settings.model)
        if policy_engine:
            policy.model_version = "fake-policy@1"
        reward = FixedReward(lambda item: 0.5) if config.needs_reward_model else None
        started.append((config, settings, policy))
        yield Runtime(policy, InlineExecutor(), reward)

    monkeypatch.setattr("rstar_cli.embedded.embedded_runtime", runtime)
    policy_dir = no_models / "policy"
    policy_dir.mkdir()
    (policy_dir / "config.json").write_text("{}")
    (policy_dir / "rstar_model.json").write_text(json.dumps({"version": "fake-policy@1"}))
    ppm_dir = no_models / "ppm"
    ppm_dir.mkdir()
    (ppm_dir / "rstar_ppm.json").write_text("{}")
    (ppm_dir / "value_head.safetensors").write_bytes(b"head")
    (ppm_dir / "rstar_model.json").write_text(json.dumps({"version": "fake-ppm@1", "kind": "ppm"}))
    file = _problems(no_models, [{"id": "a", "question": "What is 3 + 4?", "answer": "7"},
                                 {"id": "b", "question": "What is 5 + 5?", "answer": 10},
                                 {"id": "c", "question": "What is 2 + 2?"}])
    return {"started": started, "policy": str(policy_dir), "ppm": str(ppm_dir), "file": file,
            "out": no_models / "out"}


def _eval(capsys, env, *argv):
    return _run(capsys, "--benchmark", env["file"], "--policy", env["policy"], "--out", str(env["out"]),
                "--set", "max_depth=4", "--set", "temperature=0.7", *argv)


def _rows(env):
    return [json.loads(line) for line in (env["out"] / "items.jsonl").read_text().splitlines()]


def test_eval_writes_rows_and_reports_and_resumes(fake_engine, capsys):
    env = fake_engine
    code, out, err = _eval(capsys, env, "--method", "maj", "--n", "1,3")
    assert code == 0, err
    rows = _rows(env)
    assert sorted((r["id"], r["N"]) for r in rows) == [("a", 1), ("a", 3), ("b", 1), ("b", 3), ("c", 1), ("c", 3)]
    by = {(r["id"], r["N"]): r for r in rows}
    assert by[("a", 3)]["prediction"] == "7" and by[("a", 3)]["correct"] is True
    assert by[("b", 1)]["prediction"] == "11" and by[("b", 1)]["correct"] is False
    assert by[("c", 1)]["correct"] is None and by[("c", 1)]["gold"] is None
    for r in rows:
        assert r["versions"] == {"policy": "fake-policy@1", "ppm": None} and r["method"] == "maj"
        assert r["question"].startswith("What is") and r["seconds"] >= 0
    # Nested samples: maj@3 spent the tokens of three samples, maj@1 those of the first.
    assert by[("a", 3)]["tokens"] == 3 * by[("a", 1)]["tokens"] > 0
    assert len(by[("a", 3)]["candidates"]) == 3
    # Three samples per item, each a width-1 search of two steps, drawn once for both N.
    (config, settings, policy), = env["started"]
    assert config.expansion_width == 1 and config.rollouts == 1 and settings.model == env["policy"]
    assert len(policy.requests) == 3 * 3 * 2 and all(r.n == 1 for r in policy.requests)
    assert "maj@3: 50.0 % (1/2" in out

    summary = json.loads((env["out"] / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]] == ["maj@1", "maj@3"]
    assert summary["comparisons"][0]["a"] == "maj@3" and summary["comparisons"][0]["p_value"] == 1.0
    assert summary["runs"][0]["command"].startswith("rstar eval --benchmark")
    report = (env["out"] / "report.md").read_text()
    assert "Produced by `rstar eval" in report and "| maj@3 | maj@1 | 2 |" in report
    assert (env["out"] / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same command again: nothing left to search, no engine started.
    code, _, err = _eval(capsys, env, "--method", "maj", "--n", "1,3")
    assert code == 0 and "resuming: 3 of 3 items already" in err[0]
    assert len(env["started"]) == 1 and len(_rows(env)) == 6

    # A larger N adds only its own rows, from the three samples drawn before and one more.
    code, _, _ = _eval(capsys, env, "--method", "maj", "--n", "1,3,4")
    assert code == 0 and len(_rows(env)) == 9
    assert len(env["started"][-1][2].requests) == 3 * 1 * 2

    # Another method into the same folder: compared with the first on the same items.
    samples = (env["out"] / "samples.jsonl").read_text()
    code, out, _ = _eval(capsys, env, "--method", "greedy")
    assert (env["out"] / "samples.jsonl").read_text() == samples  # greedy draws no shared samples
    assert code == 0 and "greedy@1: 50.0 % (1/2" in out
    summary = json.loads((env["out"] / "summary.json").read_text())
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]}
    assert ("greedy@1", "maj@1") in pairs and ("maj@4", "greedy@1") in pairs
    assert len(summary["runs"]) == 4


def test_ppm_methods_use_the_given_ppm(fake_engine, capsys):
    env = fake_engine
    code, _, err = _eval(capsys, env, "--method", "mcts", "--n", "2", "--ppm", env["ppm"], "--set",
                         "expansion_width=2")
    assert code == 0, err
    rows = _rows(env)
    assert {r["prediction"] for r in rows if r["id"] == "a"} == {"7"}
    assert all(r["versions"] == {"policy": "fake-policy@1", "ppm": "fake-ppm@1"} and r["score"] == 0.5
               for r in rows)
    config, settings, _ = env["started"][0]
    assert config.rollouts == 2 and config.terminal_reward == "ppm" and settings.reward_model == env["ppm"]
    code, _, _ = _eval(capsys, env, "--method", "bon-ppm", "--n", "2", "--ppm", env["ppm"])
    assert code == 0 and {r["method"] for r in _rows(env)} == {"mcts", "bon-ppm"}


def test_a_failing_item_is_not_written_and_is_retried(fake_engine, capsys):
    env = fake_engine
    with open(env["file"], "a") as fh:
        fh.write(json.dumps({"id": "x", "question": "What is 99 + 1?", "answer": "100"}) + "\n")
    code, _, err = _eval(capsys, env, "--method", "greedy")
    assert code == 1 and any("[x] FAILED: RuntimeError: engine fell over" in line for line in err)
    assert sorted(r["id"] for r in _rows(env)) == ["a", "b", "c"]
    assert not (env["out"] / "samples.jsonl").exists()  # only maj and bon-* keep samples
    code, _, err = _eval(capsys, env, "--method", "greedy")
    assert code == 1 and "resuming: 3 of 4 items already" in err[0]
