"""Process-supervision recipes (`method: process-supervision`): the shipped one loads, mistakes are named."""

from pathlib import Path

import pytest

from rstar_cli.evolve_recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
GOOD = """
method: process-supervision
pool: {sources: [GSM8K], limit: 2}
search:
  1: {rollouts: 2, max_depth: 4}
process: {alpha: 2.0, beta: 0.05, max_steps: 2}
eval: {gsm8k_limit: 5, search: {rollouts: 1}}
"""


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_the_shipped_process_supervision_recipe_loads():
    recipe = load_recipe(REPO / "deploy" / "configs" / "evolve" / "process-supervision-cpu.yaml")
    assert recipe.method == "process-supervision" and recipe.process["beta"] > 0 and recipe.process["alpha"] > 0
    assert recipe.search_config(1).granularity == "step" and not recipe.search_config(3).reflection


def test_a_recipe_names_its_method_and_defaults_to_rstar(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    assert recipe.method == "process-supervision" and recipe.process == {"alpha": 2.0, "beta": 0.05, "max_steps": 2}
    plain = load_recipe(_write(tmp_path, GOOD.replace("method: process-supervision\n", "").replace(
        "process: {alpha: 2.0, beta: 0.05, max_steps: 2}\n", "")))
    assert plain.method == "rstar" and plain.process == {}


@pytest.mark.parametrize(("change", "message"), [
    (("method: process-supervision", "method: dpo"), "method must be one of rstar, process-supervision, got 'dpo'"),
    (("alpha: 2.0", "alpha: 0"), "process: alpha must be a finite number > 0"),
    (("beta: 0.05", "beta: -1"), "process: beta must be a finite number >= 0"),
    (("beta: 0.05", "bta: 0.05"), r"process: unknown key\(s\) bta"),
    (("max_depth: 4}", "max_depth: 4, granularity: mini-step, mini_step_tokens: 16}"), "search.1: .*whole steps"),
    (("max_depth: 4}", "max_depth: 4, reflection: true}"), "search.1: .*whole steps"),
    (("method: process-supervision\n", ""), "the process section belongs to method process-supervision"),
])
def test_mistakes_name_the_file_and_the_key(tmp_path, change, message):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ValueError, match=message) as error:
        load_recipe(path)
    assert str(path) in str(error.value)


class _FakeEvolver:
    """The few `Evolver` members a process-supervision round uses, recording what it is asked."""

    def __init__(self, tmp_path, recipe):
        self.recipe = recipe
        self.s = type("S", (), {"run": "ps"})()
        self.tmp_path = tmp_path
        self.lines, self.calls = [], []

    def echo(self, line):
        self.lines.append(line)

    def _step(self, round, name, fn):
        self.calls.append(name)
        return fn()

    def _dir(self, round):
        path = self.tmp_path / f"round-{round}"
        path.mkdir(exist_ok=True)
        return path

    def _train(self, round, step, start, dataset, config, parent):
        self.calls.append((step, start, parent))
        return {"version": "ps-r1-policy", "path": "/models/r1"}

    def _evaluate(self, policy, prompt_format, ppm):
        return {"policy": policy, "prompt_format": prompt_format}

    def _decide(self, round, policy, ppm, evaluation):
        return {"promoted": True}


def _walks(tmp_path, rows):
    import json

    path = tmp_path / "walks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = [e for r in rows if "error" not in r for e in r["examples"]]
    return {"policy": "/models/r0", "policy_version": "ps-r0-policy", "alpha": 1.0, "path": str(path),
            "examples": len(examples)}


def test_a_round_trains_the_walking_policy_on_its_scored_steps(tmp_path, monkeypatch):
    from datasets import load_from_disk

    from rstar_cli import evolve_process

    rows = [{"problem_id": "a", "question": "What is 2 + 3?", "examples": [
                {"prefix": [], "step": "# Add.\nx = 2 + 3", "score": 0.5, "final": False},
                {"prefix": ["# Add.\nx = 2 + 3"], "step": "The answer is \\boxed{5}.", "score": 1.0, "final": True}]},
            {"problem_id": "b", "error": "RuntimeError: engine died"}]
    evolver = _FakeEvolver(tmp_path, load_recipe(_write(tmp_path, GOOD)))
    monkeypatch.setattr(evolve_process, "_walk", lambda ev, round, pool: _walks(tmp_path, rows))
    evolve_process.process_round(evolver, 1, {})
    assert evolver.calls == ["search", "data", ("train_process", "/models/r0", "ps-r0-policy"), "evaluate", "decide"]
    data = load_from_disk(str(tmp_path / "round-1" / "process_data"))
    assert data["score"] == [0.5, 1.0] and data["problem_id"] == ["a", "a"] and data["round"] == [1, 1]


def test_a_round_whose_walks_scored_nothing_trains_nothing(tmp_path, monkeypatch):
    from rstar_cli import evolve_process

    rows = [{"problem_id": "a", "question": "What is 2 + 3?", "examples": []}]
    evolver = _FakeEvolver(tmp_path, load_recipe(_write(tmp_path, GOOD)))
    monkeypatch.setattr(evolve_process, "_walk", lambda ev, round, pool: _walks(tmp_path, rows))
    evolve_process.process_round(evolver, 1, {})
    assert evolver.calls == ["search", "data"] and "nothing to train" in evolver.lines[-1]
