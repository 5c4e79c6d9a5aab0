"""`rstar evolve` with the MCTS++ switches, in this process, on the real small model, sandbox and
trainers: round 0 (the bootstrap solutions) and one search round, each trained by SFT, then
step-DPO on the round's step pairs (where the trees gave any), then GRPO on the curriculum;
the GRPO policy is each round's candidate, registered with its lineage, evaluated and
promoted; `rstar rounds` reports it; running again is a no-op."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RECIPE = """
pool:
  sources: [GSM8K]
  limit: 2
  practice: {levels: [1], n_per_level: 2, seed: 1}
bootstrap: {limit: 3}
search:
  1: {expansion_width: 2, rollouts: 3, max_depth: 4, temperature: 1.0, max_tokens_per_step: 64,
      errors_threshold: 1, parallel_rollouts: 2, concurrent_problems: 4, hard_extra_rollouts: 0}
sft: {learning_rate: 1.0e-4, max_steps: 1, batch_size: 2, grad_accum: 1, max_length: 384, save_steps: 1, threads: 2}
ppm: {learning_rate: 2.0e-5, max_steps: 1, batch_size: 2, grad_accum: 1, max_length: 256, save_steps: 1, threads: 2}
step_dpo: {enabled: true, max_steps: 1, batch_size: 2, max_length: 384, save_steps: 1, threads: 2}
grpo:
  enabled: true
  steps: 2
  group_size: 2
  prompts_per_step: 1
  max_completion_length: 32
  save_steps: 1
  threads: 2
  curriculum: {hard_share_start: 0.5, hard_share_step: 0.5}
eval:
  gsm8k_limit: 2
  practice_per_level: 0
  greedy_max_depth: 3
  greedy_max_tokens_per_step: 48
  search_limit: 0
promote: {tolerance: 1.0}
"""


@pytest.mark.timeout(1800)
def test_an_mctspp_run_trains_sft_then_dpo_then_grpo_and_promotes_the_grpo_policy(data_dir, evolve_run):
    from datasets import load_from_disk

    from rstar_cli.rounds import rounds_table

    run = evolve_run(RECIPE, "pp", data_dir / "train" / "problem_pool.jsonl")
    store, steps, lines = run.store, run.steps(), run.lines
    for round in (0, 1):
        sft = steps[round, "train_sft"].result
        dpo = steps.get((round, "train_dpo"))
        pairs = (steps[round, "data"].result.get("ppm") or {}).get("pairs", 0)
        # Step-DPO runs exactly when the round's trees gave step pairs (round 0 has no trees).
        assert (dpo is not None) == (round == 1 and pairs > 0), (round, pairs, lines)
        start = dpo.result if dpo else sft
        grpo = steps[round, "train_grpo"].result
        version = store.get_model_version(grpo["version"])
        assert version.kind == "policy" and version.round == round and version.parent == start["version"]
        assert version.metrics["step"] == "train_grpo" and Path(version.path, "model.safetensors").is_file()
        assert grpo["metrics"]["steps"] == 2
        # The curriculum: steps * prompts_per_step prompts from the pool, each with its bucket.
        data = load_from_disk(steps[round, "grpo_data"].result["path"])
        assert len(data) == 2 and set(data["bucket"]) <= {"easy", "medium", "hard", "unknown"}
        # The candidate that was evaluated and promoted is the GRPO policy.
        assert steps[round, "evaluate"].result["policy"] == grpo["path"]
        assert steps[round, "decide"].result["policy"] == grpo["version"]
    assert store.promoted_model("policy").version == steps[1, "train_grpo"].result["version"]
    # Round 1's curriculum knows round 1's trees: no pool problem is left "unknown".
    assert "unknown" not in set(load_from_disk(steps[1, "grpo_data"].result["path"])["bucket"])
    table = rounds_table(store.list_evolve_steps("pp"))
    assert [row["round"] for row in table] == ["base", 0, 1]
    assert table[2]["policy"] == steps[1, "train_grpo"].result["version"]

    lines = run.run()
    assert not any(line.endswith(" ...") for line in lines), lines
