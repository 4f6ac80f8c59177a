"""REINFORCE++ and REINFORCE++-baseline advantages (Hu et al., arXiv 2501.03262), verl 0.9.1 semantics.

Both end with a *global* masked whitening over every valid token of the step batch:

    whiten(x) = (x - mean_m(x)) / sqrt(var_m(x) + 1e-8)        var_m unbiased (N - 1), N = sum(m)

`reinforce_pp` (verl `reinforce_plus_plus`): discounted token returns of the per-token rewards,

    G_t = m_t (r_t + gamma G_{t+1}) + (1 - m_t) G_{t+1},        G_T = 0
    A   = whiten(G) * m

The return is carried unchanged through masked positions (verl 0.9.1; the git snapshot zeroed it there). The
two agree for right-padded single-turn responses. Per-token rewards are `token_rewards` when given (e.g. after
the KL-in-reward penalty, the usual pairing), else the sequence reward on the last valid token.

`reinforce_pp_baseline` (verl `reinforce_plus_plus_baseline`): subtract the group mean reward (singleton
groups: mean 0), broadcast over the tokens, then whiten:

    A = whiten((R_i - mean_g(R)) * m) * m

Intentional difference from verl: verl raises when the batch has exactly one valid token (unbiased variance
undefined); here the variance is taken as 0 there, which gives A = 0. An empty batch gives A = 0.
Reference: algorithms.md section 1.3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, Metrics, stateless
from creditrl.algorithms.groups import group_sizes, group_sums
from creditrl.algorithms.registry import ADVANTAGES

WHITEN_EPS = 1e-8


def masked_whiten(values: Tensor, mask: Tensor) -> Tensor:
    """(x - mean) / sqrt(var_unbiased + 1e-8) over positions where mask is 1, in float64.  [B, T]"""
    m = mask.to(torch.float64)
    x = values.to(torch.float64)
    n = m.sum()
    mean = (x * m).sum() / n.clamp_min(1.0)
    var = ((x - mean).square() * m).sum() / (n - 1.0).clamp_min(1.0)
    return ((x - mean) * torch.rsqrt(var + WHITEN_EPS)).to(values.dtype)


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = m_t (r_t + gamma G_{t+1}) + (1 - m_t) G_{t+1}, scanned right to left.  [B, T]"""
    returns = torch.zeros_like(token_rewards, dtype=torch.float64)
    running = torch.zeros(token_rewards.shape[0], dtype=torch.float64)
    r = token_rewards.to(torch.float64)
    m = mask.to(torch.float64)
    for t in reversed(range(token_rewards.shape[1])):
        running = m[:, t] * (r[:, t] + gamma * running) + (1.0 - m[:, t]) * running
        returns[:, t] = running
    return returns


def reward_on_last_token(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence reward [B] on its last valid token -> [B, T]; empty responses get nothing."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    lengths = mask.sum(-1).long()  # [B]
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    positions = torch.arange(mask.shape[1]).expand_as(mask) * (mask > 0)  # [B, T] index where valid, else 0
    last = positions.max(dim=-1).values  # [B] last valid position (handles holes in the mask)
    out[rows, last[rows]] = rewards.to(torch.float64)[rows]
    return out


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE++ advantages [B, T]: globally whitened discounted returns of the per-token rewards."""
    returns = discounted_returns(token_rewards, mask, gamma)
    return (masked_whiten(returns, mask) * mask).to(mask.dtype)


def reinforce_pp_baseline_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE++-baseline advantages [B, T]: group-mean baseline, then global masked whitening."""
    n = group_sizes(group_ids).to(torch.float64)
    mean = torch.where(n > 1, group_sums(rewards, group_ids) / n, torch.zeros_like(n))  # [B]
    centred = (rewards.to(torch.float64) - mean).unsqueeze(-1) * mask.to(torch.float64)  # [B, T]
    return (masked_whiten(centred, mask) * mask).to(mask.dtype)


@dataclass
class ReinforcePPConfig:
    gamma: float = 1.0  # discount of the token returns (verl algorithm.gamma)

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"reinforce_pp.gamma must be in [0, 1] (got {self.gamma})")


@ADVANTAGES.register("reinforce_pp", ReinforcePPConfig)
@stateless
class ReinforcePPAdvantage:
    """REINFORCE++: globally whitened discounted token returns (pair with kl.placement: reward)."""

    needs = frozenset()

    def __init__(self, cfg: ReinforcePPConfig):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        token_rewards = inputs.token_rewards
        if token_rewards is None:
            token_rewards = reward_on_last_token(inputs.rewards, inputs.mask)
        adv = reinforce_pp_advantages(token_rewards, inputs.mask, self.cfg.gamma)
        return adv, {}


@dataclass
class ReinforcePPBaselineConfig:
    """REINFORCE++-baseline has no options."""


@ADVANTAGES.register("reinforce_pp_baseline", ReinforcePPBaselineConfig)
@stateless
class ReinforcePPBaselineAdvantage:
    """REINFORCE++-baseline: group-mean baseline, then global masked whitening."""

    needs = frozenset()

    def __init__(self, cfg: ReinforcePPBaselineConfig):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        adv = reinforce_pp_baseline_advantages(inputs.rewards, inputs.group_ids, inputs.mask)
        singletons = (group_sizes(inputs.group_ids) == 1).float().mean().item()
        return adv, {"adv/singleton_frac": singletons}
