"""HAPO token-level group average advantage: group statistics weighted by response length.

Paper: arXiv 2509.16591 (HAPO). Reference code: `starriver030515/HAPO`, `compute_hapo_outcome_advantage`.
Spec: algorithms-token-level.md §13.4.

For a group g (the responses to one prompt), with n_i valid tokens in response i and reward R_i:

    mu_g    = sum_i n_i R_i / sum_i n_i                          (the mean over the group's tokens)
    sigma_g = sqrt(sum_i n_i (R_i - mu_g)^2 / sum_i n_i)         (population std over the group's tokens)
    A_i     = (R_i - mu_g) / (sigma_g + eps)      or  R_i - mu_g  with norm_by_std: false

Fallback: when any |A_i| >= fallback_threshold (5) in a group, the whole group uses the GRPO advantage instead
(verl `grpo`: unbiased std, eps 1e-6, singleton groups get mean 0 / std 1). A singleton or all-equal group gets
A = 0 (sigma = 0); empty responses carry no weight in the group statistics and get no token. The scalar is
broadcast over the tokens and masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, Metrics, stateless
from creditrl.algorithms.grpo import grpo_advantages
from creditrl.algorithms.registry import ADVANTAGES


def token_weighted_group_stats(rewards: Tensor, group_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Length-weighted group mean and population std of the rewards, per response, float64.  ([B], [B])"""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    r = rewards.double()
    n = lengths.double()
    zeros = torch.zeros(len(counts), dtype=torch.float64)
    tokens = zeros.index_add(0, inverse, n)
    mean = zeros.index_add(0, inverse, n * r) / tokens.clamp_min(1.0)
    var = zeros.index_add(0, inverse, n * (r - mean[inverse]) ** 2) / tokens.clamp_min(1.0)
    return mean[inverse], var.sqrt()[inverse]


def hapo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    fallback_threshold: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """HAPO advantages [B, T] (masked) and the per-response fallback flag [B] (bool)."""
    mean, std = token_weighted_group_stats(rewards, group_ids, mask.sum(-1))
    adv = rewards.double() - mean
    if norm_by_std:
        adv = adv / (std + eps)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    too_big = (adv.abs() >= fallback_threshold).to(torch.int64)
    group_fallback = torch.zeros(int(inverse.max()) + 1 if len(inverse) else 0, dtype=torch.int64)
    fallback = group_fallback.index_add(0, inverse, too_big)[inverse] > 0
    grpo = grpo_advantages(rewards.double(), group_ids, torch.ones_like(adv)[:, None], norm_by_std, eps)[:, 0]
    adv = torch.where(fallback, grpo, adv)
    return adv.unsqueeze(-1).to(mask.dtype) * mask, fallback


@dataclass
class HapoAdvantageConfig:
    norm_by_std: bool = True  # divide by the length-weighted group std (+ eps); false = R_i - mu_g only
    eps: float = 1e-6  # added to sigma_g (and to the GRPO fallback's std), >= 0
    fallback_threshold: float = 5.0  # |A| at or above which the group falls back to GRPO

    def __post_init__(self):
        if self.eps < 0:
            raise ValueError(f"hapo advantage eps must be >= 0, got {self.eps}")
        if self.fallback_threshold <= 0:
            raise ValueError(f"hapo advantage fallback_threshold must be > 0, got {self.fallback_threshold}")


@ADVANTAGES.register("hapo", HapoAdvantageConfig)
@stateless
class HapoAdvantage:
    """HAPO token-level group average advantage (length-weighted group mean/std, GRPO fallback)."""

    needs = frozenset()

    def __init__(self, cfg: HapoAdvantageConfig):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        adv, fallback = hapo_advantages(inputs.rewards, inputs.group_ids, inputs.mask, c.norm_by_std, c.eps,
                                        c.fallback_threshold)
        _, std = token_weighted_group_stats(inputs.rewards, inputs.group_ids, inputs.mask.sum(-1))
        return adv, {
            "adv/hapo_fallback_frac": fallback.double().mean().item() if len(fallback) else 0.0,
            "adv/zero_std_frac": (std == 0).double().mean().item() if len(std) else 0.0,
        }
