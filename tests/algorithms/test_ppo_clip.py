"""PPO clip + dual clip, and DAPO clip-higher (ppo_clip with clip_high 0.28), against the spec vectors
(algorithms.md 2.1, 2.2, 2.11) and a scalar float64 reference."""

import math

import pytest
import torch

from creditrl.algorithms import POLICY_LOSSES
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.ppo_clip import PPOClipConfig, ppo_clip_loss

# algorithms.md 2.11 (DAPO: eps_low 0.2, eps_high 0.28, c 3)
LP = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]]
OLD = [[-1.2, -0.4, -1.0], [-0.3, -0.2, -0.7]]
ADV = [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def reference_token(lp: float, old: float, a: float, lo: float, hi: float, c: float | None) -> float:
    r = math.exp(max(-20.0, min(20.0, lp - old)))
    clipped = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
    if c is not None and a < 0:
        return min(clipped, -a * c)
    return clipped


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def test_spec_vector_per_token_loss():
    loss, metrics = ppo_clip_loss(t64(LP), t64(OLD), t64(ADV), t64(MASK), 0.2, 0.28, 3.0)
    expected = t64([[-1.2214027582, -0.9048374180, -0.3678794412], [1.0, 0.8, 0.0]])
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-10)
    # token (1,1): r = e^-1 < 0.8 with A < 0 -> the clipped term is active
    assert metrics["pg_clipfrac"].item() == pytest.approx(1 / 5)
    assert metrics["pg_clipfrac_lower"].item() == 0.0
    # ppo_kl = mean(l_old - l) over valid tokens
    assert metrics["ppo_kl"].item() == pytest.approx((-0.2 + 0.1 + 1.0 + 0.0 + 1.0) / 5)


@pytest.mark.parametrize("lo,hi,c", [(0.2, 0.2, 3.0), (0.2, 0.28, 10.0), (0.1, 0.3, None)])
def test_random_inputs_match_reference(lo, hi, c):
    gen = torch.Generator().manual_seed(1)
    lp = -torch.rand(5, 7, generator=gen, dtype=torch.float64) * 3
    old = lp + torch.randn(5, 7, generator=gen, dtype=torch.float64) * 0.8
    adv = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    mask = (torch.rand(5, 7, generator=gen) > 0.2).to(torch.float64)
    loss, _ = ppo_clip_loss(lp, old, adv, mask, lo, hi, c)
    ref = torch.tensor(
        [[reference_token(lp[i, t].item(), old[i, t].item(), adv[i, t].item(), lo, hi, c) * mask[i, t].item()
          for t in range(7)] for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)


def test_dual_clip_bounds_negative_advantage_loss():
    # A = -2, r = e^3 ~ 20 >> c = 3: unbounded PPO loss 40, dual clip caps it at -A c = 6 with zero gradient
    lp = t64([[0.0]]).requires_grad_()
    loss, metrics = ppo_clip_loss(lp, t64([[-3.0]]), t64([[-2.0]]), t64([[1.0]]), 0.2, 0.2, 3.0)
    assert loss.item() == pytest.approx(6.0)
    assert metrics["pg_clipfrac_lower"].item() == 1.0
    loss.sum().backward()
    assert lp.grad.item() == 0.0
    off, _ = ppo_clip_loss(t64([[0.0]]), t64([[-3.0]]), t64([[-2.0]]), t64([[1.0]]), 0.2, 0.2, None)
    assert off.item() == pytest.approx(2.0 * math.exp(3.0))


def test_gradient_matches_formula_and_gradcheck():
    gen = torch.Generator().manual_seed(2)
    old = -torch.rand(3, 4, generator=gen, dtype=torch.float64) * 2
    lp = (old + torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    adv = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.float64)
    mask[2, 3] = 0
    loss, _ = ppo_clip_loss(lp, old, adv, mask, 0.2, 0.28, 3.0)
    loss.sum().backward()
    for i in range(3):
        for t in range(4):
            r = math.exp(lp[i, t].item() - old[i, t].item())
            a = adv[i, t].item()
            unclipped = -a * r >= -a * min(max(r, 0.8), 1.28)  # the ratio term is the max
            dual = a < 0 and max(-a * r, -a * min(max(r, 0.8), 1.28)) > -a * 3.0
            g = -a * r if (unclipped and not dual) else 0.0
            assert lp.grad[i, t].item() == pytest.approx(g * mask[i, t].item(), abs=1e-12)
    torch.autograd.gradcheck(lambda x: ppo_clip_loss(x, old, adv, mask, 0.2, 0.28, 3.0)[0],
                             (lp.detach().requires_grad_(),))


def test_on_policy_gradient_is_reinforce():
    # r == 1: loss value -A, gradient -A (the clip is inactive at r = 1)
    lp = t64([[-0.7, -1.1]]).requires_grad_()
    adv = t64([[0.5, -2.0]])
    loss, _ = ppo_clip_loss(lp, lp.detach(), adv, t64([[1.0, 1.0]]))
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, -adv)


def test_single_token_and_empty_mask():
    loss, metrics = ppo_clip_loss(t64([[-1.0]]), t64([[-1.0]]), t64([[1.0]]), t64([[0.0]]))
    assert loss.item() == 0.0
    assert metrics["pg_clipfrac"].item() == 0.0 and metrics["ppo_kl"].item() == 0.0


def test_registered_dapo_configuration():
    part = POLICY_LOSSES.build("ppo_clip", PPOClipConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0))
    inputs = LossInputs(logprobs=t64(LP), old_logprobs=t64(OLD), advantages=t64(ADV), mask=t64(MASK))
    loss, _ = part(inputs)
    assert loss[0, 0].item() == pytest.approx(-1.2214027582, abs=1e-10)
    # with symmetric 0.2 the first token (r = 1.2214 > 1.2) is clipped: -1.2
    sym = POLICY_LOSSES.build("ppo_clip", PPOClipConfig())(inputs)[0]
    assert sym[0, 0].item() == pytest.approx(-1.2)


@pytest.mark.parametrize("kwargs,field", [({"clip_low": 1.5}, "clip_low"), ({"clip_high": -0.1}, "clip_high"),
                                          ({"dual_clip": 1.0}, "dual_clip")])
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PPOClipConfig(**kwargs)
