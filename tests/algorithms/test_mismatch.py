"""Rollout/train mismatch corrections: TIS (token, sequence), IcePop, MinPRO as token weights, and the gap
metrics (algorithms.md 8.1, 8.2, 8.4, 8.5)."""

import math

import pytest
import torch

from creditrl.algorithms import TOKEN_WEIGHTS, Algorithm, AlgorithmConfig, KLConfig
from creditrl.algorithms.base import LossInputs
from creditrl.algorithms.icepop import IcePopConfig, icepop_weights
from creditrl.algorithms.minpro import MinPROConfig, minpro_weights
from creditrl.algorithms.mismatch import mismatch_metrics
from creditrl.algorithms.tis import TISConfig, tis_weights
from creditrl.registry import PartSpec

SPEC_RATIOS = [0.3, 0.9, 1.5, 2.5, 6.0]


def spec_inputs():
    """old - rollout log-probs whose exp are the spec ratios (algorithms.md 8.5)."""
    rollout = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5]], dtype=torch.float64)
    old = rollout + torch.log(torch.tensor([SPEC_RATIOS], dtype=torch.float64))
    return old, rollout, torch.ones(1, 5, dtype=torch.float64)


def test_tis_token_spec_vector():
    w, _ = tis_weights(*spec_inputs(), level="token", clip_max=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.3, 0.9, 1.5, 2.0, 2.0]], dtype=torch.float64))


def test_icepop_spec_vector():
    w, oob = icepop_weights(*spec_inputs(), low=0.5, high=5.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.9, 1.5, 2.5, 0.0]], dtype=torch.float64))
    assert oob.tolist() == [[True, False, False, False, True]]


def test_tis_sequence_level_and_clip_min_match_reference():
    gen = torch.Generator().manual_seed(0)
    rollout = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    old = rollout + torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.3
    mask = (torch.rand(4, 6, generator=gen) > 0.3).to(torch.float64)
    w, _ = tis_weights(old, rollout, mask, level="sequence", clip_max=1.5, clip_min=0.8)
    for i in range(4):
        s = sum((old[i, t] - rollout[i, t]).item() * mask[i, t].item() for t in range(6))
        wi = min(max(math.exp(max(-20, min(20, s))), 0.8), 1.5)
        for t in range(6):
            assert w[i, t].item() == pytest.approx(wi * mask[i, t].item(), abs=1e-12)
    wt, _ = tis_weights(old, rollout, mask, level="token", clip_max=1.5, clip_min=0.8)
    for i in range(4):
        for t in range(6):
            ref = min(max(math.exp((old[i, t] - rollout[i, t]).item()), 0.8), 1.5) * mask[i, t].item()
            assert wt[i, t].item() == pytest.approx(ref, abs=1e-12)


def test_padding_garbage_never_leaks_into_weights():
    old = torch.tensor([[-1.0, 0.0]])
    rollout = torch.tensor([[-1.2, float("nan")]])  # the engine's padding can hold anything
    mask = torch.tensor([[1.0, 0.0]])
    for name, cfg in (("tis", TISConfig()), ("tis", TISConfig(level="sequence")), ("icepop", IcePopConfig())):
        inputs = LossInputs(logprobs=old, old_logprobs=old, advantages=torch.ones(1, 2), mask=mask,
                            rollout_logprobs=rollout)
        w, new_mask, metrics = TOKEN_WEIGHTS.build(name, cfg)(inputs)
        assert torch.isfinite(w).all() and w[0, 1] == 0 and new_mask is None
        assert w[0, 0].item() == pytest.approx(math.exp(0.2))
        assert all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
    w = minpro_weights(old, rollout, mask)
    assert torch.isfinite(w).all()


# ---- MinPRO ------------------------------------------------------------------------------------------------
def reference_minpro(lp, rollout, mask, cap=None):
    out = []
    for lr, rr, mr in zip(lp, rollout, mask):
        row, running = [], None
        for a, b, m in zip(lr, rr, mr):
            w = 1.0 if running is None else math.exp(running)
            if cap is not None:
                w = min(w, cap)
            row.append(w * m)
            if m > 0:
                d = max(-20.0, min(20.0, a - b))
                running = d if running is None else min(running, d)
        out.append(row)
    return out


