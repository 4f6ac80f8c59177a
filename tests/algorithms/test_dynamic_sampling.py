"""DAPO dynamic sampling keep-mask (algorithms.md section 7)."""

import pytest
import torch

from creditrl.algorithms.dynamic_sampling import dynamic_sampling_keep_mask


def reference_keep(rewards: list[float], groups: list[int]) -> list[bool]:
    out = []
    for g in groups:
        members = [r for r, h in zip(rewards, groups) if h == g]
        mean = sum(members) / len(members)
        pop_std = (sum((x - mean) ** 2 for x in members) / len(members)) ** 0.5
        out.append(pop_std > 0 or len(members) == 1)
    return out


def test_hand_case_and_metrics():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3])  # all correct, all wrong, mixed, singleton
    keep, metrics = dynamic_sampling_keep_mask(rewards, groups)
    assert keep.tolist() == [False, False, False, False, False, False, True, True, True]
    assert metrics["dynamic_sampling/groups"] == 4.0
    assert metrics["dynamic_sampling/kept_groups"] == 2.0
    assert metrics["dynamic_sampling/kept_frac"] == 0.5
    assert metrics["dynamic_sampling/all_max_frac"] == 0.25
    assert metrics["dynamic_sampling/all_min_frac"] == 0.25


def test_random_groups_match_population_std_reference():
    gen = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 12, (60,), generator=gen)
    rewards = torch.randint(0, 2, (60,), generator=gen).to(torch.float32)
    keep, _ = dynamic_sampling_keep_mask(rewards, groups)
    assert keep.tolist() == reference_keep(rewards.tolist(), groups.tolist())


def test_float_rewards_that_are_equal_are_dropped_exactly():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.1 + 1e-7])
    keep, _ = dynamic_sampling_keep_mask(rewards, torch.tensor([0, 0, 1, 1]))
    assert keep.tolist() == [False, False, True, True]


def test_empty_batch():
    keep, metrics = dynamic_sampling_keep_mask(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert keep.numel() == 0 and metrics["dynamic_sampling/kept_frac"] == pytest.approx(0.0)
