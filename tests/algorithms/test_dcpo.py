"""DCPO: SAS advantages (stateful), DAC per-token clip bounds and loss; spec vectors from
algorithms-token-level.md 10.8 and float64 references written from the formulas."""

import json
import math

import pytest
import torch

from creditrl.algorithms import ADVANTAGES, POLICY_LOSSES
from creditrl.algorithms.base import AdvantageInputs, LossInputs
from creditrl.algorithms.dcpo_clip import DCPOClipConfig, dcpo_clip_bounds, dcpo_clip_loss
from creditrl.algorithms.dcpo_sas import DCPOSASConfig, PromptStats, sas_group_advantages


# ---- SAS ---------------------------------------------------------------------------------------------------
def reference_sas(rewards, k, mu_old, sd_old, norm_by_std=True):
    G = len(rewards)
    mu_new = sum(rewards) / G
    sd_new = math.sqrt(sum((r - mu_new) ** 2 for r in rewards) / (G - 1))
    if k == 0:
        mu, sd = mu_new, sd_new
    else:
        mu = (k * mu_old + mu_new) / (k + 1)
        sd = math.sqrt((k * sd_old**2 + sd_new**2 + k / (k + 1) * (mu_new - mu_old) ** 2) / (k + 1))
    out = []
    for r in rewards:
        if norm_by_std:
            a_new = (r - mu_new) / sd_new if sd_new > 0 else 0.0
            a_tot = (r - mu) / sd if sd > 0 else 0.0
        else:
            a_new, a_tot = r - mu_new, r - mu
        s_new = k / (k + 1) * a_new + a_tot / (k + 1)
        s_tot = a_new / (k + 1) + k / (k + 1) * a_tot
        out.append(s_new if abs(s_new) < abs(s_tot) else s_tot)
    return out, (k + 1, mu, sd)


