"""CISPO: clipped importance-sampling-weight policy optimisation (MiniMax-M1, arXiv 2506.13585).

REINFORCE with a clipped, detached importance weight, so every token keeps a gradient (PPO zeroes the gradient
of clipped tokens):

    r = exp(clamp(l - l_old, -20, 20))
    w = sg(clamp(r, 1 - eps_low, 1 + eps_high))        eps_low null = no lower bound
    L = -w A l                                         gradient -w A grad(l)

Reference: verl 0.9.1 `compute_policy_loss_cispo` (algorithms.md section 2.5). verl's example sets
`clip_ratio_low: 10` to switch the lower bound off; here `clip_low: null` does that. Equivalences: TRL
`loss_type="cispo"` caps the weight at `epsilon_high` itself (an absolute cap, recommended 5.0), so TRL
`epsilon_high = C` equals `clip_high = C - 1` here; TRL has no lower bound and no log-ratio clamp. Beware TRL's
default `epsilon_high = epsilon = 0.2`, which caps every weight at 0.2.
Metrics: `pg_clipfrac` = fraction of tokens whose weight was clipped (verl), `cispo/weight_mean`, `ppo_kl`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import POLICY_LOSSES


def cispo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float | None = None,
    clip_high: float = 0.2,
) -> tuple[Tensor, Metrics]:
    """Per-token CISPO loss [B, T] and its metrics. All inputs [B, T]."""
    delta = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(delta).detach()
    lower = None if clip_low is None else 1.0 - clip_low
    weight = torch.clamp(ratio, min=lower, max=1.0 + clip_high)
    loss = -weight * advantages * logprobs
    metrics: Metrics = {
        "pg_clipfrac": masked_mean((weight != ratio).float(), mask).detach(),
        "cispo/weight_mean": masked_mean(weight, mask).detach(),
        "ppo_kl": masked_mean(-delta, mask).detach(),
    }
    return loss * mask, metrics


@dataclass
class CISPOConfig:
    clip_low: float | None = None  # null = no lower bound (verl example: clip_ratio_low 10)
    clip_high: float = 0.2  # weight cap 1 + clip_high (TRL epsilon_high = 1 + clip_high)

    def __post_init__(self):
        if self.clip_low is not None and self.clip_low < 0:
            raise ValueError(f"cispo.clip_low must be >= 0 or null (got {self.clip_low})")
        if self.clip_high < 0:
            raise ValueError(f"cispo.clip_high must be >= 0 (got {self.clip_high})")


@POLICY_LOSSES.register("cispo", CISPOConfig)
class CISPO:
    """CISPO: REINFORCE with a clipped, detached importance weight (every token keeps its gradient)."""

    needs = frozenset()

    def __init__(self, cfg: CISPOConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return cispo_loss(
            inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, self.cfg.clip_low, self.cfg.clip_high
        )