def test_minpro_hand_case():
    # ratios pi/mu = [0.5, 2, 0.25, 1] -> weights = min over the *preceding* tokens: [1, 0.5, 0.5, 0.25]
    rollout = torch.full((1, 4), -1.0, dtype=torch.float64)
    lp = rollout + torch.log(torch.tensor([[0.5, 2.0, 0.25, 1.0]], dtype=torch.float64))
    w = minpro_weights(lp, rollout, torch.ones(1, 4, dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5, 0.5, 0.25]], dtype=torch.float64))
    # ratios above 1 only: uncapped weight > 1, cap 1 limits it
    lp2 = rollout + math.log(2.0)
    assert minpro_weights(lp2, rollout, torch.ones(1, 4))[0, 3].item() == pytest.approx(2.0)
    assert minpro_weights(lp2, rollout, torch.ones(1, 4), cap=1.0)[0, 3].item() == 1.0


@pytest.mark.parametrize("cap", [None, 1.0])
def test_minpro_random_with_mask_holes_matches_reference(cap):
    gen = torch.Generator().manual_seed(1)
    rollout = -torch.rand(5, 7, generator=gen, dtype=torch.float64) * 3
    lp = rollout + torch.randn(5, 7, generator=gen, dtype=torch.float64) * 0.5
    mask = (torch.rand(5, 7, generator=gen) > 0.3).to(torch.float64)  # holes: observation tokens are skipped
    w = minpro_weights(lp, rollout, mask, cap)
    torch.testing.assert_close(w, torch.tensor(reference_minpro(lp.tolist(), rollout.tolist(), mask.tolist(), cap),
                                               dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_minpro_uses_current_policy_but_carries_no_gradient():
    rollout = torch.full((1, 3), -1.0)
    lp = (rollout + torch.tensor([[-1.0, 0.0, 0.0]])).requires_grad_()
    part = TOKEN_WEIGHTS.build("minpro", MinPROConfig())
    inputs = LossInputs(logprobs=lp, old_logprobs=rollout, advantages=torch.ones(1, 3), mask=torch.ones(1, 3),
                        rollout_logprobs=rollout)
    w, _, metrics = part(inputs)
    assert not w.requires_grad
    torch.testing.assert_close(w, torch.tensor([[1.0, math.exp(-1.0), math.exp(-1.0)]]))
    assert metrics["minpro/downweighted_frac"].item() == pytest.approx(2 / 3)
    assert metrics["minpro/weight_min"].item() == pytest.approx(math.exp(-1.0))
    noisy = LossInputs(logprobs=rollout - 1e-7, old_logprobs=rollout, advantages=torch.ones(1, 3),
                       mask=torch.ones(1, 3), rollout_logprobs=rollout)
    assert part(noisy)[2]["minpro/downweighted_frac"].item() == 0.0  # float noise is not down-weighting
    with pytest.raises(ValueError, match="minpro.cap"):
        MinPROConfig(cap=0.5)


# ---- composition: weights multiply the policy term only ------------------------------------------------------
@pytest.mark.parametrize("name,options", [("tis", TISConfig(clip_max=1.5)), ("icepop", IcePopConfig(low=0.8, high=1.2)),
                                          ("minpro", MinPROConfig())])
def test_weights_scale_policy_term_but_not_kl_loss(name, options):
    gen = torch.Generator().manual_seed(2)
    rollout = -torch.rand(3, 4, generator=gen) * 2
    old = rollout + torch.randn(3, 4, generator=gen) * 0.3
    lp = (old + torch.randn(3, 4, generator=gen) * 0.1).requires_grad_()
    ref = old - 0.2
    adv = torch.randn(3, 4, generator=gen)
    mask = torch.ones(3, 4)
    cfg = AlgorithmConfig(token_weights=[PartSpec(name, options)], kl=KLConfig(coef=0.1, estimator="k1"))
    algo = Algorithm(cfg)
    assert "rollout_logprobs" in algo.needs
    inputs = LossInputs(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask, rollout_logprobs=rollout,
                        ref_logprobs=ref)
    total, metrics = algo.loss(inputs)
    weights, _, _ = TOKEN_WEIGHTS.build(name, options)(inputs)
    r = torch.exp(lp.detach() - old)
    ppo = torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.2))
    ppo = torch.where(adv < 0, torch.minimum(ppo, -adv * 3.0), ppo)
    expected = ((ppo * weights + 0.1 * (lp.detach() - ref)) * mask).sum() / mask.sum()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert any(k.startswith(name) for k in metrics)


