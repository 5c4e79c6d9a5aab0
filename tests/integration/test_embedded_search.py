"""The whole search in one process with the real model, the real vLLM engine and the real sandbox."""

import json

import pytest

from rstar_core.config import SearchConfig
from rstar_core.data import build_ppm_pairs, difficulty, select_sft, trajectories
from rstar_core.mcts import MCTS
from rstar_core.metrics import format_adherence
from rstar_core.ports import GenerationRequest
from rstar_core.steps import get_format
from rstar_cli.main import DEMO_PROBLEMS
from rstar_core.types import Problem, Tree
from rstar_models.hardware import preferred_dtype
from rstar_models.store import model_version

from engine_fixtures import executor, loop, policy  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

# GSM8K test items the small model has a chance at: short, one or two operations.
EASY_GSM8K = ("A robe takes 2 bolts of blue fiber and half that much white fiber.",
              "Carla is downloading a 200 GB file.")


def test_engine_samples_n_with_stops_and_logprobs(policy, loop, model_dir):
    prompt = get_format("base").render_prompt("A box holds 6 eggs. How many eggs are in 4 boxes?")
    request = GenerationRequest(prompt=prompt, n=4, temperature=0.8, max_tokens=64,
                                stop=get_format("base").stops, logprobs=5)
    completions = loop.run_until_complete(policy.generate(request))
    assert len(completions) == 4
    for c in completions:
        assert "\n#" not in c.text and "\nOutput:" not in c.text
        assert c.num_tokens > 0 and c.finish_reason in ("stop", "length")
        assert c.token_confidence is not None and 0 < c.token_confidence <= 1
    assert policy.model_version == model_version(model_dir) and "@" in policy.model_version


def test_engine_computes_in_the_machines_preferred_dtype(policy):
    # bf16 checkpoint; float32 on a CPU without AVX-512, where vLLM emulates bf16 ~4x slower.
    assert policy.dtype == preferred_dtype()
    assert str(policy._engine.model_config.dtype) == f"torch.{preferred_dtype()}"


def _gsm8k(data_dir):
    items = json.loads((data_dir / "eval" / "GSM8K_test.json").read_text())
    return [Problem(it["question"], it["answer"], id=f"gsm8k-{it['index']}")
            for it in items if it["question"].startswith(EASY_GSM8K)]


def test_search_on_gsm8k_builds_valid_trees(policy, executor, loop, data_dir):
    problems = _gsm8k(data_dir) + list(DEMO_PROBLEMS)
    assert len(problems) == 2 + len(DEMO_PROBLEMS)
    config = SearchConfig(expansion_width=4, rollouts=4, max_depth=6, max_tokens_per_step=96,
                          parallel_rollouts=2)
    mcts = MCTS(policy, executor, config)

    async def go():
        return [r async for r in mcts.search_many(problems)]

    results = dict(loop.run_until_complete(go()))
    trees = [results[i].tree for i in range(len(problems))]
    for tree in trees:
        assert tree.stats.rollouts >= 1 and tree.stats.policy_calls >= 1
        assert tree.stats.candidates == len(tree.nodes) - 1 + tree.stats.dropped
        # Every kept code step ran in the sandbox; its output is what the program printed.
        for node in tree.nodes[1:]:
            if node.output:
                assert node.text.endswith(node.output.strip("\n"))
        assert Tree.from_json(tree.to_json()) == tree
        assert difficulty(tree) in ("easy", "medium", "hard")
        trajectories(tree), select_sft(tree), build_ppm_pairs(tree)
        assert tree.model_versions["policy"] == policy.model_version
    adherence = format_adherence(trees)
    assert adherence["executions"] > 0 and adherence["code_run_rate"] > 0.2
    assert adherence["answer_leaves"] > 0
    # The demo's one- and two-step problems are within the small model's reach.
    assert any(results[i].any_correct for i in range(2, len(problems)))