def test_sas_spec_vectors():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    a, st, _ = sas_group_advantages(r, PromptStats(0, 0.0, 0.0))
    torch.testing.assert_close(a, torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=torch.float64))
    assert (st.count, st.mean) == (1, 0.25) and st.std == pytest.approx(0.5)

    a, st, chose_new = sas_group_advantages(torch.ones(4, dtype=torch.float64), PromptStats(2, 0.25, 0.5))
    assert st.mean == pytest.approx(0.5) and st.std == pytest.approx(0.540062, abs=1e-6)
    torch.testing.assert_close(a, torch.full((4,), 0.308607, dtype=torch.float64), rtol=0, atol=1e-6)
    assert chose_new.all()  # |SA_new| = 0.309 < |SA_total| = 0.617

    a, st, _ = sas_group_advantages(r, PromptStats(1, 0.5, 0.57735))
    assert st.mean == pytest.approx(0.375) and st.std == pytest.approx(0.554339, abs=1e-6)
    torch.testing.assert_close(a, torch.tensor([1.313735, -0.588241, -0.588241, -0.588241], dtype=torch.float64),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_sas_multi_step_state_matches_reference(norm_by_std):
    """Three steps of two prompts through the stateful part; prompt 'p' also shows up in two groups of step 2."""
    part = ADVANTAGES.build("dcpo_sas", DCPOSASConfig(norm_by_std=norm_by_std))
    gen = torch.Generator().manual_seed(0)
    ref_state: dict[str, tuple[int, float, float]] = {}
    steps = [
        (["p"] * 3 + ["q"] * 3, [0, 0, 0, 1, 1, 1]),
        (["q"] * 4 + ["p"] * 2 + ["p"] * 2, [5, 5, 5, 5, 6, 6, 7, 7]),
        (["p"] * 3 + ["q"] * 3, [8, 8, 8, 9, 9, 9]),
    ]
    for keys, gids in steps:
        rewards = torch.randint(0, 2, (len(keys),), generator=gen).to(torch.float64)
        mask = torch.ones(len(keys), 2, dtype=torch.float64)
        adv, metrics = part(AdvantageInputs(rewards, torch.tensor(gids), mask, keys))
        expected = [0.0] * len(keys)
        for g in dict.fromkeys(gids):
            rows = [i for i, h in enumerate(gids) if h == g]
            k, mu, sd = ref_state.get(keys[rows[0]], (0, 0.0, 0.0))
            vals, ref_state[keys[rows[0]]] = reference_sas([rewards[i].item() for i in rows], k, mu, sd, norm_by_std)
            for i, v in zip(rows, vals):
                expected[i] = v
        torch.testing.assert_close(adv[:, 0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        assert metrics["adv/sas_prompts_tracked"] == 2.0
    for key, (k, mu, sd) in ref_state.items():
        assert part.stats[key].count == k
        assert part.stats[key].mean == pytest.approx(mu) and part.stats[key].std == pytest.approx(sd)


def test_sas_no_dead_zone_for_all_equal_rewards_on_revisit():
    part = ADVANTAGES.build("dcpo_sas", DCPOSASConfig())
    mask = torch.ones(4, 1)
    first = AdvantageInputs(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long), mask, ["x"] * 4)
    part(first)
    same = AdvantageInputs(torch.ones(4), torch.ones(4, dtype=torch.long), mask, ["x"] * 4)
    adv, _ = part(same)
    assert torch.all(adv != 0)  # GRPO would give exactly 0 here


def test_sas_disabled_is_grpo_without_eps_and_keeps_no_state():
    part = ADVANTAGES.build("dcpo_sas", DCPOSASConfig(enabled=False))
    mask = torch.ones(6, 2, dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    for _ in range(2):
        adv, _ = part(AdvantageInputs(r, torch.tensor([0, 0, 0, 1, 1, 1]), mask, ["a"] * 3 + ["b"] * 3))
    sd = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = [(1 - 1 / 3) / sd, -1 / 3 / sd, -1 / 3 / sd, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected, dtype=torch.float64))
    assert part.state_dict() == {"stats": {}}


def test_sas_state_dict_is_json_and_round_trips():
    part = ADVANTAGES.build("dcpo_sas", DCPOSASConfig())
    inputs = AdvantageInputs(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), torch.ones(4, 3),
                             ["k1", "k1", "k2", "k2"])
    part(inputs)
    state = json.loads(json.dumps(part.state_dict()))
    restored = ADVANTAGES.build("dcpo_sas", DCPOSASConfig())
    restored.load_state_dict(state)
    assert restored.stats == part.stats
    a1, _ = part(inputs)
    a2, _ = restored(inputs)
    torch.testing.assert_close(a1, a2)


def test_sas_errors_and_masking():
    part = ADVANTAGES.build("dcpo_sas", DCPOSASConfig())
    with pytest.raises(ValueError, match="at least 2 responses"):
        part(AdvantageInputs(torch.tensor([1.0]), torch.tensor([0]), torch.ones(1, 1), ["a"]))
    with pytest.raises(ValueError, match="share one prompt key"):
        part(AdvantageInputs(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.ones(2, 1), ["a", "b"]))
    with pytest.raises(ValueError, match="one prompt key per response"):
        part(AdvantageInputs(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.ones(2, 1), ["a"]))
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    adv, _ = ADVANTAGES.build("dcpo_sas", DCPOSASConfig())(
        AdvantageInputs(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask, ["a", "a"]))
    assert adv[0, 1] == 0 and torch.all(adv[1] == 0) and adv[0, 0] > 0


# ---- DAC ---------------------------------------------------------------------------------------------------
def reference_bounds(q: float, el: float, eh: float, c: float) -> tuple[float, float]:
    if q == 0:
        return 1.0, max(c, 10.0)
    lo = 0.5 + 0.5 * math.sqrt(max(1 - 4 * el / q, 0.0))
    hi = min(0.5 + 0.5 * math.sqrt(1 + 4 * eh / q), max(c, 10.0))
    return lo, hi


@pytest.mark.parametrize(
    "q,code,readme",
    [
        (0.9, (0.666667, 1.249074), (0.768742, 1.187184)),
        (0.5, (0.5, 1.4), (0.5, 1.306226)),
        (0.1, (0.5, 2.246425), (0.5, 2.0)),
        (0.01, (0.5, 5.815073), (0.5, 5.0)),
        (0.001, (0.5, 10.0), (0.5, 10.0)),
    ],
)
def test_dac_bound_spec_table(q, code, readme):
    old = torch.tensor([[math.log(q)]], dtype=torch.float64)
    for (el, eh), expected in (((0.2, 0.28), code), ((0.16, 0.2), readme)):
        lo, hi = dcpo_clip_bounds(old, el, eh, 10.0)
        assert lo.item() == pytest.approx(expected[0], abs=1e-6)
        assert hi.item() == pytest.approx(expected[1], abs=1e-6)


def test_dac_bounds_underflow_edge_case():
    lo, hi = dcpo_clip_bounds(torch.tensor([[-float("inf"), -2000.0]], dtype=torch.float64), 0.2, 0.28, 10.0)
    torch.testing.assert_close(lo, torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(hi, torch.tensor([[10.0, 10.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    "a,r,q,expected",
    [(1, 3.0, 0.01, -3.0), (1, 7.0, 0.01, -5.815073), (-1, 0.3, 0.01, 0.5), (-1, 12.0, 0.01, 10.0),
     (1, 1.3, 0.9, -1.249074), (-1, 0.6, 0.9, 0.666667)],
)
def test_dac_loss_spec_table(a, r, q, expected):
    old = torch.tensor([[math.log(q)]], dtype=torch.float64)
    loss, _ = dcpo_clip_loss(old + math.log(r), old, torch.tensor([[float(a)]], dtype=torch.float64),
                             torch.ones(1, 1, dtype=torch.float64), 0.2, 0.28, 10.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_dac_random_inputs_values_and_gradients_match_reference():
    gen = torch.Generator().manual_seed(3)
    old = torch.log(torch.rand(4, 6, generator=gen, dtype=torch.float64) * 0.99 + 0.005)
    lp = (old + torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.7).requires_grad_()
    adv = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=gen) > 0.2).to(torch.float64)
    loss, metrics = dcpo_clip_loss(lp, old, adv, mask, 0.2, 0.28, 10.0)
    loss.sum().backward()
    los, his = [], []
    for i in range(4):
        for t in range(6):
            q, a = math.exp(old[i, t].item()), adv[i, t].item()
            r = math.exp(lp[i, t].item() - old[i, t].item())
            lo, hi = reference_bounds(q, 0.2, 0.28, 10.0)
            l1, l2 = -a * r, -a * min(max(r, lo), hi)
            value, grad = (l1, -a * r) if l1 >= l2 else (l2, 0.0)
            if a < 0 and value > -a * 10.0:
                value, grad = -a * 10.0, 0.0
            m = mask[i, t].item()
            assert loss[i, t].item() == pytest.approx(value * m, abs=1e-12)
            assert lp.grad[i, t].item() == pytest.approx(grad * m, abs=1e-12)
            if m:
                los.append(lo)
                his.append(hi)
    assert metrics["dcpo/clip_lo_mean"].item() == pytest.approx(sum(los) / len(los))
    assert metrics["dcpo/clip_hi_mean"].item() == pytest.approx(sum(his) / len(his))
    torch.autograd.gradcheck(lambda x: dcpo_clip_loss(x, old, adv, mask)[0], (lp.detach().requires_grad_(),))


def test_dac_log_ratio_clamp_prevents_overflow():
    loss, _ = dcpo_clip_loss(torch.tensor([[0.0]]), torch.tensor([[-500.0]]), torch.tensor([[-1.0]]),
                             torch.ones(1, 1))
    assert loss.item() == pytest.approx(10.0)  # dual clip; without the clamp r = inf
    loss, _ = dcpo_clip_loss(torch.tensor([[0.0]]), torch.tensor([[-500.0]]), torch.tensor([[1.0]]), torch.ones(1, 1))
    assert torch.isfinite(loss).all()


def test_dac_registered_part_and_validation():
    part = POLICY_LOSSES.build("dcpo_clip", DCPOClipConfig())
    x = torch.full((1, 2), -0.5)
    loss, metrics = part(LossInputs(logprobs=x, old_logprobs=x, advantages=torch.ones(1, 2), mask=torch.ones(1, 2)))
    torch.testing.assert_close(loss, -torch.ones(1, 2))
    assert {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "dcpo/clip_lo_mean", "dcpo/clip_hi_mean",
            "dcpo/clip_hi_capped_frac"} <= set(metrics)
    with pytest.raises(ValueError, match="dual_clip"):
        DCPOClipConfig(dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        DCPOClipConfig(clip_low=-0.1)
