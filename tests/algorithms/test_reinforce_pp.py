"""REINFORCE++ and REINFORCE++-baseline (algorithms.md 1.3) against float64 loop references."""

import math

import pytest
import torch

from creditrl.algorithms import ADVANTAGES
from creditrl.algorithms.base import AdvantageInputs
from creditrl.algorithms.reinforce_pp import (
    ReinforcePPBaselineConfig,
    ReinforcePPConfig,
    discounted_returns,
    masked_whiten,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
)


def reference_whiten(values: list[list[float]], mask: list[list[float]]) -> list[list[float]]:
    xs = [v for vr, mr in zip(values, mask) for v, m in zip(vr, mr) if m > 0]
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return [[(v - mean) / math.sqrt(var + 1e-8) * m for v, m in zip(vr, mr)] for vr, mr in zip(values, mask)]


def reference_returns(rewards: list[list[float]], mask: list[list[float]], gamma: float) -> list[list[float]]:
    out = []
    for rr, mr in zip(rewards, mask):
        g, row = 0.0, [0.0] * len(rr)
        for t in reversed(range(len(rr))):
            if mr[t] > 0:  # masked positions carry the running return unchanged (verl 0.9.1)
                g = rr[t] + gamma * g
            row[t] = g
        out.append(row)
    return out


def test_returns_carry_through_mask_holes():
    rewards = torch.tensor([[1.0, 0.0, 5.0, 2.0, 0.0]], dtype=torch.float64)  # 5.0 sits on a masked position
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    g = discounted_returns(rewards, mask, 0.5)
    ref = reference_returns(rewards.tolist(), mask.tolist(), 0.5)
    torch.testing.assert_close(g, torch.tensor(ref, dtype=torch.float64))
    # by hand: G3 = 2, G2 = 2 (carried), G1 = 0 + 0.5 * 2 = 1, G0 = 1 + 0.5 * 1 = 1.5
    torch.testing.assert_close(g[0, :4], torch.tensor([1.5, 1.0, 2.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_matches_reference(gamma):
    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(6, 7, generator=gen) > 0.25).to(torch.float64)
    rewards = torch.randn(6, 7, generator=gen, dtype=torch.float64) * mask
    adv = reinforce_pp_advantages(rewards, mask, gamma)
    ref = reference_whiten(reference_returns(rewards.tolist(), mask.tolist(), gamma), mask.tolist())
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    valid = adv[mask > 0]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)


def test_reinforce_pp_baseline_matches_reference():
    gen = torch.Generator().manual_seed(1)
    groups = [0, 0, 0, 1, 1, 2]  # group 2 is a singleton: baseline 0
    rewards = torch.randn(6, generator=gen, dtype=torch.float64)
    lens = [3, 1, 4, 2, 4, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (4 - n) for n in lens], dtype=torch.float64)
    adv = reinforce_pp_baseline_advantages(rewards, torch.tensor(groups), mask)
    r = rewards.tolist()
    centred = []
    for i, g in enumerate(groups):
        members = [r[j] for j, h in enumerate(groups) if h == g]
        mean = sum(members) / len(members) if len(members) > 1 else 0.0
        centred.append([(r[i] - mean) * m for m in mask[i].tolist()])
    ref = reference_whiten(centred, mask.tolist())  # token-weighted: longer responses count more
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_single_valid_token_and_empty_batch_give_zero():
    one = masked_whiten(torch.tensor([[3.0, 9.0]], dtype=torch.float64),
                        torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert one[0, 0].item() == 0.0
    empty = reinforce_pp_advantages(torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.all(empty == 0) and torch.isfinite(empty).all()


def test_all_equal_rewards_give_zero_baseline_advantage():
    adv = reinforce_pp_baseline_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]), torch.ones(4, 3))
    assert torch.all(adv.abs() < 1e-6)


def test_registered_parts_use_token_rewards_or_last_token():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0, 2.0]), group_ids=torch.tensor([0, 0, 1]), mask=mask,
                             prompt_keys=["a", "a", "b"])
    part = ADVANTAGES.build("reinforce_pp", ReinforcePPConfig(gamma=1.0))
    adv, _ = part(inputs)
    # gamma 1, reward on the last token: the return is the sequence reward on every valid token
    ref = reference_whiten([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]], mask.tolist())
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float32))
    token_rewards = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    adv2, _ = part(AdvantageInputs(**{**inputs.__dict__, "token_rewards": token_rewards}))
    ref2 = reference_whiten(reference_returns(token_rewards.tolist(), mask.tolist(), 1.0), mask.tolist())
    torch.testing.assert_close(adv2, torch.tensor(ref2, dtype=torch.float32))
    base, metrics = ADVANTAGES.build("reinforce_pp_baseline", ReinforcePPBaselineConfig())(inputs)
    assert metrics["adv/singleton_frac"] == pytest.approx(1 / 3)
    assert torch.isfinite(base).all()


def test_gamma_validation():
    with pytest.raises(ValueError, match="gamma"):
        ReinforcePPConfig(gamma=1.5)
