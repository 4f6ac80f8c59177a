"""GPG: group policy gradient, its advantage and its loss (Chu et al., "GPG: A Simple and Strong Reinforcement
Learning Baseline for Model Reasoning", arXiv 2504.02546). verl 0.9.1 semantics.

Advantage (`advantage: gpg`, verl `compute_gpg_outcome_advantage`), over the whole step batch of B responses:

    alpha = B / max(1, #{i : R_i != 0})                    one scalar for the step batch
    A_i   = alpha (R_i - mean_g(R)) / f_norm                f_norm = 1; no std division
    mean_g of a singleton group = 0 (as verl `grpo`), so a singleton gets A_i = alpha R_i

broadcast over the response tokens and multiplied by the mask. verl passes no `f_norm` or `alpha` from its config
(alpha is always recomputed as above, f_norm stays 1), so this part has no options. Note that alpha counts
responses with a non-zero reward, which is what verl's code does (the paper motivates alpha as a correction for
the responses that carry no gradient; with 0/1 rewards verl's count is the number of correct responses).

Loss (`policy_loss: gpg`, verl `compute_policy_loss_gpg`):

    L_t = -A_t l_t                                         no ratio, no clip; gradient -A_t grad(l_t)

aggregated with `loss_agg` (verl: `loss_agg_mode`, default token-mean). The value differs from the on-policy PPO
value (-A r), the gradient does not. Metric `ppo_kl` = mean(l_old - l) (verl returns no metrics).
Reference: algorithms.md sections 1.4 and 2.7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import AdvantageInputs, LossInputs, Metrics, masked_mean, stateless
from creditrl.algorithms.grpo import group_mean_std
from creditrl.algorithms.registry import ADVANTAGES, POLICY_LOSSES


def gpg_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> tuple[Tensor, float]:
    """GPG advantages [B, T] from sequence rewards [B], group ids [B] and the mask [B, T]; also returns alpha."""
    r = rewards.to(torch.float64)
    mean, _ = group_mean_std(r, group_ids)
    nonzero = int(torch.count_nonzero(r).item())
    alpha = len(r) / max(nonzero, 1)
    adv = alpha * (r - mean)
    return adv.unsqueeze(-1).to(mask.dtype) * mask, alpha


@dataclass
class GPGAdvantageConfig:
    """GPG's advantage has no options (verl fixes f_norm = 1 and recomputes alpha every step)."""


@ADVANTAGES.register("gpg", GPGAdvantageConfig)
@stateless
class GPGAdvantage:
    """GPG advantage: alpha (R - group mean), alpha = B / #non-zero rewards (no std division)."""

    needs = frozenset()

    def __init__(self, cfg: GPGAdvantageConfig):
        self.cfg = cfg

    def __call__(self, inputs: AdvantageInputs) -> tuple[Tensor, Metrics]:
        adv, alpha = gpg_advantages(inputs.rewards, inputs.group_ids, inputs.mask)
        return adv, {"adv/gpg_alpha": alpha}


def gpg_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Metrics]:
    """Per-token GPG loss [B, T] = -A l, and its metrics. All inputs [B, T]."""
    loss = -advantages * logprobs
    metrics: Metrics = {"ppo_kl": masked_mean(old_logprobs - logprobs, mask).detach()}
    return loss * mask, metrics


@dataclass
class GPGLossConfig:
    """The GPG loss has no options."""


@POLICY_LOSSES.register("gpg", GPGLossConfig)
class GPGLoss:
    """GPG: plain policy gradient -A log pi (no ratio, no clip)."""

    needs = frozenset()

    def __init__(self, cfg: GPGLossConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return gpg_loss(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask)
