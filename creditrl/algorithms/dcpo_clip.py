"""DCPO dynamic-adaptive clipping (DAC): per-token clip bounds from the old probability (arXiv 2509.02333, 4.1).

The trust region is `|(r - 1) r q| <= eps` with q = exp(l_old) the old probability of the sampled token, i.e. the
new probability p = r q may move by about eps / p. Solving the two quadratics gives the ratio bounds

    lo_t = 1/2 + 1/2 sqrt(max(1 - 4 eps_low / q_t, 0))           (0.5 <= lo_t < 1; lo_t = 1 when q_t = 0)
    hi_t = min(1/2 + 1/2 sqrt(1 + 4 eps_high / q_t), max(c, 10))   (hi_t = max(c, 10) when q_t = 0)

and the per-token loss is PPO's with these bounds and the dual clip:

    delta = clamp(l - l_old, -20, 20), r = exp(delta)
    L_clip = max(-A r, -A clamp(r, lo_t, hi_t));   L = min(L_clip, -A c) where A < 0

eps_low / eps_high are `clip_low` / `clip_high` but are *not* bound widths any more. Defaults are the code's
(0.2, 0.28, c = 10; the README illustration uses 0.16 / 0.2). Reference: `lime-RL/DCPO@01787b0f`
`get_clip_low_high`, `compute_policy_loss_dcpo` with `clip_type: dynamic` (algorithms-token-level.md 10.1).
Intentional difference (10.7 (5)): the reference leaves the log-ratio unclamped (the clamp is commented out), so
r can overflow to inf; here it is clamped to [-20, 20] as in verl, identical unless r would overflow.
Pair with `advantage: dcpo_sas` and `loss_agg: only-token-mean` (section 10.3).
Metrics: `pg_clipfrac`, `pg_clipfrac_lower` (dual clip), `ppo_kl`, `dcpo/clip_lo_mean`, `dcpo/clip_hi_mean`
(token means of the bounds on r), `dcpo/clip_hi_capped_frac` (tokens whose upper bound hit the cap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import POLICY_LOSSES


def dcpo_clip_bounds(
    old_logprobs: Tensor, clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: float = 10.0
) -> tuple[Tensor, Tensor]:
    """Per-token ratio bounds (lo [B, T], hi [B, T]) from the old log-probs [B, T]."""
    q = torch.exp(old_logprobs)
    nonzero = q > 0
    safe_q = torch.where(nonzero, q, torch.ones_like(q))
    low_term = torch.where(nonzero, 1.0 - 4.0 * clip_low / safe_q, torch.ones_like(q)).clamp_min(0.0)
    high_term = torch.where(nonzero, 1.0 + 4.0 * clip_high / safe_q, torch.full_like(q, float("inf")))
    lo = 0.5 + 0.5 * torch.sqrt(low_term)
    hi = torch.clamp(0.5 + 0.5 * torch.sqrt(high_term), max=max(dual_clip, 10.0))
    return lo, hi


def dcpo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float = 10.0,
) -> tuple[Tensor, Metrics]:
    """Per-token DCPO loss [B, T] with dynamic bounds and dual clip, and its metrics. All inputs [B, T]."""
    lo, hi = dcpo_clip_bounds(old_logprobs.detach(), clip_low, clip_high, dual_clip)
    delta = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(delta)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, lo, hi)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -advantages * dual_clip
    lower = (clipped > loss3) & (advantages < 0)
    loss = torch.where(advantages < 0, torch.minimum(clipped, loss3), clipped)
    cap = max(dual_clip, 10.0)
    metrics: Metrics = {
        "pg_clipfrac": masked_mean((loss2 > loss1).float(), mask).detach(),
        "pg_clipfrac_lower": masked_mean(lower.float(), mask).detach(),
        "ppo_kl": masked_mean(-delta, mask).detach(),
        "dcpo/clip_lo_mean": masked_mean(lo, mask).detach(),
        "dcpo/clip_hi_mean": masked_mean(hi, mask).detach(),
        "dcpo/clip_hi_capped_frac": masked_mean((hi >= cap).float(), mask).detach(),
    }
    return loss * mask, metrics


@dataclass
class DCPOClipConfig:
    clip_low: float = 0.2  # eps_low of |(r - 1) r q| <= eps (not a bound width)
    clip_high: float = 0.28  # eps_high
    dual_clip: float = 10.0  # c; the upper bound is also capped at max(c, 10)

    def __post_init__(self):
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(f"dcpo_clip.clip_low/clip_high must be >= 0 (got {self.clip_low}, {self.clip_high})")
        if self.dual_clip <= 1.0:
            raise ValueError(f"dcpo_clip.dual_clip must be > 1 (got {self.dual_clip}); DCPO uses 10")


@POLICY_LOSSES.register("dcpo_clip", DCPOClipConfig)
class DCPOClip:
    """DCPO dynamic-adaptive clipping: per-token PPO bounds from the old token probability, with dual clip."""

    needs = frozenset()

    def __init__(self, cfg: DCPOClipConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        return dcpo_clip_loss(
            inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, c.clip_low, c.clip_high, c.dual_clip
        )
