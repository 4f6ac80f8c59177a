"""HAPO asymmetric adaptive clipping: per-token PPO clip bounds from the normalised entropy h_hat.

Paper: arXiv 2509.16591 (HAPO). Reference code: `starriver030515/HAPO`, `ada_clip` and `compute_policy_loss`.
Spec: algorithms-token-level.md §13.2. h_hat: see `creditrl/algorithms/hapo_entropy.py`.

    eps_low_t  = eps_low  (1 - alpha h_hat_t)   if h_hat_t <= 0, else eps_low
    eps_high_t = eps_high (1 + alpha h_hat_t)   if h_hat_t > 0,  else eps_high

    delta = clamp(l - l_old, -20, 20),  r = exp(delta)
    L_clip = max(-A r, -A clamp(r, 1 - eps_low_t, 1 + eps_high_t))
    L = min(L_clip, -A c) where A < 0 (dual clip, c = 10 in the HAPO scripts), else L_clip

With hhat_sign "code" (the reference) almost every token has h_hat > 0, so only eps_high_t in [eps_high,
2 eps_high] varies; with "signed", low-entropy tokens get a wider downward range (up to 2 eps_low).
Metrics: `pg_clipfrac`, `pg_clipfrac_lower`, `ppo_kl` as in ppo_clip, plus the bounds' means and h_hat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.hapo_entropy import (
    EntropyNormStats, HhatSign, entropy_norm_stats, normalized_entropy, validate_hapo_entropy_options,
)
from creditrl.algorithms.registry import POLICY_LOSSES
from creditrl.algorithms.token_scope import AllReduce, ScopedPart, ScopedStats


def adaptive_clip_bounds(hhat: Tensor, clip_low: float, clip_high: float, alpha: float) -> tuple[Tensor, Tensor]:
    """Per-token (eps_low_t, eps_high_t) [B, T] from h_hat [B, T]."""
    eps_low = torch.where(hhat <= 0, clip_low * (1.0 - alpha * hhat), torch.full_like(hhat, clip_low))
    eps_high = torch.where(hhat > 0, clip_high * (1.0 + alpha * hhat), torch.full_like(hhat, clip_high))
    return eps_low, eps_high


def adaptive_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: Tensor,
    eps_high: Tensor,
    dual_clip: float | None = 10.0,
) -> tuple[Tensor, Metrics]:
    """Per-token dual-clip PPO loss [B, T] with per-token bounds eps_low/eps_high [B, T] (detached)."""
    delta = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(delta)
    lo = (1.0 - eps_low).to(ratio.dtype).detach()
    hi = (1.0 + eps_high).to(ratio.dtype).detach()
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, lo, hi)
    clipped = torch.maximum(loss1, loss2)
    metrics: Metrics = {
        "pg_clipfrac": masked_mean((loss2 > loss1).float(), mask).detach(),
        "ppo_kl": masked_mean(-delta, mask).detach(),
    }
    if dual_clip is not None:
        loss3 = -advantages * dual_clip
        lower = (clipped > loss3) & (advantages < 0)
        clipped = torch.where(advantages < 0, torch.minimum(clipped, loss3), clipped)
        metrics["pg_clipfrac_lower"] = masked_mean(lower.float(), mask).detach()
    return clipped * mask, metrics


@dataclass
class HapoClipConfig:
    clip_low: float = 0.2  # eps_low
    clip_high: float = 0.2  # eps_high
    clip_alpha: float = 1.0  # alpha
    dual_clip: float | None = 10.0  # c; null disables
    entropy_pivot: float = 0.8  # quantile of ln H used as the pivot
    hhat_sign: HhatSign = "code"  # code (reference) | signed (paper reading), see hapo_entropy

    def __post_init__(self):
        validate_hapo_entropy_options(self.entropy_pivot, self.hhat_sign, "hapo_clip")
        if not 0.0 <= self.clip_low < 1.0 or self.clip_high < 0.0:
            raise ValueError(f"hapo_clip needs 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, "
                             f"{self.clip_high}")
        if self.clip_alpha < 0:
            raise ValueError(f"hapo_clip.clip_alpha must be >= 0, got {self.clip_alpha}")
        if self.hhat_sign == "signed" and self.clip_low * (1.0 + self.clip_alpha) >= 1.0:
            raise ValueError("hapo_clip: with hhat_sign 'signed' the widest lower bound is clip_low * (1 + "
                             "clip_alpha), which must stay < 1 (a ratio bound of 0 or below); lower clip_low or "
                             "clip_alpha")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"hapo_clip.dual_clip must be > 1 (got {self.dual_clip}); use null to disable it")


@POLICY_LOSSES.register("hapo_clip", HapoClipConfig)
class HapoClip(ScopedPart):
    """HAPO asymmetric adaptive clipping: PPO dual clip with entropy-dependent per-token bounds."""

    needs = frozenset({"entropy"})

    def __init__(self, cfg: HapoClipConfig):
        self.cfg = cfg
        self._stats = ScopedStats("hapo_clip")

    def _compute_stats(self, inputs: LossInputs, all_reduce: AllReduce) -> EntropyNormStats | None:
        if inputs.entropy is None:
            raise ValueError("hapo_clip needs the policy entropy, but it was not computed")
        return entropy_norm_stats(inputs.entropy, inputs.mask, self.cfg.entropy_pivot, all_reduce)

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        stats = self._stats.get(inputs, self._compute_stats)
        hhat = normalized_entropy(inputs.entropy, inputs.mask, stats, c.hhat_sign)
        eps_low, eps_high = adaptive_clip_bounds(hhat, c.clip_low, c.clip_high, c.clip_alpha)
        loss, metrics = adaptive_clip_loss(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask,
                                           eps_low, eps_high, c.dual_clip)
        m = inputs.mask
        metrics.update({
            "hapo/clip_low_mean": masked_mean(eps_low, m).item(),
            "hapo/clip_high_mean": masked_mean(eps_high, m).item(),
            "hapo/hhat_mean": masked_mean(hhat, m).item(),
            "hapo/hhat_pos_frac": masked_mean((hhat > 0).double(), m).item(),
        })
        return loss, metrics
