"""MinPRO: minimum prefix ratio weighting for off-policy rollouts (Lei, Cheng, Tao, "A Step Back: Prefix Importance
Ratio Stabilizes Policy Optimization", arXiv 2601.22718, Jan 2026).

With the behaviour policy mu that sampled the response and rho_i = pi_theta(a_i | s_i) / mu(a_i | s_i), the exact
off-policy correction of token t's policy-gradient term is the prefix ratio Pi_t = prod_{i <= t} rho_i, while
PPO/GRPO keep only the token's own rho_t. MinPRO replaces the unstable cumulative product over the *preceding*
prefix, Pi_{t-1}, with the minimum token-level ratio observed there. As a detached token weight:

    log rho_i = clamp(sg(l_i) - l_mu,i, -20, 20)                    l = current policy, l_mu = the sampler
    w_t = min_{i < t, m_i = 1} rho_i          (w = 1 when the prefix is empty, e.g. the first token)
    w_t = min(w_t, cap)                       (only when `cap` is set)
    L_t <- w_t L_t                            L_t = the chosen policy loss, e.g. ppo_clip's clipped term

so a token is down-weighted as soon as any earlier token of its response became unlikely under pi_theta relative
to mu. Masked positions (padding, tool/observation tokens) are skipped by the running minimum.

What this follows (UNVERIFIED against the paper body): only the abstract and third-party summaries of
arXiv 2601.22718 could be read here (the stored copies of the paper stop after the abstract; no public code was
found). They fix (a) rho_i = pi_theta / mu with mu the sampling policy, (b) the correction target Pi_t, (c) "a
non-cumulative surrogate based on the minimum token-level ratio observed in the preceding prefix", which
"down-weights the gradient when any single-step ratio in the prefix is small". The rest is the most literal
reading (algorithms.md section 8.4, [RECON]): the minimum runs over i < t (the current token's ratio stays in the
policy loss), rho is not clipped before the minimum, the weight is not capped at 1 by default (`cap: 1.0` caps
it), and it multiplies the usual clipped objective. mu is the sampler (`rollout_logprobs`), the policy that
actually generated the tokens, so the weight covers both policy staleness and the engine's numerical mismatch.
Metrics: `minpro/weight_mean`, `minpro/weight_min`, `minpro/downweighted_frac` (tokens with w < 0.99, so that
float noise between the sampler's and the trainer's log-probs does not count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.mismatch import mismatch_log_ratio
from creditrl.algorithms.registry import TOKEN_WEIGHTS

DOWNWEIGHTED_BELOW = 0.99


@torch.no_grad()
def minpro_weights(logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cap: float | None = None) -> Tensor:
    """MinPRO weights [B, T]: min of the current-vs-sampler ratios over the valid tokens before t (times the mask)."""
    log_rho = mismatch_log_ratio(logprobs.detach(), rollout_logprobs, mask)  # [B, T]
    log_rho = torch.where(mask > 0, log_rho, torch.full_like(log_rho, float("inf")))
    running_min = torch.cummin(log_rho, dim=-1).values  # [B, T]: min over i <= t
    prefix_min = torch.cat([torch.full_like(running_min[:, :1], float("inf")), running_min[:, :-1]], dim=-1)
    weights = torch.where(torch.isinf(prefix_min), torch.ones_like(prefix_min), torch.exp(prefix_min))
    if cap is not None:
        weights = torch.clamp(weights, max=cap)
    return weights * mask


@dataclass
class MinPROConfig:
    cap: float | None = None  # upper bound on the weight (1.0 = only ever down-weight); null = none

    def __post_init__(self):
        if self.cap is not None and self.cap < 1.0:
            raise ValueError(f"minpro.cap must be >= 1 or null (got {self.cap}); the empty prefix has weight 1")


@TOKEN_WEIGHTS.register("minpro", MinPROConfig)
class MinPRO:
    """MinPRO: weight token t by the minimum pi_theta / mu ratio over its preceding tokens (UNVERIFIED reading)."""

    needs = frozenset({"rollout_logprobs"})

    def __init__(self, cfg: MinPROConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        if inputs.rollout_logprobs is None:
            raise ValueError("minpro needs the sampler's log-probs (rollout_logprobs), but none were given")
        weights = minpro_weights(inputs.logprobs, inputs.rollout_logprobs, inputs.mask, self.cfg.cap)
        valid = inputs.mask > 0
        metrics: Metrics = {
            "minpro/weight_mean": masked_mean(weights, inputs.mask),
            "minpro/weight_min": weights[valid].min() if valid.any() else torch.tensor(1.0),
            "minpro/downweighted_frac": masked_mean((weights < DOWNWEIGHTED_BELOW).float(), inputs.mask),
        }
        return weights, None, metrics
