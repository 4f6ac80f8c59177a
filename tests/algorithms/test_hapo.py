"""HAPO parts (algorithms-token-level.md §13): h_hat, adaptive clipping, redistribution, token-level advantage."""

from __future__ import annotations

import math

import pytest
import torch

from creditrl.algorithms import Algorithm, AlgorithmConfig
from creditrl.algorithms.base import AdvantageInputs, LossInputs
from creditrl.algorithms.hapo_advantage import HapoAdvantage, HapoAdvantageConfig, hapo_advantages
from creditrl.algorithms.hapo_clip import HapoClip, HapoClipConfig, adaptive_clip_bounds, adaptive_clip_loss
from creditrl.algorithms.hapo_entropy import entropy_norm_stats, nearest_quantile_rank, normalized_entropy
from creditrl.algorithms.hapo_redistribution import HapoRedistribution, HapoRedistributionConfig
from creditrl.registry import PartSpec

SPEC_H = [0.01, 0.05, 0.2, 0.5, 1.0, 2.0]


def ref_hhat(entropies, mask, q, sign):
    """Plain-Python h_hat from the formula of §13.1."""
    e_all = [math.log(max(h, 1e-8)) for h in entropies]
    e = sorted(v for v, m in zip(e_all, mask) if m)
    mu = e[round(q * (len(e) - 1))]
    s = math.sqrt(max(sum((v - mu) ** 2 for v in e) / len(e), 1e-8))
    hs = [(v - mu) / s for v in e]
    pos = max([x for x in hs if x > 0], default=1e-8)
    neg = min([x for x in hs if x < 0], default=-1e-8)
    pos, neg = max(pos, 1e-8), min(neg, -1e-8)
    out = []
    for v, m in zip(e_all, mask):
        h = (v - mu) / s
        out.append(0.0 if not m else h / pos if h > 0 else h / (neg if sign == "code" else abs(neg)))
    return out


def test_spec_vector_hhat_and_bounds():
    h = torch.tensor([SPEC_H], dtype=torch.float64)
    m = torch.ones_like(h)
    stats = entropy_norm_stats(h, m, 0.8)
    assert nearest_quantile_rank(0.8, 6) == 4 and stats.pivot == pytest.approx(0.0, abs=1e-15)
    raw = (torch.log(h) - stats.pivot) / stats.scale
    assert raw[0].tolist() == pytest.approx([-1.942194, -1.263426, -0.678768, -0.292329, 0, 0.292329], abs=1e-6)
    code = normalized_entropy(h, m, stats, "code")
    signed = normalized_entropy(h, m, stats, "signed")
    assert code[0].tolist() == pytest.approx([1, 0.650515, 0.349485, 0.150515, 0, 1], abs=1e-6)
    assert signed[0].tolist() == pytest.approx([-1, -0.650515, -0.349485, -0.150515, 0, 1], abs=1e-6)
    eps_low, eps_high = adaptive_clip_bounds(code, 0.2, 0.2, 1.0)
    assert eps_high[0].tolist() == pytest.approx([0.4, 0.330103, 0.269897, 0.230103, 0.2, 0.4], abs=1e-6)
    assert eps_low[0].tolist() == pytest.approx([0.2] * 6)
    eps_low_s, _ = adaptive_clip_bounds(signed, 0.2, 0.2, 1.0)
    assert eps_low_s[0].tolist() == pytest.approx([0.4, 0.330103, 0.269897, 0.230103, 0.2, 0.2], abs=1e-6)


def test_quantile_uses_round_half_to_even():
    assert nearest_quantile_rank(0.5, 4) == 2  # 1.5 -> 2
    assert nearest_quantile_rank(0.5, 6) == 2  # 2.5 -> 2 (banker's rounding, as Python's round)
    assert nearest_quantile_rank(0.8, 1) == 0


@pytest.mark.parametrize("sign", ["code", "signed"])
def test_random_hhat_matches_reference_with_padding(sign):
    g = torch.Generator().manual_seed(2)
    h = torch.rand(3, 6, generator=g, dtype=torch.float64) * 2
    h[0, 0] = 0.0  # ln(max(H, 1e-8))
    m = (torch.rand(3, 6, generator=g) > 0.3).double()
    m[0, 0] = 1.0
    got = normalized_entropy(h, m, entropy_norm_stats(h, m, 0.7), sign)
    ref = ref_hhat(h.flatten().tolist(), m.flatten().tolist(), 0.7, sign)
    assert got.flatten().tolist() == pytest.approx(ref, abs=1e-12)


