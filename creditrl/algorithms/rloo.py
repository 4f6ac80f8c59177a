"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., arXiv 2402.14740).

For a group of n > 1 responses to one prompt:

    A_i = R_i - mean_{j != i} R_j = (n R_i - sum_j R_j) / (n - 1)

broadcast over the response tokens and multiplied by the mask. No std normalisation.

Singleton groups (n = 1) have no baseline and get A = 0. This follows verl 0.9.1 `rloo_vectorized`;
verl's loop version `rloo` keeps A = R for singletons instead (algorithms.md section 1.2, "Follow: singletons
get 0"). The two agree whenever every group has at least two responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, Metrics, stateless
from creditrl.algorithms.groups import group_sizes, group_sums
from creditrl.algorithms.registry import ADVANTAGES


def rloo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """RLOO advantages [B, T] from sequence rewards [B], group ids [B] and the response mask [B, T]."""
    n = group_sizes(group_ids).to(torch.float64)  # [B]
    total = group_sums(rewards, group_ids)  # [B]
    r = rewards.to(torch.float64)
    adv = torch.where(n > 1, (n * r - total) / (n - 1).clamp_min(1.0), torch.zeros_like(r))  # [B]
    return adv.unsqueeze(-1).to(mask.dtype) * mask


@dataclass
class RLOOConfig:
    """RLOO has no options."""


@ADVANTAGES.register("rloo", RLOOConfig)
@stateless
class RLOOAdvantage:
    """RLOO leave-one-out baseline advantage (singleton groups get 0)."""

    needs = frozenset()

    def __init__(self, cfg: RLOOConfig):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        adv = rloo_advantages(inputs.rewards, inputs.group_ids, inputs.mask)
        singletons = (group_sizes(inputs.group_ids) == 1).float().mean().item()
        return adv, {"adv/singleton_frac": singletons}
