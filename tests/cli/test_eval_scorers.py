"""`rstar eval` with each reward model of the ablation (PPM, PQM, ORM) as the scorer, on a fake engine."""

import json
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fakes import FixedReward, InlineExecutor, ScriptedPolicy
from rstar_cli.embedded import NoPolicyEngine
from rstar_core.steps import OUTPUT_STOP
from test_eval_cmd import _problems, _run, fake_engine, no_models  # noqa: F401  (fixtures)

# What each fake reward model prefers: sample k answers 7 + k % 3, so each picks another sample.
PREFERS = {"ppm": "7", "pqm": "8", "orm": "9"}


def _script(prompt, call):
    if not prompt.rsplit("<|im_start|>assistant\n", 1)[1]:
        return [("# Add the two numbers.\nprint(3 + 4)", OUTPUT_STOP)]
    return [(f"The answer is \\boxed{{{7 + (call // 2) % 3}}}.", None)]


def _reward_dir(root: Path, kind: str, *, registered: bool = True) -> str:
    path = root / kind
    path.mkdir()
    (path / "rstar_ppm.json").write_text(json.dumps({"format_version": 1, "objective": kind}))
    (path / "value_head.safetensors").write_bytes(kind.encode())
    if registered:
        (path / "rstar_model.json").write_text(json.dumps({"version": f"fake-{kind}@1", "kind": kind}))
    return str(path)


@pytest.fixture
def engine(fake_engine, no_models, monkeypatch):  # noqa: F811
    """`fake_engine`'s policy; the reward model scores by the kind of the directory it was given."""
    from rstar_cli.embedded import Runtime

    started = []

    @asynccontextmanager
    async def runtime(config, settings, policy_engine=True):
        reward = None
        if config.needs_reward_model:
            kind = Path(settings.reward_model).name
            reward = FixedReward(lambda item: 0.9 if f"boxed{{{PREFERS[kind]}}}" in item.steps[-1] else -0.5)
            reward.model_version = f"fake-{kind}@1"
        started.append((config, settings))
        yield Runtime(ScriptedPolicy(_script) if policy_engine else NoPolicyEngine(settings.model), InlineExecutor(),
                      reward)

    monkeypatch.setattr("rstar_cli.embedded.embedded_runtime", runtime)
    (no_models / "scorers").mkdir()
    dirs = {kind: _reward_dir(no_models / "scorers", kind) for kind in PREFERS}
    file = _problems(no_models, [{"id": "a", "question": "What is 3 + 4?", "answer": "7"}])
    return {"started": started, "dirs": dirs, "out": fake_engine["out"],
            "argv": ["--benchmark", file, "--policy", fake_engine["policy"], "--out", str(fake_engine["out"]),
                     "--set", "max_depth=4", "--set", "temperature=0.7", "--set", "concurrent_problems=1"]}


