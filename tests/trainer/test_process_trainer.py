"""MCTS process supervision's trainer: the weighted NLL + KL loss against a hand computation, its
settings and dataset, and (slow) a real round on the small model from the previous policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rstar_core.process_supervision import ProcessExample
from rstar_trainer.datasets import MANIFEST, load_training_set, write_process_dataset
from rstar_trainer.process_config import ProcessConfig
from rstar_trainer.process_trainer import weighted_nll_kl

LN3 = math.log(3.0)


def _hand_batch():
    """Two examples, three positions, two tokens. Position t predicts label t+1.

    Example 0 (weight 2): position 0 is uniform and predicts token 1 (p = 0.5); position 1 is
    [0.75, 0.25] and predicts token 0 (p = 0.75). Example 1 (weight -0.5): only position 1
    counts, [0.75, 0.25], predicting token 1 (p = 0.25). Three completion tokens in all.
    """
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [5.0, 1.0]],
                           [[2.0, 0.0], [LN3, 0.0], [0.0, 7.0]]])
    labels = torch.tensor([[-100, 1, 0], [-100, -100, 1]])
    weights = torch.tensor([2.0, -0.5])
    return logits, labels, weights


def test_the_weighted_nll_is_the_hand_computation():
    logits, labels, weights = _hand_batch()
    out = weighted_nll_kl(logits, labels, weights)
    expected = -(2.0 * (math.log(0.5) + math.log(0.75)) - 0.5 * math.log(0.25)) / 3
    assert math.isclose(out.weighted_nll.item(), expected, rel_tol=1e-6)
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-6) and out.kl.item() == 0.0


def test_the_kl_term_is_the_hand_computation_and_beta_weighs_it():
    logits, labels, weights = _hand_batch()
    uniform = torch.zeros_like(logits)
    out = weighted_nll_kl(logits, labels, weights, uniform, beta=0.3)
    # KL([0.5, 0.5] || uniform) = 0; KL([0.75, 0.25] || uniform) at the two other counted positions.
    kl_skewed = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert math.isclose(out.kl.item(), 2 * kl_skewed / 3, rel_tol=1e-6)
    assert math.isclose(out.loss.item(), out.weighted_nll.item() + 0.3 * out.kl.item(), rel_tol=1e-6)


def test_the_kl_term_is_zero_when_the_policy_is_the_reference():
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    out = weighted_nll_kl(logits, labels, torch.tensor([0.7, -0.2]), logits.clone(), beta=1.0)
    assert abs(out.kl.item()) < 1e-6
    assert math.isclose(out.loss.item(), out.weighted_nll.item(), rel_tol=1e-5)


def test_unit_weights_without_kl_are_the_sft_loss():
    logits = torch.randn(2, 6, 13, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, 1, 2, 0, -100, -100]])
    out = weighted_nll_kl(logits, labels, torch.ones(2))
    sft = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, sft)
    out.loss.backward()
    assert logits.grad is not None and logits.grad[:, -1].abs().sum() == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"weights": torch.ones(3)}, "one score per example"),
    ({"labels": torch.zeros(2, 4, dtype=torch.long)}, "do not match"),
    ({"ref_logits": torch.zeros(2, 3, 3)}, "reference logits"),
    ({"beta": -0.1}, "beta must be >= 0"),
])
def test_bad_loss_input_is_refused(kwargs, message):
    logits, labels, weights = _hand_batch()
    args = {"logits": logits, "labels": labels, "weights": weights, **kwargs}
    with pytest.raises(ValueError, match=message):
        weighted_nll_kl(**args)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("alpha", 0.0, "alpha must be a finite number > 0"),
    ("alpha", float("inf"), "alpha must be a finite number > 0"),
    ("beta", -1.0, "beta must be a finite number >= 0"),
    ("beta", True, "beta must be a finite number >= 0"),
])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        ProcessConfig(**{field: value})
    assert ProcessConfig(beta=0.0).beta == 0.0


def _examples():
    out = []
    for i in range(4):
        a, b = i + 2, i + 5
        question = f"Sara has {a} apples and buys {b} more. How many apples does she have?"
        first = f"# She has {a} apples.\napples = {a}"
        out += [
            ProcessExample(f"p{i}", question, (), first, 0.5, False, 1),
            ProcessExample(f"p{i}", question, (first,), f"# She buys {b} more.\ntotal = apples * {b}", -0.75, False, 1),
            ProcessExample(f"p{i}", question, (first, f"# She buys {b} more.\ntotal = apples + {b}"),
                           f"The answer is \\boxed{{{a + b}}}.", 1.0, True, 1),
        ]
    return out


def test_the_process_set_renders_the_policy_prompt_after_the_prefix(tmp_path):
    from rstar_core.steps import get_format

    info = write_process_dataset(_examples(), tmp_path / "ps", round=1, sources={"run": "x"})
    data, loaded = load_training_set(tmp_path / "ps", "process")
    assert loaded.manifest == json.loads((tmp_path / "ps" / MANIFEST).read_text()) == info.manifest
    assert info.manifest["counts"] == {"examples": 12, "problems": 4, "positive": 8, "negative": 4}
    fmt = get_format("sft")
    row = data[1]
    assert row["prompt"] == fmt.render_prompt(_examples()[1].question, _examples()[1].prefix)
    assert row["completion"] == _examples()[1].step + "\n" and row["score"] == -0.75 and row["depth"] == 1
    assert data[2]["completion"].endswith(fmt.end_of_turn) and data[2]["final"] is True
    with pytest.raises(ValueError, match="no process-supervision steps"):
        write_process_dataset([], tmp_path / "empty", round=1, sources={})
    bad = ProcessExample("p", "q?", (), "x = 1", float("nan"), False, 1)
    with pytest.raises(ValueError, match="not a finite number"):
        write_process_dataset([bad], tmp_path / "bad", round=1, sources={})
    with pytest.raises(ValueError, match="is a 'process' set, not 'sft'"):
        load_training_set(tmp_path / "ps", "sft")


@pytest.mark.slow
def test_a_round_trains_from_the_previous_policy_logs_its_terms_and_loads(model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rstar_trainer.process_trainer import train_process

    write_process_dataset(_examples(), tmp_path / "ps", round=1, sources={})
    config = ProcessConfig(learning_rate=1e-4, max_steps=2, batch_size=2, grad_accum=1, max_length=256,
                           save_steps=1, save_total_limit=3, threads=2, alpha=2.0, beta=0.5)
    metrics = train_process(model_dir, tmp_path / "ps", tmp_path / "out", tmp_path / "work", config,
                            progress_bar=False)
    assert metrics["kind"] == "process" and metrics["steps"] == 2 and metrics["examples"] == 12
    assert metrics["alpha"] == 2.0 and metrics["beta"] == 0.5
    assert math.isfinite(metrics["weighted_nll"]) and metrics["kl"] >= 0
    history = json.loads((tmp_path / "work" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "kl" in entry]
    # The first step starts at the reference itself: no divergence but rounding (the policy's
    # forward with gradients and the reference's without may take other bf16 kernels). The
    # second has moved away.
    assert len(steps) == 2 and 0 <= steps[0]["kl"] < 0.01 and steps[1]["kl"] > 10 * steps[0]["kl"]
    assert all(math.isclose(e["loss"], e["weighted_nll"] + 0.5 * e["kl"], rel_tol=1e-3, abs_tol=1e-4)
               for e in steps)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(load_file(str(Path(model_dir) / "model.safetensors"))[name],
                           load_file(str(tmp_path / "out" / "model.safetensors"))[name])
    record = json.loads((tmp_path / "out" / "rstar_training.json").read_text())
    assert record["config"]["beta"] == 0.5 and record["dataset"]["kind"] == "process"
    assert record["base_model"] == str(model_dir)
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
