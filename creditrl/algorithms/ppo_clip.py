"""PPO clipped surrogate with dual clip and asymmetric (clip-higher) bounds.

    delta = clamp(l - l_old, -20, 20),  r = exp(delta)
    L_clip = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
    L = min(L_clip, -A c)  where A < 0 (dual clip, Ye et al. 2019), else L_clip

`clip_high > clip_low` is DAPO's clip-higher (arXiv 2503.14476). `dual_clip: null` turns the dual clip off.
Reference: verl 0.9.1 `compute_policy_loss_vanilla` (algorithms.md section 2.1).
Metrics: `pg_clipfrac` (tokens where the clipped term is active), `pg_clipfrac_lower` (dual clip active),
`ppo_kl` = mean(l_old - l).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import POLICY_LOSSES


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
) -> tuple[Tensor, Metrics]:
    """Per-token PPO loss [B, T] and its metrics. All inputs [B, T]."""
    delta = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(delta)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    metrics: Metrics = {
        "pg_clipfrac": masked_mean((loss2 > loss1).float(), mask).detach(),
        "ppo_kl": masked_mean(-delta, mask).detach(),
    }
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (got {dual_clip}); use null to disable it")
        loss3 = -advantages * dual_clip
        dual = torch.minimum(clipped, loss3)
        lower = (clipped > loss3) & (advantages < 0)
        clipped = torch.where(advantages < 0, dual, clipped)
        metrics["pg_clipfrac_lower"] = masked_mean(lower.float(), mask).detach()
    return clipped * mask, metrics


@dataclass
class PPOClipConfig:
    clip_low: float = 0.2  # eps_low: ratio clipped below at 1 - clip_low, in [0, 1] (1 = no lower bound)
    clip_high: float = 0.2  # > clip_low = DAPO clip-higher (0.28 in DAPO)
    dual_clip: float | None = 3.0  # c; null disables

    def __post_init__(self):
        if not 0.0 <= self.clip_low <= 1.0:  # 1.0 = no lower bound on r (Lp-Reg's reference setting)
            raise ValueError(f"ppo_clip.clip_low must be in [0, 1] (got {self.clip_low})")
        if self.clip_high < 0.0:
            raise ValueError(f"ppo_clip.clip_high must be >= 0 (got {self.clip_high}); DAPO uses 0.28")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"ppo_clip.dual_clip must be > 1 (got {self.dual_clip}); use null to disable it")


@POLICY_LOSSES.register("ppo_clip", PPOClipConfig)
class PPOClip:
    """PPO clipped surrogate with dual clip; clip_high > clip_low gives DAPO clip-higher."""

    needs = frozenset()

    def __init__(self, cfg: PPOClipConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        return ppo_clip_loss(
            inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, c.clip_low, c.clip_high, c.dual_clip
        )
