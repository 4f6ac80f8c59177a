"""GSPO: group sequence policy optimisation with a sequence-level ratio (Zheng et al., arXiv 2507.18071).

    log s_i   = sum_t m (l - l_old) / max(n_i, 1)                 geometric-mean sequence ratio (unclamped)
    log s_i,t = min(l_t - sg(l_t) + sg(log s_i), 10)              value s_i, gradient s_i grad(l_t)
    L_i,t     = max(-A s_i,t, -A clamp(s_i,t, 1 - eps_low, 1 + eps_high))

No dual clip. The paper's clip range is tiny (eps_low 3e-4, eps_high 4e-4, the defaults here).
Reference: verl 0.9.1 `compute_policy_loss_gspo` (algorithms.md section 2.3). Aggregation: the paper (and verl's
git snapshot, which forces it) average per sequence, so set `loss_agg: seq-mean-token-mean` in the recipe;
verl 0.9.1 follows `loss_agg_mode` instead, whose default is token-mean. With seq-mean-token-mean this equals
TRL `importance_sampling_level="sequence"`, `loss_type="grpo"` (except that verl and creditrl drop empty
responses from the sequence count while TRL counts them).
Metrics: `pg_clipfrac` (tokens of clipped sequences), `ppo_kl` = mean(l_old - l), `gspo/seq_ratio_mean`
(mean of s_i over non-empty responses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import POLICY_LOSSES

MAX_LOG_SEQ_RATIO = 10.0


def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, Metrics]:
    """Per-token GSPO loss [B, T] (sequence ratio, token-level straight-through gradient) and its metrics."""
    delta = logprobs - old_logprobs  # [B, T]
    lengths = mask.sum(-1)  # [B]
    log_seq_ratio = (delta * mask).sum(-1) / lengths.clamp_min(1.0)  # [B]
    log_ratio = logprobs - logprobs.detach() + log_seq_ratio.detach().unsqueeze(-1)  # [B, T]
    ratio = torch.exp(torch.clamp(log_ratio, max=MAX_LOG_SEQ_RATIO))
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss1, loss2)
    nonempty = (lengths > 0).to(delta.dtype)
    metrics: Metrics = {
        "pg_clipfrac": masked_mean((loss2 > loss1).float(), mask).detach(),
        "ppo_kl": masked_mean(-delta, mask).detach(),
        "gspo/seq_ratio_mean": ((torch.exp(log_seq_ratio) * nonempty).sum() / nonempty.sum().clamp_min(1.0)).detach(),
    }
    return loss * mask, metrics


@dataclass
class GSPOConfig:
    clip_low: float = 3e-4  # eps_low: sequence ratio clipped below at 1 - clip_low, in [0, 1)
    clip_high: float = 4e-4  # eps_high: sequence ratio clipped above at 1 + clip_high, >= 0

    def __post_init__(self):
        if not (0 <= self.clip_low < 1) or self.clip_high < 0:
            raise ValueError(
                f"gspo.clip_low must be in [0, 1) and gspo.clip_high >= 0 (got {self.clip_low}, {self.clip_high})"
            )


@POLICY_LOSSES.register("gspo", GSPOConfig)
class GSPO:
    """GSPO sequence-level clipped ratio (use with loss_agg: seq-mean-token-mean)."""

    needs = frozenset()

    def __init__(self, cfg: GSPOConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return gspo_loss(
            inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, self.cfg.clip_low, self.cfg.clip_high
        )
