"""Numeric cross-check against verl 0.9.1 on random float64 inputs (algorithms.md section 18).

Skipped unless `verl` imports. verl 0.9.1 pins an older transformers than this project, so it is not installed
into the project venv; run with a side install instead:

    pip install --no-deps --target /tmp/verl091 verl==0.9.1 tensordict==0.10.0 codetiming pyvers cloudpickle orjson
    PYTHONPATH=/tmp/verl091 .venv/bin/python -m pytest tests/algorithms/test_crosscheck_verl.py

Losses are compared on the aggregated value AND its gradient w.r.t. the current log-probs (verl returns only the
aggregate), for every aggregation mode, with the mini-batch totals passed to both sides. Metrics agree to ~1e-9
only: verl's `masked_mean` divides by `mask.sum() + 1e-8`.
"""

import numpy as np
import pytest
import torch

core = pytest.importorskip("verl.trainer.ppo.core_algos")
corr = pytest.importorskip("verl.trainer.ppo.rollout_corr_helper")
verl_config = pytest.importorskip("verl.workers.config")

from creditrl.algorithms.aggregation import aggregate_loss  # noqa: E402
from creditrl.algorithms.base import AggregationNorm  # noqa: E402
from creditrl.algorithms.cispo import cispo_loss  # noqa: E402
from creditrl.algorithms.clip_cov import clip_cov_loss  # noqa: E402
from creditrl.algorithms.gspo import gspo_loss  # noqa: E402
from creditrl.algorithms.grpo import grpo_advantages  # noqa: E402
from creditrl.algorithms.icepop import icepop_weights  # noqa: E402
from creditrl.algorithms.kl import kl_penalty  # noqa: E402
from creditrl.algorithms.kl_cov import kl_cov_loss  # noqa: E402
from creditrl.algorithms.ppo_clip import ppo_clip_loss  # noqa: E402
from creditrl.algorithms.reinforce_pp import reinforce_pp_advantages, reinforce_pp_baseline_advantages  # noqa: E402
from creditrl.algorithms.rloo import rloo_advantages  # noqa: E402
from creditrl.algorithms.tis import tis_weights  # noqa: E402

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
K = 7  # fixed Dr.GRPO normaliser (verl loss_scale_factor)


def batch(seed: int, B: int = 6, T: int = 7, drift: float = 0.4):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    lp = old + torch.randn(B, T, generator=gen, dtype=torch.float64) * drift
    adv = torch.randn(B, T, generator=gen, dtype=torch.float64)
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    lens[0] = 0  # an empty response
    mask = (torch.arange(T).unsqueeze(0) < lens.unsqueeze(1)).to(torch.float64)
    return lp, old, adv, mask


def actor(**kw):
    cfg = verl_config.ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, **kw)
    return cfg


def verl_value_and_grad(fn, lp, old, adv, mask, mode, cfg):
    x = lp.clone().requires_grad_()
    cfg.global_batch_info.clear()
    if mode == "seq-mean-token-sum-norm":
        cfg.global_batch_info["loss_scale_factor"] = K
    loss, metrics = fn(old, x, adv, mask, loss_agg_mode=mode, config=cfg)
    loss.backward()
    return loss.item(), x.grad, metrics


def ours_value_and_grad(per_token_fn, lp, mask, mode):
    x = lp.clone().requires_grad_()
    per_token, metrics = per_token_fn(x)
    loss = aggregate_loss(per_token, mask, mode, AggregationNorm(norm_len=K))
    loss.backward()
    return loss.item(), x.grad, metrics


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lo,hi,c", [(0.2, 0.2, 3.0), (0.2, 0.28, 10.0)])
def test_ppo_clip_and_dapo_equal_verl_vanilla(mode, lo, hi, c):
    lp, old, adv, mask = batch(0)
    v, gv, mv = verl_value_and_grad(core.compute_policy_loss_vanilla, lp, old, adv, mask, mode,
                                    actor(clip_ratio_low=lo, clip_ratio_high=hi, clip_ratio_c=c))
    o, go, mo = ours_value_and_grad(lambda x: ppo_clip_loss(x, old, adv, mask, lo, hi, c), lp, mask, mode)
    rtol = 1e-7 if mode == "seq-mean-token-mean" else 1e-10  # verl divides by n_i + 1e-8
    assert o == pytest.approx(v, rel=rtol, abs=1e-12)
    torch.testing.assert_close(go, gv, rtol=rtol, atol=1e-12)
    for key in ("pg_clipfrac", "ppo_kl", "pg_clipfrac_lower"):
        assert mo[key].item() == pytest.approx(mv[f"actor/{key}"], rel=1e-8, abs=1e-9)