def ref_clip_loss(a, lp, old, el, eh, c):
    r = math.exp(max(min(lp - old, 20), -20))
    lc = max(-a * r, -a * min(max(r, 1 - el), 1 + eh))
    return min(lc, -a * c) if a < 0 else lc


def test_adaptive_clip_loss_matches_reference_and_gradcheck():
    g = torch.Generator().manual_seed(4)
    B, T = 2, 6
    lp = (torch.rand(B, T, generator=g, dtype=torch.float64) * -2).requires_grad_()
    old = lp.detach() + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64) * 2
    m = torch.ones(B, T, dtype=torch.float64)
    m[1, -2:] = 0
    el = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.3
    eh = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.5
    loss, metrics = adaptive_clip_loss(lp, old, adv, m, el, eh, 3.0)
    ref = [ref_clip_loss(*args, 3.0) * mi for args, mi in zip(zip(adv.flatten().tolist(), lp.flatten().tolist(),
                                                                  old.flatten().tolist(), el.flatten().tolist(),
                                                                  eh.flatten().tolist()), m.flatten().tolist())]
    assert loss.flatten().tolist() == pytest.approx(ref, abs=1e-12)
    assert 0.0 <= metrics["pg_clipfrac"].item() <= 1.0
    assert torch.autograd.gradcheck(lambda x: adaptive_clip_loss(x, old, adv, m, el, eh, 3.0)[0], (lp,))


def hapo_inputs(seed=6, B=2, T=6):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.rand(B, T, generator=g, dtype=torch.float64) * -2)
    old = lp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    h = torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    return LossInputs(lp.requires_grad_(), old, adv, torch.ones(B, T, dtype=torch.float64), entropy=h)


@pytest.mark.parametrize("sign", ["code", "signed"])
def test_redistribution_plus_clip_equals_the_loss_with_modified_advantage(sign):
    inp = hapo_inputs()
    clip = HapoClipConfig(clip_low=0.2, clip_high=0.25, clip_alpha=1.0, dual_clip=10.0, hhat_sign=sign)
    red = HapoRedistributionConfig(adv_beta=0.7, clip_low=0.2, clip_high=0.25, clip_alpha=1.0, hhat_sign=sign)
    alg = Algorithm(AlgorithmConfig(policy_loss=PartSpec("hapo_clip", clip),
                                    token_weights=[PartSpec("hapo_redistribution", red)]))
    loss, metrics = alg.loss(inp)
    hh = ref_hhat(inp.entropy.flatten().tolist(), [1] * 12, 0.8, sign)
    total = 0.0
    for a, lp, old, x in zip(inp.advantages.flatten().tolist(), inp.logprobs.flatten().tolist(),
                             inp.old_logprobs.flatten().tolist(), hh):
        el = 0.2 * (1 - x) if x <= 0 else 0.2
        eh = 0.25 * (1 + x) if x > 0 else 0.25
        r = math.exp(lp - old)
        neutral = 1 - el / 2 < r < 1 + eh / 2
        a2 = a * ((1 + 0.7 * x) if (neutral != (x > 0)) else 1.0)  # h>0: scale outside; h<=0: scale inside
        total += ref_clip_loss(a2, lp, old, el, eh, 10.0)
    assert loss.item() == pytest.approx(total / 12, abs=1e-12)
    assert "hapo/adv_weight_mean" in metrics and "hapo/clip_high_mean" in metrics


def test_first_mini_batch_keeps_positive_hhat_advantages():
    inp = hapo_inputs()
    on_policy = LossInputs(inp.logprobs, inp.logprobs.detach(), inp.advantages, inp.mask, entropy=inp.entropy)
    w, _, _ = HapoRedistribution(HapoRedistributionConfig())(on_policy)  # code sign: h_hat >= 0, r = 1
    hh = normalized_entropy(inp.entropy, inp.mask, entropy_norm_stats(inp.entropy, inp.mask, 0.8), "code")
    assert torch.equal(w[hh > 0], torch.ones_like(w[hh > 0]))


def test_hapo_parts_must_agree_and_validate():
    with pytest.raises(ValueError, match="clip_high"):
        Algorithm(AlgorithmConfig(policy_loss=PartSpec("hapo_clip", HapoClipConfig(clip_high=0.28)),
                                  token_weights=[PartSpec("hapo_redistribution", HapoRedistributionConfig())]))
    with pytest.raises(ValueError, match="adv_beta"):
        HapoRedistributionConfig(adv_beta=1.5, hhat_sign="signed")
    with pytest.raises(ValueError, match="entropy_pivot"):
        HapoClipConfig(entropy_pivot=1.5)
    with pytest.raises(ValueError, match="hhat_sign"):
        HapoClipConfig(hhat_sign="both")
    with pytest.raises(ValueError, match="entropy"):
        HapoClip(HapoClipConfig())(LossInputs(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2),
                                              torch.ones(1, 2)))


