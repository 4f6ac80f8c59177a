"""RLOO leave-one-out advantages (algorithms.md 1.2, 1.5): singletons get 0."""

import pytest
import torch

from creditrl.algorithms import ADVANTAGES
from creditrl.algorithms.base import AdvantageInputs
from creditrl.algorithms.rloo import RLOOConfig, rloo_advantages


def reference_rloo(rewards: list[float], groups: list[int]) -> list[float]:
    out = []
    for i, g in enumerate(groups):
        others = [rewards[j] for j, h in enumerate(groups) if h == g and j != i]
        out.append(rewards[i] - sum(others) / len(others) if others else 0.0)
    return out


def test_spec_vector():
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), torch.zeros(4, dtype=torch.long),
                          torch.ones(4, 1, dtype=torch.float64))
    torch.testing.assert_close(adv[:, 0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3], dtype=torch.float64))


def test_random_groups_match_reference_with_singletons_zero():
    gen = torch.Generator().manual_seed(0)
    groups = torch.tensor([4, 4, 9, 9, 9, 2, 6, 6, 6, 6])  # group 2 is a singleton
    rewards = torch.randn(10, generator=gen, dtype=torch.float64)
    mask = (torch.rand(10, 5, generator=gen) > 0.3).to(torch.float64)
    adv = rloo_advantages(rewards, groups, mask)
    ref = torch.tensor(reference_rloo(rewards.tolist(), groups.tolist()), dtype=torch.float64)
    torch.testing.assert_close(adv, ref.unsqueeze(-1) * mask, rtol=1e-12, atol=1e-12)
    assert torch.all(adv[5] == 0)


def test_all_equal_rewards_give_zero_and_padding_stays_zero():
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    adv = rloo_advantages(torch.tensor([0.3, 0.3, 0.3]), torch.zeros(3, dtype=torch.long), mask)
    assert torch.all(adv == 0)


def test_registered_part():
    part = ADVANTAGES.build("rloo", RLOOConfig())
    inputs = AdvantageInputs(rewards=torch.tensor([1.0, 0.0, 5.0]), group_ids=torch.tensor([0, 0, 1]),
                             mask=torch.ones(3, 2), prompt_keys=["a", "a", "b"])
    adv, metrics = part(inputs)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.0, -1.0, 0.0]))
    assert metrics["adv/singleton_frac"] == pytest.approx(1 / 3)
    assert part.state_dict() == {}