def test_gspo_equals_verl_with_seq_mean_token_mean():
    lp, old, adv, mask = batch(1, drift=0.02)
    adv = adv[:, :1].expand_as(adv).contiguous()
    mode = "seq-mean-token-mean"
    v, gv, mv = verl_value_and_grad(core.compute_policy_loss_gspo, lp, old, adv, mask, mode,
                                    actor(clip_ratio_low=3e-4, clip_ratio_high=4e-4))
    o, go, mo = ours_value_and_grad(lambda x: gspo_loss(x, old, adv, mask, 3e-4, 4e-4), lp, mask, mode)
    assert o == pytest.approx(v, rel=1e-7, abs=1e-12)  # verl divides by n_i + 1e-8
    torch.testing.assert_close(go, gv, rtol=1e-7, atol=1e-12)
    assert mo["pg_clipfrac"].item() == pytest.approx(mv["actor/pg_clipfrac"], rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("lo,hi", [(None, 0.2), (0.2, 0.28), (None, 4.0)])
def test_cispo_equals_verl(lo, hi):
    lp, old, adv, mask = batch(2)
    v, gv, mv = verl_value_and_grad(core.compute_policy_loss_cispo, lp, old, adv, mask, "token-mean",
                                    actor(clip_ratio_low=10.0 if lo is None else lo, clip_ratio_high=hi))
    o, go, mo = ours_value_and_grad(lambda x: cispo_loss(x, old, adv, mask, lo, hi), lp, mask, "token-mean")
    assert o == pytest.approx(v, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(go, gv, rtol=1e-10, atol=1e-12)
    assert mo["pg_clipfrac"].item() == pytest.approx(mv["actor/pg_clipfrac"], rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_cov_equals_verl_with_the_same_rng_state(seed):
    lp, old, adv, mask = batch(3, B=8, T=9, drift=0.1)
    adv = adv * 3
    policy_loss = verl_config.PolicyLossConfig(loss_mode="clip_cov", clip_cov_ratio=0.1, clip_cov_lb=0.5,
                                               clip_cov_ub=5.0)
    cfg = actor(clip_ratio_low=0.2, clip_ratio_high=0.2, policy_loss=policy_loss)
    torch.manual_seed(seed)
    v, gv, mv = verl_value_and_grad(core.compute_policy_loss_clip_cov, lp, old, adv, mask, "token-mean", cfg)
    gen = torch.Generator().manual_seed(seed)
    o, go, mo = ours_value_and_grad(lambda x: clip_cov_loss(x, old, adv, mask, 0.2, 0.2, 0.1, 0.5, 5.0, gen), lp,
                                    mask, "token-mean")
    assert o == pytest.approx(v, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(go, gv, rtol=1e-10, atol=1e-12)
    assert mo["clip_cov/selected_frac"].item() == pytest.approx(mv["actor/pg_clipfrac"], rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("ratio,kappa", [(2e-4, 0.1), (0.2, 1.0)])
def test_kl_cov_equals_verl(ratio, kappa):
    lp, old, adv, mask = batch(4, B=8, T=9)
    cfg = actor(policy_loss=verl_config.PolicyLossConfig(loss_mode="kl_cov", kl_cov_ratio=ratio, ppo_kl_coef=kappa))
    v, gv, mv = verl_value_and_grad(core.compute_policy_loss_kl_cov, lp, old, adv, mask, "token-mean", cfg)
    o, go, mo = ours_value_and_grad(lambda x: kl_cov_loss(x, old, adv, mask, ratio, kappa), lp, mask, "token-mean")
    assert o == pytest.approx(v, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(go, gv, rtol=1e-10, atol=1e-12)
    assert mo["kl_cov/abs_kl"].item() == pytest.approx(mv["actor/ppo_kl"], rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "abs", "k1+", "k3+", "abs+", "low_var_kl+"])
def test_kl_estimators_equal_verl_value_and_gradient(name):
    lp, old, _, _ = batch(5, drift=1.5)
    xv, xo = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    v = core.kl_penalty(xv, old, name)
    o = kl_penalty(xo, old, name)
    v.sum().backward()
    o.sum().backward()
    torch.testing.assert_close(o, v, rtol=0, atol=1e-12)
    torch.testing.assert_close(xo.grad, xv.grad, rtol=0, atol=1e-12)


def test_advantages_equal_verl():
    gen = torch.Generator().manual_seed(6)
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])  # group 3 is a singleton
    rewards = torch.randint(0, 3, (10,), generator=gen).to(torch.float64)
    rewards[6:9] = 1.0  # an all-equal group
    mask = (torch.rand(10, 5, generator=gen) > 0.2).to(torch.float64)
    token_rewards = torch.zeros(10, 5, dtype=torch.float64)
    token_rewards[:, 0] = rewards  # verl sums token rewards into the sequence reward
    g = torch.tensor(groups)
    for norm in (True, False):
        v, _ = core.compute_grpo_outcome_advantage(token_rewards, mask, groups, norm_adv_by_std_in_grpo=norm)
        torch.testing.assert_close(grpo_advantages(rewards, g, mask, norm_by_std=norm), v, rtol=1e-12, atol=1e-12)
    v, _ = core.compute_rloo_vectorized_outcome_advantage(token_rewards, mask, groups)
    torch.testing.assert_close(rloo_advantages(rewards, g, mask), v, rtol=1e-12, atol=1e-12)
    v, _ = core.compute_reinforce_plus_plus_baseline_outcome_advantage(token_rewards, mask, groups)
    # verl's masked_mean divides by N + 1e-8
    torch.testing.assert_close(reinforce_pp_baseline_advantages(rewards, g, mask), v, rtol=1e-8, atol=1e-10)
    holes = mask.clone()
    holes[:, 2] = 0  # observation tokens inside the response
    dense = torch.randn(10, 5, generator=gen, dtype=torch.float64) * holes

    class Algo:
        gamma = 0.9

    v, _ = core.compute_reinforce_plus_plus_outcome_advantage(dense, holes, config=Algo())
    torch.testing.assert_close(reinforce_pp_advantages(dense, holes, 0.9), v, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_equals_verl(gamma, lam):
    """creditrl gae vs verl `compute_gae_advantage_return` on random rewards / values, with interior holes (verl
    skips them) and an empty response; compared on valid tokens (verl leaves values at padding)."""
    from creditrl.algorithms.gae import gae_advantages_returns

    gen = torch.Generator().manual_seed(11)
    B, T = 8, 7
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    lens[0] = 0
    mask = (torch.arange(T)[None, :] < lens[:, None]).to(torch.float64)
    mask[3, 1] = 0.0  # an observation token inside a response
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    va, vr = core.compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    adv, ret = gae_advantages_returns(rewards, values, mask, gamma, lam)
    # verl's masked_whiten divides by N + 1e-8 in its mean
    torch.testing.assert_close(adv, va * mask, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ret, vr * mask, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_and_icepop_weights_equal_verl(level):
    gen = torch.Generator().manual_seed(7)
    rollout = -torch.rand(6, 8, generator=gen, dtype=torch.float64) * 3
    old = rollout + torch.randn(6, 8, generator=gen, dtype=torch.float64) * (0.8 if level == "token" else 0.3)
    mask = (torch.rand(6, 8, generator=gen) > 0.2).to(torch.float64)
    v, _ = corr.compute_rollout_correction_weights(old - rollout, mask, rollout_is=level, rollout_is_threshold=2.0)
    o, _ = tis_weights(old, rollout, mask, level, clip_max=2.0)
    torch.testing.assert_close(o, v, rtol=1e-12, atol=1e-12)
    if level == "token":
        v, m = corr.compute_rollout_correction_weights(old - rollout, mask, "token", "0.5_5.0")
        o, oob = icepop_weights(old, rollout, mask, 0.5, 5.0)
        torch.testing.assert_close(o, v, rtol=1e-12, atol=1e-12)
        assert (oob.sum() / mask.sum()).item() == pytest.approx(m["rollout_is_oob_ratio"])


# ---- issue 14: GPG, GMPO, SAPO, token-sum -----------------------------------------------------------------------
from creditrl.algorithms.gmpo import gmpo_loss  # noqa: E402
from creditrl.algorithms.gpg import gpg_advantages, gpg_loss  # noqa: E402
from creditrl.algorithms.sapo import sapo_loss  # noqa: E402


def test_gpg_advantage_equals_verl():
    gen = torch.Generator().manual_seed(11)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 4])  # group 3 is a singleton
    rewards = torch.randint(0, 3, (12,), generator=gen).to(torch.float64) * 0.5
    rewards[4:7] = 0.0  # an all-zero group
    rewards[9] = 0.7  # a non-zero singleton (mean 0: A = alpha R)
    mask = (torch.rand(12, 5, generator=gen) > 0.2).to(torch.float64)
    token_rewards = torch.zeros(12, 5, dtype=torch.float64)
    token_rewards[:, 0] = rewards
    v, _ = core.compute_gpg_outcome_advantage(token_rewards, mask, groups)
    o, alpha = gpg_advantages(rewards, torch.tensor(groups), mask)
    assert alpha == pytest.approx(12 / int((rewards != 0).sum()))
    torch.testing.assert_close(o, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", [*MODES, "token-sum"])
def test_gpg_loss_equals_verl(mode):
    lp, old, adv, mask = batch(12)
    v, gv, _ = verl_value_and_grad(core.compute_policy_loss_gpg, lp, old, adv, mask, mode, actor())
    o, go, _ = ours_value_and_grad(lambda x: gpg_loss(x, old, adv, mask), lp, mask, mode)
    rtol = 1e-7 if mode == "seq-mean-token-mean" else 1e-10  # verl divides by n_i + 1e-8
    assert o == pytest.approx(v, rel=rtol, abs=1e-12)
    torch.testing.assert_close(go, gv, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("lo,hi,drift", [(0.4, 0.4, 0.8), (0.1, 0.3, 0.6), (0.4, 0.4, 0.02)])
def test_gmpo_equals_verl_geo_mean(lo, hi, drift):
    lp, old, adv, mask = batch(13, drift=drift)
    mask[0, :3] = 1.0  # no empty response: verl averages over every row of the micro-batch
    adv[2] = 0.0  # a zero advantage (sign 0)
    mode = "seq-mean-token-mean"
    v, gv, mv = verl_value_and_grad(core.compute_policy_loss_geo_mean, lp, old, adv, mask, mode,
                                    actor(clip_ratio_low=lo, clip_ratio_high=hi))
    o, go, mo = ours_value_and_grad(lambda x: gmpo_loss(x, old, adv, mask, lo, hi), lp, mask, mode)
    assert o == pytest.approx(v, rel=1e-7, abs=1e-12)  # verl divides by n_i + 1e-8
    torch.testing.assert_close(go, gv, rtol=1e-7, atol=1e-12)
    assert mo["ppo_kl"].item() == pytest.approx(mv["actor/ppo_kl"], rel=1e-8, abs=1e-9)
    if drift > 0.1:
        assert mo["pg_clipfrac"].item() > 0 and mo["pg_clipfrac_lower"].item() > 0  # both bounds were active


def test_gmpo_with_an_empty_row_is_verl_times_the_row_count():
    lp, old, adv, mask = batch(14)  # row 0 empty
    B = mask.shape[0]
    v, gv, _ = verl_value_and_grad(core.compute_policy_loss_geo_mean, lp, old, adv, mask, "seq-mean-token-mean",
                                   actor(clip_ratio_low=0.4, clip_ratio_high=0.4))
    o, go, _ = ours_value_and_grad(lambda x: gmpo_loss(x, old, adv, mask), lp, mask, "seq-mean-token-mean")
    # documented difference: verl (and TRL) count the empty response in the mean over rows, creditrl does not
    assert v == pytest.approx(o * (B - 1) / B, rel=1e-7)
    torch.testing.assert_close(gv, go * (B - 1) / B, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("tau_pos,tau_neg,drift", [(1.0, 1.05, 0.4), (0.5, 2.0, 1.0)])
def test_sapo_equals_verl(tau_pos, tau_neg, drift):
    lp, old, adv, mask = batch(15, drift=drift)
    adv[1, :2] = 0.0  # A = 0 takes tau_neg
    mode = "seq-mean-token-mean"  # verl forces it
    v, gv, mv = verl_value_and_grad(core.compute_policy_loss_sapo, lp, old, adv, mask, mode,
                                    actor(tau_pos=tau_pos, tau_neg=tau_neg))
    o, go, mo = ours_value_and_grad(lambda x: sapo_loss(x, old, adv, mask, tau_pos, tau_neg), lp, mask, mode)
    assert o == pytest.approx(v, rel=1e-7, abs=1e-12)  # verl divides by n_i + 1e-8
    torch.testing.assert_close(go, gv, rtol=1e-7, atol=1e-12)
    assert mo["ppo_kl"].item() == pytest.approx(mv["actor/ppo_kl"], rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("seed", [16, 17])
def test_token_sum_equals_verl_agg_loss(seed):
    lp, old, adv, mask = batch(seed)
    v, gv, _ = verl_value_and_grad(core.compute_policy_loss_vanilla, lp, old, adv, mask, "token-sum",
                                   actor(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0))
    o, go, _ = ours_value_and_grad(lambda x: ppo_clip_loss(x, old, adv, mask, 0.2, 0.28, 3.0), lp, mask, "token-sum")
    assert o == pytest.approx(v, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(go, gv, rtol=1e-10, atol=1e-12)
    loss_mat = torch.randn(5, 4, dtype=torch.float64)
    m = (torch.rand(5, 4) > 0.3).to(torch.float64)
    for dp in (1, 4):  # verl's engine path: dp * local sum (creditrl: the learner's world * loss backward)
        ref = core.agg_loss(loss_mat, m, "token-sum", dp_size=dp)
        assert (dp * aggregate_loss(loss_mat, m, "token-sum")).item() == pytest.approx(ref.item(), rel=1e-12)
