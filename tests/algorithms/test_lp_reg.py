"""Lp-Reg (algorithms-token-level.md §12): proxy, selection, loss replacement, gradients, metrics, kernel contract."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.algorithms import Algorithm, AlgorithmConfig
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.lp_reg import LpReg, LpRegConfig, lp_reg_loss, lp_reg_proxy_logprobs
from creditrl.algorithms.ppo_clip import PPOClipConfig
from creditrl.registry import PartSpec

Z = [5.0, 3.0, 1.0, 0.0, -2.0]


def test_spec_vector_proxy():
    z = torch.tensor([Z, Z], dtype=torch.float64)
    pi = torch.softmax(z[0], -1)
    assert pi.tolist() == pytest.approx([0.861103, 0.116538, 0.015772, 0.005802, 0.000785], abs=1e-6)
    assert 0.02 * pi.max().item() == pytest.approx(0.017222, abs=1e-6)
    proxy = lp_reg_proxy_logprobs(z, torch.tensor([1, 2]), 0.02)
    assert proxy[0].item() == pytest.approx(math.log(0.119203), abs=1e-6)
    assert proxy[0].item() == pytest.approx(-2.126928, abs=1e-6)
    assert proxy[1].item() == float("-inf")  # y = 2 is filtered
    kept = lp_reg_proxy_logprobs(z[:1].expand(5, 5), torch.arange(5), 0.02).exp()
    assert kept.tolist() == pytest.approx([0.880797, 0.119203, 0, 0, 0], abs=1e-6)


def test_proxy_fixed_rule_and_temperature():
    z = torch.tensor([[2.0, 1.0, 0.5, -3.0]], dtype=torch.float64)
    pi = torch.softmax(z, -1)[0]
    keep = pi >= 0.1
    t = 0.7
    expected = z[0, 1] / t - torch.logsumexp(z[0][keep] / t, 0)
    got = lp_reg_proxy_logprobs(z, torch.tensor([1]), 0.1, "fixed", t)
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)


def test_spec_vector_kl_value_and_gradient():
    lp = torch.tensor([[-2.149541]], dtype=torch.float64, requires_grad=True)
    proxy = torch.tensor([[-2.126928]], dtype=torch.float64)
    adv = torch.tensor([[-0.5]], dtype=torch.float64)
    selected = torch.tensor([[True]])
    base = torch.full((1, 1), 123.0, dtype=torch.float64)  # replaced, not added to
    loss, kl = lp_reg_loss(base, lp, lp.detach(), proxy, adv, selected, beta=1.0)
    assert kl.item() == pytest.approx(0.000258, abs=1e-6)
    assert loss.item() == pytest.approx(0.500258, abs=1e-6)
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert g.item() == pytest.approx(0.477130, abs=1e-6)
    (gk,) = torch.autograd.grad(lp_reg_loss(base, lp, lp.detach(), proxy, adv * 0, selected)[0].sum(), lp)
    assert gk.item() == pytest.approx(-0.022870, abs=1e-6)


def test_gradcheck_with_unselected_filtered_tokens():
    g = torch.Generator().manual_seed(0)
    lp = (torch.rand(2, 4, generator=g, dtype=torch.float64) * -3).requires_grad_()
    old = lp.detach() + 0.1 * torch.randn(2, 4, generator=g, dtype=torch.float64)
    proxy = lp.detach() + 0.5
    proxy[0, 1] = float("-inf")  # a filtered token: not selected, must not give NaN gradients
    adv = torch.randn(2, 4, generator=g, dtype=torch.float64)
    selected = torch.tensor([[True, False, True, False], [False, True, True, True]])

    def f(x):
        base = -adv * torch.exp(x - old) * 0.5
        return lp_reg_loss(base, x, old, proxy, adv, selected, beta=0.7)[0]

    assert torch.autograd.gradcheck(f, (lp,))
    (grad,) = torch.autograd.grad(f(lp).sum(), lp)
    assert torch.isfinite(grad).all()


def ref_lp_reg(loss, lp, old, proxy, adv, mask, neg_ratio, beta):
    """Plain-Python Lp-Reg over one micro-batch (float64): selection + replacement of §12.2."""
    n = len(lp)
    cand = [i for i in range(n) if mask[i] and adv[i] < 0]
    k = max(1, math.floor(len(cand) * neg_ratio))
    out = list(loss)
    selected = []
    if k > 1:
        bottom = sorted(cand, key=lambda i: lp[i])[:k]
        for i in bottom:
            if lp[i] < proxy[i]:
                d = proxy[i] - lp[i]
                kl = min(max(math.exp(d) - d - 1, -10), 10)
                out[i] = -adv[i] * math.exp(lp[i] - old[i]) + beta * kl
                selected.append(i)
    return [o * m for o, m in zip(out, mask)], selected


def lp_inputs(seed=1, B=3, T=8):
    g = torch.Generator().manual_seed(seed)
    lp = torch.rand(B, T, generator=g, dtype=torch.float64) * -4  # distinct values: no ties
    old = lp + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) > 0.2).double()
    proxy = lp + 0.2 + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)  # mostly above, some below
    proxy[torch.rand(B, T, generator=g) > 0.7] = float("-inf")
    return LossInputs(lp.requires_grad_(), old, adv * mask, mask, extras={"old_proxy_logp": proxy})


def test_regularizer_matches_reference_selection_and_replacement():
    inp = lp_inputs()
    base = (-inp.advantages * torch.exp(inp.logprobs - inp.old_logprobs)) * inp.mask
    part = LpReg(LpRegConfig(beta=1.0, neg_ratio=0.5))
    out, metrics = part(inp, base)
    ref, selected = ref_lp_reg(base.detach().flatten().tolist(), inp.logprobs.detach().flatten().tolist(),
                               inp.old_logprobs.flatten().tolist(), inp.extras["old_proxy_logp"].flatten().tolist(),
                               inp.advantages.flatten().tolist(), inp.mask.flatten().tolist(), 0.5, 1.0)
    assert 1 <= len(selected) < 4  # k = 4 bottom candidates, some dropped by the proxy filter
    assert out.detach().flatten().tolist() == pytest.approx(ref, abs=1e-12)
    assert metrics["lp_reg/coverage"] == pytest.approx(len(selected) / inp.mask.sum().item())
    assert metrics["lp_reg/gate_open"] == 1.0
    assert 0.0 <= metrics["lp_reg/filtered_frac"] <= 1.0


def test_gate_needs_k_above_one_and_positive_tokens_are_off_by_default():
    inp = lp_inputs()
    base = torch.zeros_like(inp.advantages)
    n_neg = int(((inp.advantages < 0) & (inp.mask > 0)).sum())
    ratio = 1.9 / n_neg  # floor(n * ratio) = 1: k = 1, the reference gate stays closed
    out, metrics = LpReg(LpRegConfig(neg_ratio=ratio))(inp, base)
    assert torch.equal(out.detach(), base)
    assert metrics["lp_reg/gate_open"] == 0.0 and metrics["lp_reg/coverage"] == 0.0
    flipped = LossInputs(inp.logprobs, inp.old_logprobs, -inp.advantages, inp.mask, extras=inp.extras)
    out, _ = LpReg(LpRegConfig(neg_ratio=0.0, pos_ratio=0.0))(flipped, base)
    assert torch.equal(out.detach(), base)
    out, metrics = LpReg(LpRegConfig(neg_ratio=0.0, pos_ratio=0.5))(flipped, base)
    assert metrics["lp_reg/coverage"] > 0  # rho_pos > 0 regularises positive-advantage tokens


def test_composed_with_unclipped_ppo_on_policy():
    """The reference setup: ppo clip 1.0/9.0 without dual clip, r = 1, token-mean over all valid tokens."""
    inp = lp_inputs(seed=3)
    on = LossInputs(inp.logprobs, inp.logprobs.detach(), inp.advantages, inp.mask, extras=inp.extras)
    cfg = AlgorithmConfig(policy_loss=PartSpec("ppo_clip", PPOClipConfig(0.999, 9.0, None)),
                          regularizers=[PartSpec("lp_reg", LpRegConfig(beta=1.0, neg_ratio=0.5))])
    loss, metrics = Algorithm(cfg).loss(on)
    base = (-inp.advantages).detach().flatten().tolist()
    ref, _ = ref_lp_reg(base, inp.logprobs.detach().flatten().tolist(), inp.logprobs.detach().flatten().tolist(),
                        inp.extras["old_proxy_logp"].flatten().tolist(), inp.advantages.flatten().tolist(),
                        inp.mask.flatten().tolist(), 0.5, 1.0)
    assert loss.item() == pytest.approx(sum(ref) / inp.mask.sum().item(), abs=1e-12)
    assert Algorithm(cfg).needs >= {"old_proxy_logp"}
    assert Algorithm(cfg).kernel_options == {"lp_reg": {"threshold": 0.02, "rule": "minp",
                                                        "threshold_temperature": 1.0, "soft": False}}


def test_mini_batch_scope_threshold():
    inp = lp_inputs(seed=4, B=4)
    part = LpReg(LpRegConfig(neg_ratio=0.5))
    part.scope = "mini_batch"
    part.prepare(inp)
    half = LossInputs(inp.logprobs[:2], inp.old_logprobs[:2], inp.advantages[:2], inp.mask[:2],
                      extras={"old_proxy_logp": inp.extras["old_proxy_logp"][:2]})
    out_scope, _ = part(half, torch.zeros(2, 8, dtype=torch.float64))
    out_full, _ = LpReg(LpRegConfig(neg_ratio=0.5))(inp, torch.zeros(4, 8, dtype=torch.float64))
    assert torch.allclose(out_scope, out_full[:2], atol=0, rtol=0)


def test_empty_micro_batch_and_missing_proxy():
    z = torch.zeros(2, 3, dtype=torch.float64)
    inp = LossInputs(z.clone().requires_grad_(), z, z - 1, z, extras={"old_proxy_logp": z})
    out, metrics = LpReg(LpRegConfig(neg_ratio=0.5))(inp, z)
    assert torch.equal(out.detach(), z) and metrics["lp_reg/coverage"] == 0.0
    with pytest.raises(ValueError, match="old_proxy_logp"):
        LpReg(LpRegConfig())(LossInputs(z, z, z, z + 1), z)
    with pytest.raises(ValueError, match="neg_ratio"):
        LpRegConfig(neg_ratio=2.0)
    with pytest.raises(ValueError, match="threshold"):
        LpRegConfig(threshold=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_kernel_options_produce_the_same_proxy_as_the_full_logits_function(temperature):
    """Contract with creditrl.kernels: the learner's old pass with `kernel_options` gives `proxy_logp`."""
    from creditrl.kernels import linear_token_stats

    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(12, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(37, 8, generator=g, dtype=torch.float64) * 1.5
    logits = hidden @ weight.T
    targets = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g).squeeze(1)
    targets[:3] = logits.argmin(-1)[:3]  # surely filtered
    options = LpReg(LpRegConfig(threshold=0.05)).kernel_options
    stats = linear_token_stats(hidden, weight, targets, temperature=temperature, want=("logp", "proxy_logp"),
                               **options)
    ref = lp_reg_proxy_logprobs(logits, targets, 0.05, "minp", temperature)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(stats.proxy_logp), finite) and not finite[:3].any()
    assert torch.allclose(stats.proxy_logp[finite], ref[finite], atol=1e-10)
