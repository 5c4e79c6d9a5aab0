"""The process preference model: head, save/load, the RewardModel port and its batching."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math

import pytest
import torch

from rstar_core.ports import RewardModel, ScoringItem
from rstar_models.hardware import preferred_dtype
from rstar_reward import (
    MANIFEST_FILE,
    VALUE_HEAD_FILE,
    PPMRewardModel,
    ProcessPreferenceModel,
    build_ppm_dir,
    pairwise_loss,
)
from tools import scratch_dir

logger = logging.getLogger(__name__)

QUESTION = "Tom has 3 boxes with 4 pens in each box. He gives away 5 pens. How many pens are left?"
ITEMS = [
    ScoringItem(QUESTION, ()),
    ScoringItem(QUESTION, ("# There are 3 boxes with 4 pens each.\npens = 3 * 4",)),
    ScoringItem(
        QUESTION,
        (
            "# There are 3 boxes with 4 pens each.\npens = 3 * 4",
            "# He gives away 5 pens.\nleft = pens - 5",
            "# Print the answer.\nprint(left)\nOutput: 7",
            "The answer is \\boxed{7}.",
        ),
    ),
    ScoringItem(QUESTION, ("# He gives away 5 pens.\nleft = 3 + 4 + 5",)),
    ScoringItem("What is 2 + 2?", ("# Add.\nprint(2 + 2)\nOutput: 4", "The answer is \\boxed{4}.")),
]


def _render(rm: PPMRewardModel, items=ITEMS) -> list[str]:
    return [rm.render(item) for item in items]


@pytest.fixture(scope="module")
def ppm_dir(model_dir, tmp_path_factory):
    """An untrained PPM saved from the policy (bf16, as stored)."""
    with scratch_dir(tmp_path_factory, "ppm") as root:
        yield build_ppm_dir(model_dir, root / "ppm", seed=0)


@pytest.fixture(scope="module")
def ppm32(ppm_dir) -> ProcessPreferenceModel:
    """The PPM in float32: batch/padding equivalence is checked without bf16 noise."""
    return ProcessPreferenceModel.from_pretrained(ppm_dir, dtype="float32").eval()


@pytest.fixture(scope="module")
def reference_scores(ppm32) -> list[float]:
    """Each item scored alone (batch of one, no padding)."""
    rm = PPMRewardModel(ppm32, model_version="test")
    out = []
    for text in _render(rm):
        with torch.inference_mode():
            enc = ppm32.encode([text])
            out.append(ppm32(enc["input_ids"], enc["attention_mask"]).score.item())
    return out


def test_pairwise_loss_values():
    zero = torch.zeros(3)
    assert pairwise_loss(zero, zero).item() == pytest.approx(math.log(2))
    pos, neg = torch.tensor([2.0, 0.5]), torch.tensor([0.0, 1.0])
    expected = (-math.log(1 / (1 + math.exp(-2.0))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    assert pairwise_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        pairwise_loss(torch.zeros(2), torch.zeros(3))


@pytest.mark.slow
def test_port_scores_in_range_and_ordered(ppm32, reference_scores):
    rm = PPMRewardModel(ppm32, model_version="v-test")
    assert isinstance(rm, RewardModel)
    assert rm.model_version == "v-test"

    async def main():
        try:
            return await rm.score(ITEMS), await rm.score([])
        finally:
            await rm.close()

    scores, empty = asyncio.run(main())
    assert empty == []
    assert len(scores) == len(ITEMS)
    assert all(math.isfinite(s) and -1.0 <= s <= 1.0 for s in scores)
    # One padded batch gives the same scores as one item at a time.
    assert scores == pytest.approx(reference_scores, abs=1e-5)
    assert rm.stats.forwards == 1 and rm.stats.batch_sizes == {len(ITEMS): 1}


@pytest.mark.slow
def test_padding_side_does_not_change_scores(ppm32, reference_scores):
    texts = _render(PPMRewardModel(ppm32, model_version="test"))
    with torch.inference_mode():
        out = {}
        for side in ("left", "right"):
            enc = ppm32.encode(texts, padding_side=side)
            assert enc["attention_mask"].min() == 0  # the items really are padded
            out[side] = ppm32(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(out["left"].raw, out["right"].raw, atol=1e-5, rtol=0)
    assert out["left"].score.tolist() == pytest.approx(reference_scores, abs=1e-5)
    torch.testing.assert_close(out["right"].score, torch.tanh(out["right"].raw))


@pytest.mark.slow
def test_truncation_keeps_the_end(ppm32):
    text = _render(PPMRewardModel(ppm32, model_version="test"))[2]
    full = ppm32.encode([text])["input_ids"][0]
    cut = ppm32.encode([text], max_length=16)["input_ids"][0]
    assert cut.tolist() == full[-16:].tolist()


@pytest.mark.slow
def test_save_load_round_trip_is_exact(model_dir, ppm_dir, tmp_path):
    manifest = json.loads((ppm_dir / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1
    assert manifest["hidden_size"] == 576
    assert manifest["head_dtype"] == "float32"
    assert manifest["base_model"] == str(model_dir)

    first = ProcessPreferenceModel.from_pretrained(ppm_dir).eval()
    assert first.backbone.dtype == torch.bfloat16  # "auto" keeps the stored dtype
    # The head init is reproducible: the same seed draws the same head.
    fresh = ProcessPreferenceModel.from_policy(model_dir, seed=0)
    assert torch.equal(fresh.value_head.weight, first.value_head.weight)
    assert torch.count_nonzero(first.value_head.bias) == 0
    assert 0.5e-3 < first.value_head.weight.std().item() < 2e-3
    del fresh

    second_dir = first.save_pretrained(tmp_path / "again")
    second = ProcessPreferenceModel.from_pretrained(second_dir).eval()
    assert second.base_model == str(model_dir)
    texts = ["# Set x.\nx = 1\nprint(x)\nOutput: 1", "The answer is \\boxed{7}."]
    with torch.inference_mode():
        a = first(**_ids(first.encode(texts)))
        b = second(**_ids(second.encode(texts)))
    assert torch.equal(a.raw, b.raw)
    assert torch.equal(a.score, b.score)


@pytest.mark.slow
def test_served_ppm_computes_in_the_machines_preferred_dtype(ppm_dir):
    served = PPMRewardModel.from_dir(ppm_dir)
    assert served.model.backbone.dtype == getattr(torch, preferred_dtype())
    assert PPMRewardModel.from_dir(ppm_dir, dtype="float32").model.backbone.dtype == torch.float32


def _ids(enc):
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_missing_files_are_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / VALUE_HEAD_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match=MANIFEST_FILE):
        ProcessPreferenceModel.from_pretrained(tmp_path)
    (tmp_path / VALUE_HEAD_FILE).unlink()
    (tmp_path / MANIFEST_FILE).write_text("{}")
    with pytest.raises(ValueError, match=VALUE_HEAD_FILE):
        ProcessPreferenceModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        ProcessPreferenceModel.from_pretrained(tmp_path / "nope")


@pytest.mark.slow
def test_concurrent_calls_are_batched_in_order(ppm32, reference_scores):
    rm = PPMRewardModel(ppm32, model_version="test", max_batch_size=16, batch_window_s=0.05)
    # Each call asks for a different rotation of the items, so a mix-up would show.
    calls = [ITEMS[i:] + ITEMS[:i] for i in range(len(ITEMS))] + [[ITEMS[2]], ITEMS[:1]]
    expected = [reference_scores[i:] + reference_scores[:i] for i in range(len(ITEMS))]
    expected += [[reference_scores[2]], reference_scores[:1]]

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        try:
            results = await asyncio.gather(*(rm.score(items) for items in calls))
        finally:
            tick_task.cancel()
            await rm.close()
        return results, ticks

    results, ticks = asyncio.run(main())
    for got, want in zip(results, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    stats = rm.stats
    total = sum(len(c) for c in calls)
    assert stats.items == total
    assert stats.forwards == math.ceil(total / 16) < len(calls)
    assert max(stats.batch_sizes) == 16
    assert ticks >= 5, "the event loop was blocked during forwards"


@pytest.mark.slow
def test_large_call_is_split_and_close_stops(ppm32, reference_scores):
    rm = PPMRewardModel(ppm32, model_version="test", max_batch_size=2, batch_window_s=0.0)

    async def main():
        scores = await rm.score(ITEMS)
        await rm.close()
        with pytest.raises(RuntimeError, match="closed"):
            await rm.score(ITEMS[:1])
        return scores

    scores = asyncio.run(main())
    assert scores == pytest.approx(reference_scores, abs=1e-5)
    assert rm.stats.batch_sizes == {2: 2, 1: 1}


@pytest.mark.slow
def test_pairwise_training_moves_the_head(ppm32):
    """Trainer sanity: a few head-only steps on two fixed pairs lower the BT loss."""
    # Shares the frozen backbone; trains a copy of the head.
    head = copy.deepcopy(ppm32.value_head)
    trainee = ProcessPreferenceModel(ppm32.backbone, head, ppm32.tokenizer, base_model="test")
    initial = {k: v.clone() for k, v in trainee.value_head.state_dict().items()}
    pos = ["# 3 boxes of 4 pens.\npens = 3 * 4", "# He gives away 5.\nleft = pens - 5"]
    neg = ["# 3 boxes of 4 pens.\npens = 3 + 4", "# He gives away 5.\nleft = pens + 5"]
    pos_enc, neg_enc = _ids(trainee.encode(pos)), _ids(trainee.encode(neg))
    optimizer = torch.optim.Adam(trainee.value_head.parameters(), lr=1e-2)
    trainee.backbone.requires_grad_(False)
    losses = []
    try:
        for step in range(5):
            loss = pairwise_loss(trainee(**pos_enc).raw, trainee(**neg_enc).raw)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            logger.info("step %d pairwise loss %.4f", step, losses[-1])
    finally:
        trainee.backbone.requires_grad_(True)
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)  # near-zero head at init
    assert losses[-1] < losses[0] - 0.01
    assert not torch.equal(initial["weight"], trainee.value_head.weight)


@pytest.mark.slow
def test_gradient_checkpointing_reaches_the_backbone(ppm_dir):
    # transformers' Trainer calls this when a recipe sets gradient_checkpointing (paper.yaml).
    ppm = ProcessPreferenceModel.from_pretrained(ppm_dir, dtype="float32")
    ppm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert ppm.backbone.is_gradient_checkpointing
