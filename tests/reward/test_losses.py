"""The reward models' losses against hand computations (no model: plain tensors)."""

import math

import pytest
import torch

from rstar_reward import outcome_loss, pairwise_loss, q_value_loss


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_outcome_loss_is_binary_cross_entropy_of_the_raw_logit():
    raw, correct = [2.0, -1.0, 0.5], [1.0, 0.0, 0.0]
    expected = -(math.log(_sigmoid(2.0)) + math.log(1 - _sigmoid(-1.0)) + math.log(1 - _sigmoid(0.5))) / 3
    got = outcome_loss(torch.tensor(raw), torch.tensor(correct))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Integer labels straight from the dataset, and a bf16 forward (autocast), are accepted.
    assert outcome_loss(torch.tensor(raw, dtype=torch.bfloat16), torch.tensor([1, 0, 0])).dtype == torch.float32


def test_q_value_loss_is_mse_of_the_served_tanh_score():
    raw, q = [0.0, 1.0, -2.0], [0.5, 1.0, -0.25]
    expected = sum((math.tanh(r) - t) ** 2 for r, t in zip(raw, q)) / 3
    assert q_value_loss(torch.tensor(raw), torch.tensor(q)).item() == pytest.approx(expected, rel=1e-6)
    # A perfect prediction of Q costs nothing: the served score is the prediction.
    assert q_value_loss(torch.atanh(torch.tensor([0.3, -0.6])), torch.tensor([0.3, -0.6])).item() == pytest.approx(0)


def test_losses_push_the_right_way_and_check_shapes():
    raw = torch.zeros(2, requires_grad=True)
    outcome_loss(raw, torch.tensor([1.0, 0.0])).backward()
    assert raw.grad[0] < 0 < raw.grad[1]  # a step down the gradient raises the correct one's score
    raw = torch.zeros(1, requires_grad=True)
    q_value_loss(raw, torch.tensor([0.5])).backward()
    assert raw.grad[0] < 0
    assert pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(-math.log(_sigmoid(1.0)))
    for loss in (outcome_loss, q_value_loss):
        with pytest.raises(ValueError, match="shapes differ"):
            loss(torch.zeros(2), torch.zeros(3))
