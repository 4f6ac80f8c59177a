"""HAPO differential advantage redistribution: scale the advantage by (1 + beta h_hat) in or out of a neutral zone.

Paper: arXiv 2509.16591 (HAPO). Reference code: `starriver030515/HAPO`, `ada_advantage`. Spec:
algorithms-token-level.md §13.3. h_hat and the adapted bounds eps_low_t / eps_high_t are those of
`hapo_entropy` / `hapo_clip` (same options; compose checks that they agree when both parts are used).

Neutral zone: r in (1 - eps_low_t / 2, 1 + eps_high_t / 2), r = exp(clamp(l - l_old, -20, 20)) (detached).

    h_hat > 0:   A' = A                 inside the neutral zone,   A (1 + beta h_hat)   outside it
    h_hat <= 0:  A' = A (1 + beta h_hat) inside the neutral zone,   A                    outside it

A' replaces A in the whole clipped loss (L1, L2 and the dual clip). Every PPO-style loss here is positively
homogeneous in A (L(wA) = w L(A) for w >= 0, including the dual clip, whose branch depends on sign(A) only), so
this part is a token weight w = A'/A = 1 or 1 + beta h_hat. That needs w >= 0, which holds for hhat_sign "code"
(h_hat >= 0) and, for "signed" (h_hat >= -1), whenever beta <= 1: the config enforces it.
On the first mini-batch of a step r = 1, so A' = A for h_hat > 0 there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.hapo_clip import adaptive_clip_bounds
from creditrl.algorithms.hapo_entropy import (
    EntropyNormStats, HhatSign, entropy_norm_stats, normalized_entropy, validate_hapo_entropy_options,
)
from creditrl.algorithms.registry import TOKEN_WEIGHTS
from creditrl.algorithms.token_scope import AllReduce, ScopedPart, ScopedStats


def redistribution_weights(
    logprobs: Tensor, old_logprobs: Tensor, hhat: Tensor, eps_low: Tensor, eps_high: Tensor, beta: float
) -> Tensor:
    """w = A'/A [B, T] (float64): 1 or 1 + beta h_hat depending on h_hat's sign and the neutral zone."""
    ratio = torch.exp(torch.clamp(logprobs.detach() - old_logprobs.detach(), -20.0, 20.0)).double()
    neutral = (ratio > 1.0 - eps_low / 2) & (ratio < 1.0 + eps_high / 2)
    scaled = 1.0 + beta * hhat
    ones = torch.ones_like(hhat)
    return torch.where(hhat > 0, torch.where(neutral, ones, scaled), torch.where(neutral, scaled, ones))


@dataclass
class HapoRedistributionConfig:
    adv_beta: float = 1.0  # beta
    clip_low: float = 0.2  # must match hapo_clip (the neutral zone uses the adapted bounds)
    clip_high: float = 0.2  # eps_high; must match hapo_clip
    clip_alpha: float = 1.0  # alpha, entropy scaling of the adapted bounds; must match hapo_clip
    entropy_pivot: float = 0.8  # quantile of ln H used as the pivot, in [0, 1]; must match hapo_clip
    hhat_sign: HhatSign = "code"  # code (reference) | signed (paper; needs adv_beta <= 1); must match hapo_clip

    def __post_init__(self):
        validate_hapo_entropy_options(self.entropy_pivot, self.hhat_sign, "hapo_redistribution")
        if self.adv_beta < 0:
            raise ValueError(f"hapo_redistribution.adv_beta must be >= 0, got {self.adv_beta}")
        if self.hhat_sign == "signed" and self.adv_beta > 1.0:
            raise ValueError(
                f"hapo_redistribution.adv_beta={self.adv_beta} with hhat_sign 'signed' would flip the sign of the "
                f"advantage of the lowest-entropy tokens (1 + beta h_hat < 0); use adv_beta <= 1"
            )
        if self.clip_low < 0 or self.clip_high < 0 or self.clip_alpha < 0:
            raise ValueError("hapo_redistribution: clip_low, clip_high and clip_alpha must be >= 0")


@TOKEN_WEIGHTS.register("hapo_redistribution", HapoRedistributionConfig)
class HapoRedistribution(ScopedPart):
    """HAPO differential advantage redistribution as a token weight (1 or 1 + beta h_hat)."""

    needs = frozenset({"entropy"})

    def __init__(self, cfg: HapoRedistributionConfig):
        self.cfg = cfg
        self._stats = ScopedStats("hapo_redistribution")

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> EntropyNormStats | None:
        if inputs.entropy is None:
            raise ValueError("hapo_redistribution needs the policy entropy, but it was not computed")
        return entropy_norm_stats(inputs.entropy, inputs.mask, self.cfg.entropy_pivot, all_reduce)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        c = self.cfg
        stats = self._stats.get(inputs, self._compute_stats)
        hhat = normalized_entropy(inputs.entropy, inputs.mask, stats, c.hhat_sign)
        eps_low, eps_high = adaptive_clip_bounds(hhat, c.clip_low, c.clip_high, c.clip_alpha)
        w = redistribution_weights(inputs.logprobs, inputs.old_logprobs, hhat, eps_low, eps_high, c.adv_beta)
        w = w * inputs.mask.ne(0)
        m = inputs.mask
        metrics: Metrics = {
            "hapo/adv_weight_mean": masked_mean(w, m).item(),
            "hapo/adv_scaled_frac": masked_mean((w != 1.0).double(), m).item(),
        }
        return w.to(inputs.logprobs.dtype), None, metrics
