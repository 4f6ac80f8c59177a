"""GRPO / Dr.GRPO advantages against a float64 loop reference and the spec vectors (algorithms.md 1.1, 1.5)."""

import math

import pytest
import torch

from creditrl.algorithms import ADVANTAGES
from creditrl.algorithms.base import AdvantageInputs
from creditrl.algorithms.grpo import GRPOConfig, grpo_advantages


def reference_grpo(rewards: list[float], groups: list[int], norm_by_std: bool, eps: float) -> list[float]:
    out = []
    for i, g in enumerate(groups):
        members = [rewards[j] for j, h in enumerate(groups) if h == g]
        n = len(members)
        if n == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(members) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in members) / (n - 1))
        a = rewards[i] - mean
        out.append(a / (std + eps) if norm_by_std else a)
    return out


def test_spec_vector_verl_eps():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    adv = grpo_advantages(r, torch.zeros(4, dtype=torch.long), torch.ones(4, 1, dtype=torch.float64))
    expected = torch.tensor([0.8660239038, -0.8660239038, -0.8660239038, 0.8660239038], dtype=torch.float64)
    torch.testing.assert_close(adv[:, 0], expected, rtol=0, atol=1e-10)


def test_spec_vector_trl_eps_and_dr_grpo():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    g = torch.zeros(4, dtype=torch.long)
    m = torch.ones(4, 1, dtype=torch.float64)
    trl = grpo_advantages(r, g, m, eps=1e-4)[:, 0]
    torch.testing.assert_close(trl.abs(), torch.full((4,), 0.8658754298, dtype=torch.float64), rtol=0, atol=1e-10)
    dr = grpo_advantages(r, g, m, norm_by_std=False)[:, 0]
    torch.testing.assert_close(dr, torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_random_groups_match_reference(norm_by_std):
    gen = torch.Generator().manual_seed(0)
    groups = torch.tensor([3, 3, 3, 7, 7, 1, 5, 5, 5, 5])  # includes a singleton (1)
    rewards = torch.randint(0, 3, (10,), generator=gen).to(torch.float64)
    rewards = rewards + torch.rand(10, generator=gen, dtype=torch.float64)
    mask = (torch.rand(10, 6, generator=gen) > 0.3).to(torch.float64)
    adv = grpo_advantages(rewards, groups, mask, norm_by_std=norm_by_std)
    ref = torch.tensor(reference_grpo(rewards.tolist(), groups.tolist(), norm_by_std, 1e-6), dtype=torch.float64)
    torch.testing.assert_close(adv, ref.unsqueeze(-1) * mask, rtol=1e-12, atol=1e-12)


def test_all_equal_group_gets_zero_and_singleton_keeps_reward():
    r = torch.tensor([2.0, 2.0, 2.0, 0.7], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 1])
    adv = grpo_advantages(r, g, torch.ones(4, 3, dtype=torch.float64))
    assert torch.all(adv[:3] == 0)
    torch.testing.assert_close(adv[3], torch.full((3,), 0.7 / (1 + 1e-6), dtype=torch.float64))


def test_empty_response_and_padding_are_zero():
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    adv = grpo_advantages(r, torch.zeros(2, dtype=torch.long), mask)
    assert adv[0, 2] == 0 and torch.all(adv[1] == 0)
    assert adv[0, 0] > 0


def test_registered_part_and_metrics():
    part = ADVANTAGES.build("grpo", GRPOConfig(norm_by_std=False))
    inputs = AdvantageInputs(
        rewards=torch.tensor([1.0, 1.0, 0.0, 1.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        mask=torch.ones(4, 2),
        prompt_keys=["a", "a", "b", "b"],
    )
    adv, metrics = part(inputs)
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.0, 0.0, -0.5, 0.5]))
    assert metrics["adv/zero_std_frac"] == 0.5
    assert part.state_dict() == {}


def test_config_rejects_negative_eps():
    with pytest.raises(ValueError, match="grpo.eps"):
        GRPOConfig(eps=-1.0)
