"""GRPO group-relative advantages, and Dr.GRPO (no std normalisation).

    A_i = (R_i - mean_g(R)) / (std_g(R) + eps)      std unbiased (N-1); eps = 1e-6 as in verl
    A_i =  R_i - mean_g(R)                          Dr.GRPO, `norm_by_std: false` (arXiv 2503.20783)

A group is the set of responses to one prompt. A singleton group gets mean 0 and std 1 (verl `grpo`), so its
advantage is its reward. The scalar is broadcast over the response tokens and multiplied by the mask.
GRPO: DeepSeekMath, arXiv 2402.03300. Reference: verl 0.9.1 `compute_grpo_outcome_advantage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, Metrics, stateless
from creditrl.algorithms.registry import ADVANTAGES


def group_mean_std(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element mean and unbiased std of its group. Singleton groups get (0, 1).  -> ([B], [B])"""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    v = values.to(torch.float64)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, v)
    means = sums / counts
    sq = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, (v - means[inverse]) ** 2)
    stds = torch.sqrt(sq / (counts - 1).clamp_min(1))
    single = counts == 1
    means = torch.where(single, torch.zeros_like(means), means)
    stds = torch.where(single, torch.ones_like(stds), stds)
    return means[inverse].to(values.dtype), stds[inverse].to(values.dtype)


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, mask: Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO advantages [B, T] from sequence rewards [B], group ids [B] and the response mask [B, T]."""
    mean, std = group_mean_std(rewards, group_ids)
    adv = rewards - mean
    if norm_by_std:
        adv = adv / (std + eps)
    return adv.unsqueeze(-1).to(mask.dtype) * mask


@dataclass
class GRPOConfig:
    norm_by_std: bool = True  # false = Dr.GRPO
    eps: float = 1e-6  # verl; TRL uses 1e-4

    def __post_init__(self):
        if self.eps < 0:
            raise ValueError(f"grpo.eps must be >= 0 (got {self.eps})")


@ADVANTAGES.register("grpo", GRPOConfig)
@stateless
class GRPOAdvantage:
    """GRPO group-normalised advantage (Dr.GRPO with norm_by_std: false)."""

    needs = frozenset()

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        adv = grpo_advantages(inputs.rewards, inputs.group_ids, inputs.mask, self.cfg.norm_by_std, self.cfg.eps)
        _, std = group_mean_std(inputs.rewards, inputs.group_ids)
        zero_var = (std == 0).float().mean().item()
        return adv, {"adv/zero_std_frac": zero_var}