def test_empty_micro_batch_gives_zero_hhat_and_zero_loss():
    z = torch.zeros(2, 3, dtype=torch.float64)
    inp = LossInputs(z.clone().requires_grad_(), z, z + 1.0, z, entropy=z + 1.0)
    loss, _ = HapoClip(HapoClipConfig())(inp)
    assert torch.equal(loss, z)
    w, _, _ = HapoRedistribution(HapoRedistributionConfig())(inp)
    assert torch.equal(w, z)


# ---- token-level group average advantage ----------------------------------------------------------------------
def ref_hapo_adv(rewards, groups, lengths, norm=True, eps=1e-6, thr=5.0):
    out = [0.0] * len(rewards)
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        tok = sum(lengths[i] for i in idx)
        mu = sum(lengths[i] * rewards[i] for i in idx) / max(tok, 1)
        sd = math.sqrt(sum(lengths[i] * (rewards[i] - mu) ** 2 for i in idx) / max(tok, 1))
        a = {i: (rewards[i] - mu) / (sd + eps) if norm else rewards[i] - mu for i in idx}
        if any(abs(v) >= thr for v in a.values()):
            if len(idx) == 1:
                m, s = 0.0, 1.0
            else:
                m = sum(rewards[i] for i in idx) / len(idx)
                s = math.sqrt(sum((rewards[i] - m) ** 2 for i in idx) / (len(idx) - 1))
            a = {i: (rewards[i] - m) / (s + eps) if norm else rewards[i] - m for i in idx}
        for i in idx:
            out[i] = a[i]
    return out


def make_mask(lengths, T):
    return torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)


@pytest.mark.parametrize("norm", [True, False])
def test_hapo_advantage_matches_reference(norm):
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.2, 0.9, 3.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 2]
    lengths = [3, 5, 1, 4, 2, 6, 6, 2]
    mask = make_mask(lengths, 6)
    adv, fallback = hapo_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups), mask, norm)
    ref = ref_hapo_adv(rewards, groups, lengths, norm)
    for i, n in enumerate(lengths):
        assert adv[i, :n].tolist() == pytest.approx([ref[i]] * n, abs=1e-9)
        assert adv[i, n:].abs().sum().item() == 0.0
    assert not fallback.any()
    # length weighting: group 0's mean is (3*1 + 4*1) / 13 tokens, not the response mean 0.5
    mu = 7 / 13
    sd = math.sqrt((7 * (1 - mu) ** 2 + 6 * mu ** 2) / 13)
    assert adv[0, 0].item() == pytest.approx((1 - mu) / (sd + 1e-6) if norm else 1 - mu, abs=1e-12)


def test_hapo_advantage_falls_back_to_grpo_for_extreme_groups():
    rewards = torch.tensor([1.0, 0.0])
    mask = make_mask([100, 1], 100)
    adv, fallback = hapo_advantages(rewards, torch.tensor([7, 7]), mask)
    assert fallback.all()
    assert adv[0, 0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6), abs=1e-6)
    assert adv[1, 0].item() == pytest.approx(-0.5 / (math.sqrt(0.5) + 1e-6), abs=1e-6)


def test_hapo_advantage_all_equal_singleton_and_empty():
    rewards = torch.tensor([1.0, 1.0, 1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    mask = make_mask([2, 3, 1, 4, 0, 3], 4)
    est = HapoAdvantage(HapoAdvantageConfig())
    adv, metrics = est(AdvantageInputs(rewards, groups, mask, ["p"] * 6))
    assert adv[:4].abs().sum().item() == 0.0  # all-equal group and singleton: sigma = 0 -> A = 0
    assert adv[4].abs().sum().item() == 0.0  # empty response: no tokens
    # group 2: the empty response has no weight, so mu = 1, sigma = 0 and its own A = -1e6 trips the |A| >= 5
    # fallback: the whole group gets the GRPO advantage
    assert adv[5, :3].tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-6)] * 3, abs=1e-6)
    assert metrics["adv/zero_std_frac"] == pytest.approx(1.0)
    assert metrics["adv/hapo_fallback_frac"] == pytest.approx(2 / 6)
    assert est.state_dict() == {}
