"""STEER token weights (algorithms-token-level.md §9) against the spec vector and a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.algorithms import Algorithm, AlgorithmConfig
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.ppo_clip import PPOClipConfig
from creditrl.algorithms.steer import SteerConfig, SteerWeight, steer_omega, steer_stats, steer_weights
from creditrl.registry import PartSpec

# §9.6: A, q (old), p (current), H (old)
A = [1.0, 1.0, -0.5, 0.0]
Q = [0.9, 0.1, 0.5, 0.3]
P = [0.9, 0.12, 0.45, 0.3]
H = [0.4, 2.0, 1.0, 1.5]


def spec_inputs(**kw) -> LossInputs:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return LossInputs(logprobs=t(P).log().requires_grad_(), old_logprobs=t(Q).log(), advantages=t(A),
                      mask=torch.ones(1, 4, dtype=torch.float64), old_entropy=t(H), **kw)


def reference_weights(a, q, p, h, m, mode, w_min, w_max, floor=0.02):
    """Plain-Python STEER weights written from the formula (float64)."""
    omegas = []
    for ai, qi, pi, hi in zip(a, q, p, h):
        x = min(max(pi, 1e-8), 1 - 1e-8)
        qb = min(max(qi, 1e-8), 1.0)
        om = ai / qb * x * (1 - x) * (math.log(x) + hi)
        omegas.append(om if math.isfinite(om) else 0.0)
    absv = [abs(o) for o, mi in zip(omegas, m) if mi]
    if not absv:
        return [0.0] * len(a), omegas
    lo, hi_ = min(absv), max(absv)
    out = []
    for o, mi in zip(omegas, m):
        if not mi:
            out.append(0.0)
        elif mode == "exp":
            k = -math.log(w_min) / max(hi_, floor)
            out.append(min(max(math.exp(-k * abs(o)), w_min), 1.0))
        elif hi_ == lo:
            out.append((w_min + w_max) / 2)
        else:
            out.append(min(max(w_max - (abs(o) - lo) * (w_max - w_min) / (hi_ - lo), w_min), w_max))
    return out, omegas


def test_spec_vector_omega_and_weights():
    inp = spec_inputs()
    omega = steer_omega(inp.logprobs, inp.old_logprobs, inp.advantages, inp.old_entropy)
    assert omega[0].tolist() == pytest.approx([0.029464, -0.126998, -0.049869, 0.0], abs=1e-6)
    stats = steer_stats(omega, inp.mask)
    w_exp = steer_weights(omega, inp.mask, stats, "exp", 0.8)
    w_lin = steer_weights(omega, inp.mask, stats, "linear", 0.8, 1.2)
    assert w_exp[0].tolist() == pytest.approx([0.949547, 0.8, 0.916106, 1.0], abs=1e-6)
    assert w_lin[0].tolist() == pytest.approx([1.107199, 0.8, 1.042929, 1.2], abs=1e-6)
    assert -math.log(0.8) / stats.a_max == pytest.approx(1.757059, abs=1e-6)  # k of exp mode


def test_spec_vector_token_mean_loss_through_algorithm():
    cfg = AlgorithmConfig(policy_loss=PartSpec("ppo_clip", PPOClipConfig(0.2, 0.28, 10.0)),
                          token_weights=[PartSpec("steer", SteerConfig())])
    loss, metrics = Algorithm(cfg).loss(spec_inputs())
    assert loss.item() == pytest.approx(-0.374325, abs=1e-6)
    assert metrics["steer/weight_min"] == pytest.approx(0.8)
    assert metrics["steer/omega_abs_max"] == pytest.approx(0.126998, abs=1e-6)


@pytest.mark.parametrize("mode,w_min,w_max", [("exp", 0.8, 1.2), ("exp", 0.5, 1.0), ("linear", 0.8, 1.2)])
def test_random_inputs_match_the_float64_reference(mode, w_min, w_max):
    g = torch.Generator().manual_seed(3)
    B, T = 3, 7
    a = torch.randn(B, T, generator=g, dtype=torch.float64)
    q = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.98 + 0.01
    p = (q * torch.exp(0.3 * torch.randn(B, T, generator=g, dtype=torch.float64))).clamp(1e-4, 0.999)
    h = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    m = (torch.rand(B, T, generator=g) > 0.3).double()
    part = SteerWeight(SteerConfig(mode=mode, w_min=w_min, w_max=w_max))
    w, new_mask, metrics = part(LossInputs(p.log(), q.log(), a * m, m, old_entropy=h))
    ref, _ = reference_weights((a * m).flatten().tolist(), q.flatten().tolist(), p.flatten().tolist(),
                               h.flatten().tolist(), m.flatten().tolist(), mode, w_min, w_max)
    assert new_mask is None
    assert w.flatten().tolist() == pytest.approx(ref, abs=1e-12)
    assert not w.requires_grad
    assert metrics["steer/weight_mean"] == pytest.approx(sum(ref) / m.sum().item(), abs=1e-12)


def test_exp_floor_keeps_weights_near_one_when_every_omega_is_tiny():
    omega = torch.tensor([[1e-4, -2e-4, 0.0]], dtype=torch.float64)
    m = torch.ones(1, 3, dtype=torch.float64)
    w = steer_weights(omega, m, steer_stats(omega, m), "exp", 0.8)
    k = -math.log(0.8) / 0.02
    assert w[0].tolist() == pytest.approx([math.exp(-k * 1e-4), math.exp(-k * 2e-4), 1.0], abs=1e-15)


def test_linear_mode_with_equal_omegas_gives_the_midpoint_and_padding_gets_zero():
    omega = torch.tensor([[0.3, -0.3, 5.0]], dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    w = steer_weights(omega, m, steer_stats(omega, m), "linear", 0.8, 1.2)
    assert w[0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_empty_micro_batch_and_single_token():
    part = SteerWeight(SteerConfig())
    z = torch.zeros(2, 3, dtype=torch.float64)
    w, _, metrics = part(LossInputs(z - 1.0, z - 1.0, z, z, old_entropy=z + 1.0))
    assert torch.equal(w, z)
    single = LossInputs(torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.4)]]), torch.tensor([[2.0]]),
                        torch.ones(1, 1), old_entropy=torch.tensor([[0.1]]))
    w, _, _ = part(single)
    assert w.item() == pytest.approx(0.8, abs=1e-6)  # the only token is the max |Omega| (>= 0.02): lambda_min


def test_non_finite_omega_becomes_zero():
    lp = torch.tensor([[math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    h = torch.tensor([[float("inf"), 1.0]], dtype=torch.float64)
    omega = steer_omega(lp, lp, torch.ones(1, 2, dtype=torch.float64), h)
    assert omega[0, 0].item() == 0.0 and math.isfinite(omega[0, 1].item())


def test_mini_batch_scope_uses_the_scope_extrema():
    g = torch.Generator().manual_seed(5)
    B, T = 4, 5
    q = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a = torch.randn(B, T, generator=g, dtype=torch.float64)
    h = torch.rand(B, T, generator=g, dtype=torch.float64)
    m = torch.ones(B, T, dtype=torch.float64)
    full = LossInputs(q.log(), q.log(), a, m, old_entropy=h)
    part = SteerWeight(SteerConfig())
    w_full, _, _ = part(full)
    part.scope = "mini_batch"
    part.prepare(full)
    w_half, _, _ = part(LossInputs(q[:2].log(), q[:2].log(), a[:2], m[:2], old_entropy=h[:2]))
    assert torch.allclose(w_half, w_full[:2], atol=0, rtol=0)
    part.scope = "micro_batch"
    w_local, _, _ = part(LossInputs(q[:2].log(), q[:2].log(), a[:2], m[:2], old_entropy=h[:2]))
    assert not torch.allclose(w_local, w_full[:2])  # micro-batch statistics differ (reference behaviour)


def test_gradient_flows_through_the_loss_only():
    cfg = AlgorithmConfig(policy_loss=PartSpec("ppo_clip", PPOClipConfig(0.2, 0.28, 10.0)),
                          token_weights=[PartSpec("steer", SteerConfig())])
    alg = Algorithm(cfg)
    base = spec_inputs()
    w, _, _ = SteerWeight(SteerConfig())(base)

    def f(lp):
        return alg.loss(LossInputs(lp, base.old_logprobs, base.advantages, base.mask, old_entropy=base.old_entropy))[0]

    lp = base.logprobs.detach().clone().requires_grad_()
    # the weights are held fixed (detached); with r inside the clip range dL/dl = -w A r / N
    (grad,) = torch.autograd.grad(f(lp), lp)
    r = (lp - base.old_logprobs).exp()
    assert torch.allclose(grad, -w * base.advantages * r / 4, atol=1e-12)
    # (no numerical gradcheck of the composed loss: STEER's weights depend on l by design and are detached)


def test_config_errors():
    with pytest.raises(ValueError, match="w_min"):
        SteerConfig(w_min=0.0)
    with pytest.raises(ValueError, match="w_min <= w_max"):
        SteerConfig(mode="linear", w_min=1.3, w_max=1.2)
    with pytest.raises(ValueError, match="mode"):
        SteerConfig(mode="cubic")
    with pytest.raises(ValueError, match="old_entropy"):
        SteerWeight(SteerConfig())(LossInputs(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1),
                                              torch.ones(1, 1)))
