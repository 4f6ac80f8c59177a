"""KL estimators k1 / k2 / k3 / abs and the straight-through "+" variants: values AND gradients
(algorithms.md 4.1, 4.2), as a loss term and as a reward penalty."""

import math

import pytest
import torch

from creditrl.algorithms import REGULARIZERS
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.kl import KL_ESTIMATORS, KLLossConfig, kl_penalty, kl_reward_penalty


def reference_value(l: float, ref: float, name: str) -> float:
    d = l - ref
    base = name.rstrip("+")
    if base == "k1":
        return d
    if base == "abs":
        return abs(d)
    if base == "k2":
        return 0.5 * d * d
    u = max(-20.0, min(20.0, ref - l))
    return max(-10.0, min(10.0, math.exp(u) - u - 1.0))


def reference_grad(l: float, ref: float, name: str) -> float:
    """d value / d l. The '+' variants carry k2's gradient d = l - ref."""
    d = l - ref
    if name.endswith("+") or name == "k2":
        return d
    if name == "k1":
        return 1.0
    if name == "abs":
        return math.copysign(1.0, d)
    return 1.0 - math.exp(ref - l)  # k3 inside the clamps


@pytest.mark.parametrize("name,expected", [("k1", 0.5), ("k2", 0.125), ("k3", 0.1065306597), ("abs", 0.5)])
def test_spec_vector(name, expected):
    v = kl_penalty(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-1.5], dtype=torch.float64), name)
    assert v.item() == pytest.approx(expected, abs=1e-10)
    plus = kl_penalty(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-1.5], dtype=torch.float64), name + "+")
    assert plus.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("name", KL_ESTIMATORS)
def test_values_and_gradients_on_random_inputs(name):
    gen = torch.Generator().manual_seed(0)
    ref = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    l = (ref + torch.randn(4, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    v = kl_penalty(l, ref, name)
    v.sum().backward()
    for i in range(4):
        for t in range(5):
            a, b = l[i, t].item(), ref[i, t].item()
            assert v[i, t].item() == pytest.approx(reference_value(a, b, name), abs=1e-12)
            assert l.grad[i, t].item() == pytest.approx(reference_grad(a, b, name), abs=1e-12)


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "abs"])
def test_gradcheck(name):
    gen = torch.Generator().manual_seed(1)
    ref = -torch.rand(3, 3, generator=gen, dtype=torch.float64)
    # d > 0: away from the kink of |d|
    l = (ref + 0.3 + torch.rand(3, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    torch.autograd.gradcheck(lambda x: kl_penalty(x, ref, name), (l,))


def test_k3_is_clamped_and_aliases_resolve():
    l, ref = torch.tensor([-30.0]), torch.tensor([0.0])
    assert kl_penalty(l, ref, "k3").item() == 10.0
    assert kl_penalty(l, ref, "low_var_kl").item() == 10.0
    assert kl_penalty(l, ref, "kl").item() == -30.0
    assert kl_penalty(l, ref, "mse").item() == 450.0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(l, ref, "full")
    with pytest.raises(ValueError, match="unknown KL estimator"):
        KLLossConfig(estimator="k4")


def test_kl_loss_regulariser_adds_coef_times_masked_kl():
    part = REGULARIZERS.build("kl_loss", KLLossConfig(coef=0.1, estimator="k2"))
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    inputs = LossInputs(logprobs=lp, old_logprobs=lp.detach(), advantages=torch.zeros(1, 2), mask=mask,
                        ref_logprobs=ref)
    out, metrics = part(inputs, torch.zeros(1, 2, dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[0.1 * 0.125, 0.0]], dtype=torch.float64))
    assert metrics["actor/kl_loss"].item() == pytest.approx(0.125)
    out.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.1 * 0.5, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="reference log-probs"):
        part(LossInputs(logprobs=lp, old_logprobs=lp, advantages=lp, mask=mask), torch.zeros(1, 2))


def test_kl_reward_penalty():
    rewards = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -0.5]], dtype=torch.float64)
    out, kl = kl_reward_penalty(rewards, old, ref, torch.ones(1, 2, dtype=torch.float64), 0.1, "k1")
    torch.testing.assert_close(kl, torch.tensor([[0.5, -0.5]], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[-0.05, 1.05]], dtype=torch.float64))
