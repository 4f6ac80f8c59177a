"""Entropy bonus: L - coef * H on valid tokens, gradient through H (algorithms.md section 5)."""

import pytest
import torch

from creditrl.algorithms import REGULARIZERS
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.entropy import EntropyBonusConfig


def test_entropy_bonus_value_and_gradient_from_logits():
    logits = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]], dtype=torch.float64, requires_grad=True)
    p = torch.softmax(logits, -1)
    entropy = -(p * torch.log(p)).sum(-1)  # [1, 2]
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    inputs = LossInputs(logprobs=torch.zeros(1, 2), old_logprobs=torch.zeros(1, 2), advantages=torch.zeros(1, 2),
                        mask=mask, entropy=entropy)
    part = REGULARIZERS.build("entropy_bonus", EntropyBonusConfig(coef=0.01))
    base = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    out, metrics = part(inputs, base)
    h0 = entropy[0, 0].item()
    torch.testing.assert_close(out, torch.tensor([[0.3 - 0.01 * h0, 0.7]], dtype=torch.float64))
    assert metrics["actor/entropy_bonus"].item() == pytest.approx(h0)
    out.sum().backward()
    # d(-coef H)/dz = coef * p * (log p + H)  for the valid token; nothing from the masked one
    z = logits.detach()[0, 0]
    q = torch.softmax(z, -1)
    expected = 0.01 * q * (torch.log(q) + h0)
    torch.testing.assert_close(logits.grad[0, 0], expected)
    assert torch.all(logits.grad[0, 1] == 0)


def test_entropy_bonus_needs_entropy():
    part = REGULARIZERS.build("entropy_bonus", EntropyBonusConfig())
    assert part.needs == frozenset({"entropy"})
    inputs = LossInputs(logprobs=torch.zeros(1, 1), old_logprobs=torch.zeros(1, 1), advantages=torch.zeros(1, 1),
                        mask=torch.ones(1, 1))
    with pytest.raises(ValueError, match="entropy"):
        part(inputs, torch.zeros(1, 1))
