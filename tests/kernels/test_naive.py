"""The naive (materialised) backend against hand-computed values and the spec's float64 test vectors.

It is the float64 reference of the chunked and Triton tests, so it is itself pinned here to independent numbers.
"""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.kernels import LpRegProxy, linear_token_stats
from .helpers import explicit_row_stats, make_inputs


def _logits_as_inputs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden = logits, weight = I, so that hidden @ weight.T reproduces the given logits exactly."""
    v = logits.shape[1]
    return logits.double().clone().requires_grad_(), torch.eye(v, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_naive_matches_explicit_formulas(temperature):
    inp = make_inputs(4, 3, 7, seed=3)
    stats = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], temperature=temperature,
                               want=("sum_p2", "sum_p2_z", "max_logit", "argmax"), backend="naive")
    logits = (inp["hidden"] @ inp["weight"].T).detach() / temperature
    for i in range(4):
        row = logits[i].tolist()
        ref = explicit_row_stats(row, int(inp["targets"][i]))
        for name, value in ref.items():
            assert getattr(stats, name)[i].item() == pytest.approx(value, rel=1e-12, abs=1e-12), name
        assert stats.max_logit[i].item() == pytest.approx(max(row))
        assert int(stats.argmax[i]) == row.index(max(row))


def test_lp_reg_spec_vector():
    """algorithms-token-level.md §12.7: z = [5, 3, 1, 0, -2], T = 1, kappa = 0.02."""
    hidden, weight = _logits_as_inputs(torch.tensor([[5.0, 3, 1, 0, -2], [5.0, 3, 1, 0, -2]]))
    targets = torch.tensor([1, 2])
    stats = linear_token_stats(hidden, weight, targets, lp_reg=LpRegProxy(threshold=0.02), backend="naive",
                               want=("logp", "proxy_logp", "proxy_kl"))
    assert stats.logp[0].item() == pytest.approx(-2.149541, abs=1e-6)
    assert stats.proxy_logp[0].item() == pytest.approx(-2.126928, abs=1e-6)
    assert bool(stats.target_in_proxy[0]) and not bool(stats.target_in_proxy[1])
    assert stats.proxy_logp[1].item() == -math.inf
    # kept set {0, 1}: proxy mass log(e^5 + e^3), and KL(q || p) = -log(pi_0 + pi_1)
    assert stats.proxy_log_mass[0].item() == pytest.approx(math.log(math.exp(5) + math.exp(3)), rel=1e-12)
    assert stats.proxy_kl[0].item() == pytest.approx(-math.log(0.861103 + 0.116538), abs=1e-5)
    # sampled-token k3 of the reference on these numbers: KL = 0.000258
    d = stats.proxy_logp[0].item() - stats.logp[0].item()
    assert math.exp(d) - d - 1 == pytest.approx(0.000258, abs=1e-6)


def test_lp_reg_soft_filtering_uses_row_minimum():
    hidden, weight = _logits_as_inputs(torch.tensor([[5.0, 3, 1, 0, -2]]))
    stats = linear_token_stats(hidden, weight, torch.tensor([2]), backend="naive",
                               lp_reg=LpRegProxy(threshold=0.02, soft=True))
    filled = [5.0, 3.0, -2.0, -2.0, -2.0]
    mass = math.log(sum(math.exp(z) for z in filled))
    assert stats.proxy_log_mass[0].item() == pytest.approx(mass, rel=1e-12)
    assert stats.proxy_logp[0].item() == pytest.approx(-2.0 - mass, rel=1e-12)
    assert stats.proxy_kl is None


def test_tdpo_spec_vector():
    """algorithms-token-level.md §15.2: per-token KL(pi_ref || pi_theta) summed into D_SeqKL, and M(y)."""
    pol = torch.tensor([[1, 0, -1], [0.5, 0.2, 0.9], [0, 1, 0], [-0.2, 0.4, 0.1]], dtype=torch.float64)
    ref = torch.tensor([[0.8, 0.1, -0.5], [0.3, 0.3, 0.3], [0.2, 0.6, 0.1], [0, 0.9, -0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1])  # chosen [0, 2], rejected [1, 1]
    hidden, weight = _logits_as_inputs(pol)
    ref_pair = (ref, torch.eye(3, dtype=torch.float64))
    stats = linear_token_stats(hidden, weight, labels, ref=ref_pair, want=("logp", "ref_kl"), backend="naive")
    ref_stats = linear_token_stats(ref, torch.eye(3, dtype=torch.float64), labels, backend="naive")
    kl, m = stats.ref_kl, stats.logp - ref_stats.logp
    assert kl[:2].sum().item() == pytest.approx(0.0705235094, abs=1e-9)
    assert kl[2:].sum().item() == pytest.approx(0.1015436759, abs=1e-9)
    assert m[:2].sum().item() == pytest.approx(0.4881868874, abs=1e-9)
    assert m[2:].sum().item() == pytest.approx(-0.0218568278, abs=1e-9)


def test_naive_proxy_kl_gradient_is_p_minus_q():
    """kernels.md §6.2: d KL(q || p) / dz = p - q (q = p restricted to K and renormalised)."""
    inp = make_inputs(3, 4, 9, seed=5, scale=2.0)
    t = 0.9
    stats = linear_token_stats(inp["hidden"], inp["weight"], inp["targets"], temperature=t, backend="naive",
                               lp_reg={"threshold": 0.1})
    (grad_h,) = torch.autograd.grad(stats.proxy_kl.sum(), inp["hidden"])
    z = (inp["hidden"] @ inp["weight"].T).detach() / t
    p = torch.softmax(z, -1)
    keep = torch.softmax(z * t, -1) >= 0.1 * torch.softmax(z * t, -1).max(-1, keepdim=True).values  # T_th = 1
    q = torch.where(keep, p, torch.zeros_like(p))
    q = q / q.sum(-1, keepdim=True)
    expected = ((p - q) / t) @ inp["weight"].detach()
    torch.testing.assert_close(grad_h, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.proxy_kl, -torch.log(torch.where(keep, p, 0).sum(-1)), rtol=1e-10, atol=1e-12)
