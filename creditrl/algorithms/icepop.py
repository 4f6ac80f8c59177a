"""IcePop: two-sided masking of the sampler/trainer mismatch (Ring-1T, "Every Step Evolves", arXiv 2510.18855).

    rho_t = exp(clamp(l_old,t - l_mu,t, -20, 20))
    w_t   = rho_t   if alpha <= rho_t <= beta,   else 0             (detached)

and L_t <- w_t L_t: tokens whose train/infer discrepancy is large contribute no gradient, in-range tokens are
importance-weighted like TIS (masking instead of truncating, on both sides). The mask is unchanged, so masked
tokens still count in every denominator (verl 0.9.1, slime, TRL all do this; verl's rejection sampling
`rollout_rs`, which removes tokens from the mask, is a different method). Defaults alpha = 0.5, beta = 5.
Reference: verl 0.9.1 `rollout_is: token` with `rollout_is_threshold: "0.5_5.0"`; slime `icepop_function`; TRL
`vllm_importance_sampling_mode: token_mask`, clip_min 0.5, clip_max 5 (algorithms.md section 8.2). The paper
aggregates with seq-mean-token-mean.
Metrics: `icepop/masked_frac` (verl `rollout_is_oob_ratio`), `icepop/weight_mean`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from creditrl.algorithms.base import LossInputs, Metrics, masked_mean
from creditrl.algorithms.mismatch import mismatch_log_ratio
from creditrl.algorithms.registry import TOKEN_WEIGHTS


@torch.no_grad()
def icepop_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, low: float = 0.5, high: float = 5.0
) -> tuple[Tensor, Tensor]:
    """IcePop weights [B, T] (times the mask) and the out-of-bounds indicator [B, T] bool."""
    ratio = torch.exp(mismatch_log_ratio(old_logprobs, rollout_logprobs, mask))
    out_of_bounds = (ratio < low) | (ratio > high)
    return torch.where(out_of_bounds, torch.zeros_like(ratio), ratio) * mask, out_of_bounds & (mask > 0)


@dataclass
class IcePopConfig:
    low: float = 0.5  # alpha
    high: float = 5.0  # beta

    def __post_init__(self):
        if not 0.0 <= self.low < self.high:
            raise ValueError(f"icepop needs 0 <= low < high (got low={self.low}, high={self.high})")


@TOKEN_WEIGHTS.register("icepop", IcePopConfig)
class IcePop:
    """IcePop: weight tokens by pi_old / mu inside [low, high] and zero them outside (mask unchanged)."""

    needs = frozenset({"rollout_logprobs"})

    def __init__(self, cfg: IcePopConfig):
        self.cfg = cfg

    def __call__(self, inputs: LossInputs) -> tuple[Tensor, Tensor | None, Metrics]:
        if inputs.rollout_logprobs is None:
            raise ValueError("icepop needs the sampler's log-probs (rollout_logprobs), but none were given")
        weights, oob = icepop_weights(inputs.old_logprobs, inputs.rollout_logprobs, inputs.mask, self.cfg.low,
                                      self.cfg.high)
        metrics: Metrics = {
            "icepop/masked_frac": masked_mean(oob.float(), inputs.mask),
            "icepop/weight_mean": masked_mean(weights, inputs.mask),
        }
        return weights, None, metrics
