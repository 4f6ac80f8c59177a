"""Issue 14's losses and options against independent float64 references: brute-force Python loops (math and
statistics, no torch reductions), closed-form gradients and hand-computed cases. The cross-checks against the
libraries themselves are in test_crosscheck_verl.py / test_crosscheck_trl.py (skipped without verl / TRL).

    GPG advantage + loss, GMPO, SAPO, token-sum aggregation, grpo std_scope: batch, grpo multi_objective:
    normalize_then_sum, k3_unclamped + bias_correction, TRL delta == ppo_clip dual_clip, config-time errors.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from creditrl.algorithms import ADVANTAGES, POLICY_LOSSES, Algorithm, AlgorithmConfig, KLConfig
from creditrl.algorithms.aggregation import aggregate_loss
from creditrl.algorithms.base import AdvantageInputs, AggregationNorm, LossInputs
from creditrl.algorithms.gmpo import GMPOConfig, gmpo_loss
from creditrl.algorithms.gpg import gpg_advantages, gpg_loss
from creditrl.algorithms.grpo import GRPOConfig, grpo_advantages, normalize_then_sum_advantages
from creditrl.algorithms.kl import KLLossConfig, kl_penalty
from creditrl.algorithms.ppo_clip import ppo_clip_loss
from creditrl.algorithms.sapo import SAPOConfig, sapo_gate, sapo_loss
from creditrl.registry import PartSpec

F64 = torch.float64


def rand_batch(seed: int, B: int = 5, T: int = 6, drift: float = 0.6, empty: bool = True):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=F64) * 3
    lp = old + torch.randn(B, T, generator=gen, dtype=F64) * drift
    adv_seq = torch.randn(B, generator=gen, dtype=F64)
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    if empty:
        lens[0] = 0
    mask = (torch.arange(T).unsqueeze(0) < lens.unsqueeze(1)).to(F64)
    return lp, old, adv_seq.unsqueeze(-1) * mask, mask


def grad_of(fn, lp):
    x = lp.clone().requires_grad_()
    value = fn(x)
    value.backward()
    return value.item(), x.grad


# ---- GPG ------------------------------------------------------------------------------------------------------------
def test_gpg_advantage_brute_force():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.5, 0.5]
    groups = [0, 0, 0, 0, 1, 1, 1, 2, 3, 3]  # group 1 all zero, group 2 a singleton
    alpha = len(rewards) / sum(1 for r in rewards if r != 0)  # 10 / 5
    expected = []
    for i, r in enumerate(rewards):
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        mean = 0.0 if len(members) == 1 else sum(members) / len(members)
        expected.append(alpha * (r - mean))
    mask = torch.ones(10, 3, dtype=F64)
    mask[2, 2] = 0
    adv, a = gpg_advantages(torch.tensor(rewards, dtype=F64), torch.tensor(groups), mask)
    assert a == 2.0
    assert expected[0] == 2.0 * 0.5 and expected[7] == 4.0  # hand: alpha (1 - 0.5); singleton alpha * 2
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64).unsqueeze(-1) * mask, rtol=0, atol=1e-15)


def test_gpg_advantage_all_zero_rewards_is_zero():
    adv, alpha = gpg_advantages(torch.zeros(4, dtype=F64), torch.tensor([0, 0, 1, 1]), torch.ones(4, 2, dtype=F64))
    assert alpha == 4.0 and adv.abs().max() == 0


def test_gpg_loss_value_and_gradient():
    lp, old, adv, mask = rand_batch(0)
    for mode in ("token-mean", "token-sum", "seq-mean-token-mean"):
        value, grad = grad_of(lambda x: aggregate_loss(gpg_loss(x, old, adv, mask)[0], mask, mode), lp)
        n = [sum(mask[i].tolist()) for i in range(mask.shape[0])]
        N, Bv = sum(n), sum(1 for k in n if k > 0)
        v_ref, g_ref = 0.0, torch.zeros_like(lp)
        for i in range(lp.shape[0]):
            for t in range(lp.shape[1]):
                if mask[i, t] == 0:
                    continue
                w = {"token-mean": 1 / N, "token-sum": 1.0, "seq-mean-token-mean": 1 / (n[i] * Bv)}[mode]
                v_ref += -adv[i, t].item() * lp[i, t].item() * w
                g_ref[i, t] = -adv[i, t].item() * w  # d(-A l)/dl = -A: no ratio, no clip
        assert value == pytest.approx(v_ref, rel=1e-12)
        torch.testing.assert_close(grad, g_ref, rtol=1e-12, atol=1e-15)


# ---- GMPO -----------------------------------------------------------------------------------------------------------
def gmpo_reference(lp, old, adv, mask, lo, hi):
    """mean over non-empty responses of -A_i rho_i, and its gradient d/dl, by loops."""
    B, T = lp.shape
    rows = [i for i in range(B) if mask[i].sum() > 0]
    value, grad = 0.0, torch.zeros_like(lp)
    for i in rows:
        toks = [t for t in range(T) if mask[i, t] > 0]
        n = len(toks)
        a_seq = sum(adv[i, t].item() for t in toks) / n
        clipped, live = [], []
        for t in toks:
            d, a = lp[i, t].item() - old[i, t].item(), adv[i, t].item()
            if a > 0:
                clipped.append(min(d, hi))
                live.append(d < hi)
            elif a < 0:
                clipped.append(max(d, -lo))
                live.append(d > -lo)
            else:
                clipped.append(0.0)
                live.append(False)
        rho = math.exp(sum(clipped) / n)
        value += -a_seq * rho / len(rows)
        for t, on in zip(toks, live):
            grad[i, t] = -a_seq * rho / n / len(rows) if on else 0.0  # d rho / d l_t = rho / n where unclipped
    return value, grad


@pytest.mark.parametrize("lo,hi,drift", [(0.4, 0.4, 0.8), (0.1, 0.3, 0.5), (0.4, 0.4, 0.01)])
def test_gmpo_brute_force(lo, hi, drift):
    lp, old, _, mask = rand_batch(1, drift=drift)
    gen = torch.Generator().manual_seed(2)
    adv = torch.randn(*lp.shape, generator=gen, dtype=F64) * mask  # token-level A: per-token sign, mean per row
    adv[2] = 0.0
    value, grad = grad_of(lambda x: aggregate_loss(gmpo_loss(x, old, adv, mask, lo, hi)[0], mask,
                                                   "seq-mean-token-mean"), lp)
    v_ref, g_ref = gmpo_reference(lp, old, adv, mask, lo, hi)
    assert value == pytest.approx(v_ref, rel=1e-12)
    torch.testing.assert_close(grad, g_ref, rtol=1e-12, atol=1e-15)


def test_gmpo_hand_case():
    # one response of 2 tokens, A = 1: delta = (0.5, -0.1) -> clipped (0.4, -0.1); rho = exp(0.15)
    lp = torch.tensor([[0.5, -0.1]], dtype=F64)
    old = torch.zeros(1, 2, dtype=F64)
    adv = torch.ones(1, 2, dtype=F64)
    mask = torch.ones(1, 2, dtype=F64)
    loss, metrics = gmpo_loss(lp, old, adv, mask, 0.4, 0.4)
    assert loss[0, 0].item() == pytest.approx(-math.exp(0.15), rel=1e-14)
    assert metrics["pg_clipfrac"].item() == 0.5 and metrics["pg_clipfrac_lower"].item() == 0.0
    # A = -1: delta = (-0.7, 0.2) -> clipped (-0.4, 0.2); rho = exp(-0.1); L = +rho
    lp = torch.tensor([[-0.7, 0.2]], dtype=F64)
    loss, metrics = gmpo_loss(lp, old, -adv, mask, 0.4, 0.4)
    assert loss[0, 1].item() == pytest.approx(math.exp(-0.1), rel=1e-14)
    assert metrics["pg_clipfrac_lower"].item() == 0.5


# ---- SAPO -----------------------------------------------------------------------------------------------------------
def test_sapo_gate_spec_vectors():
    # algorithms.md section 2.7 test vectors
    assert sapo_gate(torch.tensor(1.3, dtype=F64), 1.0).item() == pytest.approx(2.2977700672, abs=1e-10)
    assert sapo_gate(torch.tensor(0.7, dtype=F64), 1.05).item() == pytest.approx(1.6072181604, abs=1e-10)


@pytest.mark.parametrize("tau_pos,tau_neg", [(1.0, 1.05), (0.5, 3.0)])
def test_sapo_brute_force(tau_pos, tau_neg):
    lp, old, adv, mask = rand_batch(3, drift=1.0)
    adv[1, :2] = 0.0
    value, grad = grad_of(lambda x: aggregate_loss(sapo_loss(x, old, adv, mask, tau_pos, tau_neg)[0], mask,
                                                   "seq-mean-token-mean"), lp)
    B, T = lp.shape
    rows = [i for i in range(B) if mask[i].sum() > 0]
    v_ref, g_ref = 0.0, torch.zeros_like(lp)
    for i in rows:
        toks = [t for t in range(T) if mask[i, t] > 0]
        for t in toks:
            a = adv[i, t].item()
            tau = tau_pos if a > 0 else tau_neg
            r = math.exp(lp[i, t].item() - old[i, t].item())
            s = 1 / (1 + math.exp(-tau * (r - 1)))
            w = 1 / (len(toks) * len(rows))
            v_ref += -(4 / tau) * s * a * w
            g_ref[i, t] = -a * 4 * s * (1 - s) * r * w  # d/dl of (4/tau) sigmoid(tau (e^d - 1))
    assert value == pytest.approx(v_ref, rel=1e-12)
    torch.testing.assert_close(grad, g_ref, rtol=1e-12, atol=1e-15)


def test_sapo_on_policy_gradient_is_policy_gradient():
    lp, _, adv, mask = rand_batch(4)
    _, grad = grad_of(lambda x: (sapo_loss(x, x.detach(), adv, mask)[0]).sum(), lp)
    torch.testing.assert_close(grad, -adv * mask, rtol=1e-12, atol=1e-15)


# ---- token-sum ------------------------------------------------------------------------------------------------------
def test_token_sum_hand_case_and_norm_independence():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=F64)
    assert aggregate_loss(loss, mask, "token-sum").item() == 7.0
    # no normaliser: the mini-batch totals do not change it, so the micro-batch sums add up to the mini-batch sum
    norm = AggregationNorm(num_tokens=100.0, num_seqs=10.0, norm_len=8)
    assert aggregate_loss(loss, mask, "token-sum", norm).item() == 7.0
    assert (aggregate_loss(loss[:1], mask[:1], "token-sum", norm) + aggregate_loss(loss[1:], mask[1:], "token-sum",
                                                                                   norm)).item() == 7.0


# ---- grpo std_scope: batch ------------------------------------------------------------------------------------------
def test_grpo_batch_std_brute_force():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 0.0, 1.0, 1.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    eps = 1e-4
    sd = statistics.stdev(rewards)  # unbiased, over the whole batch
    expected = []
    for i, r in enumerate(rewards):
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        expected.append((r - statistics.fmean(members)) / (sd + eps))
    mask = torch.ones(12, 2, dtype=F64)
    adv = grpo_advantages(torch.tensor(rewards, dtype=F64), torch.tensor(groups), mask, True, eps, "batch")
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected, dtype=F64), rtol=1e-13, atol=1e-15)
    # the all-equal group still gets 0, and the batch std is shared: A_i / A_j = (R_i - m_i) / (R_j - m_j)
    assert adv[4:8].abs().max() == 0


# ---- grpo multi_objective: normalize_then_sum -----------------------------------------------------------------------
def test_normalize_then_sum_brute_force():
    comps = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0],  # group 0
             [1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.5]]  # group 1: function 0 constant
    weights = [1.0, 0.2]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    eps = 1e-4
    z = [[0.0, 0.0] for _ in comps]
    for k in range(2):
        for i in range(len(comps)):
            members = [comps[j][k] for j in range(len(comps)) if groups[j] == groups[i]]
            z[i][k] = (comps[i][k] - statistics.fmean(members)) / (statistics.stdev(members) + eps)
    s = [sum(w * zk for w, zk in zip(weights, zi)) for zi in z]
    expected = [(si - statistics.fmean(s)) / (statistics.stdev(s) + eps) for si in s]
    mask = torch.ones(8, 3, dtype=F64)
    mask[3, 1:] = 0
    adv = normalize_then_sum_advantages(torch.tensor(comps, dtype=F64), torch.tensor(weights, dtype=F64),
                                        torch.tensor(groups), mask, eps)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64).unsqueeze(-1) * mask, rtol=1e-13, atol=1e-15)
    # and it is not sum_then_normalize
    summed = grpo_advantages(torch.tensor(comps, dtype=F64) @ torch.tensor(weights, dtype=F64), torch.tensor(groups),
                             mask, True, eps)
    assert not torch.allclose(adv, summed)


def test_normalize_then_sum_without_components_says_what_is_missing():
    part = ADVANTAGES.build("grpo", GRPOConfig(multi_objective="normalize_then_sum"))
    inputs = AdvantageInputs(rewards=torch.ones(4), group_ids=torch.tensor([0, 0, 1, 1]), mask=torch.ones(4, 2),
                             prompt_keys=["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="reward_components"):
        part(inputs)


# ---- KL: k3_unclamped and bias_correction ---------------------------------------------------------------------------
def test_k3_unclamped_values_and_gradient():
    lp = torch.tensor([[-1.0, -0.2, -5.0, -30.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -4.0, -0.1, -1.0]], dtype=F64)  # u = 2.9 and 29: k3 clamps both, unclamped does not
    x = lp.clone().requires_grad_()
    kl = kl_penalty(x, ref, "k3_unclamped")
    kl.sum().backward()
    for t in range(4):
        u = ref[0, t].item() - lp[0, t].item()
        assert kl[0, t].item() == pytest.approx(math.exp(u) - u - 1, rel=1e-14)
        assert x.grad[0, t].item() == pytest.approx(1 - math.exp(u), rel=1e-14)  # d/dl (e^u - u - 1), u = ref - l
    assert kl[0, 0].item() == pytest.approx(0.1065306597, abs=1e-10)  # algorithms.md section 4.2 vector
    clamped = kl_penalty(lp, ref, "k3")
    assert clamped[0, 2].item() == 10.0 and kl[0, 2].item() > 10.0 and kl[0, 3].item() > 1e12


def test_bias_corrected_kl_gradient_is_ratio_times_log_ratio_to_ref():
    # d/dl [ e^(l - l_old) (e^u - u - 1) ], u = l_ref - l  =  e^(l - l_old) (l - l_ref)
    lp, old, adv, mask = rand_batch(5, drift=0.5, empty=False)
    gen = torch.Generator().manual_seed(6)
    ref = lp + torch.randn(*lp.shape, generator=gen, dtype=F64) * 0.7
    coef = 0.04
    algo = Algorithm(AlgorithmConfig(policy_loss=PartSpec("gpg", POLICY_LOSSES.get("gpg").config_cls()),
                                     loss_agg="token-sum",
                                     kl=KLConfig(coef=coef, estimator="k3_unclamped", bias_correction=True)))
    x = lp.clone().requires_grad_()
    zero_adv = torch.zeros_like(adv)  # isolate the KL term
    loss, metrics = algo.loss(LossInputs(logprobs=x, old_logprobs=old, advantages=zero_adv, mask=mask,
                                         ref_logprobs=ref))
    loss.backward()
    r = torch.exp(lp - old)
    u = ref - lp
    assert loss.item() == pytest.approx((coef * r * (torch.exp(u) - u - 1) * mask).sum().item(), rel=1e-12)
    torch.testing.assert_close(x.grad, coef * r * (lp - ref) * mask, rtol=1e-12, atol=1e-15)
    assert metrics["actor/kl_loss"].item() == pytest.approx(
        ((r * (torch.exp(u) - u - 1) * mask).sum() / mask.sum()).item(), rel=1e-12)


def test_bias_correction_on_policy_has_value_of_k3_but_not_its_gradient():
    lp, _, _, mask = rand_batch(7, empty=False)
    ref = lp - 0.3
    plain = KLLossConfig(coef=1.0, estimator="k3_unclamped")
    corrected = KLLossConfig(coef=1.0, estimator="k3_unclamped", bias_correction=True)
    from creditrl.algorithms.kl import KLLoss

    out = []
    for cfg in (plain, corrected):
        x = lp.clone().requires_grad_()
        value = KLLoss(cfg)(LossInputs(logprobs=x, old_logprobs=x.detach(), advantages=torch.zeros_like(lp),
                                       mask=mask, ref_logprobs=ref), torch.zeros_like(lp))[0].sum()
        value.backward()
        out.append((value.item(), x.grad))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-13)  # r = 1 on-policy
    # the not-detached ratio adds grad(r) * k3 = k3 per token: (l - l_ref) - (1 - e^u) = e^u - u - 1
    torch.testing.assert_close(out[1][1] - out[0][1], (torch.exp(ref - lp) - (ref - lp) - 1) * mask)


# ---- TRL delta is ppo_clip's dual clip ------------------------------------------------------------------------------
def trl_two_sided(lp, old, adv, lo, hi, delta):
    """TRL 1.16 grpo/dapo per-token loss with `delta`, written out: c2 = clamp(c1), then c1 = min(c1, delta),
    L = -min(c1 A, c2 A)."""
    c1 = torch.exp(lp - old)
    c2 = torch.clamp(c1, 1 - lo, 1 + hi)
    c1 = torch.clamp(c1, max=delta)
    return -torch.minimum(c1 * adv, c2 * adv)


@pytest.mark.parametrize("delta,hi", [(3.0, 0.2), (1.5, 0.28), (1.29, 0.28)])
def test_trl_delta_equals_dual_clip_value_and_gradient(delta, hi):
    lp, old, adv, mask = rand_batch(9, B=12, T=10, drift=1.5)
    assert ((torch.exp(lp - old) > delta) & (adv < 0) & (mask > 0)).any()
    v1, g1 = grad_of(lambda x: aggregate_loss(ppo_clip_loss(x, old, adv, mask, 0.2, hi, delta)[0], mask,
                                              "token-mean"), lp)
    v2, g2 = grad_of(lambda x: aggregate_loss(trl_two_sided(x, old, adv, 0.2, hi, delta) * mask, mask,
                                              "token-mean"), lp)
    assert v1 == pytest.approx(v2, rel=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)


def test_trl_delta_below_the_upper_clip_is_not_a_dual_clip():
    # delta <= 1 + eps_high also caps positive advantages in TRL: the equivalence needs delta > 1 + eps_high
    lp, old, adv, mask = rand_batch(9, B=12, T=10, drift=1.5)
    ours = ppo_clip_loss(lp, old, adv, mask, 0.2, 0.28, 1.1)[0]
    trl = trl_two_sided(lp, old, adv, 0.2, 0.28, 1.1) * mask
    assert not torch.allclose(ours, trl)


# ---- config-time errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build,match", [
    (lambda: SAPOConfig(tau_pos=0.0), "sapo.tau_pos must be > 0"),
    (lambda: SAPOConfig(tau_neg=-1.0), "sapo.tau_neg must be > 0"),
    (lambda: GMPOConfig(clip_low=-0.1), "gmpo.clip_low must be >= 0"),
    (lambda: GMPOConfig(clip_high=float("nan")), "gmpo.clip_high must be >= 0"),
    (lambda: GRPOConfig(std_scope="global"), "grpo.std_scope must be group or batch"),
    (lambda: GRPOConfig(norm_by_std=False, std_scope="batch"), "set norm_by_std: true"),
    (lambda: GRPOConfig(multi_objective="sum"), "grpo.multi_objective must be"),
    (lambda: GRPOConfig(multi_objective="normalize_then_sum", std_scope="batch"), "remove norm_by_std / std_scope"),
    (lambda: KLConfig(coef=0.1, estimator="k3u"), "algorithm.kl.estimator: unknown KL estimator 'k3u'"),
    (lambda: KLConfig(coef=0.1, placement="reward", bias_correction=True), "use placement: loss"),
    (lambda: KLLossConfig(estimator="k3++"), "kl_loss.estimator: unknown KL estimator"),
    (lambda: AlgorithmConfig(loss_agg="token_sum"), "choose one of token-mean, token-sum"),
    (lambda: AlgorithmConfig(advantage=PartSpec("grpo", GRPOConfig(multi_objective="normalize_then_sum")),
                             kl=KLConfig(coef=0.1, placement="reward")), "use kl.placement: loss"),
])
def test_invalid_options_fail_at_config_time(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_new_parts_are_registered_and_build():
    for name in ("gpg", "gmpo", "sapo"):
        assert name in POLICY_LOSSES
        POLICY_LOSSES.build(name)
    assert "gpg" in ADVANTAGES
    ADVANTAGES.build("gpg")


# ---- the recipes train (slow: two steps each, with each part's own metrics) -----------------------------------------
RECIPES = {
    "tiny_gpg": ["adv/gpg_alpha"],
    "tiny_gmpo": ["gmpo/seq_ratio_mean", "pg_clipfrac_lower"],
    "tiny_sapo": ["sapo/gate_mean", "sapo/gate_grad_mean"],
    "tiny_token_sum": ["pg_clipfrac"],
    "tiny_grpo_batch_std": ["adv/zero_std_frac"],
    "tiny_kl_bias_corrected": ["kl_loss"],
    "tiny_normalize_then_sum": ["adv/zero_std_frac"],
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_issue14_recipe_trains_two_steps(recipe, tiny_task, tmp_path):
    from typer.testing import CliRunner

    from creditrl.cli import app
    from tests.conftest import read_jsonl

    run = tmp_path / recipe
    result = CliRunner().invoke(app, ["train", recipe, *tiny_task.overrides(
        run, "train.steps=2", "eval.pass_k=0", "eval.max_prompts=8", "train.global_batch_prompts=8")])
    assert result.exit_code == 0, result.output
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if "actor/pg_loss" in r]
    assert len(steps) == 2
    for row in steps:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        assert row["actor/skipped_steps_total"] == 0.0
        for key in RECIPES[recipe]:
            assert any(k.endswith(key) for k in row), (key, sorted(row))
