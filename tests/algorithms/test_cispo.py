"""CISPO (algorithms.md 2.5): value -sg(w) A l and gradient -w A, with w = clip(r, 1 - eps_low, 1 + eps_high).

The weight is detached on purpose, so finite differences of the value differ from the autograd gradient; the
gradient is checked against the formula."""

import math

import pytest
import torch

from creditrl.algorithms import POLICY_LOSSES
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.cispo import CISPOConfig, cispo_loss


def reference_weight(lp: float, old: float, lo: float | None, hi: float) -> float:
    r = math.exp(max(-20.0, min(20.0, lp - old)))
    w = min(r, 1 + hi)
    return w if lo is None else max(w, 1 - lo)


@pytest.mark.parametrize("lo,hi", [(None, 0.2), (0.2, 0.28), (None, 4.0)])
def test_values_gradients_and_clipfrac_match_reference(lo, hi):
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    lp = (old + torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.6).requires_grad_()
    adv = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    mask = (torch.rand(4, 5, generator=gen) > 0.2).to(torch.float64)
    loss, metrics = cispo_loss(lp, old, adv, mask, lo, hi)
    loss.sum().backward()
    n_clipped, n = 0, 0
    for i in range(4):
        for t in range(5):
            a, b, m = lp[i, t].item(), old[i, t].item(), mask[i, t].item()
            w = reference_weight(a, b, lo, hi)
            assert loss[i, t].item() == pytest.approx(-w * adv[i, t].item() * a * m, abs=1e-12)
            assert lp.grad[i, t].item() == pytest.approx(-w * adv[i, t].item() * m, abs=1e-12)
            if m:
                n += 1
                n_clipped += int(abs(w - math.exp(a - b)) > 1e-15)
    assert metrics["pg_clipfrac"].item() == pytest.approx(n_clipped / n)


def test_clipped_tokens_keep_their_gradient():
    """PPO would give zero gradient at r = 3 > 1.2 with A > 0; CISPO keeps -1.2 * A."""
    lp = torch.tensor([[math.log(3.0)]], dtype=torch.float64, requires_grad=True)
    loss, _ = cispo_loss(lp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64),
                         torch.ones(1, 1, dtype=torch.float64), None, 0.2)
    loss.sum().backward()
    assert lp.grad.item() == pytest.approx(-1.2 * 2.0)


def test_no_lower_bound_by_default():
    lp = torch.tensor([[-5.0]], dtype=torch.float64)
    loss, metrics = cispo_loss(lp, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                               torch.ones(1, 1, dtype=torch.float64))
    assert loss.item() == pytest.approx(-math.exp(-5.0) * -5.0)
    assert metrics["pg_clipfrac"].item() == 0.0


def test_registered_part_and_validation():
    part = POLICY_LOSSES.build("cispo", CISPOConfig(clip_high=4.0))
    x = torch.full((1, 3), -1.0)
    loss, metrics = part(LossInputs(logprobs=x, old_logprobs=x, advantages=torch.ones(1, 3), mask=torch.ones(1, 3)))
    torch.testing.assert_close(loss, torch.ones(1, 3))  # -1 * 1 * (-1)
    assert metrics["cispo/weight_mean"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cispo.clip_low"):
        CISPOConfig(clip_low=-1.0)
    with pytest.raises(ValueError, match="cispo.clip_high"):
        CISPOConfig(clip_high=-1.0)