def test_missing_rollout_logprobs_raise():
    x = torch.zeros(1, 2)
    inputs = LossInputs(logprobs=x, old_logprobs=x, advantages=x, mask=torch.ones(1, 2))
    for name in ("tis", "icepop", "minpro"):
        with pytest.raises(ValueError, match="rollout_logprobs"):
            TOKEN_WEIGHTS.build(name)(inputs)


def test_config_validation():
    with pytest.raises(ValueError, match="tis.level"):
        TISConfig(level="batch")
    with pytest.raises(ValueError, match="clip_min < clip_max"):
        TISConfig(clip_max=0.5, clip_min=0.5)
    with pytest.raises(ValueError, match="low < high"):
        IcePopConfig(low=5.0, high=0.5)


# ---- metrics -----------------------------------------------------------------------------------------------
def test_mismatch_metrics_match_reference():
    gen = torch.Generator().manual_seed(3)
    rollout = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    old = rollout + torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.2
    mask = (torch.rand(4, 5, generator=gen) > 0.3).to(torch.float64)
    m = mismatch_metrics(old, rollout, mask)
    pairs = [(old[i, t].item(), rollout[i, t].item()) for i in range(4) for t in range(5) if mask[i, t] > 0]
    n = len(pairs)
    diffs = [abs(math.exp(a) - math.exp(b)) for a, b in pairs]
    mean = sum(diffs) / n
    assert m["mismatch/rollout_probs_diff_mean"] == pytest.approx(mean)
    assert m["mismatch/rollout_probs_diff_max"] == pytest.approx(max(diffs))
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    assert m["mismatch/rollout_probs_diff_std"] == pytest.approx(std)
    assert m["mismatch/logprob_abs_diff_mean"] == pytest.approx(sum(abs(a - b) for a, b in pairs) / n)
    assert m["mismatch/logprob_abs_diff_max"] == pytest.approx(max(abs(a - b) for a, b in pairs))
    rho = [math.exp(a - b) for a, b in pairs]
    assert m["mismatch/is_ratio_mean"] == pytest.approx(sum(rho) / n)
    assert m["mismatch/is_ratio_min"] == pytest.approx(min(rho))
    assert m["mismatch/is_ratio_max"] == pytest.approx(max(rho))
    assert m["mismatch/kl_k1"] == pytest.approx(sum(b - a for a, b in pairs) / n)
    assert m["mismatch/kl_k3"] == pytest.approx(sum(math.exp(a - b) - 1 - (a - b) for a, b in pairs) / n)
    x = [math.exp(a) for a, _ in pairs]
    y = [math.exp(b) for _, b in pairs]
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((u - mx) * (v - my) for u, v in zip(x, y))
    corr = cov / math.sqrt(sum((u - mx) ** 2 for u in x) * sum((v - my) ** 2 for v in y))
    assert m["mismatch/rollout_actor_probs_pearson_corr"] == pytest.approx(corr)


def test_mismatch_metrics_edge_cases():
    empty = mismatch_metrics(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    assert all(v == 0.0 for v in empty.values()) and "mismatch/rollout_actor_probs_pearson_corr" not in empty
    one = mismatch_metrics(torch.tensor([[-1.0]]), torch.tensor([[-1.5]]), torch.ones(1, 1))
    assert one["mismatch/rollout_probs_diff_std"] == 0.0 and one["mismatch/logprob_abs_diff_max"] == pytest.approx(0.5)
    assert "mismatch/rollout_actor_probs_pearson_corr" not in one
    same = mismatch_metrics(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -2.0]]), torch.ones(1, 2))
    assert same["mismatch/rollout_actor_probs_pearson_corr"] == pytest.approx(1.0)
    assert same["mismatch/kl_k3"] == 0.0 and same["mismatch/is_ratio_mean"] == 1.0
