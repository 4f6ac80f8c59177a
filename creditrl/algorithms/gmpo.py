"""GMPO: geometric-mean policy optimisation (Zhao et al., arXiv 2507.20673).

GRPO maximises the arithmetic mean of the token ratios of a response; GMPO maximises their geometric mean,
clipped per token in log space:

    delta_t  = l_t - l_old,t                                 unclamped (verl and TRL)
    delta*_t = min(delta_t, eps_high)   where A_t > 0        one-sided clip in log space (the PPO "min" trick:
             = max(delta_t, -eps_low)   where A_t < 0         ratio range (exp(-eps_low), exp(eps_high)))
             = 0                        where A_t = 0
    rho_i    = exp( sum_t m delta*_t / max(n_i, 1) )          geometric mean of the clipped token ratios
    A_i      = sum_t m A_t / max(n_i, 1)                      sequence advantage (constant A_t gives A_i = A_t)
    L_i      = -A_i rho_i                                     one loss per response, gradient through every token

The per-token loss returned here is L_i on every valid token of response i (the full L_i, with its gradient
through all the response's tokens), so `loss_agg: seq-mean-token-mean` gives exactly the reference objective
mean_i(-A_i rho_i) over the mini-batch's responses. verl and TRL take a plain mean over the rows of the
micro-batch and ignore `loss_agg_mode`; the only difference is that creditrl (like verl's seq-mean modes) leaves
empty responses out of the count (their loss is 0 in both). Other aggregations are allowed but change the
objective (`token-mean` weights each response by its length).

Defaults eps_low = eps_high = 0.4 (the paper, verl's example scripts and TRL's GMPOConfig). The token weights
(TIS, ...) multiply L_i per token, i.e. by their arithmetic mean over the response under seq-mean-token-mean;
verl multiplies by the geometric mean of the IS weights.
References: verl 0.9.1 `compute_policy_loss_geo_mean` (algorithms.md section 2.4); TRL 1.16
`trl.experimental.gmpo.GMPOTrainer._compute_loss` (same loss; its KL term is a per-sequence mean, creditrl's
`kl` block adds the usual per-token KL instead). verl divides by n_i + 1e-8, TRL and creditrl by max(n_i, 1).
Metrics: `pg_clipfrac` (A > 0 and delta > eps_high: tokens held at the upper bound), `pg_clipfrac_lower`
(A < 0 and delta < -eps_low), as TRL counts them (verl counts every out-of-range token by the sign of A),
`gmpo/seq_ratio_mean` (mean rho over non-empty responses), `ppo_kl` = mean(l_old - l).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.registry import POLICY_LOSSES


def gmpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
) -> tuple[Tensor, Metrics]:
    """Per-token GMPO loss [B, T] (the sequence loss -A_i rho_i on each valid token) and its metrics."""
    delta = logprobs - old_logprobs  # [B, T]
    upper = torch.clamp(delta, max=clip_high)  # A > 0
    lower = torch.clamp(delta, min=-clip_low)  # A < 0
    clipped = torch.where(advantages > 0, upper, torch.where(advantages < 0, lower, torch.zeros_like(delta)))
    lengths = mask.sum(-1).clamp_min(1.0)  # [B]
    log_rho = (clipped * mask).sum(-1) / lengths  # [B]
    rho = torch.exp(log_rho)
    seq_adv = (advantages * mask).sum(-1) / lengths  # [B]
    loss = (-seq_adv * rho).unsqueeze(-1).expand_as(delta)
    nonempty = (mask.sum(-1) > 0).to(delta.dtype)
    metrics: Metrics = {
        "pg_clipfrac": masked_mean(((delta > clip_high) & (advantages > 0)).float(), mask).detach(),
        "pg_clipfrac_lower": masked_mean(((delta < -clip_low) & (advantages < 0)).float(), mask).detach(),
        "gmpo/seq_ratio_mean": ((rho * nonempty).sum() / nonempty.sum().clamp_min(1.0)).detach(),
        "ppo_kl": masked_mean(-delta, mask).detach(),
    }
    return loss * mask, metrics


@dataclass
class GMPOConfig:
    clip_low: float = 0.4  # eps_low, in log space: the ratio floor is exp(-clip_low) (TRL `epsilon`)
    clip_high: float = 0.4  # eps_high, in log space: the ratio cap is exp(clip_high) (TRL `epsilon_high`)

    def __post_init__(self):
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"gmpo.{name} must be >= 0 (got {value}); it is a log-space bound, the paper "
                                 f"uses 0.4 (ratio range exp(-0.4) .. exp(0.4))")


@POLICY_LOSSES.register("gmpo", GMPOConfig)
class GMPO:
    """GMPO: geometric mean of log-space-clipped token ratios, one loss per response (seq-mean-token-mean)."""

    needs = frozenset()

    def __init__(self, cfg: GMPOConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        c = self.cfg
        return gmpo_loss(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask, c.clip_low, c.clip_high)
