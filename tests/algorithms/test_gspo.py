"""GSPO sequence-level ratio (algorithms.md 2.3, 2.11).

The loss uses a straight-through ratio (value s_i, gradient s_i grad(l_t)), so finite differences of the value
do not equal its autograd gradient by design; the gradient is checked against the formula instead of gradcheck.
"""

import math

import pytest
import torch

from creditrl.algorithms import POLICY_LOSSES
from creditrl.algorithms.aggregation import aggregate_loss
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.gspo import GSPOConfig, gspo_loss

LP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]]
OLD = [[-1.2, -0.4, -1.0], [-0.3, -0.2, -0.7]]
ADV = [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def reference(lp, old, adv, mask, lo, hi):
    """(per-token loss, per-token gradient d L / d l_t) from the formula."""
    loss, grad = [], []
    for lr, orow, ar, mr in zip(lp, old, adv, mask):
        n = sum(mr)
        s = math.exp(min(sum((a - b) * m for a, b, m in zip(lr, orow, mr)) / max(n, 1), 10.0))
        lrow, grow = [], []
        for a, m in zip(ar, mr):
            l1, l2 = -a * s, -a * min(max(s, 1 - lo), 1 + hi)
            lrow.append(max(l1, l2) * m)
            grow.append((-a * s if l1 >= l2 else 0.0) * m)
        loss.append(lrow)
        grad.append(grow)
    return loss, grad


def test_spec_vector():
    loss, metrics = gspo_loss(t64(LP), t64(OLD), t64(ADV), t64(MASK), 3e-4, 4e-4)
    assert loss[0, 0].item() == pytest.approx(-0.7408182207, abs=1e-10)
    assert loss[1, 0].item() == pytest.approx(0.9997, abs=1e-10)
    assert metrics["gspo/seq_ratio_mean"].item() == pytest.approx((0.7408182207 + 0.6065306597) / 2, abs=1e-10)
    # sequence 1 is clipped (s = 0.61 < 1 - 3e-4 with A < 0) on its two valid tokens
    assert metrics["pg_clipfrac"].item() == pytest.approx(2 / 5)


@pytest.mark.parametrize("lo,hi", [(3e-4, 4e-4), (0.2, 0.2)])
def test_random_values_and_gradients_match_formula(lo, hi):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(5, 6, generator=gen, dtype=torch.float64) * 2
    lp = (old + torch.randn(5, 6, generator=gen, dtype=torch.float64) * 0.05).requires_grad_()
    adv = torch.randn(5, 1, generator=gen, dtype=torch.float64).expand(5, 6)
    mask = torch.ones(5, 6, dtype=torch.float64)
    mask[1, 4:] = 0
    mask[3, 1:] = 0  # a single-token response
    mask[4] = 0  # an empty response
    loss, _ = gspo_loss(lp, old, adv, mask, lo, hi)
    loss.sum().backward()
    ref_loss, ref_grad = reference(lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), lo, hi)
    torch.testing.assert_close(loss, t64(ref_loss), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp.grad, t64(ref_grad), rtol=1e-12, atol=1e-12)


def test_seq_mean_token_mean_equals_sequence_level_objective():
    """With seq-mean-token-mean, GSPO's value is mean_i max(-A_i s_i, -A_i clip(s_i))."""
    loss, _ = gspo_loss(t64(LP), t64(OLD), t64(ADV), t64(MASK), 0.1, 0.1)
    value = aggregate_loss(loss, t64(MASK), "seq-mean-token-mean")
    s = [math.exp(-0.3), math.exp(-0.5)]
    per_seq = [max(-1 * s[0], -1 * min(max(s[0], 0.9), 1.1)), max(1 * s[1], 1 * min(max(s[1], 0.9), 1.1))]
    assert value.item() == pytest.approx(sum(per_seq) / 2, abs=1e-12)


def test_large_ratio_is_clamped_at_exp_10():
    loss, _ = gspo_loss(t64([[0.0]]), t64([[-50.0]]), t64([[-1.0]]), t64([[1.0]]), 0.2, 0.2)
    assert loss.item() == pytest.approx(math.exp(10.0))


def test_registered_part_and_validation():
    part = POLICY_LOSSES.build("gspo", GSPOConfig())
    loss, _ = part(LossInputs(logprobs=t64(LP), old_logprobs=t64(OLD), advantages=t64(ADV), mask=t64(MASK)))
    assert loss[1, 1].item() == pytest.approx(0.9997, abs=1e-10)
    with pytest.raises(ValueError, match="gspo.clip_low"):
        GSPOConfig(clip_low=1.0)