def _rows(env):
    return [json.loads(line) for line in (env["out"] / "items.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["ppm", "pqm", "orm"])
def test_best_of_n_picks_what_its_reward_model_prefers(engine, capsys, kind):
    code, out, err = _run(capsys, *engine["argv"], "--method", f"bon-{kind}", "--n", "1,3",
                          f"--{kind}", engine["dirs"][kind])
    assert code == 0, err
    by_n = {r["N"]: r for r in _rows(engine)}
    assert [c["answer"] for c in by_n[3]["candidates"]] == ["7", "8", "9"]
    assert by_n[3]["prediction"] == PREFERS[kind] and by_n[3]["score"] == 0.9
    assert by_n[1]["prediction"] == "7"
    assert by_n[3]["method"] == f"bon-{kind}" and by_n[3]["versions"] == {"policy": "fake-policy@1",
                                                                          kind: f"fake-{kind}@1"}
    (config, settings), = engine["started"]
    assert settings.reward_model == engine["dirs"][kind] and config.terminal_reward == "ppm"
    assert f"bon-{kind}@3: {'100.0' if kind == 'ppm' else '0.0'} %" in out


def test_the_three_best_of_n_share_one_report(engine, capsys):
    for kind in PREFERS:
        code, _, err = _run(capsys, *engine["argv"], "--method", f"bon-{kind}", "--n", "3",
                            f"--{kind}", engine["dirs"][kind])
        assert code == 0, err
    summary = json.loads((engine["out"] / "summary.json").read_text())
    assert [g["method"] for g in summary["groups"]] == ["bon-ppm", "bon-pqm", "bon-orm"]
    assert "fake-orm@1" in (engine["out"] / "report.md").read_text()


def test_maj_and_the_three_best_of_n_select_from_the_same_samples(engine, capsys, monkeypatch):
    policies = []
    real = __import__("rstar_cli.embedded", fromlist=["x"]).embedded_runtime

    @asynccontextmanager
    async def counting(config, settings, **options):
        async with real(config, settings, **options) as runtime:
            policies.append(runtime.policy)
            yield runtime

    monkeypatch.setattr("rstar_cli.embedded.embedded_runtime", counting)
    code, _, err = _run(capsys, *engine["argv"], "--method", "maj", "--n", "3")
    assert code == 0, err
    drawn = [json.loads(line) for line in (engine["out"] / "samples.jsonl").read_text().splitlines()]
    assert [(d["k"], d["answer"]) for d in drawn] == [(0, "7"), (1, "8"), (2, "9")]
    assert drawn[0]["steps"] == ["# Add the two numbers.\nprint(3 + 4)\nOutput: 7", "The answer is \\boxed{7}."]
    for kind in PREFERS:
        code, _, err = _run(capsys, *engine["argv"], "--method", f"bon-{kind}", "--n", "1,3",
                            f"--{kind}", engine["dirs"][kind])
        assert code == 0, err
        # Nothing drawn again, no policy engine started: the reward model scored the samples.
        assert isinstance(policies[-1], NoPolicyEngine) and policies[-1].model_version == "fake-policy@1"
    rows = {(r["method"], r["N"]): r for r in _rows(engine)}
    for kind, answer in PREFERS.items():
        assert rows[(f"bon-{kind}", 3)]["prediction"] == answer and rows[(f"bon-{kind}", 3)]["score"] == 0.9
        assert rows[(f"bon-{kind}", 3)]["tokens"] == rows[("maj", 3)]["tokens"] > 0
        assert rows[(f"bon-{kind}", 1)]["prediction"] == "7"
    assert len((engine["out"] / "samples.jsonl").read_text().splitlines()) == 3
    # One more sample than were drawn: the engine starts again and draws only that one.
    code, _, err = _run(capsys, *engine["argv"], "--method", "maj", "--n", "4")
    assert code == 0, err
    assert isinstance(policies[-1], ScriptedPolicy) and policies[-1].requests
    assert len((engine["out"] / "samples.jsonl").read_text().splitlines()) == 4


def test_a_runtime_without_the_policy_engine_reports_the_version_and_refuses_to_generate(model_dir):
    import asyncio

    from rstar_cli.embedded import EmbeddedSettings, embedded_runtime
    from rstar_core.config import SearchConfig
    from rstar_models.store import model_version

    async def go():
        settings = EmbeddedSettings(model=model_dir)
        async with embedded_runtime(SearchConfig(), settings, policy_engine=False) as runtime:
            assert isinstance(runtime.policy, NoPolicyEngine) and runtime.reward is None
            assert runtime.policy.model_version == model_version(model_dir)
            with pytest.raises(RuntimeError, match="started no policy engine"):
                await runtime.policy.generate(None)
            # The sandbox is the real one.
            assert (await runtime.executor.run("print(6 * 7)")).stdout.strip() == "42"

    asyncio.run(go())


@pytest.mark.parametrize("method", ["mcts", "mcts-vote"])
def test_mcts_searches_with_the_scorer_it_is_given(engine, capsys, method):
    code, _, err = _run(capsys, *engine["argv"], "--method", method, "--n", "2", "--scorer", "orm",
                        "--orm", engine["dirs"]["orm"], "--ppm", engine["dirs"]["ppm"])
    assert code == 0, err
    assert "note: --method " + method + "-orm does not use a PPM; --ppm is ignored" in err
    [row] = _rows(engine)
    assert row["method"] == f"{method}-orm" and row["versions"] == {"policy": "fake-policy@1", "orm": "fake-orm@1"}
    (config, settings), = engine["started"]
    assert config.rollouts == 2 and config.terminal_reward == "ppm" and settings.reward_model == engine["dirs"]["orm"]
    assert (engine["out"] / "summary.json").is_file()


@pytest.mark.parametrize("argv,expected", [
    (["--method", "bon-orm"], "--method bon-orm needs an ORM: give --orm VERSION|DIR (no ORM is promoted)"),
    (["--method", "mcts", "--scorer", "pqm"], "--method mcts --scorer pqm needs a PQM: give --pqm VERSION|DIR"),
    (["--method", "bon-orm", "--orm", "{ppm}"], "is a PPM, not an ORM"),
    (["--method", "bon-orm", "--orm", "{unregistered_ppm}"], "is a PPM, not an ORM"),
    (["--method", "bon-pqm", "--pqm", "{orm}"], "is an ORM, not a PQM"),
    (["--method", "mcts", "--scorer", "orm", "--orm", "{tmp}"], "is not an ORM directory"),
    (["--method", "bon-orm", "--scorer", "ppm"], "bon-orm scores with the ORM: a ppm scorer does not apply"),
    (["--method", "maj", "--scorer", "orm"], "maj uses no reward model"),
    (["--method", "mcts", "--scorer", "prm"], "unknown scorer 'prm'"),
    (["--method", "bon-pqm", "--pqm", "r-r1-ppm-abc"], "--pqm 'r-r1-ppm-abc' is a ppm version, not a pqm"),
])
def test_bad_scorer_input_is_one_line_before_any_model_loads(no_models, capsys, argv, expected):  # noqa: F811
    from rstar_store import Store

    store = Store.from_url(f"sqlite:///{no_models}/rstar.db")
    store.get_or_create_run("r")
    store.add_model_version("r-r1-ppm-abc", path=_reward_dir(no_models, "ppm"), kind="ppm", round=1, run="r")
    store.close()
    dirs = {"ppm": str(no_models / "ppm"), "orm": _reward_dir(no_models, "orm"), "tmp": str(no_models),
            "unregistered_ppm": _reward_dir(no_models / "ppm", "ppm", registered=False)}
    file = _problems(no_models, [{"question": "What is 1 + 1?", "answer": "2"}])
    code, _, err = _run(capsys, "--benchmark", file, *[a.format(**dirs) for a in argv])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("rstar: error: ") and expected in err[0], err[0]
